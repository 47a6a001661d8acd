"""Fine-tuning the reverse-motion tensors (Algorithm 1 of SPEC C).

Only the 32 reverse tensors (``to_v.weight`` and ``to_out.0.weight`` of the temporal self-attention
layers) are trained; everything else is frozen. Per iteration, for a clip x0 (F frames):

- log sigma ~ N(0.7, 1.6); noisy = x0 + sigma * n; UNet input scaled by 1 / sqrt(sigma^2 + 1) and
  timestep 0.25 log sigma (continuous EDM timesteps, as SVD's scheduler);
- the frozen forward model sees the noisy clip with the first frame's conditioning and records its
  temporal attention maps (no gradients);
- the reverse model sees the time-flipped noisy clip with the last frame's conditioning and uses the
  rotated maps; its v-prediction gives denoised = c_skip * x + c_out * v (c_skip = 1 / (sigma^2 + 1),
  c_out = -sigma / sqrt(sigma^2 + 1)); loss = (1 + sigma^2) / sigma^2 * |denoised - flip(x0)|^2,
  which equals the MSE against the v-prediction target;
- AdamW (lr 1e-4, weight decay 1e-2), gradient-norm clip 1.0.

The result is the delta (trained minus forward tensors), written as the compact delta file.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..clip import VIDEO_EXTENSIONS, load_frames
from ..errors import PipelineError
from ..progress import ProgressFn, report
from .conditioning import check_size, clip_embedding, image_to_tensor, resize_image, vae_latent
from .model import InbetweenModel


@dataclass
class TrainSettings:
    """Algorithm 1 settings (defaults from SPEC C; the paper trains ~15k iterations at batch 4)."""

    steps: int = 15000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    num_frames: int = 14
    height: int = 576
    width: int = 1024
    p_mean: float = 0.7
    p_std: float = 1.6
    noise_aug_strength: float = 0.02
    motion_bucket_id: int = 127
    fps: int = 7
    seed: int = 0
    gradient_checkpointing: bool = False


def load_videos(folder: str | Path, num_frames: int, height: int, width: int) -> list[torch.Tensor]:
    """Training clips from a folder of videos and/or frame folders: each (T, H, W, 3) in [0, 1], T >= F."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"videos: {folder} is not a folder")
    entries = sorted(p for p in folder.iterdir() if p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS)
    if not entries:
        raise PipelineError(f"videos: {folder} holds no video files or frame folders")
    clips = []
    for p in entries:
        clip = load_frames(p)
        frames = clip.frames
        if frames.shape[0] < num_frames:
            continue
        clips.append(torch.stack([resize_image(f, height, width) for f in frames]))
    if not clips:
        raise PipelineError(f"videos: no video in {folder} has at least {num_frames} frames")
    return clips


