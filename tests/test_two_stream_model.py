"""The two-stream generator (SPEC A): exact key layout, the read/write/deformable-write maths, shapes,
keyframe count and order.

No real weights: the full-size generators are built on the meta device (names and shapes only); the
maths is checked on tiny randomly initialised generators and against plain loops written here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import reference_keys

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.ops import warp
from keyframe_propagation.pipelines.two_stream.io import config_name, detect_two_stream_config
from keyframe_propagation.pipelines.two_stream.model import (
    CONFIGS,
    DeformableWrite,
    TwoStreamConfig,
    TwoStreamGenerator,
    fourier_position_encoding,
    local_read,
    local_write,
    snap_to_windows,
)


def _reference(name: str) -> dict:
    return reference_keys(f"keys_{name}.json")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> TwoStreamGenerator:
    torch.manual_seed(0)
    return TwoStreamGenerator("tiny").eval()


def _inputs(b: int, t: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 4, h, w, generator=g)
    keys = torch.rand(b, t, 4, h, w, generator=g)
    flows = torch.randn(b, t, 2, h, w, generator=g) * 3
    errs = torch.rand(b, t, 1, h, w, generator=g)
    return target, keys, flows, errs


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ours", "ours_big", "ours_no_ffc"])
def test_state_dict_equals_the_reference_exactly(name):
    ref = _reference(name)
    with torch.device("meta"):
        gen = TwoStreamGenerator(name)
    sd = gen.state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()]
    assert ours == ref["keys"]  # names, shapes, dtypes and order
    assert len(sd) == ref["num_state_dict_entries"]
    assert sum(p.numel() for p in gen.parameters()) == ref["total_parameter_count"]
    assert sum(b.numel() for b in gen.buffers()) == ref["total_buffer_elements"]
    # The reference's generator kwargs map onto the config.
    kw = ref["generator_kwargs"]
    cfg = gen.config
    assert (cfg.n_blocks, cfg.n_cross, cfg.ngf, cfg.n_downsampling) == (
        kw["n_blocks"],
        kw["n_cross"],
        kw["ngf"],
        kw["n_downsampling"],
    )
    assert cfg.block_type == kw.get("block_type", "conv")
    assert cfg.num_latents_sqrt == kw["num_latents_sqrt"] and cfg.read_write_heads == kw["read_write_heads"]
    # And the config is recovered from the shapes alone.
    assert detect_two_stream_config(sd) == CONFIGS[name]
    assert config_name(detect_two_stream_config(sd)) == name


def test_parameter_counts_of_the_paper():
    counts = {"ours": 47_571_139, "ours_big": 132_264_259, "ours_no_ffc": 43_931_875}
    for name, n in counts.items():
        with torch.device("meta"):
            gen = TwoStreamGenerator(name)
        assert sum(p.numel() for p in gen.parameters()) == n


def test_init_follows_the_reference(tiny):
    torch.manual_seed(1)
    gen = TwoStreamGenerator("tiny")
    lat = gen.model[5].latents
    assert abs(float(lat.detach().std()) - 0.02) < 0.01
    w = gen.model[6].read.to_values.weight
    assert abs(float(w.detach().std()) - 0.02) < 0.005
    assert float(gen.model[6].read.to_values.bias.detach().abs().max()) == 0
    convt = [m for m in gen.modules() if isinstance(m, torch.nn.ConvTranspose2d)][0]
    assert float(convt.weight.detach().std()) > 0.03  # PyTorch's default init, not normal(0, 0.02)


def test_bad_configs_are_refused():
    with pytest.raises(PipelineError, match="block_type"):
        TwoStreamGenerator(TwoStreamConfig(block_type="attention"))
    with pytest.raises(PipelineError, match="config"):
        TwoStreamGenerator("nope")


# --------------------------------------------------------------------------------------------------
# Building blocks against plain loops
# --------------------------------------------------------------------------------------------------


def test_position_encoding_layout():
    bands, res = 3, 8
    enc = fourier_position_encoding(4, 5, bands, res)
    assert enc.shape == (2 + 4 * bands, 4, 5) and enc.dtype == torch.float32
    freqs = torch.linspace(1.0, res / 2, bands)
    i, j = 2, 3
    y, x = -1 + 2 * i / 3, -1 + 2 * j / 4
    expect = torch.cat(
        [
            torch.tensor([y, x]),
            torch.sin(math.pi * freqs * y),
            torch.sin(math.pi * freqs * x),
            torch.cos(math.pi * freqs * y),
            torch.cos(math.pi * freqs * x),
        ]
    )
    assert torch.allclose(enc[:, i, j], expect, atol=1e-6)
    # The reference's 64 bands at max resolution 32: 258 channels.
    assert fourier_position_encoding(2, 2).shape[0] == 258


def test_snap_to_windows_rounds_as_python():
    x = torch.rand(1, 2, 16, 32)
    assert snap_to_windows(x, 16) is x  # multiples: untouched
    for h, expect in ((20, 16), (24, 32), (40, 32), (56, 64), (5, 16), (9, 16)):
        out = snap_to_windows(torch.rand(1, 2, h, 48), 16)
        assert out.shape[-2:] == (expect, 48), h
    y = torch.rand(1, 3, 20, 40)
    assert torch.equal(
        snap_to_windows(y, 16), F.interpolate(y, size=(16, 32), mode="bilinear", align_corners=True)
    )


def _loop_read(logits, values, grid):
    b, heads, h, w = logits.shape
    dh = values.shape[1] // heads
    ph, pw = h // grid, w // grid
    out = torch.zeros(b, grid * grid, heads * dh)
    for bi in range(b):
        for wi in range(grid):
            for wj in range(grid):
                for k in range(heads):
                    lg = logits[bi, k, wi * ph : (wi + 1) * ph, wj * pw : (wj + 1) * pw].reshape(-1)
                    v = values[bi, k * dh : (k + 1) * dh, wi * ph : (wi + 1) * ph, wj * pw : (wj + 1) * pw]
                    a = torch.softmax(lg, 0)
                    out[bi, wi * grid + wj, k * dh : (k + 1) * dh] = (v.reshape(dh, -1) * a).sum(1)
    return out


def _loop_write(logits, tokens, grid):
    b, heads, h, w = logits.shape
    dh = tokens.shape[-1] // heads
    ph, pw = h // grid, w // grid
    out = torch.zeros(b, heads * dh, h, w)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                n = (y // ph) * grid + (x // pw)
                for k in range(heads):
                    gate = torch.sigmoid(logits[bi, k, y, x])
                    out[bi, k * dh : (k + 1) * dh, y, x] = gate * tokens[bi, n, k * dh : (k + 1) * dh]
    return out


def test_read_matches_a_per_window_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 12, 8, generator=g) * 3
    values = torch.randn(2, 3 * 5, 12, 8, generator=g)
    assert torch.allclose(local_read(logits, values, 4), _loop_read(logits, values, 4), atol=1e-5)
    # Sides that are not multiples of the grid are snapped first (bilinear, align_corners=True).
    lo, va = torch.randn(1, 2, 10, 7, generator=g), torch.randn(1, 4, 10, 7, generator=g)
    snapped = _loop_read(snap_to_windows(lo, 4), snap_to_windows(va, 4), 4)
    assert torch.allclose(local_read(lo, va, 4), snapped, atol=1e-5)


def test_write_matches_a_per_pixel_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 12, generator=g) * 3
    tokens = torch.randn(2, 16, 3 * 4, generator=g)
    assert torch.allclose(local_write(logits, tokens, 4), _loop_write(logits, tokens, 4), atol=1e-6)
    # Snapped, written, resized back to the original size.
    lo = torch.randn(1, 2, 10, 7, generator=g)
    tok = torch.randn(1, 16, 2 * 3, generator=g)
    expect = F.interpolate(
        _loop_write(snap_to_windows(lo, 4), tok, 4), size=(10, 7), mode="bilinear", align_corners=True
    )
    out = local_write(lo, tok, 4)
    assert out.shape == (1, 6, 10, 7) and torch.allclose(out, expect, atol=1e-6)


def test_warp_of_features_shifts_by_the_resized_flow():
    g = torch.Generator().manual_seed(2)
    feat = torch.rand(1, 3, 8, 10, generator=g)
    # Flow of +2 px in x at 4x the resolution = +0.5... use +8 px at 4x = +2 px at the feature size.
    flow = torch.zeros(1, 2, 32, 40)
    flow[:, 0] = 8.0
    out = warp(feat, flow)
    assert torch.allclose(out[..., :, :8], feat[..., :, 2:], atol=1e-5)
    assert float(out[..., :, 8:].abs().max()) == 0.0  # zero padding outside
    assert torch.allclose(warp(feat, torch.zeros(1, 2, 8, 10)), feat, atol=1e-6)


def test_deformable_write_with_zero_flow_and_identical_keyframes():
    """All keyframes equal + zero flow: the softmax over keyframes is uniform and the write reduces to
    ``x + v([key, err])`` whatever q and the number of keyframes."""
    torch.manual_seed(3)
    c, h, w = 6, 5, 7
    layer = DeformableWrite(c)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(2, c, h, w)
    key = torch.rand(2, 1, c, h, w)
    err = torch.rand(2, 1, 1, 20, 28)
    err_small = F.interpolate(err[:, 0], size=(h, w), mode="bilinear", align_corners=True)
    expect = x + layer.v(torch.cat((key[:, 0], err_small), dim=1))
    for t in (1, 3):
        out = layer(
            x, key.expand(-1, t, -1, -1, -1), torch.zeros(2, t, 2, 20, 28), err.expand(-1, t, -1, -1, -1)
        )
        assert torch.allclose(out, expect, atol=1e-5), t
    # No keyframes: unchanged.
    assert torch.equal(layer(x, key[:, :0], torch.zeros(2, 0, 2, h, w), torch.zeros(2, 0, 1, h, w)), x)


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 1, 2, 6, 14])
def test_shapes_for_any_keyframe_count(tiny, t):
    target, keys, flows, errs = _inputs(1, t, 32, 48)
    with torch.no_grad():
        out = tiny(target, keys, flows=flows, flow_errors=errs)
    assert out.shape == (1, 3, 32, 48)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_keyframe_order_does_not_matter(tiny):
    target, keys, flows, errs = _inputs(2, 4, 64, 40, seed=5)
    perm = [2, 0, 3, 1]
    with torch.no_grad():
        a = tiny(target, keys, flows=flows, flow_errors=errs)
        b = tiny(target, keys[:, perm], flows=flows[:, perm], flow_errors=errs[:, perm])
    assert torch.allclose(a, b, atol=1e-5)
    # ... but the keyframes are used.
    with torch.no_grad():
        c = tiny(target, keys[:, :2], flows=flows[:, :2], flow_errors=errs[:, :2])
    assert not torch.allclose(a, c, atol=1e-6)


def test_batch_items_are_independent_in_eval(tiny):
    target, keys, flows, errs = _inputs(2, 2, 32, 32, seed=6)
    with torch.no_grad():
        both = tiny(target, keys, flows=flows, flow_errors=errs)
        one = tiny(target[1:], keys[1:], flows=flows[1:], flow_errors=errs[1:])
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_odd_and_small_sizes(tiny):
    for h, w in ((61, 45), (16, 16), (8, 24), (100, 36)):
        target, keys, flows, errs = _inputs(1, 2, h, w)
        with torch.no_grad():
            out = tiny(target, keys, flows=flows, flow_errors=errs)
        assert out.shape == (1, 3, h, w), (h, w)


def test_missing_flow_means_identity_flow(tiny):
    target, keys, _, _ = _inputs(1, 2, 32, 32)
    with torch.no_grad():
        a = tiny(target, keys)
        b = tiny(target, keys, flows=torch.zeros(1, 2, 2, 32, 32), flow_errors=torch.zeros(1, 2, 1, 32, 32))
    assert torch.equal(a, b)


def test_input_errors(tiny):
    target, keys, flows, errs = _inputs(1, 2, 32, 32)
    with pytest.raises(PipelineError, match="keyframes"):
        tiny(target, keys[:, :, :3])
    with pytest.raises(PipelineError, match="flows"):
        tiny(target, keys, flows=flows[:, :1], flow_errors=errs)


def test_inpaint_composites(tiny):
    g = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, 40, 40, generator=g)
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 10:25, 5:30] = 1
    out = tiny.inpaint(image, mask, torch.rand(1, 2, 3, 40, 40, generator=g))
    known = mask.expand_as(image) < 0.5
    assert torch.equal(out[known], image[known])


def test_bf16_runs_close_to_fp32():
    torch.manual_seed(0)
    gen = TwoStreamGenerator("tiny").eval()
    target, keys, flows, errs = _inputs(1, 2, 32, 32)
    with torch.no_grad():
        ref = gen(target, keys, flows=flows, flow_errors=errs)
        gen16 = gen.to(torch.bfloat16)
        out = gen16(target.bfloat16(), keys.bfloat16(), flows=flows, flow_errors=errs)
    assert out.dtype == torch.bfloat16
    assert float((out.float() - ref).abs().max()) < 0.05


def test_refinement_protocol_without_keyframes(tiny):
    from keyframe_propagation.pipelines.refine.multiscale import Refinable

    assert isinstance(tiny, Refinable)
    g = torch.Generator().manual_seed(8)
    image = torch.rand(1, 3, 32, 40, generator=g)
    mask = (torch.rand(1, 1, 32, 40, generator=g) > 0.7).float()
    with torch.no_grad():
        via_split = tiny.rear(tiny.front(image, mask))
        direct = tiny(torch.cat((image * (1 - mask), mask), dim=1))
    assert torch.allclose(via_split, direct, atol=1e-6)


def test_trains_in_train_mode():
    torch.manual_seed(0)
    gen = TwoStreamGenerator("tiny").train()
    target, keys, flows, errs = _inputs(2, 2, 32, 32)
    out = gen(target, keys, flows=flows, flow_errors=errs)
    out.mean().backward()
    grads = [p.grad for p in gen.parameters()]
    assert all(gr is not None for gr in grads)
    assert gen.deformable_writes[1].q.weight.grad.abs().sum() > 0
