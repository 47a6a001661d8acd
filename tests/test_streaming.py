"""Long clips: clips read frame by frame (LazyClip, frame sources, PyAV video), results written as they
are made (ClipWriter, H.264 MP4), resumed after an interruption, through the pipelines, the CLI and the
nodes (``execute`` as ComfyUI calls it)."""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import node_defaults, run_cli
from PIL import Image

from keyframe_propagation.pipelines import clip as fr
from keyframe_propagation.pipelines.clip import write as write_mod
from keyframe_propagation.pipelines.errors import PipelineError
from keyframe_propagation.pipelines.propagate import PackedState, PropagationConfig, Resume, propagate_fill
from keyframe_propagation.pipelines.testing.synthetic import make_clip

pytestmark = pytest.mark.usefixtures("one_thread")

T, H, W = 16, 48, 72


@pytest.fixture(scope="module")
def clip():
    return make_clip(num_frames=T, height=H, width=W, seed=5)


@pytest.fixture(scope="module")
def clip_dir(clip, tmp_path_factory) -> Path:
    """frames/ and masks/ (PNG, same names) of the synthetic clip."""
    root = tmp_path_factory.mktemp("clip")
    names = [f"{t:05d}" for t in range(T)]
    fr.save_frames(clip.frames, root / "frames", names)
    (root / "masks").mkdir()
    for t in range(T):
        Image.fromarray((clip.masks[t].numpy() * 255).astype(np.uint8)).save(
            root / "masks" / f"{names[t]}.png"
        )
    return root


def _video(path: Path, frames: torch.Tensor, fps: float = 12.0) -> Path:
    return fr.write_video(frames, path, fps)


def _decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# --------------------------------------------------------------------------------------------------
# Frame sources and the lazy clip
# --------------------------------------------------------------------------------------------------


def test_lazy_clip_equals_the_decoded_clip(clip_dir):
    lazy = fr.open_clip(clip_dir / "frames", clip_dir / "masks", keyframes="0,-1", skip_first=1, width=48)
    eager = fr.prepare_clip(clip_dir / "frames", clip_dir / "masks", keyframes="0,-1", skip_first=1, width=48)
    assert len(lazy) == T - 1 and lazy.size == (32, 48) == tuple(eager.frames.shape[1:3])
    assert lazy.keyframes == eager.keyframes and lazy.notes == eager.notes
    for t in range(len(lazy)):
        assert torch.equal(lazy.frame(t), eager.frames[t]) and torch.equal(lazy.mask(t), eager.masks[t])
    # The views keep only the last few frames.
    view = lazy.frames(reach=10)
    for t in range(len(lazy)):
        view[t]
    assert 1 <= len(view._cache) <= 2


def test_video_source_reads_frames_on_demand_and_counts_them(clip, tmp_path):
    path = _video(tmp_path / "c.mp4", clip.frames)
    src = fr.open_frames(path, skip_first=2, every_nth=3)
    assert isinstance(src, fr.VideoFile) and src.total == T and src.size == (H, W)
    assert src.selected == list(range(2, T, 3)) and src.names[0] == "00002"
    assert src.fps == pytest.approx(4.0)
    decoded = _decode_all(path)
    src.set_window(2)
    for i in (0, 1, 2, 4, 3, 0):  # forwards, within the window, then back before it (restart)
        rgb, alpha = src.read(i)
        assert alpha is None and np.array_equal((rgb * 255 + 0.5).astype(np.uint8), decoded[src.selected[i]])
    # The same bytes as an in-memory stream (ComfyUI's VIDEO of uploaded bytes).
    mem = fr.open_frames(io.BytesIO(path.read_bytes()))
    assert len(mem) == T and np.array_equal(mem.read(5)[0], fr.open_frames(path).read(5)[0])


