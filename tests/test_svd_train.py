"""Fine-tuning the reverse-motion tensors (Algorithm 1) on tiny generated videos."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random

import pytest
import torch

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.svd.loading import load_svd
from keyframe_propagation.pipelines.svd.train import (
    ReverseMotionTrainer,
    TrainSettings,
    random_clips,
    train_reverse_motion,
)
from keyframe_propagation.pipelines.testing.svd import build_svd_folder


def moving_square(frames: int, seed: int, size: int = 64) -> torch.Tensor:
    """A coloured square crossing a flat background: (F, size, size, 3) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(3, generator=g).expand(frames, size, size, 3).clone()
    colour = torch.rand(3, generator=g)
    y = int(torch.randint(4, size - 20, (1,), generator=g))
    for t in range(frames):
        x = 4 + (size - 24) * t // max(frames - 1, 1)
        video[t, y : y + 16, x : x + 16] = colour
    return video


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_svd_folder(tmp_path_factory.mktemp("svdtrain") / "tiny", perturb=0.02)


def test_a_few_steps_lower_the_loss_and_only_the_reverse_tensors_change(tiny):
    model = load_svd(tiny, "fp32")
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    clips = [moving_square(4, s) for s in range(2)]
    s = TrainSettings(steps=0, batch_size=1, lr=1e-2, num_frames=4, height=64, width=64, seed=0)
    trainer = ReverseMotionTrainer(model, s)
    assert sorted(trainer.params) == sorted(model.param_names)
    assert {id(p) for p in trainer.opt.param_groups[0]["params"]} == {id(p) for p in trainer.params.values()}
    assert not any(p.requires_grad for p in model.unet.parameters())
    loss0 = trainer.evaluate(clips)
    rng = random.Random(0)
    losses = [trainer.step(random_clips(clips, 4, 1, rng)) for _ in range(10)]
    loss1 = trainer.evaluate(clips)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert loss1 < 0.97 * loss0, (loss0, loss1)
    delta = trainer.finish()
    after = model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the forward model is untouched
    assert sorted(delta) == sorted(model.param_names)
    assert all(float(d.abs().max()) > 0 for d in delta.values())
    assert model.has_reverse and model.reverse_source == "trained"
    for n, d in delta.items():
        torch.testing.assert_close(model.reverse[n], before[n] + d)


def test_train_function_and_input_checks(tiny):
    model = load_svd(tiny, "fp32")
    s = TrainSettings(steps=1, batch_size=1, num_frames=4, height=64, width=64)
    delta, losses = train_reverse_motion(model, [moving_square(5, 0)], s)
    assert len(losses) == 1 and len(delta) == len(model.param_names)
    with pytest.raises(PipelineError, match="clip 0"):
        train_reverse_motion(model, [moving_square(3, 0)], s)
    with pytest.raises(PipelineError, match="multiple of 64"):
        train_reverse_motion(
            model, [moving_square(4, 0)], TrainSettings(steps=1, num_frames=4, height=60, width=64)
        )
