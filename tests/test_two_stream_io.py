"""Two-stream weight files: every layout the loader reads, config detection, conversion, clear errors.

Tiny randomly initialised generators are saved by the tests in each format and reloaded.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.two_stream.io import (
    config_name,
    convert_two_stream,
    detect_two_stream_config,
    load_two_stream,
    read_generator_file,
    save_two_stream,
)
from keyframe_propagation.pipelines.two_stream.model import CONFIGS, TwoStreamConfig, TwoStreamGenerator


class LightningCallbackLike:
    """Something a Lightning checkpoint pickles besides tensors (callbacks, OmegaConf configs)."""

    def __init__(self) -> None:
        self.monitor = "val_loss"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> TwoStreamGenerator:
    torch.manual_seed(0)
    gen = TwoStreamGenerator("tiny").eval()
    with torch.no_grad():  # non-default BatchNorm statistics, so a round trip that drops them fails
        for m in gen.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return gen


@pytest.fixture(scope="module")
def probe():
    g = torch.Generator().manual_seed(1)
    return (
        torch.rand(1, 4, 32, 40, generator=g),
        torch.rand(1, 2, 4, 32, 40, generator=g),
        torch.randn(1, 2, 2, 32, 40, generator=g),
        torch.rand(1, 2, 1, 32, 40, generator=g),
    )


def _same(a: TwoStreamGenerator, b: TwoStreamGenerator, probe) -> bool:
    t, k, f, e = probe
    with torch.no_grad():
        return torch.equal(a(t, k, flows=f, flow_errors=e), b(t, k, flows=f, flow_errors=e))


def _lightning_ckpt(gen: TwoStreamGenerator) -> dict:
    sd = {"generator." + k: v.clone() for k, v in gen.state_dict().items()}
    sd["discriminator.model0.0.weight"] = torch.zeros(8, 3, 4, 4)
    sd["flow.raft.fnet.conv1.weight"] = torch.zeros(2, 2)
    sd["loss_resnet_pl.impl.conv1.weight"] = torch.zeros(2)
    return {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": {"ModelCheckpoint": LightningCallbackLike()},
        "optimizer_states": [],
    }


def test_lightning_ckpt_round_trip(tmp_path, tiny, probe):
    path = tmp_path / "last.ckpt"
    torch.save(_lightning_ckpt(tiny), path)
    gen = load_two_stream(path)
    assert config_name(gen.config) == "tiny"
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
    assert _same(gen, tiny, probe)


@pytest.mark.parametrize("prefix", ["", "generator."])
def test_safetensors_with_and_without_prefix(tmp_path, tiny, probe, prefix):
    path = tmp_path / "gen.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    gen = load_two_stream(path)
    assert _same(gen, tiny, probe)


def test_save_two_stream_keeps_the_config(tmp_path, probe):
    # A config whose head count no shape shows: kept in the metadata.
    cfg = TwoStreamConfig(ngf=8, n_blocks=2, num_latents_sqrt=4, latent_dim=32, num_heads=4)
    torch.manual_seed(2)
    gen = TwoStreamGenerator(cfg).eval()
    path = save_two_stream(gen, tmp_path / "custom.safetensors")
    back = load_two_stream(path)
    assert back.config == cfg and config_name(back.config) == "custom"
    assert _same(back, gen, probe)


def test_dtype_and_device(tmp_path, tiny):
    path = save_two_stream(tiny, tmp_path / "t.safetensors")
    gen = load_two_stream(path, dtype=torch.bfloat16)
    assert gen.model[1].conv.weight.dtype == torch.bfloat16
    assert gen.model[1].norm.num_batches_tracked.dtype == torch.int64


def test_detects_the_reference_configs_from_meta_state_dicts():
    for name in ("ours", "ours_big", "ours_no_ffc", "tiny"):
        with torch.device("meta"):
            sd = TwoStreamGenerator(name).state_dict()
        assert detect_two_stream_config(sd) == CONFIGS[name], name


def test_convert_to_generator_only_safetensors(tmp_path, tiny, probe):
    src = tmp_path / "last.ckpt"
    torch.save(_lightning_ckpt(tiny), src)
    dst, cfg = convert_two_stream(src, tmp_path / "out" / "gen.safetensors")
    assert config_name(cfg) == "tiny"
    sd, meta = read_generator_file(dst)
    assert set(sd) == set(tiny.state_dict())  # no prefix, nothing but the generator
    assert meta["num_heads"] == 8
    assert _same(load_two_stream(dst), tiny, probe)


def test_convert_via_the_cli(tmp_path, tiny):
    src = tmp_path / "last.ckpt"
    torch.save(_lightning_ckpt(tiny), src)
    dst = tmp_path / "gen.safetensors"
    rc, out, err = run_cli(["convert-two-stream", str(src), str(dst)])
    assert rc == 0, err
    assert dst.is_file() and "tiny" in out
    bad = tmp_path / "bad.safetensors"
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if "model.7." not in k}
    save_file(sd, str(bad))
    rc, _, err = run_cli(["convert-two-stream", str(bad), str(tmp_path / "x.safetensors")])
    assert rc == 2 and "bad.safetensors" in err and "model.7" in err
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny):
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    del sd["model.7.attn1.attn.query.weight"]
    sd["model.7.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        PipelineError, match=r"broken\.safetensors.*missing.*model\.7\.attn1\.attn\.query\.weight"
    ):
        load_two_stream(path)
    with pytest.raises(PipelineError, match=r"unexpected.*model\.7\.extra\.weight"):
        load_two_stream(path)
    with pytest.raises(PipelineError, match="broken.safetensors"):
        convert_two_stream(path, tmp_path / "out.safetensors")


def test_wrong_shapes_are_named(tmp_path, tiny):
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    sd["deformable_writes.1.v.weight"] = torch.zeros(64, 3, 1, 1)
    path = tmp_path / "shapes.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        PipelineError, match=r"shapes\.safetensors.*another shape.*deformable_writes\.1\.v\.weight"
    ):
        load_two_stream(path)


def test_truncated_files_name_the_file(tmp_path, tiny):
    ckpt = tmp_path / "full.ckpt"
    torch.save(_lightning_ckpt(tiny), ckpt)
    st = save_two_stream(tiny, tmp_path / "full.safetensors")
    for src in (ckpt, st):
        data = src.read_bytes()
        cut = tmp_path / f"cut{src.suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(PipelineError, match=f"cannot read 'cut{src.suffix}'"):
            load_two_stream(cut)


def test_other_files_are_refused_clearly(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_two_stream(tmp_path / "nope.ckpt")
    lama_like = tmp_path / "lama.safetensors"
    save_file({"model.1.ffc.convl2l.weight": torch.zeros(64, 4, 7, 7)}, str(lama_like))
    with pytest.raises(PipelineError, match=r"lama\.safetensors.*not a two-stream generator"):
        load_two_stream(lama_like)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(PipelineError, match="junk.ckpt"):
        load_two_stream(junk)
    only_disc = tmp_path / "disc.ckpt"
    torch.save({"state_dict": {"discriminator.model0.0.weight": torch.zeros(1)}}, only_disc)
    with pytest.raises(PipelineError, match="disc.ckpt"):
        load_two_stream(only_disc)
    with pytest.raises(PipelineError, match=".safetensors"):
        convert_two_stream(only_disc, tmp_path / "out.ckpt")


def test_truncated_generator_is_not_mistaken_for_a_smaller_one(tmp_path, tiny):
    """A generator missing its last GI block is reported, not loaded as a 2-block model."""
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if not k.startswith("model.8.")}
    path = tmp_path / "short.safetensors"
    save_file(sd, str(path))
    with pytest.raises(PipelineError, match="short.safetensors"):
        load_two_stream(path)
