"""The two-stream keyframe-guided inpainting generator (SPEC A, Runway's ``GIResNetGenerator``).

Two streams of features run side by side through ``n_blocks`` GI blocks:

* the **LIF** (local image features): a ``(B, C, h, w)`` map at 1/8 resolution, processed by residual
  blocks (FFC or plain conv);
* the **GIF** (global image features): ``M = g x g`` tokens of width ``d``, one per window of a g x g
  grid laid over the LIF, processed by transformer attention.

A block *reads* each window of the LIF into its token (softmax pooling per head), runs two attention
layers over the tokens (the first also attends to the keyframes' tokens in the first ``n_cross``
blocks), runs two residual blocks on the LIF and *writes* each token back into its window (sigmoid
gating per pixel and head). After each of the first ``n_cross`` blocks a **deformable write** adds the
keyframes' LIFs, backward-warped to the target with optical flow and mixed by a softmax across
keyframes, with the flow's forward-backward error as an extra input channel.

Keyframe count is free (0, 1, 2, ... 14 and more) and their order does not matter: nothing depends on
the position of a keyframe in the list. ``self.model`` keeps the reference's single sequential layout,
so the state dict keys are exactly the released checkpoints' (``reference/keys_ours*.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_shape
from ..errors import PipelineError
from ..ffc import FFCResnetBlock
from ..ops import pad_bottom_right, warp

__all__ = [
    "CONFIGS",
    "TwoStreamConfig",
    "TwoStreamGenerator",
    "fourier_position_encoding",
    "local_read",
    "local_write",
    "snap_to_windows",
]


@dataclass(frozen=True)
class TwoStreamConfig:
    """Shape of a two-stream generator. Defaults = the reference's ``ours`` (47,571,139 parameters).

    ngf: width of the first conv; the LIF has ``C = min(max_features, ngf * 2**n_downsampling)``
        channels (512 in the reference).
    n_blocks: GI blocks; n_cross: the first blocks that attend to keyframes and are followed by a
        deformable write.
    block_type: "ffc" (FFC residual blocks, local/global split ``1 - ratio_g`` / ``ratio_g``) or "conv"
        (``x + ReLU(BN(conv3x3(x, groups=num_groups)))``).
    num_latents_sqrt: g, the window grid is g x g, one GIF token per window.
    latent_dim: d, token width; None = C (the reference hard-codes d = 512 = C).
    num_heads: attention heads of the GIF attention layers (not visible in the weights' shapes).
    read_write_heads: heads of the read and write layers.
    pos_bands, pos_max_resolution: Fourier position encoding of the latent init (64 bands, 32).
    """

    input_nc: int = 4
    output_nc: int = 3
    ngf: int = 64
    n_downsampling: int = 3
    n_blocks: int = 4
    block_type: str = "ffc"
    n_cross: int = 2
    num_latents_sqrt: int = 16
    latent_dim: int | None = None
    num_heads: int = 8
    read_write_heads: int = 8
    num_groups: int = 4
    ratio_g: float = 0.75
    max_features: int = 1024
    pos_bands: int = 64
    pos_max_resolution: int = 32

    @property
    def channels(self) -> int:
        """C, the LIF's channels (bottleneck width)."""
        return min(self.max_features, self.ngf * 2**self.n_downsampling)

    @property
    def token_dim(self) -> int:
        """d, the GIF tokens' width."""
        return self.latent_dim if self.latent_dim is not None else self.channels

    @property
    def modulo(self) -> int:
        """Input sides are padded to a multiple of this (the encoder's total stride)."""
        return 2**self.n_downsampling

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> TwoStreamConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)  # type: ignore[arg-type]

    def check(self) -> None:
        def bad(why: str) -> PipelineError:
            return PipelineError(f"two-stream config: {why}")

        if self.block_type not in ("ffc", "conv"):
            raise bad(f"block_type must be 'ffc' or 'conv', got {self.block_type!r}")
        if self.n_blocks < 1 or not 1 <= self.n_cross:
            raise bad(f"need n_blocks >= 1 and n_cross >= 1, got {self.n_blocks}, {self.n_cross}")
        c, d = self.channels, self.token_dim
        if d % self.num_heads or d % self.read_write_heads or c % self.read_write_heads:
            raise bad(f"widths C={c}, d={d} must be divisible by the heads")
        if self.block_type == "conv" and c % self.num_groups:
            raise bad(f"C={c} must be divisible by num_groups={self.num_groups}")


