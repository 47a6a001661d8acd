"""Training the two-stream generator (SPEC A, "Training"): :mod:`.data` (synthetic keyframes and
masks from single images), :mod:`.losses` (L1, adversarial + R1, feature matching, perceptual) and
:mod:`.loop` (the loop, learning-rate schedule and Lightning-style checkpoints)."""

from .data import SyntheticKeyframes, random_box_mask, random_irregular_mask
from .loop import TrainConfig, TrainResult, load_checkpoint, lr_multiplier, save_checkpoint, train
from .losses import PatchDiscriminator, ResNetPL, adversarial_losses, feature_matching_loss, masked_l1_loss

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
