"""Training the two-stream generator from any folder of images (SPEC A, "Training").

Each example is made from one image, as the reference's data pipeline: a shared crop and colour jitter,
then per frame (the target, frame 0, and each keyframe) a random perspective (scale up to 0.06), an
affine transform (scale 0.7-1.3, rotation +-40 degrees, shear +-0.1 degrees as imgaug), an optical
distortion and a random crop, with a slight colour jitter; each frame gets its own LaMa-style mask
(irregular strokes or boxes, sizes scaled with the crop). Flow target -> keyframe is estimated on the
unmasked frames (DIS by default; "none" = the reference's identity-flow ablation) and filled in the
target's mask, as at inference (:func:`two_stream_video.model_flows`).

Losses (LaMa's recipe, the reference's weights): L1 on the known pixels x10 (missing pixels x0);
non-saturating adversarial loss x10 on a PatchGAN discriminator (n_layers 4, ndf 64) with R1 gradient
penalty (coefficient 0.001) and the hole as the fake target; feature matching on the discriminator's
features x100; and, when its weights are given, the high-receptive-field perceptual loss x30 (the
ADE20k ResNet50-dilated encoder of LaMa's ``ResNetPL``). Adam for both, the discriminator's learning
rate 0.1 x the generator's, linear warm-up then cosine decay.

Checkpoints are Lightning-style ``.ckpt`` files (``state_dict`` with ``generator.`` and
``discriminator.`` keys, optimizer states, step), so the loader (:mod:`two_stream_io`) reads them and
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

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .flow import FlowEstimator
from .frames import list_images
from .progress import PipelineError, ProgressFn, report
from .two_stream import CONFIGS, TwoStreamConfig, TwoStreamGenerator
from .two_stream_io import CONFIG_METADATA_KEY, GENERATOR_PREFIX
from .two_stream_video import model_flows

__all__ = [
    "PatchDiscriminator",
    "ResNetPL",
    "SyntheticKeyframes",
    "TrainConfig",
    "TrainResult",
    "adversarial_losses",
    "feature_matching_loss",
    "load_checkpoint",
    "lr_multiplier",
    "masked_l1_loss",
    "random_box_mask",
    "random_irregular_mask",
    "save_checkpoint",
    "train",
]


# --------------------------------------------------------------------------------------------------
# Data: synthetic keyframes and masks
# --------------------------------------------------------------------------------------------------


def random_irregular_mask(
    rng: np.random.Generator, h: int, w: int, max_angle: int = 4, max_len: int = 200, max_width: int = 100,
    min_times: int = 1, max_times: int = 5,
) -> np.ndarray:  # fmt: skip
    """LaMa's irregular strokes: ``times`` polylines of 1-5 segments with random angle, length and
    brush width. Returns ``(h, w)`` float32 in {0, 1}."""
    mask = np.zeros((h, w), np.float32)
    for i in range(int(rng.integers(min_times, max_times + 1))):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(max_angle))
            if i % 2 == 0:
                angle = 2 * 3.1415926 - angle
            length = 10 + int(rng.integers(max(max_len, 1)))
            brush = 5 + int(rng.integers(max(max_width, 1)))
            ex = int(np.clip(x + length * np.sin(angle), 0, w))
            ey = int(np.clip(y + length * np.cos(angle), 0, h))
            cv2.line(mask, (x, y), (ex, ey), 1.0, brush)
            x, y = ex, ey
    return mask


def random_box_mask(
    rng: np.random.Generator, h: int, w: int, margin: int = 10, min_size: int = 30, max_size: int = 150,
    min_times: int = 1, max_times: int = 4,
) -> np.ndarray:  # fmt: skip
    """LaMa's boxes: 1-4 rectangles of side ``min_size``-``max_size`` kept ``margin`` from the border.
    Returns ``(h, w)`` float32 in {0, 1}."""
    mask = np.zeros((h, w), np.float32)
    max_size = max(min(max_size, h - 2 * margin, w - 2 * margin), min_size + 1)
    for _ in range(int(rng.integers(min_times, max_times + 1))):
        bw, bh = int(rng.integers(min_size, max_size)), int(rng.integers(min_size, max_size))
        x = int(rng.integers(margin, max(w - margin - bw + 1, margin + 1)))
        y = int(rng.integers(margin, max(h - margin - bh + 1, margin + 1)))
        mask[y : y + bh, x : x + bw] = 1
    return mask


def _mixed_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """One of the two kinds with equal probability (the reference's irregular_proba = box_proba = 1),
    sizes scaled from the reference's 256 x 256 crops."""
    f = size / 256.0
    if rng.random() < 0.5:
        return random_irregular_mask(
            rng, size, size, max_len=max(1, round(200 * f)), max_width=max(1, round(100 * f))
        )
    return random_box_mask(
        rng, size, size, margin=round(10 * f), min_size=max(1, round(30 * f)), max_size=max(2, round(150 * f))
    )


def _colour_jitter(rng: np.random.Generator, img: np.ndarray, bc: float, hue: int, sat: int, val: int,
                   clahe: bool) -> np.ndarray:  # fmt: skip
    """Albumentations' CLAHE, RandomBrightnessContrast and HueSaturationValue (each p = 0.5) on uint8 RGB."""
    if clahe and rng.random() < 0.5:
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        op = cv2.createCLAHE(clipLimit=float(rng.uniform(1, 4)), tileGridSize=(8, 8))
        lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if rng.random() < 0.5:
        alpha, beta = 1 + rng.uniform(-bc, bc), rng.uniform(-bc, bc) * 255
        img = np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-hue, hue + 1))) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-sat, sat + 1)), 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + int(rng.integers(-val, val + 1)), 0, 255)
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return img


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        img = cv2.copyMakeBorder(img, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)
    return img


