"""Tests of pipelines/frames.py: keyframe lists, paths, loading frames/videos/masks, resizing, writing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from keyframe_propagation.pipelines.clip import (
    Clip,
    apply_edited_keyframes,
    binarize_mask,
    fingerprint_paths,
    list_images,
    load_frames,
    load_image_tensor,
    load_masks,
    parse_keyframes,
    read_mask_file,
    resize_clip,
    resolve_user_path,
    save_frames,
    write_video,
)
from keyframe_propagation.pipelines.errors import PipelineError

H, W = 40, 64
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cutie_judo_480p_keyframe_masks"


def frame_value(i: int) -> int:
    """Pixel value that encodes frame index i (distinct after lossy coding)."""
    return 10 + 20 * i


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


def make_frames(
    folder: Path, n: int = 6, size: tuple[int, int] = (H, W), pattern: str = "{i:05d}.png"
) -> Path:
    """n frames whose pixels all equal frame_value(i) (red channel) / i (green channel)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = np.zeros((*size, 3), np.uint8)
        rgb[..., 0] = frame_value(i)
        rgb[..., 1] = i
        write_rgb(folder / pattern.format(i=i), rgb)
    return folder


def write_mask(path: Path, hole: np.ndarray) -> Path:
    Image.fromarray(hole.astype(np.uint8) * 255).save(path)
    return path


def box_mask(y0: int, y1: int, x0: int, x1: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(size, bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------------------------
# parse_keyframes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("0,20,40", 50, [0, 20, 40]),
        ("0-60:20", 61, [0, 20, 40, 60]),
        ("0-59:20", 60, [0, 20, 40]),
        ("10-14", 20, [10, 11, 12, 13, 14]),
        ("  0 ,  5 - 7 ,\t-1 ", 10, [0, 5, 6, 7, 9]),
        ("0,-1", 10, [0, 9]),
        ("-10", 10, [0]),
        ("-3--1", 10, [7, 8, 9]),
        ("3,3,1-3,2", 10, [1, 2, 3]),
        ("40,0,20", 50, [0, 20, 40]),
        ("0 20 40", 50, [0, 20, 40]),
        ("0 - 9 : 3", 10, [0, 3, 6, 9]),
        ("0,20,", 50, [0, 20]),
        ("[0, 4]", 5, [0, 4]),
        ("", 10, []),
        ("   ", 10, []),
    ],
)
def test_parse_keyframes(text: str, n: int, expected: list[int]) -> None:
    assert parse_keyframes(text, n) == expected


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("a,b", "a"),
        ("0,x7", "x7"),
        ("5-2", "5-2"),
        ("0-10:0", "0-10:0"),
        ("0-8:-2", "0-8:-2"),
        ("1.5", "1.5"),
        ("10", "10"),
        ("0,12", "12"),
        ("-11", "-11"),
        ("0-10", "0-10"),
    ],
)
def test_parse_keyframes_errors(text: str, token: str) -> None:
    with pytest.raises(PipelineError) as err:
        parse_keyframes(text, 10)
    msg = str(err.value)
    assert msg.startswith("keyframes:")
    assert f"'{token}'" in msg
    assert "0..9" in msg


def test_parse_keyframes_without_frames() -> None:
    assert parse_keyframes("", 0) == []
    with pytest.raises(PipelineError, match="keyframes"):
        parse_keyframes("0", 0)


# ------------------------------------------------------------------------------------------------
# resolve_user_path
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    inp, out, outside = tmp_path / "input", tmp_path / "output", tmp_path / "outside"
    for d in (inp, out, outside):
        d.mkdir()
    (inp / "clip").mkdir()
    (out / "result.png").write_bytes(b"x")
    (outside / "secret.txt").write_text("s")
    return inp, out, outside