# The reference configs (``configs/*.yaml`` of runwayml/guided-inpainting) and a tiny one for tests.
CONFIGS: dict[str, TwoStreamConfig] = {
    "ours": TwoStreamConfig(),
    "ours_big": TwoStreamConfig(n_blocks=12),
    "ours_no_ffc": TwoStreamConfig(n_blocks=6, block_type="conv"),
    # C = 64, d = 32, 4 x 4 windows: a few hundred thousand parameters, runs in milliseconds on CPU.
    "tiny": TwoStreamConfig(ngf=8, n_blocks=3, num_latents_sqrt=4, latent_dim=32),
}


# --------------------------------------------------------------------------------------------------
# Functional pieces (also used by the tests to check the maths)
# --------------------------------------------------------------------------------------------------


def fourier_position_encoding(
    height: int, width: int, num_bands: int = 64, max_resolution: int = 32, device: torch.device | None = None
) -> torch.Tensor:
    """Perceiver's Fourier position encoding of an ``height x width`` grid, always in float32.

    Returns ``(2 + 4 * num_bands, height, width)``: channels ``[y, x, sin(pi f y)..., sin(pi f x)...,
    cos(pi f y)..., cos(pi f x)...]`` with positions ``linspace(-1, 1)`` per axis (meshgrid "ij") and
    frequencies ``f = linspace(1, max_resolution / 2, num_bands)``.
    """
    ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float32, device=device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float32, device=device)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (hw, 2) [y, x]
    freqs = torch.linspace(1.0, max_resolution / 2, num_bands, dtype=torch.float32, device=device)
    per_pos = (pos[:, :, None] * freqs[None, None, :]).reshape(-1, 2 * num_bands)  # [y*f..., x*f...]
    enc = torch.cat([pos, torch.sin(np.pi * per_pos), torch.cos(np.pi * per_pos)], dim=-1)
    return enc.t().reshape(-1, height, width)


