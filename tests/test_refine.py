"""Multiscale refinement (pipelines/refine.py) on tiny random generators with Big-LaMa's layout.

The oracle is a plain-loop implementation of one refined level written here from SPEC B (boolean
indexing, kornia's own erosion, ``loss.backward()`` into every leaf), compared with the pipeline.
"""

from __future__ import annotations

import math

import cv2
import kornia
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.ops import pad_to_modulo
from keyframe_propagation.pipelines.refine import multiscale as R
from keyframe_propagation.pipelines.refine.lama import LamaConfig
from keyframe_propagation.pipelines.testing.lama import random_lama

TINY = LamaConfig(ngf=8, n_blocks=2)
H, W = 128, 160  # with min_side 64: two levels, 64x80 and 128x160
CFG = dict(min_side=64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return random_lama(TINY, seed=1)


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(1, 3, 8, 10, generator=g), size=(H, W), mode="bicubic").clamp(0, 1)
    image = (image + 0.05 * torch.rand(1, 3, H, W, generator=g)).clamp(0, 1)
    mask = torch.zeros(1, 1, H, W)
    mask[..., 40:90, 50:110] = 1
    mask[..., 60:70, 30:50] = 1
    return image, mask


# --------------------------------------------------------------------------------------------------
# Pyramid and padding
# --------------------------------------------------------------------------------------------------


def test_pyramid_sizes_and_padding_for_odd_sizes():
    h, w = 1365, 2047  # 2.79 MP > 1.8 MP budget
    r = math.sqrt(1_800_000 / (h * w))
    bh, bw = int(h * r), int(w * r)
    assert (bh, bw) == (1095, 1642)
    # min(1095, 1642) / 512 = 2.14 -> log2 1.1 -> round 1 -> 2 levels
    assert R.pyramid_sizes(h, w) == [(547, 821), (1095, 1642)]
    image = torch.rand(1, 3, h, w)
    mask = torch.zeros(1, 1, h, w)
    mask[..., 600:700, 1000:1003] = 1
    images, masks = R.build_pyramid(image, mask)
    assert [tuple(i.shape[-2:]) for i in images] == [(547, 821), (1095, 1642)]
    assert [tuple(m.shape[-2:]) for m in masks] == [(547, 821), (1095, 1642)]
    padded = pad_to_modulo(images[0], 8)
    assert tuple(padded.shape[-2:]) == (552, 824)
    assert tuple(pad_to_modulo(images[1], 8).shape[-2:]) == (1096, 1648)
    # Reflection at the bottom/right: row 547 + k mirrors row 547 - 2 - k (edge row not repeated).
    assert torch.equal(padded[..., :547, :821], images[0])
    assert torch.equal(padded[..., 547:, :821], images[0][..., 541:546, :].flip(-2))
    assert torch.equal(padded[..., :547, 821:], images[0][..., :, 817:820].flip(-1))
    # A thin mask survives the budget resize and the pyramid (conservative masks).
    assert all(float(m.max()) == 1.0 for m in masks)
    assert set(torch.unique(masks[0]).tolist()) <= {0.0, 1.0}


def test_number_of_levels_follows_min_side_and_max_scales():
    assert R.n_scales_for(512, 512) == 1
    assert R.n_scales_for(724, 1000) == 1  # log2(1.41) = 0.5 -> round half to even -> 0
    assert R.n_scales_for(1024, 1024) == 2
    assert R.n_scales_for(2048, 4096, max_scales=3) == 3
    assert R.n_scales_for(4096, 4096, max_scales=3) == 3
    assert R.n_scales_for(4096, 4096, max_scales=9) == 4
    assert R.pyramid_sizes(1200, 1500, px_budget=10**8) == [(600, 750), (1200, 1500)]
    assert R.pyramid_sizes(301, 203, min_side=50) == [(75, 50), (150, 101), (301, 203)]


def test_coarser_masks_cover_every_hole_pixel():
    g = torch.Generator().manual_seed(4)
    fine = (torch.rand(1, 1, 64, 96, generator=g) > 0.97).float()
    coarse = R.downscale_mask(fine)
    assert coarse.shape[-2:] == (32, 48)
    pooled = F.max_pool2d(fine, 2)  # any hole pixel in the 2x2 footprint
    assert bool((coarse >= pooled).all())


