"""Losses of two-stream training (LaMa's recipe): masked L1, PatchGAN adversarial loss with R1,
feature matching, and the high-receptive-field perceptual loss (LaMa's ``ResNetPL``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import PipelineError
from ...weights import read_weights


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
        self.impl = _ResNet50Dilated()
        sd, _ = read_weights(weights, "perceptual_weights")
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
