"""The FFC blocks and the Big-LaMa generator: exact key layout, front/rear split, every weight format.

No real weights: the full-size generator is built on the meta device (key names and shapes only); tiny
generators with the same layout are randomly initialised and saved by the tests in each format.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import reference_keys
from safetensors.torch import save_file

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.ffc import FFCResnetBlock, FourierUnit
from keyframe_propagation.pipelines.refine.lama import (
    FFCResNetGenerator,
    LamaConfig,
    detect_lama_config,
    load_lama,
)
from keyframe_propagation.pipelines.testing.lama import random_lama
from keyframe_propagation.pipelines.weights import read_weights

TINY = LamaConfig(ngf=8, n_blocks=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> FFCResNetGenerator:
    return random_lama(TINY, seed=1)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 48, 64, generator=g)
    mask = torch.zeros(1, 1, 48, 64)
    mask[..., 10:30, 20:44] = 1
    return image, mask


def _full_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([image * (1 - mask), mask], dim=1)


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def test_full_generator_keys_shapes_and_count_equal_big_lama():
    ref = reference_keys("keys_big-lama.json")
    with torch.device("meta"):
        gen = FFCResNetGenerator()
    sd = gen.state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()]
    assert ours == ref["keys"]  # names, shapes, dtypes and order
    assert len(sd) == ref["num_state_dict_entries"] == 989
    assert sum(p.numel() for p in gen.parameters()) == ref["total_parameter_count"] == 50_975_875
    assert sum(b.numel() for b in gen.buffers()) == ref["total_buffer_elements"]
    assert detect_lama_config(sd) == LamaConfig()
    # The split point: layers 0..4 are the front; its output is the (128, 384) pair at 1/8 size.
    assert gen.n_front == 5 and isinstance(gen.model[5], FFCResnetBlock)
    z_l, z_g = gen.front(torch.zeros(1, 3, 64, 96, device="meta"), torch.zeros(1, 1, 64, 96, device="meta"))
    assert tuple(z_l.shape) == (1, 128, 8, 12) and tuple(z_g.shape) == (1, 384, 8, 12)


def test_inline_ffc_block_has_the_two_stream_models_keys():
    """The two-stream model's LIF blocks (``model.N.block1`` / ``block2``) are FFCResnetBlocks run inline."""
    ref = reference_keys("keys_ours.json")
    prefix = "model.6.block1."
    want = [[k[len(prefix) :], shape] for k, shape, _ in ref["keys"] if k.startswith(prefix)]
    assert want, "keys_ours.json has no model.6.block1 entries"
    with torch.device("meta"):
        block = FFCResnetBlock(512, inline=True)
    assert [[k, list(v.shape)] for k, v in block.state_dict().items()] == want


def test_inline_block_equals_the_pair_block_on_split_channels():
    torch.manual_seed(0)
    pair = FFCResnetBlock(32).eval()
    for p in pair.parameters():
        nn.init.normal_(p, 0.0, 0.2)
    inline = FFCResnetBlock(32, inline=True).eval()
    inline.load_state_dict(pair.state_dict())
    x = torch.randn(2, 32, 12, 10)
    # local = first C - int(0.75 C) = 8 channels, global = last 24, re-concatenated [local, global].
    out_l, out_g = pair((x[:, :8], x[:, 8:]))
    assert torch.equal(inline(x), torch.cat([out_l, out_g], dim=1))