def snap_to_windows(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a map ``(B, C, h, w)`` so that both sides are multiples of ``grid`` (SPEC A).

    As the reference: unchanged when both already are; else each side becomes ``grid * round(side /
    grid)`` (Python rounding, half to even), bilinear with align_corners=True. Unlike the reference, a
    side that would round to 0 (h < grid / 2) becomes ``grid`` instead of crashing.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % grid == 0 and w % grid == 0:
        return x
    size = (grid * max(1, round(h / grid)), grid * max(1, round(w / grid)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def local_read(logits: torch.Tensor, values: torch.Tensor, grid: int) -> torch.Tensor:
    """Window-local softmax pooling: one vector per window (LIF -> GIF).

    logits ``(B, heads, h, w)``, values ``(B, heads * dh, h, w)`` (head-major channels), both snapped
    to the ``grid x grid`` windows. For window n and head k: ``out[n, k] = sum_p softmax_p(logits[k,
    p]) values[k, p]`` over the window's pixels p. Returns ``(B, grid * grid, heads * dh)``, windows in
    row-major order.
    """
    logits, values = snap_to_windows(logits, grid), snap_to_windows(values, grid)
    b, heads, h, w = logits.shape
    dh = values.shape[1] // heads
    ph, pw = h // grid, w // grid
    attn = logits.reshape(b, heads, grid, ph, grid, pw).permute(0, 1, 2, 4, 3, 5)
    attn = attn.reshape(b, heads, grid * grid, ph * pw).softmax(dim=-1)
    vals = values.reshape(b, heads, dh, grid, ph, grid, pw).permute(0, 1, 3, 5, 4, 6, 2)
    vals = vals.reshape(b, heads, grid * grid, ph * pw, dh)
    out = torch.einsum("bknp,bknpd->bnkd", attn, vals)
    return out.reshape(b, grid * grid, heads * dh)


def local_write(logits: torch.Tensor, tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Window-local sigmoid gating: each pixel takes its window's token (GIF -> LIF).

    logits ``(B, heads, h, w)`` (snapped to the windows, then resized back at the end); tokens
    ``(B, grid * grid, heads * dh)``. ``out[k * dh + c, p] = sigmoid(logits[k, p]) * tokens[window(p),
    k * dh + c]``. Returns ``(B, heads * dh, h, w)``.
    """
    h0, w0 = int(logits.shape[-2]), int(logits.shape[-1])
    logits = snap_to_windows(logits, grid)
    b, heads, h, w = logits.shape
    dh = tokens.shape[-1] // heads
    gate = torch.sigmoid(logits).reshape(b, heads, 1, grid, h // grid, grid, w // grid)
    vals = tokens.reshape(b, grid, grid, heads, dh).permute(0, 3, 4, 1, 2)[..., :, None, :, None]
    out = (gate * vals).reshape(b, heads * dh, h, w)
    if (h, w) != (h0, w0):
        out = F.interpolate(out, size=(h0, w0), mode="bilinear", align_corners=True)
    return out


# --------------------------------------------------------------------------------------------------
# Layers (attribute names = the reference's, for the checkpoint keys)
# --------------------------------------------------------------------------------------------------


class ConvNormAct(nn.Module):
    """conv (reflect padding, no bias) -> BatchNorm -> ReLU: the encoder's layers."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False, padding_mode="reflect")
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualConvNormAct(ConvNormAct):
    """``x + ReLU(BN(conv3x3(x, groups)))``: the LIF block of ``ours_no_ffc``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.conv = nn.Conv2d(
            channels, channels, 3, padding=1, groups=groups, bias=False, padding_mode="reflect"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


class MLP(nn.Module):
    """dense -> GELU -> dense, hidden width = input width (widening factor 1)."""

    def __init__(self, dim: int, conv: bool = False) -> None:
        super().__init__()
        layer = (lambda a, b: nn.Conv2d(a, b, 1)) if conv else nn.Linear
        self.dense1 = layer(dim, dim)
        self.act = nn.GELU()
        self.dense2 = layer(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(self.act(self.dense1(x)))


class MultiHeadAttention(nn.Module):
    """Pre-LayerNorm multi-head attention over tokens; extra keys/values can be appended.

    x ``(B, N, d)`` -> ``(B, N, d)`` (heads concatenated, before the output projection).
    ``extra_kv``: keys and values ``(B, heads, N', dh)`` appended after the tokens' own (the
    keyframes' in the cross-frame blocks). With ``return_kv`` the tokens' own keys and values are
    returned too.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.layernorm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_kv: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.layernorm1(x)
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        own = (k, v)
        if extra_kv is not None:
            k = torch.cat((k, extra_kv[0].to(k.dtype)), dim=2)
            v = torch.cat((v, extra_kv[1].to(v.dtype)), dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = scores.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return (out, own) if return_kv else out


class AttentionLayer(nn.Module):
    """``G += Linear(MHA(LN(G)))``, then ``G += MLP(LN(G))``: one GIF attention layer."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads)
        self.projection = nn.Linear(dim, dim)
        self.ln_premlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(
        self,
        x: torch.Tensor,
        extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_kv: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out = self.attn(x, extra_kv=extra_kv, return_kv=return_kv)
        kv = None
        if return_kv:
            out, kv = out
        x = x + self.projection(out)
        x = x + self.mlp(self.ln_premlp(x))
        return (x, kv) if return_kv else x


class ReadLayer(nn.Module):
    """LIF -> GIF: ``G += Linear(LN(local_read(logits, values)))``, then ``G += MLP(LN(G))``."""

    def __init__(self, token_dim: int, channels: int, heads: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.ln1 = nn.LayerNorm(token_dim)
        self.ln2 = nn.LayerNorm(token_dim)
        self.mlp = MLP(token_dim)
        self.to_logits = nn.Conv2d(channels, heads, 1)
        self.to_values = nn.Conv2d(channels, token_dim, 1)
        self.projection = nn.Linear(token_dim, token_dim)

    def forward(self, tokens: torch.Tensor, lif: torch.Tensor) -> torch.Tensor:
        read = local_read(self.to_logits(lif), self.to_values(lif), self.grid)
        tokens = tokens + self.projection(self.ln1(read))
        return tokens + self.mlp(self.ln2(tokens))


class WriteLayer(nn.Module):
    """GIF -> LIF: ``LIF += Conv1x1(BN(local_write(logits, values)))``, then ``LIF += MLPConv(BN(LIF))``.

    The two norms are BatchNorm2d although named ``ln1``/``ln2`` (as the reference).
    """

    def __init__(self, channels: int, token_dim: int, heads: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.ln1 = nn.BatchNorm2d(channels)
        self.ln2 = nn.BatchNorm2d(channels)
        self.mlp = MLP(channels, conv=True)
        self.to_logits = nn.Conv2d(channels, heads, 1)
        self.to_values = nn.Linear(token_dim, channels)
        self.projection = nn.Conv2d(channels, channels, 1)

    def forward(self, lif: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        written = local_write(self.to_logits(lif), self.to_values(tokens), self.grid)
        lif = lif + self.projection(self.ln1(written))
        return lif + self.mlp(self.ln2(lif))


class GIBlock(nn.Module):
    """read; attention 1 (+ keyframe keys/values); attention 2; two LIF residual blocks; write."""

    def __init__(self, cfg: TwoStreamConfig) -> None:
        super().__init__()
        c, d, g = cfg.channels, cfg.token_dim, cfg.num_latents_sqrt
        self.read = ReadLayer(d, c, cfg.read_write_heads, g)
        self.write = WriteLayer(c, d, cfg.read_write_heads, g)
        self.attn1 = AttentionLayer(d, cfg.num_heads)
        self.attn2 = AttentionLayer(d, cfg.num_heads)
        self.block1 = _lif_block(cfg)
        self.block2 = _lif_block(cfg)

    def forward(
        self,
        lif: torch.Tensor,
        tokens: torch.Tensor,
        extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_kv: bool = False,
    ):
        """lif ``(B, C, h, w)``, tokens ``(B, M, d)`` -> the same, plus attention 1's own keys and
        values ``(B, heads, M, dh)`` with ``return_kv``."""
        tokens = self.read(tokens, lif)
        out = self.attn1(tokens, extra_kv=extra_kv, return_kv=return_kv)
        kv = None
        if return_kv:
            out, kv = out
        tokens = self.attn2(out)
        lif = self.block2(self.block1(lif))
        lif = self.write(lif, tokens)
        return (lif, tokens, kv) if return_kv else (lif, tokens)


def _lif_block(cfg: TwoStreamConfig) -> nn.Module:
    if cfg.block_type == "ffc":
        return FFCResnetBlock(
            cfg.channels, inline=True, ratio_gin=cfg.ratio_g, ratio_gout=cfg.ratio_g, enable_lfu=False
        )
    return ResidualConvNormAct(cfg.channels, cfg.num_groups)


class LatentInit(nn.Module):
    """LIF ``(B, C, h, w)`` -> ``Conv1x1([LIF, position encoding])`` and the learned tokens ``(B, M, d)``."""

    def __init__(self, cfg: TwoStreamConfig) -> None:
        super().__init__()
        self.bands, self.max_res = cfg.pos_bands, cfg.pos_max_resolution
        self.latents = nn.Parameter(torch.randn(cfg.num_latents_sqrt**2, cfg.token_dim))
        self.project = nn.Conv2d(cfg.channels + 2 + 4 * cfg.pos_bands, cfg.channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        # Rebuilt every call in float32 (not a buffer: it depends on the size), cast like x.
        pos = fourier_position_encoding(h, w, self.bands, self.max_res, device=x.device)
        x = self.project(torch.cat((x, pos.to(x.dtype)[None].expand(b, -1, -1, -1)), dim=1))
        return x, self.latents.to(x.dtype)[None].expand(b, -1, -1)


class DropLatent(nn.Module):
    """(LIF, tokens) -> LIF. No weights; keeps the reference's layer indices."""

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return x[0]


class DeformableWrite(nn.Module):
    """Adds the keyframes' LIFs, warped to the target by flow, to the target's LIF.

    ``q = Conv1x1([warped, err, x])``, ``v = Conv1x1([warped, err])``,
    ``x += sum_t softmax_t(q) * v`` (softmax across keyframes, per channel and pixel).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(2 * channels + 1, channels, 1)
        self.v = nn.Conv2d(channels + 1, channels, 1)

    def forward(
        self, x: torch.Tensor, keys: torch.Tensor, flows: torch.Tensor, flow_errors: torch.Tensor
    ) -> torch.Tensor:
        """x ``(B, C, h, w)``; keys ``(B, T, C, h, w)``; flows ``(B, T, 2, H, W)`` target -> keyframe in
        pixels of H x W; flow_errors ``(B, T, 1, H, W)``. Returns ``(B, C, h, w)``; T = 0 returns x."""
        b, t, c, h, w = keys.shape
        if t == 0:
            return x
        # Flows at the frame's resolution are resized to the features' (the reference's
        # ``resized_flow_sample``); sampled in float32, cast back.
        warped = warp(keys.reshape(b * t, c, h, w), flows.reshape(b * t, *flows.shape[2:])).to(keys.dtype)
        err = flow_errors.reshape(b * t, *flow_errors.shape[2:]).to(x.dtype)
        if tuple(err.shape[-2:]) != (h, w):
            err = F.interpolate(err, size=(h, w), mode="bilinear", align_corners=True)
        xr = x[:, None].expand(b, t, c, h, w).reshape(b * t, c, h, w)
        src = torch.cat((warped, err), dim=1)
        q = self.q(torch.cat((src, xr), dim=1)).reshape(b, t, c, h, w)
        v = self.v(src).reshape(b, t, c, h, w)
        return x + (q.softmax(dim=1) * v).sum(dim=1)


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


class TwoStreamGenerator(nn.Module):
    """The two-stream generator.

    Layout of ``self.model`` (indices for ``ours``; they shift with n_downsampling and n_blocks):
    0 reflection pad 3; 1 ConvNormAct 7x7 input_nc -> ngf; 2..1+n_down stride-2 ConvNormAct 3x3;
    then the latent init; n_blocks GI blocks; DropLatent; n_down x (ConvTranspose2d, BatchNorm2d, ReLU);
    reflection pad 3; conv 7x7 ngf -> output_nc; sigmoid. ``deformable_writes`` holds one
    :class:`DeformableWrite` per cross-frame block.

    Also implements the refinement protocol of ``refine/multiscale.py`` (``front``/``rear``) without
    keyframes.
    """

    def __init__(self, config: TwoStreamConfig | str | None = None, **overrides: object) -> None:
        super().__init__()
        if isinstance(config, str):
            if config not in CONFIGS:
                raise PipelineError(f"config: unknown two-stream config '{config}'; one of {list(CONFIGS)}")
            config = CONFIGS[config]
        cfg = replace(config or TwoStreamConfig(), **overrides)  # type: ignore[arg-type]
        cfg.check()
        self.config = cfg
        ngf, nd, mf, c = cfg.ngf, cfg.n_downsampling, cfg.max_features, cfg.channels

        layers: list[nn.Module] = [nn.ReflectionPad2d(3), ConvNormAct(cfg.input_nc, ngf, 7)]
        for i in range(nd):
            layers.append(ConvNormAct(min(mf, ngf * 2**i), min(mf, ngf * 2 ** (i + 1)), 3, 2, 1))
        self._n_encoder = len(layers)
        layers.append(LatentInit(cfg))
        layers += [GIBlock(cfg) for _ in range(cfg.n_blocks)]
        layers.append(DropLatent())
        self._decoder_start = len(layers)
        for i in range(nd):
            mult = 2 ** (nd - i)
            cin, cout = min(mf, ngf * mult), min(mf, ngf * mult // 2)
            layers += [
                nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, cfg.output_nc, kernel_size=7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)
        self.deformable_writes = nn.ModuleList(
            DeformableWrite(c) for _ in range(min(cfg.n_cross, cfg.n_blocks))
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # As the reference: normal(0, 0.02) for Linear/Conv2d (not ConvTranspose2d) and the tokens.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, LatentInit):
            module.latents.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    # -- pieces -------------------------------------------------------------------------------------

    @property
    def blocks(self) -> Sequence[GIBlock]:
        s = self._n_encoder + 1
        return self.model[s : s + self.config.n_blocks]  # type: ignore[return-value]

    def _dtype(self) -> torch.dtype:
        return self.model[1].conv.weight.dtype

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, input_nc, H, W)`` (H, W multiples of 8) -> LIF ``(N, C, H/8, W/8)``, tokens ``(N, M, d)``."""
        x = self.model[: self._n_encoder](x.to(self._dtype()))
        return self.model[self._n_encoder](x)

    def decode(self, lif: torch.Tensor) -> torch.Tensor:
        """LIF ``(N, C, h, w)`` -> image ``(N, output_nc, 8h, 8w)`` in [0, 1]."""
        return self.model[self._decoder_start :](lif)

    # -- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        target: torch.Tensor,
        keyframes: torch.Tensor | None = None,
        flows: torch.Tensor | None = None,
        flow_errors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inpaint the target guided by keyframes.

        target: ``(B, input_nc, H, W)`` = ``[image * (1 - mask), mask]``, image in [0, 1], 1 = hole.
        keyframes: ``(B, T, input_nc, H, W)`` built the same way with each keyframe's own mask (an
            edited keyframe has an empty mask); T >= 0, any order. None = no keyframes.
        flows: ``(B, T, 2, H, W)`` target -> keyframe backward-warping flow in pixels (x, y): the
            target's pixel p is found at p + flow(p) in the keyframe. None = zero flow (the
            reference's "identity" ablation).
        flow_errors: ``(B, T, 1, H, W)`` forward-backward error of those flows (an input channel of
            the deformable writes). None = zeros.

        Returns the raw prediction ``(B, output_nc, H, W)`` in [0, 1] (not composited; see
        :meth:`inpaint`). H and W need not be multiples of 8: inputs are reflect-padded and the
        output cropped (sides below 16 are padded to 16). Pass flows and errors by keyword (the
        reference's third positional argument is an attention flag).
        """
        b, _, H, W = target.shape
        if keyframes is None:
            keyframes = target.new_zeros((b, 0, *target.shape[1:]))
        known = {"B": b, "C": int(target.shape[1]), "H": H, "W": W}
        check_shape(keyframes, "B,T,C,H,W", "keyframes", known=known)
        t = keyframes.shape[1]
        if flows is None:
            flows = target.new_zeros((b, t, 2, H, W), dtype=torch.float32)
        if flow_errors is None:
            flow_errors = target.new_zeros((b, t, 1, H, W), dtype=torch.float32)
        if flows.shape[:3] != (b, t, 2) or flow_errors.shape[:3] != (b, t, 1):
            raise PipelineError(
                f"flows: expected (B, T, 2, ., .) and (B, T, 1, ., .) for {t} keyframes, got "
                f"{tuple(flows.shape)} and {tuple(flow_errors.shape)}"
            )

        # Pad to multiples of the encoder's stride, and to at least 2 feature pixels per side (the
        # reflect-padded 3x3 convolutions need 2; the reference crashes below that).
        m = self.config.modulo
        ph, pw = max(H + (-H) % m, 2 * m) - H, max(W + (-W) % m, 2 * m) - W
        frames = torch.cat((target[:, None], keyframes), dim=1).flatten(0, 1)  # (B*(T+1), C, H, W)
        if ph or pw:
            frames = pad_bottom_right(frames, ph, pw)
            flows = pad_bottom_right(flows.flatten(0, 1), ph, pw, "replicate").unflatten(0, (b, t))
            flow_errors = pad_bottom_right(flow_errors.flatten(0, 1), ph, pw, "replicate").unflatten(
                0, (b, t)
            )

        # Target and keyframes through the encoder together (as the reference: shared BN batch).
        lif, tokens = self.encode(frames)
        lif, tokens = lif.unflatten(0, (b, t + 1)), tokens.unflatten(0, (b, t + 1))
        x_lif, x_tok = lif[:, 0], tokens[:, 0]
        k_lif, k_tok = lif[:, 1:].flatten(0, 1), tokens[:, 1:].flatten(0, 1)

        n_cross = min(self.config.n_cross, self.config.n_blocks)
        key_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        key_lifs: list[torch.Tensor] = []
        for block in self.blocks[:n_cross]:
            if t == 0:
                key_kv.append(None)
                key_lifs.append(k_lif.unflatten(0, (b, 0)))
                continue
            # Keyframes alone, each independently; record attention 1's keys/values and the LIF.
            k_lif, k_tok, (kk, kv) = block(k_lif, k_tok, return_kv=True)
            # (B*T, heads, M, dh) -> (B, heads, T*M, dh): all keyframes' tokens as one sequence.
            kk, kv = (a.unflatten(0, (b, t)).transpose(1, 2).flatten(2, 3) for a in (kk, kv))
            key_kv.append((kk, kv))
            key_lifs.append(k_lif.unflatten(0, (b, t)))

        for i, block in enumerate(self.blocks):
            cross = i < n_cross
            x_lif, x_tok = block(x_lif, x_tok, extra_kv=key_kv[i] if cross else None)
            if cross:
                x_lif = self.deformable_writes[i](x_lif, key_lifs[i], flows, flow_errors)

        out = self.decode(x_lif)
        return out[..., :H, :W]

    @torch.no_grad()
    def inpaint(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        key_images: torch.Tensor | None = None,
        key_masks: torch.Tensor | None = None,
        flows: torch.Tensor | None = None,
        flow_errors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Composited inpainting: ``m * pred + (1 - m) * image``.

        image ``(B, 3, H, W)`` in [0, 1]; mask ``(B, 1, H, W)`` 1 = hole; key_images ``(B, T, 3, H,
        W)``, key_masks ``(B, T, 1, H, W)``; flows/flow_errors as :meth:`forward`. Returns ``(B, 3, H, W)``
        float32; pixels outside the mask are the input's.
        """
        image, mask = image.float(), mask.float()
        target = torch.cat((image * (1 - mask), mask), dim=1)
        keys = None
        if key_images is not None:
            if key_masks is None:
                key_masks = torch.zeros_like(key_images[:, :, :1])
            km = key_masks.float()
            keys = torch.cat((key_images.float() * (1 - km), km), dim=2)
        dt = self._dtype()
        pred = self(
            target.to(dt), None if keys is None else keys.to(dt), flows=flows, flow_errors=flow_errors
        ).float()
        return mask * pred + (1 - mask) * image

    # -- refinement protocol (refine/multiscale.py), single image, no keyframes ----------------------

    def front(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor]:
        """image ``(B, 3, H, W)``, mask ``(B, 1, H, W)`` (H, W multiples of 8) -> ``(LIF,)`` after the
        latent init (the features the refinement optimises)."""
        lif, _ = self.encode(torch.cat((image * (1 - mask), mask), dim=1))
        return (lif,)

    def rear(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(LIF,)`` -> image ``(B, 3, H, W)``: the GI blocks without keyframes, then the decoder."""
        lif = features[0].to(self._dtype())
        latent_init: LatentInit = self.model[self._n_encoder]  # type: ignore[assignment]
        tokens = latent_init.latents.to(lif.dtype)[None].expand(lif.shape[0], -1, -1)
        for block in self.blocks:
            lif, tokens = block(lif, tokens)
        return self.decode(lif)
