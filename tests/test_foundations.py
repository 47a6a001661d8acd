"""The shared foundations of pipelines/: checks (shapes, masks, ints, dtypes), ops (sizes, masks,
padding, warping) and the one weight reader."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keyframe_propagation.pipelines.checks import as_masks, check_int, check_shape, parse_dtype
from keyframe_propagation.pipelines.errors import PipelineError, short_list, wh
from keyframe_propagation.pipelines.ops import (
    dilate,
    fit_size,
    pad_bottom_right,
    pad_to_modulo,
    resize_flow,
    resize_mask,
    round_to_multiple,
    smooth_fill,
    warp,
)
from keyframe_propagation.pipelines.weights import (
    read_weights,
    state_dict_mismatch,
    strip_prefix,
    weight_keys,
)

# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def test_check_shape_names_numbers_alternatives_and_known_sizes():
    frames = torch.zeros(5, 24, 32, 3)
    sizes = check_shape(frames, "T,H,W,3", "frames")
    assert sizes == {"T": 5, "H": 24, "W": 32}
    assert check_shape(torch.zeros(5, 24, 32, 4), "T,H,W,3|4", "frames")["W"] == 32
    check_shape(torch.zeros(5, 24, 32), "T,H,W", "masks", known=sizes)
    with pytest.raises(PipelineError, match=r"masks: expected shape \(5, 24, 32\), got \(5, 24, 31\)"):
        check_shape(torch.zeros(5, 24, 31), "T,H,W", "masks", known=sizes)
    with pytest.raises(PipelineError, match=r"frames: expected shape \(T, H, W, 3\), got \(5, 24, 32\)"):
        check_shape(torch.zeros(5, 24, 32), "T,H,W,3", "frames")
    with pytest.raises(PipelineError, match="flow"):
        check_shape(torch.zeros(2, 3, 8, 8), "N,2,H,W", "flow")
    with pytest.raises(PipelineError):  # the same name must have the same size
        check_shape(torch.zeros(4, 5), "N,N", "square")


def test_as_masks_layouts_broadcast_and_errors():
    one = torch.zeros(8, 10)
    one[2:4, 3:6] = 1
    out = as_masks(one, 3, (8, 10))
    assert out.shape == (3, 8, 10) and out.dtype == torch.float32 and torch.equal(out[2], one)
    assert as_masks(one[None, ..., None].expand(3, -1, -1, 1), 3, (8, 10)).shape == (3, 8, 10)
    soft = torch.full((1, 8, 10), 0.3)
    assert float(as_masks(soft, 2).max()) == pytest.approx(0.3)  # values are kept
    with pytest.raises(PipelineError, match="masks: 2 masks for 3 frames"):
        as_masks(torch.zeros(2, 8, 10), 3)
    with pytest.raises(PipelineError, match=r"mask: size 10x8 differs from the frames' 12x8"):
        as_masks(one, 3, (8, 12), "mask")
    resized = as_masks(one, 1, (16, 20), resize=True)
    ref = F.interpolate(one[None, None], size=(16, 20), mode="bilinear", align_corners=True)[0]
    assert torch.equal(resized, ref)
    with pytest.raises(PipelineError, match="expected masks"):
        as_masks(torch.zeros(1, 2, 8, 10), 1)


def test_check_int_and_parse_dtype():
    assert check_int(3, "frame_cap", 0, "hint") == 3
    for bad in (-1, 2.5, True, "x"):
        with pytest.raises(PipelineError, match="frame_cap"):
            check_int(bad, "frame_cap", 0, "use 0")
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype(torch.float16) == torch.float16
    with pytest.raises(PipelineError, match=r"--dtype: expected one of \['fp32', 'fp16', 'bf16'\]"):
        parse_dtype("int8", "--dtype")
    assert short_list(list(range(7)), 3) == "0, 1, 2, ..." and wh((240, 432)) == "432x240"


# --------------------------------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------------------------------


def test_fit_size_keeps_the_aspect_ratio_rounded_to_the_multiple():
    assert fit_size(240, 432) == (240, 432)
    assert fit_size(240, 432, width=216) == (120, 216)
    assert fit_size(540, 972, height=256) == (256, 464)  # 460.8 -> 464
    assert fit_size(576, 1024, width=512, multiple=64) == (320, 512)  # 288 -> 5 x 64 (halves up)
    assert fit_size(100, 100, width=64, height=48) == (48, 64)
    assert (
        round_to_multiple(3.9, 8) == 8
        and round_to_multiple(12.0, 8) == 16
        and round_to_multiple(11.9, 8) == 8
    )


def test_resize_mask_never_drops_a_thin_hole():
    m = torch.zeros(2, 64, 96)
    m[0, 30, :] = 1  # a one-pixel line
    m[1, 10:12, 50:52] = 1
    small = resize_mask(m, (16, 24))
    assert small.dtype == torch.bool and small.shape == (2, 16, 24)
    assert bool(small[0].any(dim=1)[7]) and small[0].sum() >= 24
    assert bool(small[1].any())
    nearest = F.interpolate(m[:, None], size=(16, 24), mode="nearest")[:, 0] > 0
    assert not bool(nearest[0].any())  # what plain nearest would have done
    # Shrinking equals OpenCV's area average > 0; growing is nearest neighbour.
    expect = cv2.resize(m[1].numpy(), (24, 16), interpolation=cv2.INTER_AREA) > 0
    assert np.array_equal(small[1].numpy(), expect)
    big = resize_mask(m[1], (128, 192))
    assert big.shape == (128, 192) and int(big.sum()) == 4 * 4  # the 2x2 hole, twice as large


def test_dilate_grows_binary_masks():
    m = torch.zeros(21, 21)
    m[10, 10] = 0.7
    out = dilate(m, 3)
    assert out.dtype == torch.float32 and set(out.unique().tolist()) == {0.0, 1.0}
    assert bool(out[10, 13]) and not bool(out[10, 14]) and float(out.sum()) > 20
    assert torch.equal(dilate(m, 0), (m > 0.5).float())


def test_smooth_fill_continues_the_edge_and_keeps_known_pixels():
    """Push-pull fill: known pixels are untouched, a constant stays constant, the fill stays within
    the known colours, and it continues a smooth image far better than a constant would (no edge at
    the hole's border for a flow estimator to follow)."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 60, 90, generator=gen)
    hole = torch.zeros(60, 90)
    hole[15:45, 30:70] = 1
    out = smooth_fill(image, hole)
    assert torch.equal(out[:, hole < 0.5], image[:, hole < 0.5])
    assert out.min() >= image.min() and out.max() <= image.max()
    assert torch.allclose(smooth_fill(torch.full((3, 60, 90), 0.3), hole), torch.full((3, 60, 90), 0.3))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 60), torch.linspace(0, 1, 90), indexing="ij")
    ramp = torch.stack([xx, yy, 0.5 * (xx + yy)])
    err_fill = (smooth_fill(ramp, hole) - ramp)[:, hole > 0.5].abs().mean()
    err_grey = (0.5 - ramp)[:, hole > 0.5].abs().mean()
    assert err_fill < 0.5 * err_grey
    # Across the hole's border the fill steps by about one pixel's change of the ramp, not by a jump.
    fill = smooth_fill(ramp, hole)
    assert (fill[:, 30, 30] - ramp[:, 30, 29]).abs().max() < 0.03
    assert torch.equal(smooth_fill(image, torch.zeros(60, 90)), image)