def test_headers_are_checked_before_decoding(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A PNG that declares 16000 x 16000 pixels in a few dozen bytes.
    ihdr = struct.pack(">IIBBBBB", 16000, 16000, 8, 2, 0, 0, 0)
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "00000.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    )
    with pytest.raises(PipelineError, match=r"frames: .*00000\.png.*(16000x16000|256 Mpx)"):
        fr.open_frames(tmp_path / "huge")
    with pytest.raises(PipelineError, match=r"frames: .*(16000x16000|256 Mpx)"):
        fr.load_image_tensor(tmp_path / "huge" / "00000.png", "frames")


def test_materialize_refuses_a_batch_that_does_not_fit(clip_dir, monkeypatch):
    lazy = fr.open_clip(clip_dir / "frames", clip_dir / "masks")
    monkeypatch.setattr("keyframe_propagation.pipelines.clip.lazy.available_memory", lambda: 100_000)
    with pytest.raises(PipelineError, match=r"frames: 16 frames of 72x48 need .* free.*stream"):
        lazy.materialize()
    frames, masks = lazy.materialize(check_memory=False)
    assert frames.shape == (T, H, W, 3) and masks.shape == (T, H, W)


def test_a_frame_that_disappears_is_named(clip_dir, tmp_path):
    import shutil

    folder = tmp_path / "frames"
    shutil.copytree(clip_dir / "frames", folder)
    lazy = fr.open_clip(folder)
    (folder / "00007.png").unlink()
    lazy.frame(3)
    with pytest.raises(PipelineError, match=r"frames: .*00007\.png.* disappeared"):
        lazy.frame(7)


# --------------------------------------------------------------------------------------------------
# Writing as made, and resuming
# --------------------------------------------------------------------------------------------------


def test_video_encoder_writes_h264_yuv420p_and_pads_odd_sizes(tmp_path):
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(5, 33, 47, 3, generator=g)
    path = fr.write_video(frames, tmp_path / "odd", 10)
    assert path.name == "odd.mp4" and [p.name for p in tmp_path.iterdir()] == ["odd.mp4"]
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert (s.codec_context.width, s.codec_context.height) == (48, 34) and s.frames == 5
    decoded = _decode_all(path)[:, :33, :47].astype(np.float32) / 255
    assert np.abs(decoded.mean(axis=(1, 2, 3)) - frames.numpy().mean(axis=(1, 2, 3))).max() < 0.03


def _propagate_into(writer: fr.ClipWriter, lazy: fr.LazyClip, cfg: PropagationConfig) -> None:
    resume = Resume(writer.start, PackedState.from_tensors(writer.state)) if writer.start else None
    with writer:
        propagate_fill(
            lazy.frames(cfg.chunk + cfg.lookahead + 2),
            lazy.masks(cfg.chunk + cfg.lookahead + 2),
            sink=lambda t, f, u: writer.write(t, f),
            config=cfg,
            resume=resume,
            on_chunk=lambda end, st: writer.checkpoint(end, st.to_tensors()),
        )
        writer.finish()


def test_an_interrupted_job_resumes_and_equals_an_uninterrupted_one(clip_dir, tmp_path, monkeypatch):
    lazy = fr.open_clip(clip_dir / "frames", clip_dir / "masks")
    cfg = PropagationConfig(chunk=4, lookahead=3)
    _propagate_into(fr.ClipWriter(tmp_path / "whole", lazy.names, 10, "fp"), lazy, cfg)

    original = fr.ClipWriter.write

    def failing(self, t, frame):
        if t == 9:
            raise KeyboardInterrupt
        return original(self, t, frame)

    monkeypatch.setattr(fr.ClipWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        _propagate_into(fr.ClipWriter(tmp_path / "cut", lazy.names, 10, "fp"), lazy, cfg)
    monkeypatch.setattr(fr.ClipWriter, "write", original)
    cut = tmp_path / "cut"
    record = json.loads((cut / ".kfp_progress.json").read_text())
    assert record["done"] == 8 and record["complete"] is False and record["state"] is True
    assert sorted(p.name for p in cut.iterdir() if p.name.startswith(".")) == [
        ".kfp_progress.json",
        ".kfp_state.safetensors",
    ]  # no partial file, and no video yet
    assert sorted(p.name for p in cut.glob("*.png")) == [f"{t:05d}.png" for t in range(9)]
    resumed = fr.ClipWriter(cut, lazy.names, 10, "fp")
    assert resumed.start == 8 and not resumed.complete
    _propagate_into(resumed, lazy, cfg)
    for t in range(T):
        a = np.asarray(Image.open(tmp_path / "whole" / f"{t:05d}.png"))
        b = np.asarray(Image.open(cut / f"{t:05d}.png"))
        assert np.array_equal(a, b), t
    assert np.array_equal(_decode_all(cut / "result.mp4"), _decode_all(tmp_path / "whole" / "result.mp4"))
    assert fr.ClipWriter(cut, lazy.names, 10, "fp").complete
    other = fr.ClipWriter(cut, lazy.names, 10, "other settings")
    assert other.start == 0 and not other.complete


def test_cancel_during_a_frame_s_encoding_leaves_no_file(tmp_path, monkeypatch):
    """The ``check`` given to ``write`` (Cancel) is called while the image is encoded (half a second
    for a 4K PNG): when it raises, write raises then, and neither the frame nor a partial file is left."""
    from keyframe_propagation.pipelines.clip import write as write_module

    started, release = threading.Event(), threading.Event()
    encode = write_module._encode_image

    def slow_encode(*args):
        started.set()
        release.wait(5)
        return encode(*args)

    class Cancelled(Exception):
        pass

    def check():
        if started.is_set():
            raise Cancelled

    monkeypatch.setattr(write_module, "_encode_image", slow_encode)
    writer = fr.ClipWriter(tmp_path / "out", ["a", "b"], 10, "fp", None)
    try:
        with pytest.raises(Cancelled):
            writer.write(0, torch.rand(16, 24, 3), check=check)
        assert not release.is_set() and list((tmp_path / "out").iterdir()) == []
    finally:
        release.set()
    writer.abort()


def test_a_failed_video_leaves_no_file(tmp_path):
    enc = fr.VideoEncoder(tmp_path / "v.mp4", 10, (8, 8))
    enc.add(torch.zeros(8, 8, 3))
    enc.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PipelineError, match="video"):
        fr.VideoEncoder(tmp_path / "w.mp4", 10, (8, 8)).add(torch.zeros(9, 8, 3))
    assert not any(p.suffix == ".mp4" and not p.name.startswith(".") for p in tmp_path.iterdir())
    assert write_mod.video_path(Path("x.gif")).name == "x.mp4"


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_remove_is_interruptible_and_resumes(clip_dir, tmp_path, monkeypatch):
    args = ["remove", "--frames", str(clip_dir / "frames"), "--masks", str(clip_dir / "masks")]
    args += ["--chunk", "4", "--lookahead", "3"]
    rc, _, err = run_cli([*args, "--out", str(tmp_path / "whole")])
    assert rc == 0, err
    original = fr.ClipWriter.write
    calls = [0]

    def failing(self, t, frame):
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt
        return original(self, t, frame)

    monkeypatch.setattr(fr.ClipWriter, "write", failing)
    rc, _, err = run_cli([*args, "--out", str(tmp_path / "cut")])
    assert rc == 130 and "interrupted" in err and "Traceback" not in err and "run the same command" in err
    assert not (tmp_path / "cut" / "result.mp4").exists()
    monkeypatch.setattr(fr.ClipWriter, "write", original)
    rc, out, err = run_cli([*args, "--out", str(tmp_path / "cut")])
    assert rc == 0 and "resuming at frame 4" in err
    for t in range(T):
        assert (tmp_path / "cut" / f"{t:05d}.png").read_bytes() == (
            tmp_path / "whole" / f"{t:05d}.png"
        ).read_bytes()
    rc, out, _ = run_cli([*args, "--out", str(tmp_path / "cut")])
    assert rc == 0 and "already holds the result" in out
    rc, _, err = run_cli([*args, "--out", str(tmp_path / "whole" / "00000.png")])
    assert rc == 2 and "--out" in err


def test_cli_remove_reads_a_video(clip, clip_dir, tmp_path):
    video = _video(tmp_path / "clip.mp4", clip.frames)
    rc, out, err = run_cli(
        ["remove", "--frames", str(video), "--masks", str(clip_dir / "masks"), "--out", str(tmp_path / "o")]
    )
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == [f"{t:05d}.png" for t in range(T)]


# --------------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def comfy_dirs(comfy_nodes, tmp_path, clip_dir):
    import folder_paths

    old = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "c").symlink_to(clip_dir, target_is_directory=True)
    folder_paths.set_input_directory(str(tmp_path / "input"))
    folder_paths.set_output_directory(str(tmp_path / "output"))
    yield tmp_path
    folder_paths.set_input_directory(old[0])
    folder_paths.set_output_directory(old[1])