def test_resolve_relative_and_absolute_inside(roots: tuple[Path, Path, Path]) -> None:
    inp, out, _ = roots
    assert resolve_user_path("clip", [inp, out]) == (inp / "clip").resolve()
    assert resolve_user_path(f'  "{inp / "clip"}" ', [inp, out]) == (inp / "clip").resolve()  # pasted quotes
    assert resolve_user_path(str(out / "result.png"), [inp, out]) == (out / "result.png").resolve()
    # Relative path not under the first root but under another one.
    assert resolve_user_path("result.png", [inp, out]) == (out / "result.png").resolve()
    # ".." that stays inside is fine.
    assert resolve_user_path("clip/../clip", [inp]) == (inp / "clip").resolve()


@pytest.mark.parametrize("bad", ["../outside/secret.txt", "clip/../../outside"])
def test_resolve_escaping_relative(roots: tuple[Path, Path, Path], bad: str) -> None:
    inp, out, _ = roots
    with pytest.raises(PipelineError) as err:
        resolve_user_path(bad, [inp, out], what="frames")
    msg = str(err.value)
    assert msg.startswith("frames:") and bad in msg and "outside the allowed folders" in msg
    assert str(inp) in msg and str(out) in msg


def test_resolve_absolute_outside(roots: tuple[Path, Path, Path]) -> None:
    inp, out, outside = roots
    with pytest.raises(PipelineError, match="outside the allowed folders"):
        resolve_user_path(str(outside / "secret.txt"), [inp, out])
    # An existing sibling whose name starts like a root is still outside it.
    sibling = inp.parent / (inp.name + "_evil")
    sibling.mkdir()
    with pytest.raises(PipelineError, match="outside"):
        resolve_user_path(str(sibling), [inp])


def test_resolve_symlink_inside_root_is_allowed_but_dotdot_is_not(roots: tuple[Path, Path, Path]) -> None:
    # Like ComfyUI, containment is checked on the path as typed: a link placed inside the input
    # folder by its owner (footage on another drive) works; climbing out with '..' does not.
    inp, _, outside = roots
    try:
        (inp / "link").symlink_to(outside, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not supported here")
    assert resolve_user_path("link/secret.txt", [inp]).read_text() == (outside / "secret.txt").read_text()
    assert resolve_user_path(str(inp / "link"), [inp]).is_dir()
    with pytest.raises(PipelineError, match="outside the allowed folders"):
        resolve_user_path("link/../../outside/secret.txt", [inp])


def test_resolve_missing(roots: tuple[Path, Path, Path], tmp_path: Path) -> None:
    inp, _, _ = roots
    with pytest.raises(PipelineError, match=r"masks: 'nothing_here' not found"):
        resolve_user_path("nothing_here", [inp], what="masks")
    with pytest.raises(PipelineError, match="no path given"):
        resolve_user_path("  ", [inp])
    # Without roots (CLI): anything that exists.
    assert resolve_user_path(str(tmp_path / "outside" / "secret.txt"), []).is_file()
    with pytest.raises(PipelineError, match="not found"):
        resolve_user_path(str(tmp_path / "nope"), [])


# ------------------------------------------------------------------------------------------------
# list_images / load_frames from folders
# ------------------------------------------------------------------------------------------------


def test_list_images_natural_sort_and_hidden(tmp_path: Path) -> None:
    for name in ["frame10.png", "frame2.png", "frame1.jpg", "Frame3.PNG", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == [
        "frame1.jpg",
        "frame2.png",
        "Frame3.PNG",
        "frame10.png",
    ]


def test_load_folder_natural_order(tmp_path: Path) -> None:
    make_frames(tmp_path / "f", n=12, pattern="frame{i}.png")
    clip = load_frames(tmp_path / "f")
    assert isinstance(clip, Clip)
    assert clip.frames.shape == (12, H, W, 3) and clip.frames.dtype == torch.float32
    assert clip.names == [f"frame{i}" for i in range(12)]
    # Green channel encodes the index: natural order, not frame1, frame10, frame11, frame2...
    assert [round(float(v) * 255) for v in clip.frames[:, 0, 0, 1]] == list(range(12))
    assert clip.alpha is None and clip.fps == 0 and clip.selected == list(range(12))


@pytest.mark.parametrize(
    ("cap", "skip", "nth", "expected"),
    [
        (0, 0, 1, list(range(10))),
        (3, 0, 1, [0, 1, 2]),
        (0, 4, 1, [4, 5, 6, 7, 8, 9]),
        (0, 0, 3, [0, 3, 6, 9]),
        (2, 2, 3, [2, 5]),
        (0, 9, 5, [9]),
    ],
)
def test_load_folder_selection(tmp_path: Path, cap: int, skip: int, nth: int, expected: list[int]) -> None:
    make_frames(tmp_path / "f", n=10)
    clip = load_frames(tmp_path / "f", frame_cap=cap, skip_first=skip, every_nth=nth)
    assert clip.selected == expected
    assert clip.names == [f"{i:05d}" for i in expected]
    red = [round(float(v) * 255) for v in clip.frames[:, H // 2, W // 2, 0]]
    assert red == [frame_value(i) for i in expected]


def test_load_only_selected_frames_are_decoded(tmp_path: Path) -> None:
    folder = make_frames(tmp_path / "f", n=6)
    (folder / "00001.png").write_bytes(b"not a png")  # skipped by every_nth=2: never decoded
    clip = load_frames(folder, every_nth=2)
    assert clip.selected == [0, 2, 4]


def test_load_progress_and_cancel(tmp_path: Path) -> None:
    folder = make_frames(tmp_path / "f", n=6)
    calls: list[tuple[int, int]] = []
    load_frames(folder, frame_cap=4, progress=lambda d, t, s: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int, text: str) -> None:
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        load_frames(folder, progress=cancel)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"frame_cap": -1}, "frame_cap"),
        ({"skip_first": -2}, "skip_first"),
        ({"every_nth": 0}, "every_nth"),
        ({"every_nth": 1.5}, "every_nth"),
        ({"skip_first": 6}, "skip_first"),
        ({"skip_first": 100, "every_nth": 2}, "skip_first"),
    ],
)
def test_load_bad_selection(tmp_path: Path, kwargs: dict, name: str) -> None:
    folder = make_frames(tmp_path / "f", n=6)
    with pytest.raises(PipelineError) as err:
        load_frames(folder, **kwargs)
    assert str(err.value).startswith(f"{name}:")