def test_erosion_equals_kornia_on_binary_masks():
    g = torch.Generator().manual_seed(5)
    m = (F.interpolate(torch.rand(1, 1, 4, 5, generator=g), size=(60, 80), mode="bilinear") > 0.5).float()
    kernel = torch.from_numpy(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)).astype(bool)).float()
    ref = kornia.morphology.erosion(m, kernel)
    ref = (ref >= 1 - 1e-8).float()
    assert torch.equal(R.erode(m, 15), ref)
    assert 0 < float(ref.sum()) < float(m.sum())


# --------------------------------------------------------------------------------------------------
# The oracle: one refined level written as a plain loop
# --------------------------------------------------------------------------------------------------


def _pad8(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="reflect")


def _pyrdown(x: torch.Tensor) -> torch.Tensor:
    x = kornia.filters.gaussian_blur2d(x, kernel_size=(5, 5), sigma=(1.0, 1.0))
    return F.interpolate(x, size=(x.shape[2] // 2, x.shape[3] // 2), mode="bilinear", align_corners=False)


def _plain_level(gen, image, mask):
    h, w = image.shape[-2:]
    img, m = _pad8(image), _pad8(mask)
    m = (m >= 1e-8).float()
    with torch.no_grad():
        pred = gen(torch.cat([img * (1 - m), m], dim=1))
    return (m * pred + (1 - m) * img)[..., :h, :w]


def _oracle_level(gen, image, mask, ref_lower, n_iters, lr, known_scale=1.0):
    """SPEC B's finer level, literally: front without grad, Adam on both feature tensors, n_iters
    forward passes of the rear, backward + step on all but the last. known_scale weighs the
    known-pixel term (crop mode)."""
    h, w = image.shape[-2:]
    img, m = _pad8(image), _pad8(mask)
    m = (m >= 1e-8).float()
    with torch.no_grad():
        z1, z2 = gen.model[0:5](torch.cat([img * (1 - m), m], dim=1))
    z1, z2 = z1.detach().clone(), z2.detach().clone()
    z1.requires_grad, z2.requires_grad = True, True
    opt = torch.optim.Adam([z1, z2], lr=lr)
    m3 = m.repeat(1, 3, 1, 1)
    ekernel = torch.from_numpy(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)).astype(bool)).float()
    losses = []
    for i in range(n_iters):
        opt.zero_grad()
        pred = gen.model[5:]((z1, z2))
        pred_down = _pyrdown(pred[:, :, :h, :w])
        md = F.interpolate(m[:, :1, :h, :w], size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        md = (md >= 1 - 1e-8).float()
        md = kornia.morphology.erosion(md, ekernel)
        md = (md >= 1 - 1e-8).float().repeat(1, 3, 1, 1)
        loss = known_scale * torch.mean(torch.abs(pred[m3 < 1e-8] - img[m3 < 1e-8]))
        loss = loss + torch.mean(torch.abs(pred_down[md >= 1e-8] - ref_lower[md >= 1e-8]))
        losses.append(float(loss.detach()))
        if i < n_iters - 1:
            loss.backward()
            opt.step()
    out = (m3 * pred + (1 - m3) * img)[..., :h, :w]
    return out.detach(), losses


def test_pipeline_matches_the_plain_loop_oracle(model, sample):
    image, mask = sample
    cfg = R.RefineConfig(n_iters=6, lr=0.002, **CFG)
    res = R.multiscale_refine(model, image, mask, cfg)
    images, masks = R.build_pyramid(image, mask, 64, 3, 1_800_000)
    assert len(images) == 2
    coarse = _plain_level(model, images[0], masks[0])
    # The oracle needs weights it can back-propagate through; the pipeline's model has them frozen.
    gen = random_lama(TINY, seed=1)
    gen.requires_grad_(True)
    expected, losses = _oracle_level(gen, images[1], masks[1], coarse, 6, 0.002)
    assert res.sizes == [(64, 80), (128, 160)]
    assert len(res.losses[1]) == 6
    assert res.losses[1] == pytest.approx(losses, rel=1e-4)
    assert torch.allclose(res.image, expected, atol=2e-5)
    assert not torch.allclose(res.image, _plain_level(model, images[1], masks[1]), atol=1e-3)


def test_n_iters_1_is_the_plain_multiscale_pass(model, sample):
    image, mask = sample
    res = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=1, **CFG))
    images, masks = R.build_pyramid(image, mask, 64, 3, 1_800_000)
    with torch.no_grad():
        plain = model.inpaint(images[1], masks[1])
    assert torch.equal(res.image, plain)
    assert len(res.losses[1]) == 1  # one pass, its loss reported, no step


