"""The pack's models are ComfyUI-managed: LaMa, the two-stream model and the SVD parts are held in
``ModelPatcher`` objects with their real sizes and loaded through ``load_models_gpu``, so they appear
among ComfyUI's loaded models while a node runs, ComfyUI can unload them afterwards, and a second run
after that works. Nodes executed in this process as ComfyUI does (under inference mode); a real
ComfyUI server is checked in test_integration.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import node_defaults

from keyframe_propagation.pipelines.refine.lama import LamaConfig
from keyframe_propagation.pipelines.testing.lama import random_lama
from keyframe_propagation.pipelines.testing.svd import build_svd_folder
from keyframe_propagation.pipelines.testing.synthetic import make_clip
from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mm(comfy_nodes):
    import comfy.model_management as mm

    return mm


def loaded_patchers(mm) -> list:
    return [lm.model for lm in mm.current_loaded_models]


class Spy:
    """Wraps comfy.model_management.load_models_gpu: records each call's patchers and memory."""

    def __init__(self, mm, monkeypatch) -> None:
        self.calls: list[tuple[list, int, bool]] = []
        real = mm.load_models_gpu

        def spy(models, memory_required=0, force_full_load=False, **kw):
            self.calls.append((list(models), memory_required, force_full_load))
            return real(models, memory_required=memory_required, force_full_load=force_full_load, **kw)

        monkeypatch.setattr(mm, "load_models_gpu", spy)


def record_during_run(mm, monkeypatch, module) -> list[list]:
    """The loaded patchers at every progress update of a node (patched into the node's module)."""
    import keyframe_propagation.nodes.common as common

    seen: list[list] = []
    real = common.comfy_progress

    def progress(*a, **k):
        cb = real(*a, **k)

        def wrapped(done, total, text=""):
            seen.append(loaded_patchers(mm))
            cb(done, total, text)

        return wrapped

    monkeypatch.setattr(module, "comfy_progress", progress)
    return seen


def test_lama_is_managed_while_refining_and_unloadable(comfy_nodes, mm, monkeypatch):
    import keyframe_propagation.nodes.refine as refine
    from keyframe_propagation.nodes.common import PackModel, managed, module_bytes

    with torch.inference_mode(False):
        lama = random_lama(LamaConfig(ngf=8, n_blocks=2), seed=3).eval()
    patcher = managed(lama)
    assert managed(lama) is patcher  # one patcher per network
    assert isinstance(patcher.model, PackModel) and patcher.model.network is lama
    assert patcher.model_size() == module_bytes(lama) > 0  # its real size
    spy = Spy(mm, monkeypatch)
    seen = record_during_run(mm, monkeypatch, refine)
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 48, 64)
    mask[:, 10:30, 20:44] = 1
    node = refine.MultiscaleRefine
    args = node_defaults(node) | {"image": image, "mask": mask, "model": lama, "n_iters": 2, "min_side": 32}
    with torch.inference_mode():
        first = node.execute(**args).result[0]
    assert seen and all(patcher in s for s in seen)  # loaded by ComfyUI while the node ran
    (models, memory, full), *_ = spy.calls
    assert models == [patcher] and full and memory > 0  # the run's activations, beyond the weights
    assert patcher in loaded_patchers(mm)  # and kept loaded, counted by ComfyUI, afterwards
    mm.unload_all_models()  # what ComfyUI's /free route does
    assert patcher not in loaded_patchers(mm)
    seen.clear()
    with torch.inference_mode():
        second = node.execute(**args).result[0]  # a second run after the unload works
    assert seen and all(patcher in s for s in seen)
    assert torch.equal(first, second)
    mm.unload_all_models()


def test_two_stream_model_is_managed_while_inpainting(comfy_nodes, mm, monkeypatch):
    import keyframe_propagation.nodes.inpaint as inpaint
    from keyframe_propagation.nodes.common import managed, module_bytes

    with torch.inference_mode(False):
        torch.manual_seed(0)
        model = TwoStreamGenerator("tiny").eval()
    patcher = managed(model)
    assert patcher.model_size() == module_bytes(model)
    seen = record_during_run(mm, monkeypatch, inpaint)
    clip = make_clip(num_frames=6, height=48, width=64, seed=1)
    node = comfy_nodes.TwoStreamInpaint
    args = node_defaults(node) | {
        "images": clip.frames, "masks": clip.masks, "model": model, "generate_every": 3,
        "keyframe_offsets": "-3,3", "work_long_side": 64,
    }  # fmt: skip
    with torch.inference_mode():
        first = node.execute(**args).result[0]
    assert seen and all(patcher in s for s in seen)
    mm.unload_all_models()
    assert patcher not in loaded_patchers(mm)
    with torch.inference_mode():
        second = node.execute(**args).result[0]
    assert torch.equal(first, second)
    assert patcher in loaded_patchers(mm)
    mm.unload_all_models()


@pytest.fixture(scope="module")
def svd(comfy_nodes, tmp_path_factory):
    """A LoadedInbetween on a tiny SVD with random reverse tensors."""
    import keyframe_propagation.nodes.inbetween as inb
    from keyframe_propagation.pipelines.svd.loading import load_svd

    folder = build_svd_folder(tmp_path_factory.mktemp("svd") / "tiny", seed=0)
    model = load_svd(folder, "fp32")
    gen = torch.Generator().manual_seed(5)
    model.set_reverse_delta(
        {n: 0.01 * torch.randn(s, generator=gen) for n, s in model.expected_shapes().items()}, "random"
    )
    return inb, model


@pytest.mark.parametrize("offload", [False, True])
def test_svd_parts_are_managed_with_and_without_offload(svd, mm, monkeypatch, offload):
    from keyframe_propagation.nodes.common import module_bytes

    inb, model = svd
    loaded = inb.LoadedInbetween(model, offload)
    parts = loaded.patchers()
    assert parts == loaded.patchers()  # the same patchers every time
    reverse_bytes = sum(t.numel() * t.element_size() for t in model.reverse.values())
    assert reverse_bytes > 0 and parts["unet"].model_size() == module_bytes(model.unet) + reverse_bytes
    assert parts["vae"].model_size() == module_bytes(model.vae)
    assert parts["image_encoder"].model_size() == module_bytes(model.image_encoder)
    seen = record_during_run(mm, monkeypatch, inb)
    node = inb.DualDirectionalSampler
    first = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    last = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    args = node_defaults(node) | {
        "model": loaded, "first_frame": first, "last_frame": last, "width": 64, "height": 64,
        "num_frames": 4, "steps": 2, "noise_injection_steps": 1, "decode_chunk_size": 4,
    }  # fmt: skip
    with torch.inference_mode():
        frames = node.execute(**args).result[0]
    assert seen
    if offload:  # one part at a time: the UNet while denoising, the VAE while decoding
        assert all(sum(p in s for p in parts.values()) <= 1 for s in seen)
        assert any(parts["unet"] in s for s in seen) and any(parts["vae"] in s for s in seen)
        assert model.placer is None  # the node's placement hook is gone after the run
    else:  # all three parts loaded for the whole run
        assert all(all(p in s for p in parts.values()) for s in seen)
    mm.unload_all_models()
    assert not any(p in loaded_patchers(mm) for p in parts.values())
    with torch.inference_mode():
        again = node.execute(**args).result[0]  # works after ComfyUI unloaded the parts
    assert torch.allclose(frames, again, atol=1e-6)
    mm.unload_all_models()