def test_load_mixed_sizes(tmp_path: Path) -> None:
    folder = make_frames(tmp_path / "f", n=5)
    write_rgb(folder / "00003.png", np.zeros((H, W - 1, 3), np.uint8))
    with pytest.raises(PipelineError) as err:
        load_frames(folder)
    msg = str(err.value)
    assert "'00003.png'" in msg and "63x40" in msg and "64x40" in msg and "00000.png" in msg


def test_load_corrupt_and_empty_and_missing(tmp_path: Path) -> None:
    folder = make_frames(tmp_path / "f", n=4)
    (folder / "00002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(PipelineError, match=r"frames: cannot read image .*00002\.png"):
        load_frames(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames")
    with pytest.raises(PipelineError, match=r"no images found in .*empty.*\.png, \.jpg"):
        load_frames(empty)
    with pytest.raises(PipelineError, match="frames: .* not found"):
        load_frames(tmp_path / "missing")


def test_load_gray_rgba_16bit(tmp_path: Path) -> None:
    gray = tmp_path / "gray"
    gray.mkdir()
    Image.fromarray(np.full((H, W), 128, np.uint8), mode="L").save(gray / "a.png")
    clip = load_frames(gray)
    assert clip.frames.shape == (1, H, W, 3)
    assert torch.allclose(clip.frames, torch.full((1, H, W, 3), 128 / 255))

    rgba = tmp_path / "rgba"
    rgba.mkdir()
    make_frames(rgba, n=1, pattern="{i:05d}.png")  # frame 0 without alpha
    px = np.zeros((H, W, 4), np.uint8)
    px[..., 2] = 200  # blue
    px[..., 3] = 255
    px[:10, :10, 3] = 0  # a transparent corner
    Image.fromarray(px, mode="RGBA").save(rgba / "00001.png")
    clip = load_frames(rgba)
    assert clip.alpha is not None and clip.alpha.shape == (2, H, W)
    assert torch.all(clip.alpha[0] == 1)  # the frame without alpha counts as opaque
    assert float(clip.alpha[1, 0, 0]) == 0 and float(clip.alpha[1, 20, 20]) == 1
    assert float(clip.frames[1, 20, 20, 2]) == pytest.approx(200 / 255)  # RGB order, not BGR
    assert float(clip.frames[1, 20, 20, 0]) == 0

    deep = tmp_path / "deep"
    deep.mkdir()
    px16 = np.zeros((H, W, 3), np.uint16)
    px16[..., 0] = 65535
    px16[..., 1] = 32768
    cv2.imwrite(str(deep / "a.png"), px16[..., ::-1])  # cv2 writes BGR
    clip = load_frames(deep)
    assert float(clip.frames[0, 0, 0, 0]) == pytest.approx(1.0)
    assert float(clip.frames[0, 0, 0, 1]) == pytest.approx(32768 / 65535)
    assert float(clip.frames.max()) <= 1.0


def test_load_single_image_and_image_tensor(tmp_path: Path) -> None:
    path = make_frames(tmp_path / "f", n=1) / "00000.png"
    clip = load_frames(path)
    assert clip.frames.shape == (1, H, W, 3) and clip.names == ["00000"]
    t = load_image_tensor(path)
    assert t.shape == (H, W, 3) and float(t[0, 0, 0]) == pytest.approx(frame_value(0) / 255)
    with pytest.raises(PipelineError, match="edited_keyframes"):
        load_image_tensor(tmp_path / "nope.png", what="edited_keyframes")


# ------------------------------------------------------------------------------------------------
# Video
# ------------------------------------------------------------------------------------------------


def make_video(path: Path, n: int = 12, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((H, W, 3), frame_value(i), np.uint8))
    writer.release()
    return path


def test_video_round_trip(tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", n=12, fps=10.0)
    clip = load_frames(video)
    assert clip.frames.shape == (12, H, W, 3)
    assert clip.fps == pytest.approx(10.0)
    assert clip.names[:2] == ["00000", "00001"] and clip.source == str(video)

    clip = load_frames(video, frame_cap=4, skip_first=1, every_nth=2)
    assert clip.selected == [1, 3, 5, 7]
    assert clip.names == ["00001", "00003", "00005", "00007"]
    assert clip.fps == pytest.approx(5.0)
    means = clip.frames.mean(dim=(1, 2, 3)) * 255
    for got, i in zip(means.tolist(), clip.selected):
        assert abs(got - frame_value(i)) < 6  # lossy codec

    with pytest.raises(PipelineError, match=r"skip_first: .* only 12"):
        load_frames(video, skip_first=12)


def test_video_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(PipelineError, match=r"frames: .*broken\.mp4"):
        load_frames(bad)


# ------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------


def test_binarize_mask_variants() -> None:
    # Half-way between the image's lowest and highest value (0.5), or any non-zero value (0).
    gray = np.array([[0, 1], [255, 0]], np.uint8)
    assert binarize_mask(gray).tolist() == [[False, False], [True, False]]
    assert binarize_mask(gray, 0).tolist() == [[False, True], [True, False]]
    assert binarize_mask(np.array([[0, 1], [1, 0]], np.uint8)).tolist() == [[False, True], [True, False]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (0, 0, 7)  # a faint colour: hole only for "any non-zero"
    rgb[1, 0] = (255, 0, 0)  # the brightest channel counts
    assert binarize_mask(rgb).tolist() == [[False, False], [True, False]]
    assert binarize_mask(rgb, 0).tolist() == [[False, True], [True, False]]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha ignored
    rgba[1, 1, :3] = 255
    assert binarize_mask(rgba).tolist() == [[False, False], [False, True]]
    alpha_only = np.zeros((2, 2, 4), np.uint8)
    alpha_only[0, 0, 3] = 255  # black strokes on a transparent layer: alpha decides
    assert binarize_mask(alpha_only).tolist() == [[True, False], [False, False]]
    white_layer = np.full((2, 2, 4), 255, np.uint8)
    white_layer[1, :, 3] = 0  # white everywhere, the stroke is where the layer is opaque
    assert binarize_mask(white_layer).tolist() == [[True, True], [False, False]]
    assert binarize_mask(np.array([[0, 40000]], np.uint16)).tolist() == [[False, True]]
    # A uniform mask is compared with half the full scale: 3 of 255 looks black and is no hole.
    assert not binarize_mask(np.full((2, 2), 3, np.uint8)).any()
    assert binarize_mask(np.full((2, 2), 255, np.uint8)).all()


def test_read_palette_and_coloured_masks(tmp_path: Path) -> None:
    idx = np.zeros((H, W), np.uint8)
    idx[5:15, 10:20] = 2  # object id 2
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 9))  # index 2 is *black* in the palette
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    m = read_mask_file(tmp_path / "pal.png")
    assert m.dtype == bool and m.sum() == 100 and m[5:15, 10:20].all()

    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[0:4, 0:4] = (0, 200, 0)
    write_rgb(tmp_path / "green.png", rgb)
    m = read_mask_file(tmp_path / "green.png")
    assert m.sum() == 16 and m[0:4, 0:4].all()

    (tmp_path / "bad.png").write_bytes(b"xx")
    with pytest.raises(PipelineError, match=r"masks: .*bad\.png"):
        read_mask_file(tmp_path / "bad.png")


def test_masks_by_name(tmp_path: Path) -> None:
    frames = make_frames(tmp_path / "f", n=10)
    masks = tmp_path / "m"
    masks.mkdir()
    for i in range(10):
        write_mask(masks / f"{i:05d}.png", box_mask(i, i + 2, 0, 5))
    clip = load_frames(frames, skip_first=3, every_nth=2)  # 00003, 00005, 00007, 00009
    m, notes = load_masks(masks, len(clip.names), (H, W), frame_names=clip.names, selected=clip.selected)
    assert m.shape == (4, H, W) and m.dtype == torch.float32
    for k, i in enumerate(clip.selected):
        assert torch.equal(m[k], torch.from_numpy(box_mask(i, i + 2, 0, 5)).float())
    assert len(notes) == 1 and "above 127.5 of 0..255" in notes[0]  # the threshold, nothing repaired


def test_masks_by_name_missing_frames(tmp_path: Path) -> None:
    masks = tmp_path / "m"
    masks.mkdir()
    for i in (0, 3):
        write_mask(masks / f"{i:05d}.png", box_mask(0, 5, 0, 5))
    names = [f"{i:05d}" for i in range(6)]
    with pytest.raises(PipelineError) as err:
        load_masks(masks, 6, (H, W), frame_names=names)
    msg = str(err.value)
    assert msg.startswith("masks:") and "00001" in msg and "4 of 6" in msg
    assert "neither one static mask nor a mask for every frame" in msg


def test_masks_by_order(tmp_path: Path) -> None:
    masks = tmp_path / "m"
    masks.mkdir()
    for i in range(10):
        write_mask(masks / f"mask_{i}.png", box_mask(i, i + 1, 0, W))  # natural order: mask_2 < mask_10
    # One mask per loaded frame; names do not match -> order, with a note.
    m, notes = load_masks(masks, 10, (H, W), frame_names=[f"frame{i}" for i in range(10)])
    assert [int(m[k].sum(dim=1).argmax()) for k in range(10)] == list(range(10))
    assert any("by order" in n for n in notes)
    # One mask per *source* frame: pick with `selected`.
    m, notes = load_masks(masks, 3, (H, W), selected=[2, 5, 8])
    assert [int(m[k].sum(dim=1).argmax()) for k in range(3)] == [2, 5, 8]
    assert any("selection" in n for n in notes)
    # Neither: error with both counts.
    with pytest.raises(PipelineError) as err:
        load_masks(masks, 4, (H, W))
    msg = str(err.value)
    assert msg.startswith("masks:") and "10 masks" in msg and "4 frames" in msg and "neither" in msg
    with pytest.raises(PipelineError, match="masks:"):
        load_masks(masks, 3, (H, W), selected=[5, 10, 15])  # beyond the folder's masks


def test_masks_static_file_and_single_mask_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hole = box_mask(10, 20, 30, 40)
    single = write_mask(tmp_path / "logo.png", hole)
    with caplog.at_level(logging.INFO, logger="keyframe_propagation"):
        m, notes = load_masks(single, 5, (H, W))
    assert m.shape == (5, H, W)
    assert all(torch.equal(m[k], torch.from_numpy(hole).float()) for k in range(5))
    assert any("static" in n for n in notes)
    assert any("static" in r.getMessage() for r in caplog.records)  # logged too

    folder = tmp_path / "one"
    folder.mkdir()
    write_mask(folder / "whatever.png", hole)
    m, notes = load_masks(folder, 5, (H, W), frame_names=[f"{i:05d}" for i in range(5)])
    assert m.shape == (5, H, W) and float(m.sum()) == 5 * hole.sum()
    assert any("static" in n for n in notes)


def test_masks_off_by_one_size_resized(tmp_path: Path) -> None:
    masks = tmp_path / "m"
    masks.mkdir()
    for i in range(3):
        size = (H, W - 1) if i == 1 else (H, W)
        write_mask(masks / f"{i:05d}.png", box_mask(0, 10, 0, 10, size=size))
    m, notes = load_masks(masks, 3, (H, W), frame_names=["00000", "00001", "00002"])
    assert m.shape == (3, H, W)
    assert len(notes) == 2 and "'00001.png'" in notes[0] and "63x40" in notes[0] and "64x40" in notes[0]
    assert float(m[1, :10, :10].min()) == 1 and float(m[1, 10:].max()) == 0

    # A logo mask made at another resolution (twice the size), as a single file.
    big = write_mask(tmp_path / "logo.png", box_mask(0, 40, 0, 64, size=(2 * H, 2 * W)))
    m, notes = load_masks(big, 2, (H, W))
    assert float(m[0, :20, :32].min()) == 1 and float(m[0].sum()) == 20 * 32
    assert any("128x80" in n for n in notes)


def test_masks_from_tensor(tmp_path: Path) -> None:
    one = torch.zeros(1, H, W)
    one[0, 5:10, 5:10] = 0.8
    one[0, 0, 0] = 0.3  # below 0.5: known
    m, notes = load_masks(one, 4, (H, W))
    assert m.shape == (4, H, W) and float(m.sum()) == 4 * 25 and set(m.unique().tolist()) == {0.0, 1.0}
    assert any("static" in n for n in notes)

    per_frame = torch.zeros(4, H, W)
    per_frame[2, 1, 1] = 1
    m, _ = load_masks(per_frame, 4, (H, W))
    assert float(m.sum()) == 1 and float(m[2, 1, 1]) == 1

    m, _ = load_masks(torch.ones(H, W), 3, (H, W))  # (H, W) MASK
    assert m.shape == (3, H, W) and float(m.min()) == 1

    m, notes = load_masks(torch.ones(1, H // 2, W // 2), 2, (H, W))
    assert m.shape == (2, H, W) and float(m.min()) == 1 and any("resized" in n for n in notes)

    with pytest.raises(PipelineError) as err:
        load_masks(torch.zeros(3, H, W), 4, (H, W))
    msg = str(err.value)
    assert msg.startswith("masks:") and "3 masks" in msg and "4 frames" in msg


def test_masks_from_alpha_none_and_invert(tmp_path: Path) -> None:
    alpha = torch.ones(2, H, W)
    alpha[1, :5, :5] = 0.0
    alpha[1, 5, 5] = 0.7  # mostly opaque: known
    m, notes = load_masks(None, 2, (H, W), alpha=alpha)
    assert float(m[0].sum()) == 0 and float(m[1].sum()) == 25 and float(m[1, :5, :5].min()) == 1
    assert any("alpha" in n for n in notes)

    m, notes = load_masks(None, 3, (H, W))
    assert m.shape == (3, H, W) and float(m.abs().sum()) == 0
    assert any("no mask given" in n for n in notes)

    hole = box_mask(0, 10, 0, 10)
    m, _ = load_masks(write_mask(tmp_path / "m.png", hole), 2, (H, W), invert=True)
    assert float(m[0, :10, :10].max()) == 0 and float(m[0].sum()) == H * W - 100

    with pytest.raises(PipelineError, match=r"masks: .* not found"):
        load_masks(tmp_path / "nope", 2, (H, W))


# ------------------------------------------------------------------------------------------------
# resize_clip
# ------------------------------------------------------------------------------------------------


def test_resize_clip_sizes_and_errors() -> None:
    frames = torch.rand(2, 40, 64, 3)
    masks = torch.zeros(2, 40, 64)
    f, m, notes = resize_clip(frames, masks, 0, 0)
    assert f is frames and m is masks and notes == []

    f, m, notes = resize_clip(frames, masks, 128, 0)  # 40 * 2 = 80
    assert f.shape == (2, 80, 128, 3) and m.shape == (2, 80, 128)
    assert any("height" in n and "80" in n for n in notes)
    assert 0 <= float(f.min()) and float(f.max()) <= 1  # bicubic overshoot clamped

    f, m, _ = resize_clip(frames, masks, 0, 24)  # 64 * 24 / 40 = 38.4 -> 40
    assert f.shape == (2, 24, 40, 3)
    f, m, _ = resize_clip(frames, masks, 32, 32)  # both given: exactly that
    assert f.shape == (2, 32, 32, 3)

    for kwargs, name in [
        ({"width": 100, "height": 0}, "width"),
        ({"width": 0, "height": 30}, "height"),
        ({"width": -8, "height": 0}, "width"),
    ]:
        with pytest.raises(PipelineError) as err:
            resize_clip(frames, masks, **kwargs)
        assert str(err.value).startswith(f"{name}:")


def test_resize_clip_values_and_conservative_mask() -> None:
    frames = torch.zeros(1, 40, 64, 3)
    frames[0, :, :32] = 1.0  # left half white
    masks = torch.zeros(1, 40, 64)
    masks[0, :, 5] = 1  # a 1-px line on an odd column: nearest-neighbour shrinking would drop it
    masks[0, 21, 41] = 1  # a single pixel
    f, m, _ = resize_clip(frames, masks, 32, 0)  # 40 * 32 / 64 = 20 -> nearest multiple of 8 (rounds up)
    assert f.shape == (1, 24, 32, 3)
    assert float(f[0, 5, 5, 0]) == pytest.approx(1.0) and float(f[0, 5, 28, 0]) == pytest.approx(0.0)
    assert float(m[0, :, 2].min()) == 1  # the line survived
    assert float(m.sum()) > m.shape[1]  # and the single pixel too
    assert set(m.unique().tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------------------------------------------
# apply_edited_keyframes
# ------------------------------------------------------------------------------------------------


def test_apply_edited_keyframes() -> None:
    frames = torch.zeros(6, H, W, 3)
    masks = torch.ones(6, H, W)
    edited = torch.full((2, H, W, 3), 0.5)
    f, m, idx, notes = apply_edited_keyframes(frames, masks, edited, [1, 3, 5])
    assert idx == [1, 3]
    assert float(f[1].min()) == 0.5 and float(f[3].min()) == 0.5 and float(f[5].max()) == 0
    assert float(m[1].max()) == 0 and float(m[3].max()) == 0 and float(m[5].min()) == 1
    assert float(frames.max()) == 0 and float(masks.min()) == 1  # inputs untouched
    assert not any("resized" in n for n in notes)

    small = torch.full((1, H // 2, W // 2, 3), 0.25)
    f, m, idx, notes = apply_edited_keyframes(frames, masks, small, [4])
    assert idx == [4] and f.shape == frames.shape and float(f[4].mean()) == pytest.approx(0.25)
    assert any("resized" in n and "32x20" in n for n in notes)

    with pytest.raises(PipelineError) as err:
        apply_edited_keyframes(frames, masks, torch.zeros(3, H, W, 3), [0, 5])
    msg = str(err.value)
    assert msg.startswith("edited_keyframes:") and "3 edited" in msg and "2 keyframes" in msg


# ------------------------------------------------------------------------------------------------
# fingerprint
# ------------------------------------------------------------------------------------------------


def test_fingerprint(tmp_path: Path) -> None:
    folder = make_frames(tmp_path / "f", n=3)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"abc")
    fp = fingerprint_paths(folder, video, None)
    assert fp == fingerprint_paths(folder, video, None)  # stable
    assert fp != fingerprint_paths(folder, None, video)

    target = folder / "00001.png"
    write_rgb(target, np.full((H, W, 3), 77, np.uint8))  # new content
    fp2 = fingerprint_paths(folder, video, None)
    assert fp2 != fp
    assert fp2 == fingerprint_paths(folder, video, None)

    st = video.stat()
    video.write_bytes(b"xyz")  # same size: the mtime (forced forward) must change the hash
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert fingerprint_paths(folder, video, None) != fp2

    (folder / "00003.png").write_bytes(b"")  # a new file in the folder
    assert fingerprint_paths(folder) != fingerprint_paths(tmp_path / "nope")
    assert fingerprint_paths(tmp_path / "missing") == fingerprint_paths(tmp_path / "missing")  # no raise


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def test_save_frames(tmp_path: Path) -> None:
    frames = torch.zeros(3, H, W, 3)
    frames[:, :, :, 0] = torch.tensor([0.0, 0.5, 1.0])[:, None, None]
    out = tmp_path / "out" / "nested"
    paths = save_frames(frames, out, ["a", "b", "c"])
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]  # no temp files left
    img = cv2.imread(str(paths[2]))
    assert img.shape == (H, W, 3) and int(img[0, 0, 2]) == 255 and int(img[0, 0, 0]) == 0  # BGR on disk
    back = load_frames(out)
    assert torch.allclose(back.frames, frames, atol=1 / 255)

    jpgs = save_frames(frames, tmp_path / "jpg", ["x", "y", "z"], ext="jpg")
    assert all(p.suffix == ".jpg" and cv2.imread(str(p)) is not None for p in jpgs)


def test_write_video(tmp_path: Path) -> None:
    frames = torch.stack([torch.full((H, W, 3), frame_value(i) / 255) for i in range(5)])
    path = write_video(frames, tmp_path / "videos" / "out.mp4", fps=0)
    assert path == tmp_path / "videos" / "out.mp4" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["out.mp4"]  # no temp file left
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(24.0)
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        assert img.shape == (H, W, 3) and abs(float(img.mean()) - frame_value(n)) < 6
        n += 1
    cap.release()
    assert n == 5

    other = write_video(frames, tmp_path / "noext", fps=12)
    assert other.name == "noext.mp4" and load_frames(other).fps == pytest.approx(12.0)


# ------------------------------------------------------------------------------------------------
# Real data (skipped when ../shared/data is absent)
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="shared test data not present")
def test_real_judo_keyframe_masks() -> None:
    clip = load_frames(REAL_DATA / "frames")
    assert clip.frames.shape == (16, 480, 854, 3)
    assert clip.names[0] == "00000" and clip.names[-1] == "00015"
    # 4 masks (frames 0, 5, 8, 13): neither a static mask nor one per frame.
    with pytest.raises(PipelineError) as err:
        load_masks(REAL_DATA / "masks", 16, (480, 854), frame_names=clip.names, selected=clip.selected)
    msg = str(err.value)
    assert msg.startswith("masks:") and "00001" in msg and "neither" in msg

    m, notes = load_masks(REAL_DATA / "masks" / "00005.png", 16, (480, 854))
    assert m.shape == (16, 480, 854) and 0 < float(m[0].mean()) < 0.5
    assert torch.equal(m[0], m[15])
    assert any("00005.png" in n and "853x480" in n and "854x480" in n for n in notes)
