"""The training loop of the two-stream generator from any folder of images (SPEC A, "Training").

Each example is made from one image, as the reference's data pipeline: a shared crop and colour jitter,
then per frame (the target, frame 0, and each keyframe) a random perspective (scale up to 0.06), an
affine transform (scale 0.7-1.3, rotation +-40 degrees, shear +-0.1 degrees as imgaug), an optical
distortion and a random crop, with a slight colour jitter; each frame gets its own LaMa-style mask
(irregular strokes or boxes, sizes scaled with the crop). Flow target -> keyframe is estimated on the
unmasked frames (DIS by default; "none" = the reference's identity-flow ablation) and filled in the
target's mask, as at inference (:func:`..flows.model_flows`).

Losses (LaMa's recipe, the reference's weights): L1 on the known pixels x10 (missing pixels x0);
non-saturating adversarial loss x10 on a PatchGAN discriminator (n_layers 4, ndf 64) with R1 gradient
penalty (coefficient 0.001) and the hole as the fake target; feature matching on the discriminator's
features x100; and, when its weights are given, the high-receptive-field perceptual loss x30 (the
ADE20k ResNet50-dilated encoder of LaMa's ``ResNetPL``). Adam for both, the discriminator's learning
rate 0.1 x the generator's, linear warm-up then cosine decay.

Checkpoints are Lightning-style ``.ckpt`` files (``state_dict`` with ``generator.`` and
``discriminator.`` keys, optimizer states, step), so the loader (:mod:`..io`) reads them and
training resumes from them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import PipelineError
from ...flow import FlowEstimator
from ...progress import ProgressFn, report
from ...weights import strip_prefix, torch_load_weights_only
from ..flows import model_flows
from ..io import CONFIG_METADATA_KEY, GENERATOR_PREFIX
from ..model import CONFIGS, TwoStreamConfig, TwoStreamGenerator
from .data import SyntheticKeyframes
from .losses import PatchDiscriminator, ResNetPL, adversarial_losses, feature_matching_loss, masked_l1_loss


@dataclass
class TrainConfig:
    """Training options; defaults = the reference's (``configs/ours*.yaml``) where it has one.

    lr: generator learning rate (the paper's 3.2e-4 = 1e-5 x batch 8 x accumulation 2 x 2 GPUs);
    the discriminator's is ``disc_lr_factor`` x lr. Effective batch = batch_size x accumulate.
    decay_steps: length of the cosine decay after warm-up (default: the run's steps).
    flow: "dis" (OpenCV DIS at the crop size) or "none" (zero flow and error).
    """

    images: str = ""
    out: str = "out/two_stream"
    config: str = "ours"
    size: int = 256
    n_keyframes: int = 2
    steps: int = 1000
    batch_size: int = 8
    accumulate: int = 4
    lr: float = 3.2e-4
    disc_lr_factor: float = 0.1
    warmup_steps: int = 1000
    decay_steps: int = 0
    lr_min_factor: float = 1e-4
    weight_l1_known: float = 10.0
    weight_l1_missing: float = 0.0
    weight_adversarial: float = 10.0
    r1_coef: float = 0.001
    weight_feature_matching: float = 100.0
    weight_perceptual: float = 30.0
    perceptual_weights: str = ""
    disc_ndf: int = 64
    disc_layers: int = 4
    flow: str = "dis"
    log_every: int = 10
    save_every: int = 500
    resume: str = ""
    seed: int = 0
    device: str = "cpu"
    overrides: dict[str, object] = field(default_factory=dict)  # TwoStreamConfig fields for the generator

    def check(self) -> None:
        if self.config not in CONFIGS:
            raise PipelineError(f"config: unknown '{self.config}'; one of {list(CONFIGS)}")
        for name in ("steps", "batch_size", "accumulate", "log_every", "save_every"):
            if int(getattr(self, name)) < 1:
                raise PipelineError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_keyframes < 0:
            raise PipelineError(f"n_keyframes: must be >= 0, got {self.n_keyframes}")
        if self.flow not in ("dis", "none"):
            raise PipelineError(f"flow: 'dis' or 'none', got {self.flow!r}")
        if not self.lr > 0:
            raise PipelineError(f"lr: must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    """history: one dict of losses per optimiser step; last: path of the last checkpoint."""

    history: list[dict[str, float]]
    last: Path | None
    step: int


def lr_multiplier(step: int, warmup: int, decay: int, lr_min: float = 1e-4, lr_start: float = 1e-4) -> float:
    """The reference's LambdaWarmUpCosineScheduler: linear ``lr_start -> 1`` over ``warmup`` steps,
    then cosine ``1 -> lr_min`` over ``decay`` steps."""
    if step < warmup:
        return lr_start + (1.0 - lr_start) * step / max(warmup, 1)
    t = min((step - warmup) / max(decay, 1), 1.0)
    return lr_min + 0.5 * (1.0 - lr_min) * (1 + math.cos(t * math.pi))


def save_checkpoint(
    path: str | os.PathLike,
    generator: TwoStreamGenerator,
    discriminator: nn.Module | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    step: int = 0,
    train_config: TrainConfig | None = None,
) -> Path:
    """A Lightning-style checkpoint: ``state_dict`` with ``generator.``/``discriminator.`` keys,
    ``optimizer_states``, ``global_step``, the generator config. Written atomically."""
    sd = {GENERATOR_PREFIX + k: v.detach().cpu() for k, v in generator.state_dict().items()}
    if discriminator is not None:
        sd.update({"discriminator." + k: v.detach().cpu() for k, v in discriminator.state_dict().items()})
    ckpt = {
        "state_dict": sd,
        "optimizer_states": [o.state_dict() for o in optimizers],
        "global_step": int(step),
        "epoch": 0,
        CONFIG_METADATA_KEY: generator.config.to_dict(),
        "train_config": {k: v for k, v in asdict(train_config).items() if k != "overrides"}
        if train_config
        else {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, object]:
    """A checkpoint written by :func:`save_checkpoint` (weights_only=True). Raises PipelineError."""
    try:
        ckpt = torch_load_weights_only(path)
    except Exception as e:
        raise PipelineError(f"resume: cannot read '{path}': {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise PipelineError(f"resume: '{path}' is not a training checkpoint (no state_dict)")
    return ckpt


def train(
    cfg: TrainConfig, progress: ProgressFn | None = None, log: Callable[[str], None] | None = print
) -> TrainResult:
    """Train (or resume) a two-stream generator; see the module docstring. Checkpoints go to
    ``cfg.out/last.ckpt`` (every ``save_every`` steps and at the end) and ``cfg.out/step_N.ckpt``;
    losses to ``cfg.out/log.jsonl`` and, every ``log_every`` steps, to ``log``."""
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = SyntheticKeyframes(cfg.images, cfg.size, cfg.n_keyframes)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    if ckpt is not None and isinstance(ckpt.get(CONFIG_METADATA_KEY), dict):
        gcfg = TwoStreamConfig.from_dict(ckpt[CONFIG_METADATA_KEY])  # type: ignore[arg-type]
    else:
        gcfg = TwoStreamConfig(**{**asdict(CONFIGS[cfg.config]), **cfg.overrides})  # type: ignore[arg-type]
    gen = TwoStreamGenerator(gcfg).to(device).train()
    disc = PatchDiscriminator(3, cfg.disc_ndf, cfg.disc_layers).to(device).train()
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr * cfg.disc_lr_factor)
    step = 0
    if ckpt is not None:
        sd = ckpt["state_dict"]
        gen.load_state_dict(strip_prefix(sd, GENERATOR_PREFIX))  # type: ignore[arg-type]
        disc.load_state_dict(strip_prefix(sd, "discriminator."))  # type: ignore[arg-type]
        states = ckpt.get("optimizer_states") or []
        if len(states) == 2:  # type: ignore[arg-type]
            opt_g.load_state_dict(states[0])  # type: ignore[index]
            opt_d.load_state_dict(states[1])  # type: ignore[index]
        step = int(ckpt.get("global_step", 0))  # type: ignore[arg-type]
        rng = np.random.default_rng([cfg.seed, step])  # new data after a resume, still reproducible
        if log:
            log(f"resumed from {cfg.resume} at step {step}")
    pl = ResNetPL(cfg.perceptual_weights).to(device) if cfg.perceptual_weights else None
    estimator = FlowEstimator("dis", "medium", work_size=(cfg.size, cfg.size)) if cfg.flow == "dis" else None
    decay = cfg.decay_steps or max(cfg.steps - cfg.warmup_steps, 1)
    base_lrs = (cfg.lr, cfg.lr * cfg.disc_lr_factor)

    history: list[dict[str, float]] = []
    last: Path | None = None
    log_path = out / "log.jsonl"
    t0 = time.perf_counter()
    start = step
    while step < cfg.steps:
        mult = lr_multiplier(step, cfg.warmup_steps, decay, cfg.lr_min_factor)
        for opt, base in zip((opt_g, opt_d), base_lrs):
            for group in opt.param_groups:
                group["lr"] = base * mult
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for _ in range(cfg.accumulate):
            batch = data.batch(rng, cfg.batch_size)
            losses = _micro_step(gen, disc, pl, batch, estimator, cfg, device)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.accumulate
        opt_g.step()
        opt_d.step()
        step += 1
        rec = {"step": step, "lr": base_lrs[0] * mult, **sums}
        history.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if log and (step % cfg.log_every == 0 or step == cfg.steps):
            rate = (time.perf_counter() - t0) / max(step - start, 1)
            parts = " ".join(f"{k} {v:.4f}" for k, v in sums.items())
            log(f"step {step}/{cfg.steps} {parts} lr {rec['lr']:.2e} ({rate:.2f} s/step)")
        if step % cfg.save_every == 0 or step == cfg.steps:
            last = save_checkpoint(out / "last.ckpt", gen, disc, (opt_g, opt_d), step, cfg)
            if step % cfg.save_every == 0:
                save_checkpoint(out / f"step_{step}.ckpt", gen, disc, (opt_g, opt_d), step, cfg)
        report(progress, step, cfg.steps, f"step {step}")
    return TrainResult(history=history, last=last, step=step)


def _micro_step(
    gen: TwoStreamGenerator,
    disc: PatchDiscriminator,
    pl: ResNetPL | None,
    batch: dict[str, torch.Tensor],
    estimator: FlowEstimator | None,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Generator and discriminator gradients of one batch (scaled for accumulation); returns losses."""
    img, mask = batch["image"].to(device), batch["mask"].to(device)
    keys, kmask = batch["keys"].to(device), batch["key_masks"].to(device)
    b, t = keys.shape[:2]
    flows = torch.zeros(b, t, 2, *img.shape[-2:])
    errs = torch.zeros(b, t, 1, *img.shape[-2:])
    if estimator is not None and t > 0:
        for i in range(b):  # flow on the unmasked frames, filled in the target's mask (as the reference)
            f, e = model_flows(
                batch["image"][i].permute(1, 2, 0),
                batch["keys"][i].permute(0, 2, 3, 1),
                batch["mask"][i, 0],
                estimator,
                flow_size=None,
            )
            flows[i], errs[i] = f, e
    target = torch.cat((img * (1 - mask), mask), dim=1)
    key_in = torch.cat((keys * (1 - kmask), kmask), dim=2)
    pred = gen(target, key_in, flows=flows.to(device), flow_errors=errs.to(device))

    # Generator: L1 on known pixels, adversarial, feature matching, perceptual.
    disc.requires_grad_(False)
    l1 = masked_l1_loss(pred, img, mask, cfg.weight_l1_known, cfg.weight_l1_missing)
    real_pred, real_feats = disc(img)
    fake_pred, fake_feats = disc(pred)
    adv = F.softplus(-fake_pred).mean() * cfg.weight_adversarial
    fm = feature_matching_loss(fake_feats, [f.detach() for f in real_feats]) * cfg.weight_feature_matching
    g_loss = l1 + adv + fm
    losses = {"l1": float(l1.detach()), "adv": float(adv.detach()), "fm": float(fm.detach())}
    if pl is not None and cfg.weight_perceptual > 0:
        p = pl(pred, img) * cfg.weight_perceptual
        g_loss = g_loss + p
        losses["pl"] = float(p.detach())
    (g_loss / cfg.accumulate).backward()
    disc.requires_grad_(True)

    # Discriminator: real vs the (detached) prediction, R1 on the real images.
    d_loss, d_metrics = adversarial_losses(disc, img, pred, mask, cfg.r1_coef)
    (d_loss / cfg.accumulate).backward()
    losses.update({"g_total": float(g_loss.detach()), "d_total": float(d_loss.detach()), **d_metrics})
    return losses