def test_n_iters_0_is_one_plain_pass_at_the_working_size(model, sample):
    image, mask = sample
    res = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=0, **CFG))
    assert res.sizes == [(H, W)]
    with torch.no_grad():
        assert torch.equal(res.image, model.inpaint(image, mask))


def test_known_pixels_untouched_and_loss_decreases(model, sample):
    image, mask = sample
    res = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=8, lr=0.01, **CFG))
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(res.image[known], image[known])
    ls = res.losses[1]
    assert len(ls) == 8 and ls[-1] < ls[0] * 0.97
    assert all(b < a for a, b in zip(ls, ls[1:]))
    assert res.final_loss == ls[-1]


def test_checkpointing_gives_the_same_result(model, sample):
    image, mask = sample
    a = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=4, **CFG))
    b = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=4, checkpoint_segments=3, **CFG))
    assert torch.allclose(a.image, b.image, atol=1e-6)
    assert a.losses[1] == pytest.approx(b.losses[1], rel=1e-6)


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_autocast_one_optimiser_step_per_iteration(model, sample, mode, monkeypatch):
    image, mask = sample
    steps = []
    orig = torch.optim.Adam.step

    def counting_step(self, *a, **k):
        steps.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    res = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=5, autocast=mode, **CFG))
    ref = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=5, **CFG))
    assert len(steps) == 4 + 4  # n_iters - 1 per run, fp32 run included
    assert all(math.isfinite(v) for v in res.losses[1])
    assert res.losses[1][-1] < res.losses[1][0]
    assert float((res.image - ref.image).abs().max()) < 0.1
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(res.image[known], image[known])


def test_crop_mode_changes_only_the_box_around_the_hole(model, sample):
    image, mask = sample
    res = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=4, crop=True, crop_margin=16, **CFG))
    box = res.crops[1]
    assert res.crops[0] is None and box is not None
    y0, y1, x0, x1 = box
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    assert y0 <= int(ys.min()) - 16 and y1 >= int(ys.max()) + 1 + 16 or y0 == 0 or y1 == H
    assert x0 <= int(xs.min()) - 16 and x1 >= int(xs.max()) + 1 + 16
    assert y0 % 2 == 0 and x0 % 2 == 0 and (y1 - y0) % 8 == 0 and (x1 - x0) % 8 == 0
    outside = torch.ones_like(mask, dtype=torch.bool)
    outside[..., y0:y1, x0:x1] = False
    assert torch.equal(res.image[outside.expand_as(image)], image[outside.expand_as(image)])
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(res.image[known], image[known])
    assert res.losses[1][-1] < res.losses[1][0]
    hole = (mask > 0.5).expand_as(image)
    assert float((res.image - image)[hole].abs().mean()) > 0.01  # the hole was filled


def test_crop_mode_matches_the_oracle_on_the_box_with_the_known_term_reweighted(model, sample):
    """The crop is refined as SPEC B's level on the box, with the known-pixel mean weighted by the box's
    share of the level's known pixels, so the two terms are balanced as on the whole image."""
    image, mask = sample
    res = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=4, crop=True, crop_margin=16, **CFG))
    y0, y1, x0, x1 = res.crops[1]
    images, masks = R.build_pyramid(image, mask, 64, 3, 1_800_000)
    coarse = _plain_level(model, images[0], masks[0])
    img, m = images[1][..., y0:y1, x0:x1], masks[1][..., y0:y1, x0:x1]
    share = float((_pad8(m) < 1e-8).sum()) / float((_pad8(masks[1]) < 1e-8).sum())
    assert 0.1 < share < 0.9
    gen = random_lama(TINY, seed=1)
    gen.requires_grad_(True)
    ref = coarse[..., y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
    expected, losses = _oracle_level(gen, img, m, ref, 4, 0.002, known_scale=share)
    assert res.losses[1] == pytest.approx(losses, rel=1e-4)
    assert torch.allclose(res.image[..., y0:y1, x0:x1], expected, atol=2e-5)


def test_crop_box_alignment_near_borders():
    m = torch.zeros(1, 1, 101, 203)
    m[..., 90:101, 0:5] = 1
    y0, y1, x0, x1 = R._crop_box(m, 8, 8)
    assert y1 == 101 or (y1 - y0) % 8 == 0
    assert y0 % 2 == 0 and x0 == 0 and (x1 - x0) % 8 == 0
    assert y0 <= 82 and x1 >= 13
    m[...] = 1
    assert R._crop_box(m, 8, 8) is None  # the whole image: no crop


def test_early_stopping_stops_on_a_plateau(model, sample):
    image, mask = sample
    calls = []
    cfg = R.RefineConfig(n_iters=15, early_stop=True, patience=2, min_improvement=0.5, **CFG)
    res = R.multiscale_refine(model, image, mask, cfg, progress=lambda d, t, s: calls.append((d, t)))
    # No iteration improves by 50%: stops after the first pass plus `patience` stale ones.
    assert len(res.losses[1]) == 3
    assert calls[-1] == (16, 16)  # skipped iterations count as done
    res2 = R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=6, early_stop=True, **CFG))
    assert len(res2.losses[1]) <= 6