def _load(nodes, stream: bool, **kw):
    node = nodes.LoadKeyframes
    args = node_defaults(node) | {
        "frames": "c/frames",
        "masks": "c/masks",
        "keyframes": "0,8",
        "stream": stream,
    }
    return node.execute(**args | kw)


def test_load_keyframes_streams_a_clip(comfy_nodes, comfy_dirs):
    out = _load(comfy_nodes, True)
    frames, masks, kf, lazy = out.result
    assert frames.shape == (2, H, W, 3) and masks.shape == (2, H, W)  # the keyframes only
    assert isinstance(lazy, fr.LazyClip) and len(lazy) == T and kf.indices == [0, 8]
    assert "streaming" in out.ui["text"][0] and out.ui["kfp_filmstrip"][0]["num_frames"] == T
    eager = _load(comfy_nodes, False).result
    assert eager[0].shape == (T, H, W, 3) and torch.equal(frames[1], eager[0][8])
    assert torch.equal(lazy.frame(5), eager[0][5]) and torch.equal(lazy.mask(5), eager[1][5])


def test_inpaint_streams_writes_and_resumes(comfy_nodes, comfy_dirs, monkeypatch):
    import comfy.model_management as mm

    lazy = _load(comfy_nodes, True).result[3]
    node = comfy_nodes.TwoStreamInpaint
    base = node_defaults(node) | {"chunk": 4, "lookahead": 3}
    memory = node.execute(
        **base | {"images": _load(comfy_nodes, False).result[0], "masks": _load(comfy_nodes, False).result[1]}
    )
    with pytest.raises(PipelineError, match="output_folder"):
        node.execute(**base | {"clip": lazy})
    out = node.execute(**base | {"clip": lazy, "output_folder": "kfp/streamed"})
    keys, unseen, result, video = out.result
    folder = comfy_dirs / "output" / "kfp" / "streamed"
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{t:05d}.png" for t in range(T)]
    assert (folder / "streamed.mp4").is_file() and video.get_dimensions() == (W, H)
    assert out.ui["images"] == [{"filename": "streamed.mp4", "subfolder": "kfp/streamed", "type": "output"}]
    assert keys.shape == (2, H, W, 3) and unseen.shape == (2, H, W) and len(result) == T
    for t in range(T):  # the streamed result is the in-memory result, up to the PNG's 8 bits
        assert float((result.frame(t) - memory.result[0][t]).abs().max()) <= 0.5 / 255 + 1e-6
    # Cancel in the middle, then the same inputs again: it continues and ends as an uninterrupted run.
    calls = [0]
    original = fr.ClipWriter.write

    def cancel(self, t, frame, check=None):
        calls[0] += 1
        if calls[0] == 11:
            raise mm.InterruptProcessingException()
        return original(self, t, frame, check)

    monkeypatch.setattr(fr.ClipWriter, "write", cancel)
    with pytest.raises(mm.InterruptProcessingException):
        node.execute(**base | {"clip": lazy, "output_folder": "kfp/cancelled"})
    cut = comfy_dirs / "output" / "kfp" / "cancelled"
    assert not (cut / "cancelled.mp4").exists() and not list(cut.glob(".*.partial-*"))
    monkeypatch.setattr(fr.ClipWriter, "write", original)
    out = node.execute(**base | {"clip": lazy, "output_folder": "kfp/cancelled"})
    assert "resumed at frame 8" in out.ui["text"][0]
    for t in range(T):
        assert (cut / f"{t:05d}.png").read_bytes() == (folder / f"{t:05d}.png").read_bytes(), t
    # Changed settings: it starts over (and ends with the other settings' result).
    out = node.execute(**base | {"clip": lazy, "output_folder": "kfp/cancelled", "consistency": 3.0})
    assert "resumed" not in out.ui["text"][0]


