"""Pixels no frame shows: filled once and carried on with the flow (stable from frame to frame), by
Telea or an image inpainter (LaMa); their share of the hole reported by the pipeline, node and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import node_defaults, run_cli
from PIL import Image
from safetensors.torch import save_file

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.flow import FlowEstimator
from keyframe_propagation.pipelines.propagate import FillStats, PropagationConfig, propagate_fill
from keyframe_propagation.pipelines.refine.lama import LamaConfig
from keyframe_propagation.pipelines.refine.multiscale import frame_filler
from keyframe_propagation.pipelines.testing.lama import random_lama
from keyframe_propagation.pipelines.testing.synthetic import crossing_clip, moving_box_clip, psnr_in_mask

pytestmark = pytest.mark.usefixtures("one_thread")

T, H, W = 8, 64, 96
BOX = (slice(20, 44), slice(30, 70))


def _static_clip(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A still scene with a static hole: no frame shows anything of the hole."""
    rng = np.random.default_rng(seed)
    still = torch.from_numpy(rng.random((H, W, 3)).astype(np.float32))
    frames = still.expand(T, -1, -1, -1).clone()
    masks = torch.zeros(T, H, W)
    masks[:, BOX[0], BOX[1]] = 1.0
    return frames, masks


def _zero_flow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.zeros(a.shape[0], 2, a.shape[1], a.shape[2])