def test_fourier_unit_is_an_ortho_rfft_with_interleaved_real_imag_channels():
    """Oracle written out per channel: input channel 2c = Re(F x_c), 2c+1 = Im(F x_c); same for outputs."""
    torch.manual_seed(0)
    c_in, c_out = 3, 2
    fu = FourierUnit(c_in, c_out).eval()
    nn.init.normal_(fu.conv_layer.weight)
    fu.bn.running_mean.normal_()
    fu.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, c_in, 6, 10, dtype=torch.float32)
    X = torch.fft.rfft2(x.double(), norm="ortho")[0]  # (c_in, 6, 6) complex
    parts = []
    for c in range(c_in):
        parts += [X[c].real, X[c].imag]
    spec = torch.stack(parts)  # (2 c_in, 6, 6)
    W = fu.conv_layer.weight[:, :, 0, 0].double()
    y = torch.einsum("oi,ihw->ohw", W, spec)
    bn = fu.bn
    y = (y - bn.running_mean.double()[:, None, None]) / torch.sqrt(
        bn.running_var.double()[:, None, None] + bn.eps
    )
    y = torch.relu(y * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None])
    out = torch.stack(
        [
            torch.fft.irfft2(torch.complex(y[2 * o], y[2 * o + 1]), s=(6, 10), norm="ortho")
            for o in range(c_out)
        ]
    )
    assert torch.allclose(fu(x)[0].double(), out, atol=1e-5)


def test_front_then_rear_equals_the_full_forward_exactly(tiny, inputs):
    image, mask = inputs
    with torch.no_grad():
        full = tiny(_full_input(image, mask))
        split = tiny.rear(tiny.front(image, mask))
    assert torch.equal(full, split)
    # Chained rear stages (used for activation checkpointing) are the same function.
    with torch.no_grad():
        x: object = tiny.front(image, mask)
        for stage in tiny.rear_stages():
            x = stage(x)
    assert torch.equal(x, full)
    assert full.shape == (1, 3, 48, 64) and 0.0 <= float(full.min()) and float(full.max()) <= 1.0
    assert float(full.std()) > 0.02  # calibrated random weights: not a constant output


def test_inpaint_pads_odd_sizes_and_keeps_known_pixels(tiny):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 37, 53, generator=g)
    mask = torch.zeros(1, 1, 37, 53)
    mask[..., 5:20, 30:50] = 1
    with torch.no_grad():
        out = tiny.inpaint(image, mask)
    assert out.shape == image.shape
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(out[known], image[known])
    assert not torch.equal(out[~known], image[~known])


def test_detect_config_of_other_shapes():
    for cfg in (LamaConfig(ngf=8, n_blocks=2), LamaConfig(ngf=4, n_blocks=3, n_downsampling=2)):
        with torch.device("meta"):
            sd = FFCResNetGenerator(cfg).state_dict()
        assert detect_lama_config(sd) == cfg


# --------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------


class FakeCallback:
    """Stands for pytorch_lightning's ModelCheckpoint, which Lightning checkpoints pickle by name."""

    def __init__(self) -> None:
        self.best = 0.5


def _make_dir(path: str) -> None:
    os.makedirs(path)


class _Payload:
    """A pickle that would create a folder when unpickled by an unsafe loader."""

    def __init__(self, path: str, fn=_make_dir) -> None:
        self.path, self.fn = path, fn

    def __reduce__(self):
        return (self.fn, (self.path,))


class ScriptWrapper(nn.Module):
    """Like IOPaint's big-lama.pt: takes image and mask, holds the generator as ``generator``."""

    def __init__(self, gen: nn.Module) -> None:
        super().__init__()
        self.generator = gen

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.generator(torch.cat([image * (1 - mask), mask], dim=1))