def test_progress_per_pass_and_cancel(model, sample):
    image, mask = sample
    calls = []
    R.multiscale_refine(
        model, image, mask, R.RefineConfig(n_iters=4, **CFG), progress=lambda d, t, s: calls.append((d, t))
    )
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert calls[-1] == (5, 5) and {t for _, t in calls} == {5}

    class Cancelled(Exception):
        pass

    def cancel(done, total, text):
        if done >= 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=10, **CFG), progress=cancel)


def test_works_under_inference_mode_with_weights_made_there(sample):
    image, mask = sample
    ref = R.multiscale_refine(random_lama(TINY, seed=2), image, mask, R.RefineConfig(n_iters=3, **CFG))
    with torch.inference_mode():
        gen = random_lama(TINY, seed=2)
        for p in gen.parameters():  # as if loaded by a node running under inference mode
            p.data = p.data.clone()
        assert next(gen.parameters()).is_inference()
        res = R.multiscale_refine(gen, image.clone(), mask.clone(), R.RefineConfig(n_iters=3, **CFG))
    assert torch.equal(res.image, ref.image)


def test_guide_replaces_the_coarsest_pass(model, sample):
    image, mask = sample
    grey = torch.full((1, 3, 32, 40), 0.5)  # a low-resolution inpainted image
    cfg = R.RefineConfig(n_iters=10, lr=0.02, **CFG)
    with_guide = R.multiscale_refine(model, image, mask, cfg, guide=grey)
    without = R.multiscale_refine(model, image, mask, cfg)
    hole = (mask > 0.5).expand_as(image)
    d_with = float((with_guide.image[hole] - 0.5).abs().mean())
    d_without = float((without.image[hole] - 0.5).abs().mean())
    assert d_with < d_without  # the fill is pulled towards the guide
    # One level: the result is the guide itself inside the hole.
    one = R.multiscale_refine(model, image, mask, R.RefineConfig(max_scales=1), guide=grey)
    assert torch.allclose(one.image[hole], torch.full_like(one.image[hole], 0.5))


def test_empty_mask_returns_the_image(model, sample):
    image, _ = sample
    res = R.multiscale_refine(model, image, torch.zeros(1, 1, H, W), R.RefineConfig(**CFG))
    assert torch.equal(res.image, image)