class CountingFill:
    """A fill that paints a different random colour per call (and counts its calls)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame: torch.Tensor, to_fill: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        colour = torch.rand(3, generator=torch.Generator().manual_seed(self.calls))
        return torch.where(to_fill[..., None] > 0.5, colour, frame)


@pytest.mark.parametrize("chunk", [3, 20])
def test_a_carried_fill_of_a_never_seen_region_is_the_same_in_every_frame(chunk):
    frames, masks = _static_clip()
    hole = masks > 0.5
    carried_fill = CountingFill()
    stats = FillStats()
    out, unseen = propagate_fill(
        frames,
        masks,
        estimator=_zero_flow,
        config=PropagationConfig(chunk=chunk, lookahead=2, unseen_fill="carried"),
        fill=carried_fill,
        stats=stats,
    )
    assert torch.equal(unseen > 0.5, hole)  # never seen, whatever fills it
    assert carried_fill.calls == 1, "filled where it first appears, then carried"
    for t in range(1, T):
        assert torch.allclose(out[t][hole[t]], out[0][hole[0]], atol=3e-6 * t), t
    assert torch.equal(out[~hole[..., None].expand_as(out)], frames[~hole[..., None].expand_as(frames)])
    assert stats.frames == T and stats.unseen_pixels == stats.hole_pixels == int(hole.sum())
    assert stats.unseen_share == 1.0 and "100.0% of the hole" in stats.summary()

    # Per frame (today's behaviour): a fill in every frame, each its own.
    per_frame = CountingFill()
    out2, _ = propagate_fill(frames, masks, estimator=_zero_flow, fill=per_frame)
    assert per_frame.calls == T and not torch.allclose(out2[1][hole[1]], out2[0][hole[0]])


def test_carried_fill_keeps_what_frames_show_first():
    """On the crossing clip, colours some frame shows win over a carried fill, and the carried fill
    changes only the never-seen part (the same pixels as per frame, the same seen colours)."""
    clip = crossing_clip(num_frames=24, seed=0)
    h = clip.masks[..., None]
    inputs = clip.frames * (1 - h) + 0.5 * h
    stats = FillStats()
    per, u1 = propagate_fill(inputs, clip.masks)
    car, u2 = propagate_fill(inputs, clip.masks, config=PropagationConfig(unseen_fill="carried"), stats=stats)
    assert torch.equal(u1, u2) and 0 < float(u1.sum()) < float(clip.masks.sum())
    seen = (u1 < 0.5)[..., None].expand_as(per)
    assert torch.equal(per[seen], car[seen])
    assert stats.unseen_pixels == int(u1.sum()) and stats.hole_pixels == int(clip.masks.sum())


def test_lama_fills_the_never_seen_region_on_one_frame_and_it_is_carried(monkeypatch):
    frames, masks = _static_clip(seed=1)
    hole = masks > 0.5
    lama = random_lama(LamaConfig(ngf=8, n_blocks=1), seed=3)
    calls = []
    fill = frame_filler(lama)

    def counting(frame, to_fill):
        calls.append(int(to_fill.sum()))
        return fill(frame, to_fill)

    out, _ = propagate_fill(
        frames, masks, estimator=_zero_flow, config=PropagationConfig(unseen_fill="carried"), fill=counting
    )
    assert calls == [int(hole[0].sum())]
    # What LaMa made of frame 0 (its own pass, composited), in every frame.
    want = lama.inpaint(frames[0].permute(2, 0, 1)[None], masks[0][None, None])[0].permute(1, 2, 0)
    for t in range(T):  # (bilinear sampling at whole pixels is exact to ~2e-6 a frame)
        assert torch.allclose(out[t][hole[t]], want[hole[0]], atol=3e-6 * (t + 1)), t
    assert torch.equal(out[0][~hole[0]], frames[0][~hole[0]])


@pytest.fixture
def tiny_lama_file(tmp_path):
    lama = random_lama(LamaConfig(ngf=8, n_blocks=1), seed=4)
    path = tmp_path / "tiny-lama.safetensors"
    save_file({f"generator.{k}": v for k, v in lama.state_dict().items()}, path)
    return path


def test_cli_remove_with_a_fill_model_reports_the_never_seen_share(tmp_path, tiny_lama_file):
    frames, masks = _static_clip()
    (tmp_path / "f").mkdir()
    for t in range(T):
        Image.fromarray((frames[t].numpy() * 255).astype(np.uint8)).save(tmp_path / "f" / f"{t:05d}.png")
    Image.fromarray((masks[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    argv = [
        "remove",
        "--frames",
        str(tmp_path / "f"),
        "--masks",
        str(tmp_path / "mask.png"),
        "--threads",
        "1",
    ]
    rc, out, err = run_cli([*argv, "--out", str(tmp_path / "o1"), "--fill-model", str(tiny_lama_file)])
    assert rc == 0, err
    assert "never seen: 100.0% of the hole" in out and "by LaMa" in out
    res = [np.asarray(Image.open(tmp_path / "o1" / f"{t:05d}.png")) for t in range(T)]
    for t in range(1, T):  # carried: the same fill in every frame (8-bit PNGs)
        assert np.abs(res[t].astype(int) - res[0].astype(int)).max() <= 1, t
    rc, out, err = run_cli([*argv, "--out", str(tmp_path / "o2")])
    assert rc == 0 and "by Telea" in out
    rc, out, err = run_cli([*argv, "--out", str(tmp_path / "o3"), "--fill-model", str(tmp_path / "nope.pt")])
    assert rc == 2 and "fill-model" in err
    bad = [
        *argv,
        "--out",
        str(tmp_path / "o4"),
        "--fill-model",
        str(tiny_lama_file),
        "--fill-refine-iters",
        "-1",
    ]
    rc, out, err = run_cli(bad)
    assert rc == 2 and "--fill-refine-iters" in err and not (tmp_path / "o4" / "00000.png").exists()


def test_inpaint_node_fill_model_and_never_seen_text(comfy_nodes):
    node = comfy_nodes.TwoStreamInpaint
    frames, masks = _static_clip(seed=2)
    hole = masks > 0.5
    lama = random_lama(LamaConfig(ngf=8, n_blocks=1), seed=5)
    base = node_defaults(node) | {"images": frames, "masks": masks}
    res = node.execute(**base | {"fill_model": lama})
    filled, unseen = res.result[:2]
    assert torch.equal(unseen > 0.5, hole)
    assert any("never seen: 100.0% of the hole" in t for t in res.ui["text"])
    for t in range(1, T):  # carried from the first frame (DIS flow of a still clip is ~0)
        assert (filled[t][hole[t]] - filled[0][hole[0]]).abs().max() < 0.02, t
    plain = node.execute(**base)
    assert any("never seen" in t for t in plain.ui["text"])
    with pytest.raises(PipelineError, match="fill_model"):
        node.execute(**base | {"fill_model": torch.nn.Linear(2, 2)})
    with pytest.raises(PipelineError, match="unseen_fill"):
        node.execute(**base | {"unseen_fill": "sometimes"})


# ------------------------------------------------------------------------------------------------
# flow_prefill on the node and the command line
# ------------------------------------------------------------------------------------------------


def test_flow_prefill_on_the_node(comfy_nodes):
    node = comfy_nodes.TwoStreamInpaint
    clip = moving_box_clip()
    base = node_defaults(node) | {"images": clip.frames, "masks": clip.masks}
    on, off = node.execute(**base | {"flow_prefill": True}), node.execute(**base)
    expected, _ = propagate_fill(
        clip.frames,
        clip.masks,
        config=PropagationConfig(flow_prefill=True),
        estimator=FlowEstimator("dis", "medium"),
    )
    assert torch.equal(on.result[0], expected)
    assert psnr_in_mask(on.result[0], clip.truth, clip.masks) > psnr_in_mask(
        off.result[0], clip.truth, clip.masks
    )


def test_flow_prefill_on_the_command_line():
    """--flow-prefill reaches the propagation settings and the resume fingerprint's settings (a
    record written without it is not resumed with it)."""
    from keyframe_propagation.cli.main import build_parser
    from keyframe_propagation.cli.remove import _config_from_args, _fingerprint

    argv = ["remove", "--frames", "f", "--masks", "m", "--out", "o"]
    on = build_parser().parse_args([*argv, "--flow-prefill"])
    off = build_parser().parse_args(argv)
    assert _config_from_args(on).flow_prefill and not _config_from_args(off).flow_prefill
    assert _config_from_args(off) == PropagationConfig()  # the command line's defaults are the pipeline's

    class Clip:
        def fingerprint(self) -> str:
            return "the same clip"

    assert _fingerprint(on, Clip()) != _fingerprint(off, Clip())


def test_flow_passes_on_the_node_and_the_command_line(comfy_nodes):
    """flow_passes=2 on the node is the pipeline's; --flow-passes 2 reaches the settings and the
    resume fingerprint (a one-pass record is not resumed by a two-pass run)."""
    from keyframe_propagation.cli.main import build_parser
    from keyframe_propagation.cli.remove import _config_from_args, _fingerprint

    node = comfy_nodes.TwoStreamInpaint
    clip = moving_box_clip(num_frames=8)
    base = node_defaults(node) | {"images": clip.frames, "masks": clip.masks}
    assert base["flow_passes"] == 1
    two = node.execute(**base | {"flow_passes": 2})
    expected, _ = propagate_fill(
        clip.frames,
        clip.masks,
        config=PropagationConfig(flow_passes=2),
        estimator=FlowEstimator("dis", "medium"),
    )
    assert torch.equal(two.result[0], expected)

    argv = ["remove", "--frames", "f", "--masks", "m", "--out", "o"]
    on = build_parser().parse_args([*argv, "--flow-passes", "2"])
    off = build_parser().parse_args(argv)
    assert _config_from_args(on).flow_passes == 2 and _config_from_args(off).flow_passes == 1

    class Clip:
        def fingerprint(self) -> str:
            return "the same clip"

    assert _fingerprint(on, Clip()) != _fingerprint(off, Clip())
