"""Dual-directional SVD sampler (SPEC C) on tiny random SVD components, offline.

Oracles: diffusers' StableVideoDiffusionPipeline for the forward branch, the reference mode for the
fused mode, a time-symmetric UNet for the map rotation and hand-written two-run averaging (TRF).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.svd.attention import DualAttentionState, install_dual_attention
from keyframe_propagation.pipelines.svd.loading import load_svd
from keyframe_propagation.pipelines.svd.sampler import InbetweenSettings, inbetween, inbetween_keyframes
from keyframe_propagation.pipelines.testing.svd import build_svd_folder, random_reverse_delta


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_svd_folder(tmp_path_factory.mktemp("svd") / "tiny", perturb=0.02)


@pytest.fixture(scope="module")
def model(tiny):
    m = load_svd(tiny, "fp32")
    m.set_reverse_delta(random_reverse_delta(m, 0.2), source="random")
    return m


def _u8_image(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(h, w, 3, generator=g) * 255).round().to(torch.uint8).numpy()


def _img(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.copy()).float() / 255


def _pipeline(folder):
    from diffusers import StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    # The PIL-based processor, built explicitly (no torchvision-backed fast processor).
    proc = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})
    return StableVideoDiffusionPipeline.from_pretrained(folder, feature_extractor=proc)


def test_forward_branch_equals_diffusers_pipeline(tiny, model):
    """Conditioning, noise and EDM scheduling as diffusers' pipeline: non-square size, other frame count."""
    from PIL import Image

    arr = _u8_image(0, 64, 128)
    pipe = _pipeline(tiny)  # stock attention processors
    kw = dict(height=64, width=128, num_frames=5, num_inference_steps=3, min_guidance_scale=1.0)
    kw |= dict(
        max_guidance_scale=2.5, motion_bucket_id=100, fps=6, noise_aug_strength=0.05, decode_chunk_size=2
    )
    ref_lat = pipe(
        Image.fromarray(arr), generator=torch.Generator().manual_seed(7), output_type="latent", **kw
    )
    ref_img = pipe(Image.fromarray(arr), generator=torch.Generator().manual_seed(7), output_type="pt", **kw)
    s = InbetweenSettings(
        num_frames=5, steps=3, seed=7, min_guidance=1.0, max_guidance=2.5, motion_bucket_id=100, fps=6,
        noise_aug_strength=0.05, decode_chunk_size=2, branches="forward",
    )  # fmt: skip
    out = inbetween(model, _img(arr), None, s)
    assert out.latents.shape == (5, 4, 8, 16) and out.frames.shape == (5, 64, 128, 3)
    assert float(out.latents.abs().max()) > 0.1
    torch.testing.assert_close(out.latents, ref_lat.frames[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.frames, ref_img.frames[0].permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_fused_equals_reference_with_cfg_and_reinjection(model):
    a, b = _img(_u8_image(1)), _img(_u8_image(2))
    base = InbetweenSettings(
        num_frames=4,
        steps=3,
        seed=3,
        noise_injection_ratio=0.67,
        noise_injection_steps=2,
        decode_chunk_size=4,
    )
    assert base.fused_steps() == 3 + 2 * 2
    fused = inbetween(model, a, b, base)
    ref = inbetween(model, a, b, InbetweenSettings(**{**base.__dict__, "mode": "reference"}))
    diff = float((fused.latents - ref.latents).abs().max())
    assert diff < 1e-4, diff
    assert float((fused.frames - ref.frames).abs().max()) < 1e-4
    # The rotated maps and the reverse weights both matter.
    own = inbetween(model, a, b, InbetweenSettings(**{**base.__dict__, "rotate_maps": False}), decode=False)
    assert float((own.latents - fused.latents).abs().max()) > 1e-3
    assert model.state.mode == "forward" and not model.state.maps


def test_weighted_fusion_fused_equals_reference(model):
    a, b = _img(_u8_image(1)), _img(_u8_image(2))
    # (3 steps: with 2 the first step goes from sigma 700 to 0.002 and the Euler update cancels at
    # |z| ~ 2000, where one float32 ulp is 1.2e-4.)
    s = InbetweenSettings(num_frames=5, steps=3, seed=1, fusion="weighted", noise_injection_steps=1)
    fused = inbetween(model, a, b, s, decode=False)
    ref = inbetween(model, a, b, InbetweenSettings(**{**s.__dict__, "mode": "reference"}), decode=False)
    assert float((fused.latents - ref.latents).abs().max()) < 1e-4
    avg = inbetween(model, a, b, InbetweenSettings(**{**s.__dict__, "fusion": "average"}), decode=False)
    assert float((avg.latents - fused.latents).abs().max()) > 1e-3


def _time_symmetric_unet(folder):
    """The tiny UNet made time-equivariant: no frame position embedding, symmetric temporal kernels."""
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(folder, subfolder="unet").eval()
    with torch.no_grad():
        for name, mod in unet.named_modules():
            if name.endswith("time_pos_embed"):
                mod.linear_2.weight.zero_()
                mod.linear_2.bias.zero_()
            if name.endswith("temporal_res_block"):
                for conv in (mod.conv1, mod.conv2):
                    conv.weight.copy_((conv.weight + conv.weight.flip(2)) / 2)
    return unet


def test_rotated_maps_on_a_time_symmetric_unet(tiny):
    unet = _time_symmetric_unet(tiny)
    state = DualAttentionState()
    layers = install_dual_attention(unet, state)
    assert len(layers) == 4 and all(n.endswith("temporal_transformer_blocks.0.attn1") for n in layers)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 8, 8, 8, generator=g)
    emb = torch.randn(1, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    t = torch.tensor(0.4)

    def run(inp, mode, rotate=True):
        state.set(mode)
        state.rotate = rotate
        with torch.no_grad():
            return unet(inp, t, encoder_hidden_states=emb.expand(inp.shape[0], -1, -1),
                        added_time_ids=ids.expand(inp.shape[0], -1)).sample  # fmt: skip

    out_f = run(x, "record")
    assert set(state.maps) == set(layers)
    for a in state.maps.values():
        assert a.shape[-2:] == (5, 5)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    # The UNet is time-equivariant: its own maps on the flipped clip are the rotated forward maps ...
    torch.testing.assert_close(run(x.flip(1), "reverse").flip(1), out_f, atol=1e-5, rtol=1e-4)
    # ... so the reverse branch with injected rotated maps reproduces the forward output, flipped.
    out_r = run(x.flip(1), "inject")
    torch.testing.assert_close(out_r.flip(1), out_f, atol=1e-5, rtol=1e-4)
    # Injecting the maps unrotated does not.
    run(x, "record")
    assert float((run(x.flip(1), "inject", rotate=False).flip(1) - out_f).abs().max()) > 1e-3
    # Fused: one batch, forward half and reverse half with the rotated forward maps.
    out = run(torch.cat([x, x.flip(1)]), "fused")
    torch.testing.assert_close(out[1:].flip(1), out[:1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:1], out_f, atol=1e-5, rtol=1e-4)


def test_fused_queries_only_the_forward_half(tiny):
    """In fused mode Q/K of the temporal layers see only the forward half of the batch."""
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(tiny, subfolder="unet").eval()
    state = DualAttentionState()
    layers = install_dual_attention(unet, state)
    rows: list[tuple[str, int]] = []
    for n in layers:
        attn = unet.get_submodule(n)
        for proj in ("to_q", "to_k"):
            getattr(attn, proj).register_forward_hook(
                lambda m, i, o, k=f"{n}.{proj}": rows.append((k, i[0].shape[0]))
            )
    x = torch.randn(4, 4, 8, 8, 8)
    counts = {}
    for mode in ("forward", "fused"):
        rows.clear()
        state.set(mode)
        with torch.no_grad():
            unet(
                x,
                torch.tensor(0.1),
                encoder_hidden_states=torch.zeros(4, 1, 32),
                added_time_ids=torch.zeros(4, 3),
            )
        counts[mode] = dict(rows)
    assert len(counts["fused"]) == 2 * len(layers)
    assert all(2 * counts["fused"][k] == counts["forward"][k] for k in counts["forward"])


def test_trf_special_case_is_plain_two_run_averaging(tiny):
    """Reverse = forward weights, no rotation: the fused sampler is two plain SVD runs averaged."""
    from diffusers import EulerDiscreteScheduler
    from PIL import Image

    m = load_svd(tiny, "fp32")  # no reverse weights
    a8, b8 = _u8_image(4), _u8_image(5)
    s = InbetweenSettings(num_frames=4, steps=3, seed=11, noise_injection_ratio=0.34, noise_injection_steps=1)
    got = inbetween(
        m, _img(a8), _img(b8), InbetweenSettings(**{**s.__dict__, "rotate_maps": False}), decode=False
    )

    pipe = _pipeline(tiny)  # stock processors, conditioning as diffusers encodes it
    gen = torch.Generator().manual_seed(11)
    emb = [pipe._encode_image(Image.fromarray(x), "cpu", 1, True) for x in (a8, b8)]
    imgs = [pipe.video_processor.preprocess(Image.fromarray(x), height=64, width=64) for x in (a8, b8)]
    noise = torch.randn(imgs[0].shape, generator=gen)
    lat = [
        pipe._encode_vae_image(i + 0.02 * noise, "cpu", 1, True).unsqueeze(1).repeat(1, 4, 1, 1, 1)
        for i in imgs
    ]
    ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    sched = EulerDiscreteScheduler.from_config(m.scheduler_config)
    sched.set_timesteps(3)
    z = torch.randn(1, 4, 4, 8, 8, generator=gen) * sched.init_noise_sigma
    g = torch.linspace(1.0, 3.0, 4)
    g = ((g + g.flip(0)) / 2).view(1, 4, 1, 1, 1)

    def branch(x, k, t):
        inp = sched.scale_model_input(torch.cat([x, x]), t)
        u, c = pipe.unet(
            torch.cat([inp, lat[k]], 2), t, encoder_hidden_states=emb[k], added_time_ids=ids
        ).sample.chunk(2)
        return u + g * (c - u)

    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            for r in range(2 if i == 0 else 1):
                if r:
                    z = (
                        z
                        + torch.randn(z.shape, generator=gen)
                        * float(sched.sigmas[0] ** 2 - sched.sigmas[1] ** 2) ** 0.5
                    )
                sched._step_index = i  # redo the step at the same sigma
                eps = 0.5 * branch(z, 0, t) + 0.5 * branch(z.flip(1), 1, t).flip(1)
                sched._step_index = i
                z = sched.step(eps, t, z).prev_sample
    torch.testing.assert_close(got.latents, z[0], atol=1e-4, rtol=1e-4)


def test_progress_per_fused_step_and_cancel(model):
    a, b = _img(_u8_image(1)), _img(_u8_image(2))
    s = InbetweenSettings(
        num_frames=4, steps=2, seed=0, noise_injection_ratio=0.5, noise_injection_steps=2, decode_chunk_size=3
    )
    calls = []
    inbetween(model, a, b, s, progress=lambda d, t, txt: calls.append((d, t, txt)))
    # 2 steps + 1 x 2 re-injections, then 2 decode chunks of 3 and 1 frames.
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5, 6] and {c[1] for c in calls} == {6}
    assert [c[2] for c in calls[:4]] == [
        "denoising step 1/2",
        "denoising step 1/2, re-injection 1/2",
        "denoising step 1/2, re-injection 2/2",
        "denoising step 2/2",
    ]
    assert "decode" in calls[-1][2]

    class Cancel(Exception):
        pass

    def cancel(done, total, text):
        if done == 2:
            raise Cancel

    with pytest.raises(Cancel):
        inbetween(model, a, b, s, progress=cancel)
    assert model.state.mode == "forward" and not model.state.maps


def test_keyframe_segments_share_boundary_frames(model):
    keys = [_img(_u8_image(k)) for k in range(3)]
    s = InbetweenSettings(steps=1, seed=5, noise_injection_steps=0, decode_chunk_size=8)
    out = inbetween_keyframes(model, keys, s, frame_counts=[4, 3])
    assert out.latents.shape == (6, 4, 8, 8) and out.frames.shape == (6, 64, 64, 3)
    seg0 = inbetween(model, keys[0], keys[1], InbetweenSettings(**{**s.__dict__, "num_frames": 4}))
    seg1 = inbetween(model, keys[1], keys[2], InbetweenSettings(**{**s.__dict__, "num_frames": 3, "seed": 6}))
    torch.testing.assert_close(out.latents, torch.cat([seg0.latents, seg1.latents[1:]]))
    torch.testing.assert_close(out.frames, torch.cat([seg0.frames, seg1.frames[1:]]))


def test_input_errors_name_the_input(model):
    a = _img(_u8_image(1))
    s = InbetweenSettings(num_frames=4, steps=1)
    with pytest.raises(PipelineError, match="multiple of 64"):
        inbetween(model, a[:48], a[:48], s)
    with pytest.raises(PipelineError, match="last keyframe"):
        inbetween(model, a, torch.zeros(128, 64, 3), s)
    with pytest.raises(PipelineError, match="last keyframe"):
        inbetween(model, a, None, s)
    with pytest.raises(PipelineError, match="fusion"):
        inbetween(model, a, a, InbetweenSettings(fusion="max"))
    with pytest.raises(PipelineError, match="keyframes"):
        inbetween_keyframes(model, [a], s)


def test_diffusers_private_api_in_the_supported_range():
    """The two private diffusers functions the sampler relies on exist in the installed diffusers,
    which lies in the range pyproject.toml pins (pipelines/svd/compat.py)."""
    import diffusers
    import tomllib
    from conftest import REPO
    from diffusers import EulerDiscreteScheduler
    from packaging.specifiers import SpecifierSet

    from keyframe_propagation.pipelines.svd import compat

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"diffusers{compat.DIFFUSERS_SUPPORTED}" in deps
    assert diffusers.__version__ in SpecifierSet(compat.DIFFUSERS_SUPPORTED)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    assert compat.resize_with_antialiasing(x, (224, 224)).shape == (1, 3, 224, 224)
    sched = EulerDiscreteScheduler()
    sched.set_timesteps(4)
    compat.set_step_index(sched, 2)
    assert sched.step_index == 2
    with pytest.raises(PipelineError, match="supports diffusers"):
        compat.set_step_index(object(), 1)