def test_padding_reflects_and_falls_back_to_replicate():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    assert pad_to_modulo(x, 4).shape == (1, 1, 4, 4)
    assert torch.equal(pad_to_modulo(x, 4)[..., 3, :], x[..., 1, :])  # reflection of row 1
    tall = pad_bottom_right(x, 5, 0)  # pad >= side: replicate
    assert tall.shape == (1, 1, 8, 4) and torch.equal(tall[..., 7, :], x[..., 2, :])
    assert pad_bottom_right(x, 0, 0) is x


def test_warp_resizes_a_flow_given_at_another_resolution():
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(2, 3, 8, 10, generator=g)
    flow = torch.randn(2, 2, 32, 40, generator=g) * 4
    torch.testing.assert_close(warp(feat, flow), warp(feat, resize_flow(flow, (8, 10))), rtol=0, atol=0)
    shift = torch.zeros(1, 2, 8, 10)
    shift[:, 0] = 1.0
    assert torch.allclose(warp(feat[:1], shift)[..., :9], feat[:1, ..., 1:], atol=1e-6)
    with pytest.raises(PipelineError, match="warp: flow"):
        warp(feat, torch.zeros(2, 3, 8, 10))


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------


def test_read_weights_formats_subsets_and_metadata(tmp_path):
    from safetensors.torch import save_file

    sd = {"generator.a": torch.ones(2), "generator.b": torch.zeros(3), "disc.c": torch.ones(1)}
    save_file(sd, str(tmp_path / "w.safetensors"), metadata={"format": "test"})
    tensors, meta = read_weights(tmp_path / "w.safetensors")
    assert set(tensors) == set(sd) and meta == {"format": "test"}
    assert set(read_weights(tmp_path / "w.safetensors", names=["disc.c", "absent"])[0]) == {"disc.c"}
    assert read_weights(tmp_path / "w.safetensors", names=())[0] == {}
    assert sorted(weight_keys(tmp_path / "w.safetensors")) == sorted(sd)
    torch.save({"state_dict": sd, "global_step": 7, "cfg": {"x": 1}}, tmp_path / "w.ckpt")
    tensors, meta = read_weights(tmp_path / "w.ckpt")
    assert set(tensors) == set(sd) and meta == {"global_step": 7, "cfg": {"x": 1}}
    assert sorted(weight_keys(tmp_path / "w.ckpt")) == sorted(sd)
    assert set(strip_prefix(tensors, "generator.")) == {"a", "b"}

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x)

    torch.jit.script(Tiny()).save(str(tmp_path / "w.pt"))
    assert set(read_weights(tmp_path / "w.pt")[0]) == {"conv.weight", "conv.bias"}
    with pytest.raises(PipelineError, match=r"model: '.*absent\.pt' not found"):
        read_weights(tmp_path / "absent.pt")
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match=r"perceptual_weights: cannot read 'bad\.ckpt'"):
        read_weights(tmp_path / "bad.ckpt", "perceptual_weights")
    torch.save({"x": 1}, tmp_path / "none.pt")
    with pytest.raises(PipelineError, match="holds no tensors"):
        read_weights(tmp_path / "none.pt")