def test_inpaint_streams_with_the_model_and_refine_streams_a_clip(comfy_nodes, comfy_dirs):
    from keyframe_propagation.pipelines.refine.lama import LamaConfig
    from keyframe_propagation.pipelines.testing.lama import random_lama
    from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator

    torch.manual_seed(0)
    model = TwoStreamGenerator("tiny").eval()
    lazy = _load(comfy_nodes, True).result[3]
    node = comfy_nodes.TwoStreamInpaint
    args = node_defaults(node) | {"clip": lazy, "output_folder": "kfp/model", "model": model}
    args |= {"generate_every": 5, "keyframe_offsets": "-5,5", "work_long_side": 48}
    keys, _, result, _ = node.execute(**args).result
    known = lazy.mask(3) < 0.5
    assert torch.allclose(result.frame(3)[known], lazy.frame(3)[known], atol=0.5 / 255 + 1e-6)
    from keyframe_propagation.nodes.refine import MultiscaleRefine as refine

    lama = random_lama(LamaConfig(ngf=8, n_blocks=2), seed=1)
    r_args = node_defaults(refine) | {"clip": result, "output_folder": "kfp/refined", "model": lama}
    r_args |= {"n_iters": 2, "min_side": 24}
    keys, refined, video = refine.execute(**r_args).result
    assert keys.shape == (2, H, W, 3) and len(refined) == T and video.get_dimensions() == (W, H)
    assert len(list((comfy_dirs / "output" / "kfp" / "refined").glob("*.png"))) == T


