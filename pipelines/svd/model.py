"""The loaded inbetweening model: SVD components shared by both branches plus the reverse tensors.

The reverse-motion UNet differs from the forward one only in the ``to_v.weight`` and
``to_out.0.weight`` tensors of the temporal self-attention layers (32 in SVD), so one UNet is held
together with those 32 tensors; the attention processors use them for the reverse branch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..errors import PipelineError
from .attention import DualAttentionState, install_dual_attention, reverse_param_names

# CLIP normalisation (OpenAI CLIP / OpenCLIP), used when a folder has no preprocessor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(eq=False)
class InbetweenModel:
    """SVD img2vid components and the reverse-motion tensors.

    unet: ``UNetSpatioTemporalConditionModel`` (the forward model; its temporal self-attention layers
        get :class:`~.attention.DualTemporalAttnProcessor`).
    vae: ``AutoencoderKLTemporalDecoder``.
    image_encoder: ``CLIPVisionModelWithProjection``.
    scheduler_config: config of the ``EulerDiscreteScheduler`` (EDM: Karras sigmas, v-prediction).
    image_mean / image_std: CLIP normalisation of the image encoder's input.
    reverse: the reverse model's tensors by state-dict name (empty: reverse = forward weights).
    placer: if set, :meth:`place` calls ``placer(part, working)`` instead of moving the part itself
        (ComfyUI's model management places the parts in the nodes).
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    scheduler_config: dict
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    source: str = ""
    reverse_source: str = ""
    notes: list[str] = field(default_factory=list)
    state: DualAttentionState = field(default_factory=DualAttentionState)
    placer: Callable[[str, bool], None] | None = None

    def __post_init__(self) -> None:
        for m in (self.unet, self.vae, self.image_encoder):
            m.eval().requires_grad_(False)
        self.layers = install_dual_attention(self.unet, self.state)
        self.param_names = reverse_param_names(self.unet)

    # -- properties ------------------------------------------------------------------------------
    @property
    def reverse(self) -> dict[str, torch.Tensor]:
        return self.state.reverse

    @property
    def has_reverse(self) -> bool:
        return bool(self.state.reverse)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_frames(self) -> int:
        return int(self.unet.config.num_frames)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the tensors a reverse-weight source must provide."""
        sd = self.unet.state_dict()
        return {n: tuple(sd[n].shape) for n in self.param_names}

    # -- reverse tensors -------------------------------------------------------------------------
    def set_reverse_delta(self, delta: dict[str, torch.Tensor], source: str = "") -> None:
        """Reverse tensors = forward tensors + ``delta`` (names/shapes as :meth:`expected_shapes`)."""
        check_reverse_tensors(delta, self.expected_shapes(), source or "reverse weights")
        sd = self.unet.state_dict()
        self.state.reverse.clear()
        for name in self.param_names:
            w = sd[name]
            self.state.reverse[name] = (w.float() + delta[name].to(w.device, torch.float32)).to(w.dtype)
        self.reverse_source = source

    @contextlib.contextmanager
    def reverse_weights_in_unet(self) -> Iterator[torch.nn.Module]:
        """Temporarily swap the reverse tensors into the UNet (it then *is* the reverse model)."""
        params = dict(self.unet.named_parameters())
        saved = {}
        try:
            with torch.no_grad():
                for name, w in self.state.reverse.items():
                    saved[name] = params[name].detach().clone()
                    params[name].copy_(w)
            yield self.unet
        finally:
            with torch.no_grad():
                for name, w in saved.items():
                    params[name].copy_(w)

    # -- placement ------------------------------------------------------------------------------
    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> InbetweenModel:
        kw = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in (self.unet, self.vae, self.image_encoder):
            if _needs_move(m, device, dtype):
                m.to(**kw)
        for k, w in self.state.reverse.items():
            self.state.reverse[k] = w.to(**kw)
        return self

    def place(self, part: str, device: torch.device | str, working: bool = True) -> None:
        """Move one part ('unet' with its reverse tensors, 'vae', 'image_encoder') to ``device``:
        where it works (``working``) or where it waits (the offload device)."""
        if self.placer is not None:
            self.placer(part, working)
            return
        module = getattr(self, part)
        if _needs_move(module, device, None):
            module.to(device)
        if part == "unet":
            for k, w in self.state.reverse.items():
                self.state.reverse[k] = w.to(device)

    def parameter_bytes(self) -> dict[str, int]:
        """Bytes held by each part (the reverse tensors are the only extra over one SVD)."""

        def size(m: torch.nn.Module) -> int:
            return sum(p.numel() * p.element_size() for p in m.parameters())

        return {
            "unet": size(self.unet),
            "reverse": sum(w.numel() * w.element_size() for w in self.state.reverse.values()),
            "vae": size(self.vae),
            "image_encoder": size(self.image_encoder),
        }

    def describe(self) -> str:
        b = self.parameter_bytes()
        rev = f"reverse: {self.reverse_source}" if self.has_reverse else "no reverse weights (TRF)"
        return (
            f"SVD from {self.source} ({self.dtype}, {len(self.layers)} temporal attention layers), {rev}; "
            f"{sum(b.values()) / 2**20:.0f} MiB of weights of which {b['reverse'] / 2**20:.1f} MiB reverse"
        )


def _needs_move(module: torch.nn.Module, device, dtype) -> bool:
    p = next(module.parameters())
    return (device is not None and p.device != torch.device(device)) or (
        dtype is not None and p.dtype != dtype
    )


def check_reverse_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str
) -> None:
    """Raise PipelineError naming ``source`` if names or shapes do not match ``expected``."""
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise PipelineError(
            f"{source}: missing {len(missing)} of the {len(expected)} reverse-motion tensors, e.g. "
            f"{', '.join(missing[:3])}{more}; is this a reverse-motion file for this SVD model?"
        )
    bad = [
        f"{n}: {tuple(tensors[n].shape)} (expected {expected[n]})"
        for n in expected
        if tuple(tensors[n].shape) != tuple(expected[n])
    ]
    if bad:
        raise PipelineError(f"{source}: tensor shapes do not match the SVD UNet: " + "; ".join(bad[:3]))
