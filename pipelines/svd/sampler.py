"""Dual-directional sampling between two keyframes with SVD (SPEC C).

Per denoising step at sigma_i (one "fused step"):

1. forward branch: eps_f = UNet(z, first keyframe), classifier-free guidance per frame;
2. reverse branch: eps_r = flip_time(UNet'(flip_time(z), last keyframe)), where UNet' is the reverse
   model using the forward maps rotated 180 degrees (see :mod:`.attention`);
3. eps = w * eps_f + (1 - w) * eps_r, w = 0.5 ("average") or linspace(1, 0) per frame ("weighted");
   one EDM Euler step through diffusers' ``EulerDiscreteScheduler``;
4. noise re-injection: for the first ``noise_injection_ratio`` of the steps, ``noise_injection_steps``
   times: add N(0, sigma_i^2 - sigma_{i+1}^2) noise to bring z back to sigma_i and redo the step.

``mode="fused"`` runs both branches (and CFG) as one batched UNet call per fused step;
``mode="reference"`` runs one UNet call per branch with the maps stored between them, as the reference
implementation does. Both give the same result.

Guidance follows the reference: each branch's per-frame scale is ``linspace(min, max, F)`` in its own
time; with "average" fusion both branches use the symmetric mean of that ramp and its reverse (constant
2.0 for 1..3), with "weighted" fusion each branch keeps its ramp.

Conditioning and noise follow diffusers' ``StableVideoDiffusionPipeline``: CLIP embeddings of the
keyframe (resized to 224 with antialiasing), VAE latents (``latent_dist.mode()``) of the keyframe plus
``noise_aug_strength`` noise (the same noise for both keyframes), added time ids
[fps - 1, motion_bucket_id, noise_aug_strength]; the random draws come from one CPU generator seeded
with ``seed`` in the pipeline's order (augmentation noise, initial latents, then re-injections), so the
forward branch alone reproduces the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..checks import check_finite_result
from ..errors import PipelineError
from ..progress import ProgressFn, report
from .compat import set_step_index
from .conditioning import check_size, clip_embedding, image_to_tensor, vae_latent
from .model import InbetweenModel

FUSIONS = ("average", "weighted")
MODES = ("fused", "reference")
BRANCHES = ("both", "forward", "reverse")


@dataclass
class InbetweenSettings:
    """Sampling settings; defaults are the reference's (SPEC C).

    num_frames: frames per segment including both keyframes; 0 = the UNet's (25 for xt).
    branches: "both" (inbetweening); "forward" = plain SVD from the first keyframe (the diffusers
        pipeline); "reverse" = the reverse branch alone, from the last keyframe.
    rotate_maps: False makes the reverse branch compute its own maps (with reverse = forward weights
        that is plain two-run averaging, "TRF").
    """

    num_frames: int = 0
    steps: int = 50
    seed: int = 0
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    fusion: str = "average"
    noise_injection_ratio: float = 0.5
    noise_injection_steps: int = 5
    motion_bucket_id: int = 127
    fps: int = 7
    noise_aug_strength: float = 0.02
    decode_chunk_size: int = 8
    mode: str = "fused"
    branches: str = "both"
    rotate_maps: bool = True

    def validate(self) -> None:
        if self.fusion not in FUSIONS:
            raise PipelineError(f"fusion: {self.fusion!r} is not one of {FUSIONS}")
        if self.mode not in MODES:
            raise PipelineError(f"mode: {self.mode!r} is not one of {MODES}")
        if self.branches not in BRANCHES:
            raise PipelineError(f"branches: {self.branches!r} is not one of {BRANCHES}")
        if self.steps < 1:
            raise PipelineError(f"steps: {self.steps} must be at least 1")
        if not 0.0 <= self.noise_injection_ratio <= 1.0:
            raise PipelineError(f"noise_injection_ratio: {self.noise_injection_ratio} must be in [0, 1]")
        if self.noise_injection_steps < 0:
            raise PipelineError(f"noise_injection_steps: {self.noise_injection_steps} must be >= 0")
        if self.decode_chunk_size < 1:
            raise PipelineError(f"decode_chunk_size: {self.decode_chunk_size} must be at least 1")
        if self.num_frames and self.num_frames < 2:
            raise PipelineError(f"num_frames: {self.num_frames} must be at least 2 (both keyframes)")

    def fused_steps(self) -> int:
        """UNet evaluations of the sampler in fused steps (each covers both branches and CFG)."""
        return self.steps + injected_steps(self) * (
            self.noise_injection_steps if self.branches == "both" else 0
        )


def injected_steps(s: InbetweenSettings) -> int:
    """Number of leading steps that get noise re-injection (the reference's int(steps * ratio))."""
    return int(s.steps * s.noise_injection_ratio) if s.noise_injection_steps > 0 else 0


@dataclass
class InbetweenResult:
    """frames: (F, H, W, 3) float32 in [0, 1] on the CPU; latents: (F, 4, h, w) scaled SVD latents."""

    frames: torch.Tensor | None
    latents: torch.Tensor


@dataclass
class _Cond:
    """One keyframe's conditioning: CLIP embedding (1, 1, D) and VAE latent (1, 4, h, w)."""

    embedding: torch.Tensor
    latent: torch.Tensor


def _randn(
    shape: tuple[int, ...], gen: torch.Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # Drawn on the CPU so a seed gives the same video on every device (as diffusers' randn_tensor).
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


# ----------------------------------------------------------------------------------------------
# The denoiser of one fused step
# ----------------------------------------------------------------------------------------------
class _Denoiser:
    """Fused (or reference) prediction of both branches for one latent at one timestep."""

    def __init__(
        self,
        model: InbetweenModel,
        s: InbetweenSettings,
        first: _Cond,
        last: _Cond,
        num_frames: int,
        time_ids: torch.Tensor,
    ) -> None:
        self.model, self.s, self.F = model, s, num_frames
        dev, dt = model.device, model.dtype
        ramp = torch.linspace(s.min_guidance, s.max_guidance, num_frames)
        if s.branches == "both" and s.fusion == "average":
            ramp = (ramp + ramp.flip(0)) / 2  # the reference's symmetric guidance for averaging
        self.guidance = ramp.to(dev, dt).view(1, num_frames, 1, 1, 1)
        self.cfg = max(s.min_guidance, s.max_guidance) > 1.0
        w = (
            torch.linspace(1.0, 0.0, num_frames, device=dev)
            if s.fusion == "weighted"
            else torch.full((num_frames,), 0.5, device=dev)
        )
        self.w_forward = w.view(1, num_frames, 1, 1, 1)
        self.time_ids = time_ids
        self.first, self.last = first, last

    def _batch(self, cond: _Cond) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (b, 1, D) and per-frame conditioning latents (b, F, 4, h, w); uncond first."""
        lat = cond.latent.unsqueeze(1).expand(-1, self.F, -1, -1, -1)
        if not self.cfg:
            return cond.embedding, lat
        return torch.cat([torch.zeros_like(cond.embedding), cond.embedding]), torch.cat(
            [torch.zeros_like(lat), lat]
        )

    def _guide(self, out: torch.Tensor) -> torch.Tensor:
        if not self.cfg:
            return out
        u, c = out.chunk(2)
        return u + self.guidance * (c - u)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """x: (b, F, 4, h, w) scaled model input -> (b, F, 4, h, w)."""
        ids = self.time_ids.expand(x.shape[0], -1)
        return self.model.unet(
            torch.cat([x, lat.to(x.dtype)], dim=2),
            t,
            encoder_hidden_states=emb,
            added_time_ids=ids,
            return_dict=False,
        )[0]

    def __call__(self, z: torch.Tensor, t: torch.Tensor, scheduler) -> torch.Tensor:
        """z: (1, F, 4, h, w) at the current sigma -> fused model output (1, F, 4, h, w)."""
        s, state = self.s, self.model.state
        reps = 2 if self.cfg else 1
        zf = scheduler.scale_model_input(torch.cat([z] * reps), t)
        zr = zf.flip(1)
        emb_f, lat_f = self._batch(self.first)
        emb_r, lat_r = self._batch(self.last)
        state.rotate = s.rotate_maps
        try:
            if s.branches == "forward":
                state.set("forward")
                return self._guide(self._unet(zf, t, emb_f, lat_f))
            if s.branches == "reverse":
                state.set("reverse")
                return self._guide(self._unet(zr, t, emb_r, lat_r)).flip(1)
            if s.mode == "fused":
                state.set("fused")
                out = self._unet(torch.cat([zf, zr]), t, torch.cat([emb_f, emb_r]), torch.cat([lat_f, lat_r]))
                out_f, out_r = out[: zf.shape[0]], out[zf.shape[0] :]
            else:
                state.set("record" if s.rotate_maps else "forward")
                out_f = self._unet(zf, t, emb_f, lat_f)
                state.set("inject" if s.rotate_maps else "reverse")
                out_r = self._unet(zr, t, emb_r, lat_r)
        finally:
            state.maps.clear()
            state.set("forward")
        eps_f, eps_r = self._guide(out_f), self._guide(out_r).flip(1)
        w = self.w_forward.to(eps_f.dtype)
        return w * eps_f + (1 - w) * eps_r


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
def _scheduler(model: InbetweenModel):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(model.scheduler_config)


def sample_latents(
    model: InbetweenModel,
    first: torch.Tensor,
    last: torch.Tensor | None,
    settings: InbetweenSettings,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
    offload_device: torch.device | str | None = None,
    done: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """Denoise one segment. first/last: (H, W, 3) in [0, 1] -> latents (F, 4, h, w) (scaled).

    device: where to compute (default: the model's). offload_device: if given, each part is moved to
    ``device`` only while it works and back to ``offload_device`` afterwards.
    """
    s = settings
    s.validate()
    device = torch.device(device) if device is not None else model.device
    off = torch.device(offload_device) if offload_device is not None else None
    num_frames = s.num_frames or model.default_frames
    img_f = image_to_tensor(first, "first keyframe")
    H, W = img_f.shape[-2:]
    check_size(H, W, "first keyframe")
    if s.branches != "forward":
        if last is None:
            raise PipelineError("last keyframe: required for inbetweening")
        img_l = image_to_tensor(last, "last keyframe")
        if img_l.shape[-2:] != img_f.shape[-2:]:
            raise PipelineError(
                f"last keyframe: size {img_l.shape[-1]}x{img_l.shape[-2]} differs from the first "
                f"keyframe's {W}x{H}"
            )
    else:
        img_l = img_f
    total = total if total is not None else s.fused_steps()
    dt = model.dtype
    gen = torch.Generator("cpu").manual_seed(int(s.seed))

    # Conditioning (image encoder and VAE encoder).
    if off is None:
        model.to(device)
    if off is not None:
        model.place("image_encoder", device)
    emb_f = clip_embedding(model, img_f, device).to(dt)
    emb_l = clip_embedding(model, img_l, device).to(dt) if s.branches != "forward" else emb_f
    if off is not None:
        model.place("image_encoder", off, working=False)
    if off is not None:
        model.place("vae", device)
    aug_noise = _randn(tuple(img_f.shape), gen, device, torch.float32)  # shared by both keyframes
    lat_f = vae_latent(model, img_f, aug_noise, s.noise_aug_strength).to(dt)
    lat_l = (
        vae_latent(model, img_l, aug_noise, s.noise_aug_strength).to(dt) if s.branches != "forward" else lat_f
    )
    if off is not None:
        model.place("vae", off, working=False)
    expected = model.unet.add_embedding.linear_1.in_features
    if model.unet.config.addition_time_embed_dim * 3 != expected:
        raise PipelineError(
            f"svd: the UNet expects {expected} added time features, not 3 ids (not an SVD UNet?)"
        )
    time_ids = torch.tensor([[s.fps - 1, s.motion_bucket_id, s.noise_aug_strength]], dtype=dt, device=device)

    # Denoising.
    if off is not None:
        model.place("unet", device)
    scheduler = _scheduler(model)
    scheduler.set_timesteps(s.steps, device=device)
    h, w = H // model.vae_scale_factor, W // model.vae_scale_factor
    z = (
        _randn((1, num_frames, model.unet.config.out_channels, h, w), gen, device, dt)
        * scheduler.init_noise_sigma
    )
    denoise = _Denoiser(model, s, _Cond(emb_f, lat_f), _Cond(emb_l, lat_l), num_frames, time_ids)
    n_inject = injected_steps(s) if s.branches == "both" else 0
    sigmas = scheduler.sigmas
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            repeats = 1 + (s.noise_injection_steps if i < n_inject else 0)
            for r in range(repeats):
                if r > 0:  # back from sigma_{i+1} to sigma_i
                    std = math.sqrt(max(float(sigmas[i]) ** 2 - float(sigmas[i + 1]) ** 2, 0.0))
                    z = z + _randn(tuple(z.shape), gen, device, z.dtype) * std
                set_step_index(scheduler, i)
                eps = denoise(z, t, scheduler)
                set_step_index(scheduler, i)
                z = scheduler.step(eps, t, z, return_dict=False)[0]
                done += 1
                report(
                    progress,
                    done,
                    total,
                    f"denoising step {i + 1}/{s.steps}" + (f", re-injection {r}/{repeats - 1}" if r else ""),
                )
    if off is not None:
        model.place("unet", off, working=False)
    return z[0]


@torch.no_grad()
def decode_latents(
    model: InbetweenModel,
    latents: torch.Tensor,
    chunk: int = 8,
    progress: ProgressFn | None = None,
    done: int = 0,
    total: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(F, 4, h, w) scaled latents -> (F, H, W, 3) float32 in [0, 1] (CPU), ``chunk`` frames at a time."""
    vae = model.vae
    device = torch.device(device) if device is not None else vae.device
    lat = latents / vae.config.scaling_factor
    out = []
    n = math.ceil(lat.shape[0] / chunk)
    for c in range(n):
        part = lat[c * chunk : (c + 1) * chunk].to(device, vae.dtype)
        img = vae.decode(part, num_frames=part.shape[0]).sample
        out.append((img.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu())
        report(progress, done + c + 1, total if total is not None else n, f"decode {c + 1}/{n}")
    return torch.cat(out)


def decode_chunks(num_frames: int, chunk: int) -> int:
    return math.ceil(num_frames / max(chunk, 1))


def inbetween(
    model: InbetweenModel,
    first: torch.Tensor,
    last: torch.Tensor | None,
    settings: InbetweenSettings,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
    offload_device: torch.device | str | None = None,
    decode: bool = True,
) -> InbetweenResult:
    """One segment: latents and decoded frames, both keyframe positions included."""
    keys = [first, last if last is not None else first]
    if settings.branches == "both" and last is None:
        raise PipelineError("last keyframe: required for inbetweening")
    return inbetween_keyframes(model, keys, settings, None, progress, device, offload_device, decode)


_NONFINITE_HINT = (
    "fp16 can overflow in SVD's VAE or UNet on some devices: try dtype bf16 or fp32, or check the weights"
)


def inbetween_keyframes(
    model: InbetweenModel,
    keyframes: list[torch.Tensor],
    settings: InbetweenSettings,
    frame_counts: list[int] | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
    offload_device: torch.device | str | None = None,
    decode: bool = True,
) -> InbetweenResult:
    """Consecutive keyframe pairs as segments; the shared boundary frames appear once.

    keyframes: K >= 2 images (H, W, 3). frame_counts: frames of each of the K-1 segments including both
    ends (default ``settings.num_frames`` or the UNet's). Segment k uses seed ``settings.seed + k``.
    Returns (sum(counts) - (K - 2)) frames.
    """
    if len(keyframes) < 2:
        raise PipelineError(f"keyframes: inbetweening needs at least 2 keyframes, got {len(keyframes)}")
    nseg = len(keyframes) - 1
    default = settings.num_frames or model.default_frames
    counts = list(frame_counts) if frame_counts is not None else [default] * nseg
    if len(counts) != nseg:
        raise PipelineError(f"frame_counts: {len(counts)} values for {nseg} segments")
    for c in counts:
        if c < 2:
            raise PipelineError(f"keyframes: a segment needs at least 2 frames (its keyframes), got {c}")
    per = [replace(settings, num_frames=c, seed=settings.seed + k) for k, c in enumerate(counts)]
    steps = [p.fused_steps() for p in per]
    chunks = [decode_chunks(c, settings.decode_chunk_size) if decode else 0 for c in counts]
    total = sum(steps) + sum(chunks)
    done = 0
    lats, frames = [], []
    for k in range(nseg):
        lat = sample_latents(
            model, keyframes[k], keyframes[k + 1], per[k], progress, device, offload_device, done, total
        )
        done += steps[k]
        check_finite_result(lat, f"segment {k + 1}: the sampled latents", _NONFINITE_HINT)
        if decode:
            dev = torch.device(device) if device is not None else model.device
            if offload_device is not None:
                model.place("vae", dev)
            fr = decode_latents(model, lat, settings.decode_chunk_size, progress, done, total, dev)
            if offload_device is not None:
                model.place("vae", offload_device, working=False)
            done += chunks[k]
            check_finite_result(fr, f"segment {k + 1}: the decoded frames", _NONFINITE_HINT)
            frames.append(fr if k == 0 else fr[1:])
        lat = lat.float().cpu()
        lats.append(lat if k == 0 else lat[1:])
    return InbetweenResult(frames=torch.cat(frames) if decode else None, latents=torch.cat(lats))
