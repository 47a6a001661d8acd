"""Training the tiny two-stream config on CPU from images the test generates: the loss goes down,
checkpoints resume and load into the node; the data pipeline, masks, discriminator and losses."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import run_cli

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.testing.synthetic import make_clip
from keyframe_propagation.pipelines.two_stream.io import config_name, load_two_stream
from keyframe_propagation.pipelines.two_stream.train import (
    PatchDiscriminator,
    ResNetPL,
    SyntheticKeyframes,
    TrainConfig,
    adversarial_losses,
    lr_multiplier,
    masked_l1_loss,
    random_box_mask,
    random_irregular_mask,
    train,
)
from keyframe_propagation.pipelines.weights import read_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of textured images (the synthetic clip's backgrounds) of various sizes."""
    folder = tmp_path_factory.mktemp("images")
    clip = make_clip(num_frames=6, height=96, width=128, seed=11)
    for i, img in enumerate(clip.truth):
        u8 = (img.numpy()[..., ::-1] * 255 + 0.5).astype(np.uint8)
        if i % 2:
            u8 = cv2.resize(u8, (48, 40))  # smaller than the crop: padded
        cv2.imwrite(str(folder / f"img_{i}.png"), u8)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _tiny_cfg(images, out, **kw) -> TrainConfig:
    base = dict(
        images=str(images),
        out=str(out),
        config="tiny",
        size=64,
        steps=30,
        batch_size=2,
        accumulate=1,
        lr=2e-3,
        warmup_steps=0,
        decay_steps=1000,
        disc_ndf=8,
        disc_layers=2,
        log_every=10,
        save_every=1000,
    )
    return TrainConfig(**{**base, **kw})


def test_masks_are_lama_like():
    rng = np.random.default_rng(0)
    strokes = random_irregular_mask(rng, 256, 256)
    boxes = random_box_mask(rng, 256, 256)
    for m in (strokes, boxes):
        assert m.shape == (256, 256) and set(np.unique(m)) <= {0.0, 1.0} and 0 < m.mean() < 1
    assert boxes[:10].sum() == 0 and boxes[:, :10].sum() == 0  # the margin


def test_synthetic_keyframes(images):
    data = SyntheticKeyframes(images, size=64, n_keyframes=3)
    assert len(data.paths) == 6
    batch = data.batch(np.random.default_rng(1), 2)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 1, 64, 64)
    assert batch["keys"].shape == (2, 3, 3, 64, 64) and batch["key_masks"].shape == (2, 3, 1, 64, 64)
    assert 0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1
    # Each frame has its own mask and its own geometry.
    assert not torch.equal(batch["mask"][0], batch["key_masks"][0, 0])
    assert not torch.equal(batch["image"][0], batch["keys"][0, 0])
    with pytest.raises(PipelineError, match="images"):
        SyntheticKeyframes(images / "nope")
    with pytest.raises(PipelineError, match="size"):
        SyntheticKeyframes(images, size=60)


def test_discriminator_and_losses():
    disc = PatchDiscriminator(3, ndf=8, n_layers=4)
    # pix2pixHD's layout (the keys a reference checkpoint's discriminator.* entries have).
    assert "model0.0.weight" in disc.state_dict() and "model5.0.weight" in disc.state_dict()
    x = torch.rand(2, 3, 64, 64)
    logits, feats = disc(x)
    assert logits.shape[:2] == (2, 1) and len(feats) == 5
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    pred = x.clone()
    pred[..., 16:48, 16:48] = 0.5
    assert float(masked_l1_loss(pred, x, mask, 10, 0)) == 0.0  # only known pixels count
    assert float(masked_l1_loss(pred, x, mask, 0, 1)) > 0
    loss, metrics = adversarial_losses(disc, x, pred, mask, r1_coef=0.001)
    loss.backward()
    assert metrics["r1"] > 0 and disc.model0[0].weight.grad is not None


def test_lr_schedule():
    assert lr_multiplier(0, 1000, 10_000) == pytest.approx(1e-4)
    assert lr_multiplier(500, 1000, 10_000) == pytest.approx(0.5, abs=1e-3)
    assert lr_multiplier(1000, 1000, 10_000) == pytest.approx(1.0)
    assert lr_multiplier(11_000, 1000, 10_000) == pytest.approx(1e-4)


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    """40 steps of the full recipe (L1, adversarial + R1, feature matching) on the tiny config."""
    out = tmp_path_factory.mktemp("run")
    logs: list[str] = []
    result = train(_tiny_cfg(images, out, steps=40), log=logs.append)
    return out, result, logs


def test_training_lowers_the_loss(trained):
    out, result, logs = trained
    assert result.step == 40 and len(result.history) == 40
    total = [h["g_total"] for h in result.history]
    assert np.mean(total[-10:]) < 0.85 * np.mean(total[:10])  # the generator's objective goes down
    assert all(np.isfinite(h["d_total"]) for h in result.history)
    assert any("step 40/40" in line for line in logs)
    assert len((out / "log.jsonl").read_text().splitlines()) == 40
    assert json.loads((out / "log.jsonl").read_text().splitlines()[0])["step"] == 1
    # The checkpoint is in the loader's layout.
    sd, _ = read_weights(result.last)
    assert any(k.startswith("generator.") for k in sd) and any(k.startswith("discriminator.") for k in sd)
    assert config_name(load_two_stream(result.last).config) == "tiny"