def _random_crop(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    img = _pad_to(img, size)
    h, w = img.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[y : y + size, x : x + size]


def _perspective(rng: np.random.Generator, img: np.ndarray, max_scale: float) -> np.ndarray:
    """imgaug's PerspectiveTransform: corners moved by N(0, s) x size, s ~ U(0, max_scale)."""
    h, w = img.shape[:2]
    s = rng.uniform(0, max_scale)
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = src + rng.normal(0, s, (4, 2)).astype(np.float32) * np.float32([w, h])
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _affine(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Scale 0.7-1.3, rotation +-40 degrees, shear +-0.1 degrees about the centre, reflected border."""
    h, w = img.shape[:2]
    scale, rot = rng.uniform(0.7, 1.3), math.radians(rng.uniform(-40, 40))
    shear = math.tan(math.radians(rng.uniform(-0.1, 0.1)))
    c, s = math.cos(rot), math.sin(rot)
    a = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]]) * scale
    centre = np.array([w / 2, h / 2])
    m = np.hstack([a, (centre - a @ centre)[:, None]]).astype(np.float32)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _optical_distortion(rng: np.random.Generator, img: np.ndarray, limit: float = 0.05) -> np.ndarray:
    """Albumentations' OpticalDistortion: radial distortion k ~ U(-limit, limit), centre shifted."""
    h, w = img.shape[:2]
    k = rng.uniform(-limit, limit)
    dx, dy = round(rng.uniform(-limit, limit) * w), round(rng.uniform(-limit, limit) * h)
    cam = np.array([[w, 0, w * 0.5 + dx], [0, h, h * 0.5 + dy], [0, 0, 1]], dtype=np.float32)
    dist = np.array([k, k, 0, 0, 0], dtype=np.float32)
    mx, my = cv2.initUndistortRectifyMap(cam, dist, None, None, (w, h), cv2.CV_32FC1)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


class SyntheticKeyframes:
    """Training examples from a folder of images: a target and ``n_keyframes`` keyframes per image.

    ``example(rng)`` -> dict of float32 tensors: ``image (3, S, S)``, ``mask (1, S, S)``, ``keys
    (T, 3, S, S)``, ``key_masks (T, 1, S, S)``. Images smaller than the crop are reflect-padded.
    """

    def __init__(self, folder: str | os.PathLike, size: int = 256, n_keyframes: int = 2) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise PipelineError(f"images: folder '{folder}' not found")
        self.paths = list_images(folder)
        if not self.paths:
            raise PipelineError(f"images: no image files in '{folder}'")
        if size < 16 or size % 8:
            raise PipelineError(f"size: the crop must be a multiple of 8 and >= 16, got {size}")
        self.size, self.n_keyframes = int(size), int(n_keyframes)
        self.max_shift = max(1, round(200 * size / 256))  # the reference's 200 px at 256

    def _read(self, path: Path) -> np.ndarray:
        data = np.fromfile(str(path), dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if img is None:
            raise PipelineError(f"images: cannot read '{path}' (corrupt or not an image)")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _individual(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            img = _perspective(rng, img, 0.06)
        if rng.random() < 0.5:
            img = _affine(rng, img)
        img = _pad_to(img, self.size)
        if rng.random() < 0.5:
            img = _optical_distortion(rng, img)
        img = _random_crop(rng, img, self.size)
        return _colour_jitter(rng, img, 0.01, 0, 3, 1, clahe=False)

    def example(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        img = self._read(self.paths[int(rng.integers(len(self.paths)))])
        # Shared by all frames of the example: crop with room for the per-frame motion, flip, colour.
        shared = _random_crop(rng, img, self.size + self.max_shift)
        if rng.random() < 0.5:
            shared = shared[:, ::-1]
        shared = _colour_jitter(rng, np.ascontiguousarray(shared), 0.2, 5, 30, 5, clahe=True)
        frames = [self._individual(rng, shared) for _ in range(self.n_keyframes + 1)]
        masks = [_mixed_mask(rng, self.size) for _ in frames]
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
        m = torch.from_numpy(np.stack(masks))[:, None]
        return {"image": x[0], "mask": m[0], "keys": x[1:], "key_masks": m[1:]}

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        items = [self.example(rng) for _ in range(batch_size)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# --------------------------------------------------------------------------------------------------
# Discriminator and losses
# --------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """pix2pixHD's N-layer PatchGAN (LaMa's ``NLayerDiscriminator``; keys ``model0.0.weight`` ...).

    x ``(B, 3, H, W)`` -> (logits ``(B, 1, h, w)``, the intermediate activations for feature matching).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        self.n_layers = n_layers
        kw, pad = 4, 2
        seqs: list[list[nn.Module]] = [[nn.Conv2d(input_nc, ndf, kw, 2, pad), nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for _ in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            seqs.append([nn.Conv2d(nf_prev, nf, kw, 2, pad), nn.BatchNorm2d(nf), nn.LeakyReLU(0.2, True)])
        nf_prev, nf = nf, min(nf * 2, 512)
        seqs.append([nn.Conv2d(nf_prev, nf, kw, 1, pad), nn.BatchNorm2d(nf), nn.LeakyReLU(0.2, True)])
        seqs.append([nn.Conv2d(nf, 1, kw, 1, pad)])
        for i, seq in enumerate(seqs):
            setattr(self, f"model{i}", nn.Sequential(*seq))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        acts = []
        for i in range(self.n_layers + 2):
            x = getattr(self, f"model{i}")(x)
            acts.append(x)
        return acts[-1], acts[:-1]


def masked_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight_known: float, weight_missing: float
) -> torch.Tensor:
    """Mean of ``|pred - target|`` weighted ``weight_missing`` in the hole, ``weight_known`` outside."""
    weights = mask * weight_missing + (1 - mask) * weight_known
    return (weights * (pred - target).abs()).mean()


def feature_matching_loss(fake: Sequence[torch.Tensor], real: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the MSE between the discriminator's features of fake and real images."""
    return torch.stack([F.mse_loss(f, r) for f, r in zip(fake, real)]).mean()


def adversarial_losses(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor, r1_coef: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Discriminator loss of LaMa's non-saturating loss with R1 (``mask_as_fake_target``).

    Real images are real everywhere (``softplus(-D(real))`` + R1 penalty ``r1_coef * |grad D(real)|^2``);
    a fake image is fake inside the hole and real outside (the hole resized to D's output, nearest).
    """
    real = real.detach().requires_grad_(True)
    real_pred, _ = discriminator(real)
    grad = torch.autograd.grad(real_pred.sum(), real, create_graph=True)[0]
    r1 = grad.flatten(1).norm(2, dim=1).pow(2).mean() * r1_coef
    fake_pred, _ = discriminator(fake.detach())
    m = F.interpolate(mask, size=fake_pred.shape[-2:], mode="nearest")
    fake_loss = F.softplus(fake_pred) * m + F.softplus(-fake_pred) * (1 - m)
    loss = (F.softplus(-real_pred) + r1 + fake_loss).mean()
    metrics = {"d_real": float(real_pred.detach().mean()), "d_fake": float(fake_pred.detach().mean())}
    return loss, {**metrics, "r1": float(r1.detach())}


# --------------------------------------------------------------------------------------------------
# Perceptual loss: LaMa's ResNetPL (ADE20k ResNet50-dilated encoder)
# --------------------------------------------------------------------------------------------------


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _ResNet50Dilated(nn.Module):
    """The CSAIL semantic-segmentation ResNet50 (3-conv stem) with layer3/4 dilated (stride 8), as
    LaMa's ``resnet50dilated`` encoder; returns the four stages' feature maps."""

    def __init__(self) -> None:
        super().__init__()

        def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

        self.conv1, self.bn1 = conv3(3, 64, 2), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = conv3(64, 64), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = conv3(64, 128), nn.BatchNorm2d(128)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 128
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)
        for layer, dilate in ((self.layer3, 2), (self.layer4, 4)):
            for m in layer.modules():
                if isinstance(m, nn.Conv2d):
                    if m.stride == (2, 2):
                        m.stride = (1, 1)
                        if m.kernel_size == (3, 3):
                            m.dilation, m.padding = (dilate // 2,) * 2, (dilate // 2,) * 2
                    elif m.kernel_size == (3, 3):
                        m.dilation, m.padding = (dilate,) * 2, (dilate,) * 2

    def _layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [_Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        layers += [_Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(F.relu(self.bn3(self.conv3(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


class ResNetPL(nn.Module):
    """High-receptive-field perceptual loss: sum over the encoder's 4 stages of the MSE between the
    features of the prediction and the target (ImageNet-normalised), frozen weights.

    weights: the ADE20k ``encoder_epoch_20.pth`` of ``ade20k-resnet50dilated-ppm_deepsup`` (or any
    state dict with its keys, ``.safetensors`` too), read with weights_only=True.
    """

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        from .two_stream_io import read_weights

        self.impl = _ResNet50Dilated()
        sd, _ = read_weights(weights)
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if not k.startswith("fc.")}
        own = self.impl.state_dict()
        missing = [k for k in own if k not in sd]
        if missing:
            raise PipelineError(
                f"perceptual_weights: '{Path(weights).name}' is not the ResNet50-dilated encoder: "
                f"{len(missing)} missing keys (first: {', '.join(missing[:3])})"
            )
        self.impl.load_state_dict({k: sd[k] for k in own})
        self.impl.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ResNetPL:
        super().train(mode)
        self.impl.eval()  # BatchNorm statistics stay the pretrained ones
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = self.impl((pred - self.mean) / self.std)
        t = self.impl((target - self.mean) / self.std)
        return torch.stack([F.mse_loss(a, b) for a, b in zip(p, t)]).sum()


# --------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------


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
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PipelineError(f"resume: cannot read '{path}': {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise PipelineError(f"resume: '{path}' is not a training checkpoint (no state_dict)")
    return ckpt


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


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
        gen.load_state_dict(_prefixed(sd, GENERATOR_PREFIX))  # type: ignore[arg-type]
        disc.load_state_dict(_prefixed(sd, "discriminator."))  # type: ignore[arg-type]
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