def test_clip_to_images(comfy_nodes, comfy_dirs, monkeypatch):
    lazy = _load(comfy_nodes, True).result[3]
    node = comfy_nodes.ClipToImages
    images, masks = node.execute(clip=lazy, start=3, frame_cap=5).result
    assert (
        images.shape == (5, H, W, 3)
        and torch.equal(images[0], lazy.frame(3))
        and torch.equal(masks[4], lazy.mask(7))
    )
    with pytest.raises(PipelineError, match="start"):
        node.execute(clip=lazy, start=T, frame_cap=0)
    monkeypatch.setattr("keyframe_propagation.pipelines.clip.lazy.available_memory", lambda: 10_000)
    with pytest.raises(PipelineError, match=r"frame_cap: 16 frames .* free"):
        node.execute(clip=lazy, start=0, frame_cap=0)


def test_flow_estimate_previews_a_large_streamed_clip_small(comfy_nodes):
    """The preview of a streamed clip stays in ComfyUI's cache for the whole job: at most 1024 wide."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 600, 1400, 3, generator=gen)
    clip = fr.LazyClip.from_tensors(frames, torch.zeros(1, 600, 1400))
    node = comfy_nodes.FlowEstimate
    est, preview, occlusion = node.execute(
        **node_defaults(node) | {"clip": clip, "preset": "ultrafast"}
    ).result
    assert preview.shape == (2, 438, 1024, 3) and occlusion.shape == (2, 438, 1024)
    assert not hasattr(est, "forward")  # the settings, for the flow computed per chunk


def test_large_videos_get_a_shorter_encoder_lookahead(tmp_path):
    """x264's 40-frame lookahead holds ~1 GB at 4K; 1080p and below keep x264's default."""
    assert write_mod._lookahead_option((1080, 1920)) == {}
    assert write_mod._lookahead_option((2160, 3840)) == {"rc-lookahead": "12"}
    enc = fr.VideoEncoder(tmp_path / "big.mp4", 24, (2160, 3840))
    try:
        assert enc._stream.options.get("rc-lookahead") == "12" and enc._stream.options["crf"] == "18"
    finally:
        enc.abort()
    assert not list(tmp_path.iterdir())