class ConvRefinable(nn.Module):
    """A non-LaMa model: any front/rear split can be refined."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.dec = nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1)

    def front(self, image, mask):
        return (self.enc(torch.cat([image * (1 - mask), mask], 1)),)

    def rear(self, features):
        return torch.sigmoid(self.dec(torch.relu(features[0])))


def test_any_refinable_model(sample):
    image, mask = sample
    net = ConvRefinable().eval()
    assert isinstance(net, R.Refinable)
    res = R.multiscale_refine(net, image, mask, R.RefineConfig(n_iters=5, lr=0.05, **CFG))
    assert res.losses[1][-1] < res.losses[1][0]
    with pytest.raises(PipelineError, match="model"):
        R.multiscale_refine(object(), image, mask)  # type: ignore[arg-type]


def test_refine_frames_batch_budget_and_restore(model):
    g = torch.Generator().manual_seed(9)
    frames = torch.rand(2, 90, 120, 3, generator=g)
    masks = torch.zeros(1, 90, 120)
    masks[0, 30:60, 40:80] = 1
    calls = []
    cfg = R.RefineConfig(n_iters=2, min_side=32, px_budget=60 * 80)
    out = R.refine_frames(model, frames, masks, cfg, progress=lambda d, t, s: calls.append((d, t)))
    assert out.shape == (2, 90, 120, 3) and out.dtype == torch.float32
    known = (masks < 0.5)[..., None].expand(2, -1, -1, 3)
    assert torch.equal(out[known], frames[known])  # known pixels of the full-size input, bit for bit
    # Budget 4800 px: working size 60x80 -> 2 levels -> 1 + 2 passes per frame.
    assert R.pyramid_sizes(90, 120, 32, 3, 60 * 80) == [(30, 40), (60, 80)]
    assert calls[-1] == (6, 6) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    small = R.refine_frames(model, frames, masks, cfg, restore_size=False)
    assert small.shape == (2, 60, 80, 3)


def test_input_errors_name_the_input(model, sample):
    image, mask = sample
    with pytest.raises(PipelineError, match="mask"):
        R.multiscale_refine(model, image, mask[..., :50])
    with pytest.raises(PipelineError, match="n_iters"):
        R.multiscale_refine(model, image, mask, R.RefineConfig(n_iters=-1))
    with pytest.raises(PipelineError, match="autocast"):
        R.RefineConfig(autocast="int8").check()
    with pytest.raises(PipelineError, match="mask"):
        R.refine_frames(model, torch.rand(2, 32, 32, 3), torch.zeros(3, 32, 32))
    with pytest.raises(PipelineError, match="guide"):
        R.refine_frames(
            model, torch.rand(2, 32, 32, 3), torch.zeros(2, 32, 32), guides=torch.rand(3, 8, 8, 3)
        )


def test_cli_refine(tmp_path, model):
    import numpy as np
    from safetensors.torch import save_file

    from keyframe_propagation.cli import main
    from keyframe_propagation.pipelines.clip import load_image_tensor

    save_file(model.state_dict(), tmp_path / "tiny.safetensors")
    g = np.random.default_rng(0)
    img = (g.random((100, 140, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), img)
    mk = np.zeros((100, 140), np.uint8)
    mk[20:60, 40:80] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mk)
    base = ["refine", "--model", str(tmp_path / "tiny.safetensors"), "--image", str(tmp_path / "img.png")]
    base += ["--mask", str(tmp_path / "mask.png"), "--min-side", "50"]
    assert main([*base, "--out", str(tmp_path / "out" / "res.png"), "--n-iters", "3"]) == 0
    out = load_image_tensor(tmp_path / "out" / "res.png")
    src = load_image_tensor(tmp_path / "img.png")
    known = torch.from_numpy(mk == 0)
    assert out.shape == (100, 140, 3) and torch.equal(out[known], src[known])
    assert not torch.equal(out[~known], src[~known])
    # --n-iters 0: plain LaMa at the input size.
    assert main([*base, "--out", str(tmp_path / "plain.png"), "--n-iters", "0"]) == 0
    plain = load_image_tensor(tmp_path / "plain.png")
    with torch.no_grad():
        ref = model.inpaint(src.permute(2, 0, 1)[None], known.logical_not().float()[None, None])
    assert torch.allclose(plain, ref[0].permute(1, 2, 0), atol=1 / 255 + 1e-6)
    assert main([*base, "--out", str(tmp_path / "x.png"), "--model", str(tmp_path / "missing.pt")]) == 2


def test_soft_masks_count_as_hole_wherever_non_zero(model):
    """As the reference (mask >= 1e-8 -> hole): a feathered edge is filled, zero pixels are kept."""
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(1, 64, 80, 3, generator=g)
    masks = torch.zeros(1, 64, 80)
    masks[0, 20:40, 20:50] = 1
    masks[0, 18:20, 20:50] = 0.2  # feather
    out = R.refine_frames(model, frames, masks, R.RefineConfig(n_iters=2, min_side=32))
    known = masks == 0
    assert torch.equal(out[known], frames[known])
    assert not torch.equal(out[0, 18:20, 20:50], frames[0, 18:20, 20:50])