def _encode_clip(model: InbetweenModel, clip: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(F, H, W, 3) in [0, 1] -> scaled latents (F, 4, h, w), sampled from the VAE posterior."""
    vae = model.vae
    x = clip.permute(0, 3, 1, 2).to(model.device, vae.dtype) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean.device, dist.mean.dtype)
        z = dist.mean + dist.std * noise
    return z * vae.config.scaling_factor


class ReverseMotionTrainer:
    """Holds the trainable reverse tensors (float32 masters) and runs Algorithm 1 steps."""

    def __init__(self, model: InbetweenModel, settings: TrainSettings) -> None:
        self.model, self.s = model, settings
        check_size(settings.height, settings.width, "training size")
        sd = model.unet.state_dict()
        start = model.reverse if model.has_reverse else {n: sd[n] for n in model.param_names}
        self.params = {
            n: torch.nn.Parameter(start[n].detach().to(model.device, torch.float32).clone())
            for n in model.param_names
        }
        self._saved_reverse = dict(model.state.reverse)
        model.state.reverse.clear()
        model.state.reverse.update(self.params)  # processors cast them to the UNet dtype
        self.opt = torch.optim.AdamW(self.params.values(), lr=settings.lr, weight_decay=settings.weight_decay)
        if settings.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.time_ids = torch.tensor(
            [[settings.fps - 1, settings.motion_bucket_id, settings.noise_aug_strength]],
            dtype=model.dtype,
            device=model.device,
        )

    def _conditioning(self, image: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        img = image_to_tensor(image, "training frame")
        with torch.no_grad():
            emb = clip_embedding(m, img, m.device).to(m.dtype)
            lat = vae_latent(m, img, noise, self.s.noise_aug_strength).to(m.dtype)
        return emb, lat

    def loss(
        self,
        clip: torch.Tensor,
        sigma: torch.Tensor,
        noise: torch.Tensor,
        x0: torch.Tensor,
        aug: torch.Tensor,
    ) -> torch.Tensor:
        """Weighted reverse-branch loss for one clip (F, H, W, 3) at one sigma; x0 its scaled latents."""
        m, state = self.model, self.model.state
        nf = x0.shape[0]
        emb_f, lat_f = self._conditioning(clip[0], aug)
        emb_l, lat_l = self._conditioning(clip[-1], aug)
        noisy = (x0 + sigma * noise)[None]  # (1, F, 4, h, w)
        c_in = 1 / torch.sqrt(sigma**2 + 1)
        t = (0.25 * torch.log(sigma)).reshape(1).to(m.device)
        x_in = (noisy * c_in).to(m.dtype)

        def run(x: torch.Tensor, emb: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
            inp = torch.cat([x, lat.unsqueeze(1).expand(-1, nf, -1, -1, -1)], dim=2)
            return m.unet(inp, t, encoder_hidden_states=emb, added_time_ids=self.time_ids, return_dict=False)[
                0
            ]

        try:
            state.set("record")
            with torch.no_grad():
                run(x_in, emb_f, lat_f)  # frozen forward model: only its maps are used
            state.maps = {k: v.detach() for k, v in state.maps.items()}
            state.set("inject")
            state.rotate = True
            v = run(x_in.flip(1), emb_l, lat_l).float()
        finally:
            state.set("forward")
            state.maps.clear()
        noisy_r = noisy.flip(1).float()
        denoised = noisy_r / (sigma**2 + 1) + v * (-sigma / torch.sqrt(sigma**2 + 1))
        weight = (1 + sigma**2) / sigma**2
        return weight * F.mse_loss(denoised, x0.flip(0)[None].float())

    def sample_sigma(self) -> torch.Tensor:
        return torch.exp(self.s.p_mean + self.s.p_std * torch.randn((), generator=self.gen))

    def step(self, clips: Sequence[torch.Tensor]) -> float:
        """One optimiser step on a batch of clips (each (F, H, W, 3)); returns the mean loss."""
        m = self.model
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for clip in clips:
            x0 = _encode_clip(m, clip, self.gen)
            sigma = self.sample_sigma().to(m.device)
            noise = torch.randn(x0.shape, generator=self.gen).to(m.device, x0.dtype)
            aug = torch.randn((1, 3, *clip.shape[1:3]), generator=self.gen).to(m.device)
            loss = self.loss(clip, sigma, noise, x0, aug) / len(clips)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.params.values(), self.s.grad_clip)
        self.opt.step()
        return total

    def evaluate(
        self, clips: Sequence[torch.Tensor], sigmas: Sequence[float] = (0.5, 2.0, 8.0), seed: int = 123
    ) -> float:
        """Mean loss over fixed sigmas and noise (deterministic; for checking progress)."""
        g = torch.Generator().manual_seed(seed)
        m = self.model
        vals = []
        with torch.no_grad():
            for clip in clips:
                x0 = _encode_clip(m, clip, g)
                aug = torch.randn((1, 3, *clip.shape[1:3]), generator=g).to(m.device)
                for s in sigmas:
                    noise = torch.randn(x0.shape, generator=g).to(m.device, x0.dtype)
                    vals.append(float(self.loss(clip, torch.tensor(s, device=m.device), noise, x0, aug)))
        return sum(vals) / len(vals)

    def delta(self) -> dict[str, torch.Tensor]:
        """Trained minus forward tensors (float32, CPU)."""
        sd = self.model.unet.state_dict()
        return {n: (p.detach().float() - sd[n].float()).cpu() for n, p in self.params.items()}

    def finish(self) -> dict[str, torch.Tensor]:
        """Put the trained tensors into the model as its reverse weights; returns the delta."""
        delta = self.delta()
        self.model.state.reverse.clear()
        self.model.set_reverse_delta(delta, source="trained")
        if self.s.gradient_checkpointing:
            self.model.unet.disable_gradient_checkpointing()
        return delta


def random_clips(
    clips: Sequence[torch.Tensor], num_frames: int, count: int, rng: random.Random
) -> list[torch.Tensor]:
    """``count`` random windows of ``num_frames`` consecutive frames."""
    out = []
    for _ in range(count):
        c = clips[rng.randrange(len(clips))]
        start = rng.randrange(c.shape[0] - num_frames + 1)
        out.append(c[start : start + num_frames])
    return out


def train_reverse_motion(
    model: InbetweenModel,
    clips: Sequence[torch.Tensor],
    settings: TrainSettings,
    progress: ProgressFn | None = None,
    log_every: int = 0,
    log=print,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Run Algorithm 1 for ``settings.steps`` steps; returns (delta, per-step losses)."""
    check_size(settings.height, settings.width, "training size")
    if not clips:
        raise PipelineError("videos: no training clips")
    for i, c in enumerate(clips):
        if c.shape[0] < settings.num_frames or tuple(c.shape[1:3]) != (settings.height, settings.width):
            raise PipelineError(
                f"videos: clip {i} is {tuple(c.shape[:3])}, needs >= {settings.num_frames} frames of "
                f"{settings.height}x{settings.width}"
            )
    trainer = ReverseMotionTrainer(model, settings)
    rng = random.Random(settings.seed)
    losses = []
    for step in range(settings.steps):
        loss = trainer.step(random_clips(clips, settings.num_frames, settings.batch_size, rng))
        if not math.isfinite(loss):
            raise PipelineError(
                f"training diverged at step {step + 1} (loss {loss}); lower the learning rate"
            )
        losses.append(loss)
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{settings.steps}: loss {sum(losses[-log_every:]) / log_every:.4f}")
        report(progress, step + 1, settings.steps, f"loss {loss:.4f}")
    return trainer.finish(), losses
