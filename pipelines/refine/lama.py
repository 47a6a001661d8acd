"""Big-LaMa's generator (``FFCResNetGenerator``) with its exact layer layout, and its loaders.

The layer indices of ``self.model`` are the reference's, so the state dict keys are exactly those of
``big-lama`` (``model.1.ffc.convl2l.weight`` ... ``model.34.bias``; SPEC B,
``reference/keys_big-lama.json``). Weights load from every format users keep:

* the Lightning checkpoint ``big-lama/models/best.ckpt`` (``state_dict`` with ``generator.`` keys;
  ``discriminator.`` and loss-network keys are ignored), read with ``torch.load(weights_only=True)``;
* generator-only safetensors, with or without the ``generator.`` prefix;
* the TorchScript ``big-lama.pt`` of IOPaint / comfyui-inpaint-nodes: only its state dict is read (the
  TorchScript graph can be neither split nor back-propagated through, and is never run).

The generator implements the refinement protocol of :mod:`.multiscale`: ``front(image, mask)`` = layers
0..(2 + n_downsampling) (reflection pad, 7x7 FFC, the downsamplings) -> a (local, global) pair at
1/8 resolution; ``rear(features)`` = the residual blocks, concat, upsampling, output conv, sigmoid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import PipelineError
from ..ffc import FFC_BN_ACT, ConcatTupleLayer, FFCResnetBlock
from ..ops import pad_to_modulo
from ..weights import read_weights, state_dict_mismatch

__all__ = [
    "FFCResNetGenerator",
    "LamaConfig",
    "detect_lama_config",
    "load_lama",
    "strip_to_generator",
]

# Key by which LaMa generators are recognised (spandrel uses ``model.1.bn_l.running_mean``).
_ANCHOR = "model.1.ffc.convl2l.weight"


@dataclass(frozen=True)
class LamaConfig:
    """Shape of an FFCResNetGenerator; the defaults are Big-LaMa's (50,975,875 parameters)."""

    input_nc: int = 4
    output_nc: int = 3
    ngf: int = 64
    n_downsampling: int = 3
    n_blocks: int = 18
    max_features: int = 1024
    ratio_g: float = 0.75  # global share of the residual blocks' channels (and the last downsampling's)


