"""Fast Fourier Convolution blocks (LaMa's ``saicinpainting/training/modules/ffc.py``), written once.

Used by the Big-LaMa generator (``lama.py``) and by the two-stream model's FFC LIF blocks. Submodule
names are LaMa's (``ffc.convl2l``, ``ffc.convg2g.fu.conv_layer``, ``bn_l``, ``bn_g`` ...) so that
released state dicts load without renaming; only the options the released configs use are
implemented (no LFU weights are ever present in them, but ``enable_lfu`` is kept for completeness).

A feature map travels as a ``(local, global)`` pair: ``local`` (B, C - int(r*C), H, W) is convolved
spatially, ``global`` (B, int(r*C), H, W) goes through the spectral transform (a 1x1 convolution on
the real FFT of the map, so every output pixel sees the whole image). Either part may be the integer
``0`` when a layer has no channels for it, as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# A (local, global) feature pair; either member may be the int 0 (no channels of that kind).
FeaturePair = tuple[torch.Tensor | int, torch.Tensor | int]


class FourierUnit(nn.Module):
    """1x1 conv + BN + ReLU on the (real, imag) channels of ``rfftn(x, norm="ortho")``, then inverse.

    x: (B, C_in, H, W) -> (B, C_out, H, W). The FFTs run in float32 whatever the dtype of ``x``
    (half-precision FFTs are unsupported on CPU and limited to power-of-two sizes on CUDA); the
    convolution runs in the dtype of ``x`` (or under the caller's autocast).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1) -> None:
        super().__init__()
        self.groups = groups
        self.conv_layer = nn.Conv2d(
            in_channels * 2, out_channels * 2, kernel_size=1, stride=1, padding=0, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels * 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        dtype = x.dtype
        ffted = torch.fft.rfftn(x.float(), dim=(-2, -1), norm="ortho")  # (B, C, H, W//2+1) complex
        ffted = torch.stack((ffted.real, ffted.imag), dim=-1)  # (B, C, H, W//2+1, 2)
        # Channel order c0.re, c0.im, c1.re, ... as the reference (its weights depend on it).
        ffted = ffted.permute(0, 1, 4, 2, 3).contiguous().view(b, -1, h, ffted.shape[3])
        ffted = self.relu(self.bn(self.conv_layer(ffted.to(dtype))))
        ffted = ffted.float().view(b, -1, 2, h, ffted.shape[-1]).permute(0, 1, 3, 4, 2).contiguous()
        ffted = torch.complex(ffted[..., 0], ffted[..., 1])
        out = torch.fft.irfftn(ffted, s=(h, w), dim=(-2, -1), norm="ortho")
        return out.to(dtype)


class SpectralTransform(nn.Module):
    """conv1x1 -> BN -> ReLU -> FourierUnit (+ residual) -> conv1x1: the global-to-global path.

    x: (B, C_in, H, W) -> (B, C_out, H/stride, W/stride).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, enable_lfu: bool = True
    ) -> None:
        super().__init__()
        self.enable_lfu = enable_lfu
        self.stride = stride
        self.downsample = nn.AvgPool2d(kernel_size=(2, 2), stride=2) if stride == 2 else nn.Identity()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, kernel_size=1, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels // 2),
            nn.ReLU(inplace=True),
        )
        self.fu = FourierUnit(out_channels // 2, out_channels // 2, groups)
        if self.enable_lfu:
            self.lfu = FourierUnit(out_channels // 2, out_channels // 2, groups)
        self.conv2 = nn.Conv2d(out_channels // 2, out_channels, kernel_size=1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        x = self.conv1(x)
        output = self.fu(x)
        xs: torch.Tensor | int = 0
        if self.enable_lfu:
            # Local Fourier unit: a quarter of the channels, split into 2x2 tiles stacked as channels.
            _, c, h, _ = x.shape
            split_s = h // 2
            t = torch.cat(torch.split(x[:, : c // 4], split_s, dim=-2), dim=1).contiguous()
            t = torch.cat(torch.split(t, split_s, dim=-1), dim=1).contiguous()
            xs = self.lfu(t).repeat(1, 1, 2, 2).contiguous()
        return self.conv2(x + output + xs)


class FFC(nn.Module):
    """Fast Fourier convolution: four paths l2l, l2g, g2l (spatial convs) and g2g (spectral).

    Input channels split ``in_cg = int(in_channels * ratio_gin)`` global, the rest local; output
    likewise with ``ratio_gout``. A path with no input or output channels is ``nn.Identity`` (no
    weights), as in the reference, which is why e.g. Big-LaMa's first layers have only ``convl2l``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        ratio_gin: float,
        ratio_gout: float,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        enable_lfu: bool = True,
        padding_type: str = "reflect",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"FFC: stride must be 1 or 2, got {stride}")
        self.stride = stride
        in_cg = int(in_channels * ratio_gin)
        in_cl = in_channels - in_cg
        out_cg = int(out_channels * ratio_gout)
        out_cl = out_channels - out_cg
        self.ratio_gin = ratio_gin
        self.ratio_gout = ratio_gout
        self.global_in_num = in_cg

        def conv(cin: int, cout: int) -> nn.Module:
            if cin == 0 or cout == 0:
                return nn.Identity()
            return nn.Conv2d(
                cin, cout, kernel_size, stride, padding, dilation, groups, bias, padding_mode=padding_type
            )

        self.convl2l = conv(in_cl, out_cl)
        self.convl2g = conv(in_cl, out_cg)
        self.convg2l = conv(in_cg, out_cl)
        if in_cg == 0 or out_cg == 0:
            self.convg2g: nn.Module = nn.Identity()
        else:
            self.convg2g = SpectralTransform(
                in_cg, out_cg, stride, 1 if groups == 1 else groups // 2, enable_lfu
            )

    def forward(self, x: torch.Tensor | FeaturePair) -> FeaturePair:
        x_l, x_g = x if isinstance(x, tuple) else (x, 0)
        out_l: torch.Tensor | int = 0
        out_g: torch.Tensor | int = 0
        if self.ratio_gout != 1:
            out_l = self.convl2l(x_l) + self.convg2l(x_g)
        if self.ratio_gout != 0:
            out_g = self.convl2g(x_l) + self.convg2g(x_g)
        return out_l, out_g


class FFC_BN_ACT(nn.Module):  # noqa: N801 (LaMa's class name)
    """FFC followed by BatchNorm and activation on each of the local and global outputs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        ratio_gin: float,
        ratio_gout: float,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        activation_layer: type[nn.Module] = nn.Identity,
        padding_type: str = "reflect",
        enable_lfu: bool = True,
    ) -> None:
        super().__init__()
        self.ffc = FFC(
            in_channels,
            out_channels,
            kernel_size,
            ratio_gin,
            ratio_gout,
            stride,
            padding,
            dilation,
            groups,
            bias,
            enable_lfu,
            padding_type=padding_type,
        )
        global_channels = int(out_channels * ratio_gout)
        self.bn_l = nn.Identity() if ratio_gout == 1 else norm_layer(out_channels - global_channels)
        self.bn_g = nn.Identity() if ratio_gout == 0 else norm_layer(global_channels)
        self.act_l = nn.Identity() if ratio_gout == 1 else _activation(activation_layer)
        self.act_g = nn.Identity() if ratio_gout == 0 else _activation(activation_layer)

    def forward(self, x: torch.Tensor | FeaturePair) -> FeaturePair:
        x_l, x_g = self.ffc(x)
        return self.act_l(self.bn_l(x_l)), self.act_g(self.bn_g(x_g))


def _activation(layer: type[nn.Module]) -> nn.Module:
    try:
        return layer(inplace=True)
    except TypeError:  # activations without an inplace option
        return layer()


class FFCResnetBlock(nn.Module):
    """Two 3x3 FFC_BN_ACT layers with a residual connection on both the local and global parts.

    ``inline=False`` (LaMa): takes and returns a ``(local, global)`` pair.
    ``inline=True`` (the two-stream model's LIF blocks): takes and returns one tensor (B, C, H, W)
    whose first ``C - int(ratio_gin * C)`` channels are local and last ``int(ratio_gin * C)`` global.
    """

    def __init__(
        self,
        dim: int,
        padding_type: str = "reflect",
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        activation_layer: type[nn.Module] = nn.ReLU,
        dilation: int = 1,
        inline: bool = False,
        ratio_gin: float = 0.75,
        ratio_gout: float = 0.75,
        enable_lfu: bool = False,
    ) -> None:
        super().__init__()
        kw = dict(
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            norm_layer=norm_layer,
            activation_layer=activation_layer,
            padding_type=padding_type,
            ratio_gin=ratio_gin,
            ratio_gout=ratio_gout,
            enable_lfu=enable_lfu,
        )
        self.conv1 = FFC_BN_ACT(dim, dim, **kw)
        self.conv2 = FFC_BN_ACT(dim, dim, **kw)
        self.inline = inline

    def forward(self, x: torch.Tensor | FeaturePair) -> torch.Tensor | FeaturePair:
        if self.inline:
            assert isinstance(x, torch.Tensor)
            g = self.conv1.ffc.global_in_num
            x_l, x_g = x[:, : x.shape[1] - g], x[:, x.shape[1] - g :]
        else:
            x_l, x_g = x if isinstance(x, tuple) else (x, 0)
        id_l, id_g = x_l, x_g
        x_l, x_g = self.conv1((x_l, x_g))
        x_l, x_g = self.conv2((x_l, x_g))
        x_l, x_g = id_l + x_l, id_g + x_g
        if self.inline:
            return torch.cat((x_l, x_g), dim=1)
        return x_l, x_g


class ConcatTupleLayer(nn.Module):
    """(local, global) -> one tensor [local, global] along channels (local alone if no global part)."""

    def forward(self, x: FeaturePair) -> torch.Tensor:
        x_l, x_g = x
        if not torch.is_tensor(x_g):
            assert torch.is_tensor(x_l)
            return x_l
        if not torch.is_tensor(x_l):
            return x_g
        return torch.cat((x_l, x_g), dim=1)


__all__ = [
    "FFC",
    "FFC_BN_ACT",
    "ConcatTupleLayer",
    "FFCResnetBlock",
    "FeaturePair",
    "FourierUnit",
    "SpectralTransform",
]