def test_known_pixels_are_learnt(images, tmp_path):
    """With the L1 term alone, a few dozen steps already lower the known-pixel error on held-out
    examples (with the full recipe the feature-matching term dominates the first steps)."""
    from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator

    cfg = _tiny_cfg(images, tmp_path / "l1", steps=30, weight_adversarial=0.0, weight_feature_matching=0.0)
    torch.manual_seed(cfg.seed)  # as train() does before building the generator: same init
    before = TwoStreamGenerator("tiny")
    after = load_two_stream(train(cfg, log=None).last)
    batch = SyntheticKeyframes(images, size=64).batch(np.random.default_rng(123), 8)

    def known_l1(gen) -> float:
        gen.train()  # batch statistics: 30 steps are too few for the running ones
        img, m, k, km = batch["image"], batch["mask"], batch["keys"], batch["key_masks"]
        with torch.no_grad():
            pred = gen(torch.cat((img * (1 - m), m), 1), torch.cat((k * (1 - km), km), 2))
        return float(((pred - img).abs() * (1 - m)).sum() / (1 - m).sum())

    assert known_l1(after) < 0.95 * known_l1(before)  # measured: 0.50 vs 0.58


def test_trained_checkpoint_loads_into_the_node(trained, comfy_nodes):
    import folder_paths

    from keyframe_propagation.nodes.common import register_model_folders
    from keyframe_propagation.nodes.two_stream import TwoStreamModelLoader

    out, _, _ = trained
    register_model_folders()
    folder_paths.add_model_folder_path("two_stream", str(out))
    (model,) = TwoStreamModelLoader.execute(model_name="last.ckpt", dtype="fp32").result
    assert config_name(model.config) == "tiny"
    clip = make_clip(num_frames=5, height=48, width=64, seed=2)
    inpaint = comfy_nodes.TwoStreamInpaint
    args = {i.id: i.default for i in inpaint.GET_SCHEMA().inputs if getattr(i, "default", None) is not None}
    filled = inpaint.execute(**args | {"images": clip.frames, "masks": clip.masks, "model": model}).result[0]
    known = clip.masks < 0.5
    assert torch.equal(filled[known], clip.frames[known])


def test_resume_continues_from_the_checkpoint(images, tmp_path):
    out = tmp_path / "run"
    first = train(_tiny_cfg(images, out, steps=4, save_every=2, flow="none"), log=None)
    assert (out / "step_2.ckpt").is_file() and (out / "step_4.ckpt").is_file()
    logs: list[str] = []
    again = train(_tiny_cfg(images, out, steps=6, resume=str(first.last), flow="none"), log=logs.append)
    assert again.step == 6 and [h["step"] for h in again.history] == [5, 6]
    assert any("resumed" in line and "step 4" in line for line in logs)
    with pytest.raises(PipelineError, match="resume"):
        train(_tiny_cfg(images, out, resume=str(tmp_path / "nope.ckpt")), log=None)


def test_perceptual_loss_with_given_weights(images, tmp_path):
    """With encoder weights given (random ones here, in the ADE20k file's key layout), the perceptual
    loss is computed and logged; a file with other keys is refused by name."""
    from keyframe_propagation.pipelines.two_stream.train.losses import _ResNet50Dilated

    torch.manual_seed(0)
    enc = _ResNet50Dilated()
    weights = tmp_path / "encoder_epoch_20.pth"
    torch.save({**enc.state_dict(), "fc.weight": torch.zeros(1000, 2048)}, weights)
    pl = ResNetPL(weights)
    x = torch.rand(1, 3, 64, 64)
    assert float(pl(x, x)) == 0.0 and float(pl(x, x.flip(-1))) > 0
    result = train(_tiny_cfg(images, tmp_path / "run", steps=1, perceptual_weights=str(weights)), log=None)
    assert "pl" in result.history[0]
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(PipelineError, match="wrong.pth"):
        ResNetPL(wrong)


def test_train_cli(images, tmp_path):
    out = tmp_path / "cli_run"
    cmd = ["train-two-stream", "--images", str(images)]
    cmd += ["--out", str(out), "--config", "tiny", "--size", "64", "--steps", "2", "--batch-size", "1"]
    cmd += ["--accumulate", "1", "--warmup", "0", "--log-every", "1", "--flow", "none"]
    rc, _, err = run_cli(cmd)
    assert rc == 0, err
    assert "step 2/2" in err and (out / "last.ckpt").is_file()
    rc, _, err = run_cli(cmd[:2] + [str(tmp_path / "nope")] + cmd[3:])
    assert rc == 2 and "images" in err