class FFCResNetGenerator(nn.Module):
    """LaMa's generator: input (B, 4, H, W) = ``[image * (1 - mask), mask]``, output (B, 3, H, W) in
    [0, 1] (sigmoid). H and W must be multiples of 2**n_downsampling (8 for Big-LaMa).

    Layout of ``self.model`` (Big-LaMa indices): 0 reflection pad 3; 1 FFC 7x7 input_nc->ngf (all
    local); 2..1+n_down stride-2 FFC 3x3 downsamplings, the last one splitting its output
    ``ratio_g`` global; then n_blocks FFCResnetBlocks; ConcatTupleLayer; n_down x (ConvTranspose2d,
    BatchNorm2d, ReLU); reflection pad 3; conv 7x7 ngf->output_nc; sigmoid.
    """

    def __init__(self, config: LamaConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = LamaConfig(**{**(config.__dict__ if config else {}), **overrides})  # type: ignore[arg-type]
        self.config = cfg
        ngf, nd, mf = cfg.ngf, cfg.n_downsampling, cfg.max_features
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            FFC_BN_ACT(
                cfg.input_nc,
                ngf,
                kernel_size=7,
                padding=0,
                ratio_gin=0,
                ratio_gout=0,
                activation_layer=nn.ReLU,
                enable_lfu=False,
            ),
        ]
        for i in range(nd):
            mult = 2**i
            layers.append(
                FFC_BN_ACT(
                    min(mf, ngf * mult),
                    min(mf, ngf * mult * 2),
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    ratio_gin=0,
                    # The reference sets the last downsampling's ratio_gout to the blocks' ratio_gin.
                    ratio_gout=cfg.ratio_g if i == nd - 1 else 0,
                    activation_layer=nn.ReLU,
                    enable_lfu=False,
                )
            )
        dim = min(mf, ngf * 2**nd)
        for _ in range(cfg.n_blocks):
            layers.append(
                FFCResnetBlock(dim, ratio_gin=cfg.ratio_g, ratio_gout=cfg.ratio_g, enable_lfu=False)
            )
        layers.append(ConcatTupleLayer())
        for i in range(nd):
            mult = 2 ** (nd - i)
            cout = min(mf, int(ngf * mult / 2))
            layers += [
                nn.ConvTranspose2d(
                    min(mf, ngf * mult), cout, kernel_size=3, stride=2, padding=1, output_padding=1
                ),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, cfg.output_nc, kernel_size=7, padding=0),
            nn.Sigmoid(),
        ]
        self.model = nn.Sequential(*layers)
        self.n_front = 2 + nd  # index of the first residual block = length of the front

    @property
    def modulo(self) -> int:
        return 2**self.config.n_downsampling

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, input_nc, H, W) -> (B, output_nc, H, W); the reference generator's forward."""
        return self.model(x)

    # ------------------------------------------------------------------ refinement protocol
    def front(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1], mask (B, 1, H, W) 1 = hole; H, W multiples of ``modulo``.

        Returns the (local, global) pair after the downsamplings: (B, c_l, H/8, W/8), (B, c_g, H/8, W/8)
        (128 and 384 channels for Big-LaMa), in the weights' dtype.
        """
        dt = self._dtype()
        image, mask = image.to(dt), mask.to(dt)
        x = torch.cat([image * (1 - mask), mask], dim=1)
        z_l, z_g = self.model[: self.n_front](x)
        return z_l, z_g  # type: ignore[return-value]

    def rear(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(local, global) pair -> image (B, 3, H, W) in [0, 1]; differentiable in the features."""
        dt = self._dtype()
        x = tuple(f.to(dt) for f in features)
        return self.model[self.n_front :](x)

    def rear_stages(self) -> list[Callable]:
        """The rear as a chain of callables (each residual block, then the decoder), for activation
        checkpointing: ``rear(f) == stages[-1](...stages[0](tuple(f)))``."""
        dt_stage = _CastStage(self)
        blocks = list(self.model[self.n_front : self.n_front + self.config.n_blocks])
        tail = self.model[self.n_front + self.config.n_blocks :]
        return [dt_stage, *blocks, tail]

    def inpaint(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One plain LaMa pass at the input size: pad (reflect) to ``modulo``, run, composite, crop.

        image (B, 3, H, W) in [0, 1], mask (B, 1, H, W) (> 0 = hole). Returns (B, 3, H, W) float32 whose
        known pixels are the input's.
        """
        h, w = image.shape[-2:]
        m = (mask > 0).to(image.dtype)
        ip, mp = pad_to_modulo(image, self.modulo), pad_to_modulo(m, self.modulo)
        pred = self.rear(self.front(ip, mp))[..., :h, :w].float()
        return m * pred + (1 - m) * image


class _CastStage:
    """First checkpointing stage: features to the weights' dtype (what ``rear`` does first)."""

    def __init__(self, gen: FFCResNetGenerator) -> None:
        self.gen = gen

    def __call__(self, x: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        dt = self.gen._dtype()
        return tuple(f.to(dt) for f in x)


# --------------------------------------------------------------------------------------------------
# Reading weight files
# --------------------------------------------------------------------------------------------------


def strip_to_generator(sd: dict[str, torch.Tensor], name: str = "file") -> dict[str, torch.Tensor]:
    """The LaMa generator's entries of ``sd`` with their prefix removed (``generator.``, ``module.``,
    a TorchScript wrapper's attribute name ... or none); other entries are dropped."""
    prefixes = sorted({k[: -len(_ANCHOR)] for k in sd if k.endswith(_ANCHOR)}, key=len)
    if not prefixes:
        first = ", ".join(list(sd)[:5])
        raise PipelineError(
            f"model: '{name}' is not a LaMa generator: no '{_ANCHOR}' entry (first keys: {first})"
        )
    prefix = "generator." if "generator." in prefixes else prefixes[0]
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and "." in k[len(prefix) :]}


def _block_indices(sd: dict[str, torch.Tensor], suffix: str) -> list[int]:
    out = []
    for k in sd:
        parts = k.split(".")
        if len(parts) > 2 and parts[0] == "model" and parts[1].isdigit() and k.endswith(suffix):
            rest = ".".join(parts[2:])
            if rest == suffix.lstrip("."):
                out.append(int(parts[1]))
    return sorted(out)


def detect_lama_config(sd: dict[str, torch.Tensor], name: str = "file") -> LamaConfig:
    """Generator shape from a (prefix-free) state dict: ngf and input channels from the first conv,
    downsamplings and residual blocks from the layer indices, the global ratio from a block."""
    try:
        w0 = sd["model.1.ffc.convl2l.weight"]
        ngf, input_nc = int(w0.shape[0]), int(w0.shape[1])
        downs = [i for i in _block_indices(sd, ".ffc.convl2l.weight") if i >= 2]
        blocks = _block_indices(sd, ".conv1.ffc.convl2l.weight")
        if not blocks:
            raise KeyError("no residual blocks (model.N.conv1.ffc.convl2l.weight)")
        first = blocks[0]
        n_down = len([i for i in downs if i < first])
        if n_down != first - 2 or blocks != list(range(first, first + len(blocks))):
            raise KeyError(f"layer indices out of the LaMa layout (downsamplings {downs}, blocks {blocks})")
        c_l = int(sd[f"model.{first}.conv1.ffc.convl2l.weight"].shape[0])
        c_g = int(sd[f"model.{first}.conv1.ffc.convl2g.weight"].shape[0])
        dim = c_l + c_g
        out_w = sd[f"model.{first + len(blocks) + 1 + 3 * n_down + 1}.weight"]
    except KeyError as e:
        raise PipelineError(f"model: '{name}' does not have the LaMa generator's layout: {e}") from e
    return LamaConfig(
        input_nc=input_nc,
        output_nc=int(out_w.shape[0]),
        ngf=ngf,
        n_downsampling=n_down,
        n_blocks=len(blocks),
        max_features=max(dim, 1) if dim < ngf * 2**n_down else 1024,
        ratio_g=c_g / dim,
    )


def load_lama(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> FFCResNetGenerator:
    """A LaMa generator (any width/depth) from a Lightning ckpt, safetensors or TorchScript file.

    Returned in eval mode with ``requires_grad=False`` weights (refinement optimises features only).
    Raises PipelineError naming the file and the first missing/unexpected/mis-shaped entries.
    """
    name = Path(path).name
    # Read and built outside inference mode so the weights can take part in autograd graphs (ComfyUI
    # runs loader nodes under torch.inference_mode()); built on the meta device and given the file's
    # tensors, so 51M weights are never randomly initialised first.
    with torch.inference_mode(False):
        sd = strip_to_generator(read_weights(path, "model")[0], name)
        cfg = detect_lama_config(sd, name)
        with torch.device("meta"):
            model = FFCResNetGenerator(cfg)
        expected = model.state_dict()
        parts = state_dict_mismatch(expected, sd, ignore_missing=("num_batches_tracked",))
        if parts:
            raise PipelineError(f"model: '{name}' is not a complete LaMa generator: " + "; ".join(parts))
        # Some exports drop BatchNorm's step counters: the value PyTorch would have started with.
        full = {k: sd[k] if k in sd else torch.zeros((), dtype=torch.long) for k in expected}
        model.load_state_dict(full, strict=True, assign=True)
        model.eval().requires_grad_(False)
        model.to(device=device, dtype=dtype)
    return model