@pytest.fixture(scope="module")
def weight_files(tiny, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lama_weights")
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    files = {}
    # Lightning checkpoint: generator., discriminator. and loss-network entries, callbacks keyed by class.
    ckpt = {
        "epoch": 3,
        "state_dict": {
            **{f"generator.{k}": v for k, v in sd.items()},
            "discriminator.model0.0.weight": torch.randn(4, 3, 4, 4),
            "loss_resnet_pl.impl.conv1.weight": torch.randn(2, 3, 3, 3),
        },
        "callbacks": {FakeCallback: {"best_model_score": torch.tensor(1.0)}},
        "hyper_parameters": FakeCallback(),
    }
    files["ckpt"] = d / "best.ckpt"
    torch.save(ckpt, files["ckpt"])
    files["st_prefix"] = d / "lama_prefixed.safetensors"
    save_file(
        {**{f"generator.{k}": v for k, v in sd.items()}, "discriminator.x": torch.zeros(2)},
        files["st_prefix"],
    )
    files["st_plain"] = d / "lama.safetensors"
    save_file(sd, files["st_plain"])
    files["pth"] = d / "lama.pth"
    torch.save(sd, files["pth"])
    example = (torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
    files["torchscript"] = d / "big-lama.pt"
    torch.jit.trace(ScriptWrapper(tiny), example).save(str(files["torchscript"]))
    files["torchscript_plain"] = d / "generator.pt"
    torch.jit.trace(tiny, torch.rand(1, 4, 32, 32)).save(str(files["torchscript_plain"]))
    return files


@pytest.mark.parametrize("kind", ["ckpt", "st_prefix", "st_plain", "pth", "torchscript", "torchscript_plain"])
def test_every_format_loads_to_identical_outputs(kind, weight_files, tiny, inputs):
    image, mask = inputs
    model = load_lama(weight_files[kind])
    assert model.config == TINY and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model.rear(model.front(image, mask)), tiny.rear(tiny.front(image, mask)))


def test_lightning_checkpoint_read_without_running_pickled_code(tmp_path, tiny):
    target = tmp_path / "created_by_pickle"
    ckpt = {
        "state_dict": {f"generator.{k}": v for k, v in tiny.state_dict().items()},
        "x": _Payload(str(target)),
    }
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    model = load_lama(path)  # the payload's function is replaced by an inert stand-in
    assert not target.exists()
    assert model.config == TINY
    # Globals of modules torch blocks outright (os, subprocess, builtins ...) are refused: a clear error.
    ckpt["x"] = _Payload(str(target), os.makedirs)
    torch.save(ckpt, path)
    with pytest.raises(PipelineError, match=r"evil\.ckpt"):
        load_lama(path)
    assert not target.exists()


def test_dtype_option(weight_files, tiny, inputs):
    image, mask = inputs
    model = load_lama(weight_files["st_plain"], dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = model.rear(model.front(image, mask)).float()
        ref = tiny.rear(tiny.front(image, mask))
    assert out.shape == ref.shape and float((out - ref).abs().mean()) < 0.05


def test_partial_unknown_and_corrupt_files_name_the_file(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    partial = dict(sd)
    del partial["model.5.conv1.ffc.convg2g.fu.conv_layer.weight"]
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(
        PipelineError, match=r"partial\.safetensors.*missing.*model\.5\.conv1\.ffc\.convg2g\.fu"
    ):
        load_lama(tmp_path / "partial.safetensors")

    extra = {**sd, "model.5.conv1.extra.weight": torch.zeros(1)}
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(
        PipelineError, match=r"extra\.safetensors.*unexpected.*model\.5\.conv1\.extra\.weight"
    ):
        load_lama(tmp_path / "extra.safetensors")

    last = f"model.{len(tiny.model) - 2}.bias"  # the output conv (model.34 in Big-LaMa)
    wrong = {**sd, last: torch.zeros(5)}
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(PipelineError, match=rf"wrong\.safetensors.*shape.*{last}"):
        load_lama(tmp_path / "wrong.safetensors")

    save_file({"encoder.weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(PipelineError, match=r"other\.safetensors.*not a LaMa generator.*encoder\.weight"):
        load_lama(tmp_path / "other.safetensors")

    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(PipelineError, match=r"corrupt\.ckpt"):
        load_lama(tmp_path / "corrupt.ckpt")

    with pytest.raises(PipelineError, match=r"missing\.pt.*not found"):
        read_weights(tmp_path / "missing.pt")

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(PipelineError, match=r"list\.pt.*not a state dict"):
        load_lama(tmp_path / "list.pt")