def test_state_dict_mismatch_names_each_kind():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "n.num_batches_tracked": torch.zeros(())}
    found = {"a": torch.zeros(4), "c": torch.zeros(1)}
    parts = state_dict_mismatch(expected, found, ignore_missing=("num_batches_tracked",))
    assert parts == [
        "1 missing (first: b)",
        "1 unexpected (first: c)",
        "1 of another shape (first: a (4,) != (2,))",
    ]
    assert state_dict_mismatch(expected, dict(expected)) == []


_FRAGMENTED = """
import numpy as np
from keyframe_propagation.pipelines import ops
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
ops.release_freed_memory()
if ops._TRIM[0] is None:
    print("no-trim"); raise SystemExit
# A freed 30 MB block raises glibc's mmap threshold: the next 20 MB blocks come from the heap, as a
# frame's temporaries do; a small live block above them keeps the heap from shrinking by itself.
np.ones(30 << 20, np.uint8)
blocks = [np.ones(20 << 20, np.uint8) for _ in range(40)]
pin = np.ones(1 << 20, np.uint8)
del blocks
before = rss()
ops.release_freed_memory()
print(before - rss())
"""


def test_release_freed_memory_gives_freed_heap_pages_back():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FRAGMENTED], capture_output=True, text=True, check=True)
    if out.stdout.strip() == "no-trim":
        pytest.skip("no glibc malloc_trim on this platform: release_freed_memory does nothing")
    assert int(out.stdout) > 600 << 20, out.stdout  # most of the 800 MB freed comes back
