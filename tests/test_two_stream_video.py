"""The two-stream video protocol on small synthetic clips with a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.flow import FlowEstimator, compute_flows
from keyframe_propagation.pipelines.propagate import PropagationConfig
from keyframe_propagation.pipelines.testing.synthetic import make_clip
from keyframe_propagation.pipelines.two_stream.flows import model_flows
from keyframe_propagation.pipelines.two_stream.io import save_two_stream
from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator
from keyframe_propagation.pipelines.two_stream.video import (
    TwoStreamVideo,
    TwoStreamVideoConfig,
    generated_indices,
    keyframes_for,
    parse_offsets,
    remove_with_model,
    working_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> TwoStreamGenerator:
    torch.manual_seed(0)
    return TwoStreamGenerator("tiny").eval()


@pytest.fixture(scope="module")
def clip():
    return make_clip(num_frames=25, height=72, width=120, seed=4)


def _known_unchanged(out: torch.Tensor, frames: torch.Tensor, masks: torch.Tensor) -> bool:
    known = masks < 0.5
    return torch.equal(out[known], frames[known])


# --------------------------------------------------------------------------------------------------
# Planning helpers
# --------------------------------------------------------------------------------------------------


def test_parse_offsets():
    assert parse_offsets("-40,-20,-10,10,20,40") == (-40, -20, -10, 10, 20, 40)
    assert parse_offsets(" 5, -5 ; +15 ") == (-5, 5, 15)
    assert parse_offsets("") == ()
    with pytest.raises(PipelineError, match="keyframe_offsets"):
        parse_offsets("-10,x")
    with pytest.raises(PipelineError, match="keyframe_offsets"):
        parse_offsets("0,10")


def test_generated_indices_and_keyframes():
    assert generated_indices(70, 20) == [0, 20, 40, 60, 69]
    assert generated_indices(61, 20) == [0, 20, 40, 60]
    assert generated_indices(1, 20) == [0]
    offsets = (-40, -20, -10, 10, 20, 40)
    assert keyframes_for(0, 70, offsets) == [10, 20, 40]
    assert keyframes_for(40, 70, offsets) == [0, 20, 30, 50, 60]
    # Edited keyframes are always given, however far.
    assert keyframes_for(60, 70, offsets, edited=[3, 60]) == [3, 20, 40, 50]


def test_working_size():
    assert working_size(1080, 1920, 512) == (288, 512)
    assert working_size(240, 432, 512) == (240, 432)  # never upscaled
    assert working_size(250, 437, 512) == (248, 440)  # multiples of 8
    assert working_size(30, 2000, 512) == (8, 512)


def test_model_flows_recipe():
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(48, 64, 3, generator=g)
    mask = torch.zeros(48, 64)
    mask[10:30, 20:40] = 1
    est = FlowEstimator("dis", "medium", work_size=(32, 32))
    flows, errs = model_flows(frame, frame[None].repeat(2, 1, 1, 1), mask, est, (32, 32))
    assert flows.shape == (2, 2, 48, 64) and errs.shape == (2, 1, 48, 64)
    assert float(flows.abs().max()) < 0.5 and float(errs.max()) < 1.0  # same frame: ~no motion
    # Given pairs are resized with magnitude scaling and filled in the target's mask.
    f = torch.zeros(2, 24, 32)
    f[0] = 2.0
    flows, errs = model_flows(frame, frame[None], mask, None, (32, 32), given=[(f, -f)])
    assert torch.allclose(flows[0, 0], torch.full((48, 64), 4.0), atol=1e-4)
    assert float(errs[..., :56].abs().max()) < 1e-4  # a consistent pair (but for the border)
    assert float(errs[..., -1].min()) == pytest.approx(4.0 * (64 / 32) / 2)  # left the frame: |f| x w/256
    with pytest.raises(PipelineError, match="flow"):
        model_flows(frame, frame[None], mask, None, (32, 32))


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------


def test_protocol_on_a_synthetic_clip(tiny, clip):
    cfg = TwoStreamVideoConfig(generate_every=10)
    video = TwoStreamVideo(tiny, clip.frames, clip.masks, config=cfg)
    calls = []
    out, unseen = video.run(progress=lambda d, t, s: calls.append((d, t, s)))
    assert out.shape == clip.frames.shape and unseen.shape == clip.masks.shape
    assert _known_unchanged(out, clip.frames, clip.masks)
    # The model generated exactly every 10th frame and the last one.
    assert video.generated == [0, 10, 20, 24]
    assert [c.anchors for c in video.chunks] == [(0, 10), (10, 20), (20, 24)]
    # The generated frames are in the output as the model made them.
    for g in (0, 10, 24):
        assert torch.allclose(out[g], video.generate(g), atol=1e-6)
    # Progress: one unit per chunk, monotone, ending at (3, 3).
    done = [d for d, t, _ in calls]
    assert all(t == 3 for _, t, _ in calls)
    assert done == sorted(done) and sorted(set(done)) == [0, 1, 2, 3] and calls[-1][:2] == (3, 3)
    assert any("chunk 2/3: generating frame 20" in s for _, _, s in calls)
    # Frames in between were propagated, not left as they were.
    m = clip.masks[5] > 0.5
    assert not torch.equal(out[5][m], clip.frames[5][m])


@pytest.mark.parametrize("passes", [1, 2])
def test_memory_is_bounded_by_the_chunk(tiny, passes):
    """A 60-frame lazy clip: frames are read near the chunk being written, at most two generated
    frames are held (three with flow_passes=2: its first pass is a chunk ahead), results go to the
    sink in order."""
    clip = make_clip(num_frames=60, height=48, width=64, seed=5)

    class Lazy:
        def __init__(self, data):
            self.data, self.reads = data, []

        def __len__(self):
            return len(self.data)

        def __getitem__(self, t):
            self.reads.append((int(t), written[-1] if written else -1))
            return self.data[t]

    written: list[int] = []
    frames = Lazy(clip.frames)
    cfg = TwoStreamVideoConfig(
        generate_every=10,
        keyframe_offsets=(-20, -10, 10, 20),
        propagation=PropagationConfig(flow_passes=passes),
    )
    video = TwoStreamVideo(tiny, frames, Lazy(clip.masks), config=cfg)
    assert video.run(sink=lambda t, f, u: written.append(t)) is None
    assert written == list(range(60))
    assert video.max_cached <= passes + 1
    # Every read is within the keyframe reach + one chunk (two with flow_passes=2) of the last frame written.
    assert all(t >= last - 20 - 10 for t, last in frames.reads)
    assert all(t <= last + 1 + 10 * passes + 20 for t, last in frames.reads)


def test_edited_keyframes_are_given_and_not_regenerated(tiny, clip):
    frames, masks = clip.frames.clone(), clip.masks.clone()
    frames[10], masks[10] = clip.truth[10], 0  # an artist-edited keyframe, fully known
    cfg = TwoStreamVideoConfig(generate_every=10, keyframe_offsets=(-10, 10))
    video = TwoStreamVideo(tiny, frames, masks, edited=[10], config=cfg)
    assert video.keyframes(24) == [10, 14]
    out, _ = video.run()
    assert 10 not in video.generated and torch.equal(out[10], clip.truth[10])
    assert _known_unchanged(out, frames, masks)


def test_flowset_pairs_are_used(tiny):
    clip = make_clip(num_frames=12, height=48, width=64, seed=6)
    est = FlowEstimator("dis", "medium")
    flows = compute_flows(clip.frames, est, clip.masks, keyframes=[0, 1, 10])
    cfg = TwoStreamVideoConfig(generate_every=10, keyframe_offsets=(-10, 10))
    video = TwoStreamVideo(tiny, clip.frames, clip.masks, flows=flows, config=cfg)
    out, _ = video.run()
    assert video.generated == [0, 10, 11]
    assert video.model_estimator is None  # every (generated, keyframe) pair came from the FlowSet
    assert _known_unchanged(out, clip.frames, clip.masks)
    with pytest.raises(PipelineError, match="flow"):
        TwoStreamVideo(tiny, clip.frames[:5], clip.masks[:5], flows=flows)


def test_working_resolution_and_dilation(tiny):
    clip = make_clip(num_frames=6, height=96, width=160, seed=7)
    cfg = TwoStreamVideoConfig(generate_every=5, work_long_side=64, mask_dilation=2)
    video = TwoStreamVideo(tiny, clip.frames, clip.masks, config=cfg)
    assert video.work == (40, 64)
    out, _ = video.run()
    assert out.shape == clip.frames.shape
    grown = torch.stack([video._mask(t) for t in range(6)])
    assert float(grown.sum()) > float(clip.masks.sum())
    assert _known_unchanged(out, clip.frames, grown)


def test_empty_masks_and_single_frame(tiny):
    clip = make_clip(num_frames=3, height=32, width=48, seed=8)
    empty = torch.zeros_like(clip.masks)
    out, unseen = remove_with_model(clip.frames, empty, tiny)
    assert torch.equal(out, clip.frames) and float(unseen.sum()) == 0
    out, _ = remove_with_model(clip.frames[:1], clip.masks[:1], tiny)
    assert _known_unchanged(out, clip.frames[:1], clip.masks[:1])


def test_input_errors(tiny, clip):
    with pytest.raises(PipelineError, match="masks"):
        remove_with_model(clip.frames, clip.masks[:3], tiny)
    with pytest.raises(PipelineError, match="generate_every"):
        remove_with_model(clip.frames, clip.masks, tiny, config=TwoStreamVideoConfig(generate_every=0))
    with pytest.raises(PipelineError, match="frames"):
        remove_with_model(clip.frames[:0], clip.masks[:0], tiny)


def test_cli_remove_with_model(tmp_path, tiny):
    clip = make_clip(num_frames=8, height=48, width=64, seed=9)
    (tmp_path / "frames").mkdir()
    (tmp_path / "masks").mkdir()
    for t in range(8):
        Image.fromarray((clip.frames[t].numpy() * 255 + 0.5).astype(np.uint8)).save(
            tmp_path / "frames" / f"{t:03d}.png"
        )
        Image.fromarray((clip.masks[t].numpy() * 255).astype(np.uint8)).save(
            tmp_path / "masks" / f"{t:03d}.png"
        )
    model = save_two_stream(tiny, tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    cmd = ["remove", "--frames", str(tmp_path / "frames")]
    cmd += ["--masks", str(tmp_path / "masks"), "--out", str(out), "--model", str(model)]
    cmd += ["--generate-every", "4", "--keyframe-offsets=-4,4"]
    rc, _, err = run_cli(cmd)
    assert rc == 0, err
    assert "tiny" in err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 8 and (out / "result.mp4").is_file()
    src = np.asarray(Image.open(tmp_path / "frames" / "003.png"))
    res = np.asarray(Image.open(out / "003.png"))
    known = clip.masks[3].numpy() < 0.5
    assert np.array_equal(res[known], src[known])
    rc, _, err = run_cli(cmd[:-3] + ["--model", str(tmp_path / "nope.ckpt")])
    assert rc == 2 and "nope.ckpt" in err


def test_protocol_with_two_flow_passes(tiny, clip):
    """flow_passes=2 goes through the protocol (its first pass reads the generated frames too):
    the generated frames are in the output as made, known pixels unchanged; one more generated
    frame is held (the first pass is a chunk ahead; see test_memory_is_bounded_by_the_chunk)."""
    one = TwoStreamVideo(tiny, clip.frames, clip.masks, config=TwoStreamVideoConfig(generate_every=10))
    cfg = TwoStreamVideoConfig(generate_every=10, propagation=PropagationConfig(flow_passes=2))
    video = TwoStreamVideo(tiny, clip.frames, clip.masks, config=cfg)
    out, _ = video.run()
    ref, _ = one.run()
    assert _known_unchanged(out, clip.frames, clip.masks)
    assert video.generated == one.generated == [0, 10, 20, 24]
    for g in (0, 10, 24):
        assert torch.allclose(out[g], video.generate(g), atol=1e-6)
    assert video.max_cached <= 3
    assert not torch.equal(out, ref)
