"""Command line of the inbetweening method: inbetween, extract-reverse-delta, train-reverse-motion."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from keyframe_propagation.cli import main
from keyframe_propagation.pipelines.svd.loading import DELTA_FORMAT
from keyframe_propagation.pipelines.testing.svd import build_reverse_unet_folder, build_svd_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):

    root = tmp_path_factory.mktemp("svdcli")
    xt = build_svd_folder(root / "xt", seed=0)
    base = build_svd_folder(root / "img2vid", seed=1)
    build_reverse_unet_folder(base, root / "reverse", scale=0.05)
    g = np.random.default_rng(0)
    keys = []
    for k in range(3):
        path = root / f"key{k}.png"
        Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        keys.append(path)
    return {"root": root, "xt": xt, "base": base, "reverse": root / "reverse", "keys": keys}


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


FAST = ["--steps", "2", "--noise-injection-steps", "1", "--device", "cpu", "--dtype", "fp32"]


def test_extract_then_inbetween(setup, tmp_path):
    delta = tmp_path / "reverse_delta.safetensors"
    code, out, _ = run(
        [
            "extract-reverse-delta",
            "--unet",
            str(setup["reverse"]),
            "--base",
            str(setup["base"]),
            "--out",
            str(delta),
        ]
    )
    assert code == 0 and "wrote 8 reverse-motion tensors" in out
    with safe_open(str(delta), framework="pt") as f:
        assert f.metadata()["format"] == DELTA_FORMAT and len(list(f.keys())) == 8
    k = setup["keys"]
    dest = tmp_path / "out"
    args = ["inbetween", "--first", str(k[0]), "--last", str(k[2]), "--svd", str(setup["xt"])]
    code, out, err = run([*args, "--reverse", str(delta), "--out", str(dest), "--frames", "4", *FAST])
    assert code == 0, err
    pngs = sorted(p.name for p in dest.glob("*.png"))
    assert (
        pngs == ["00000.png", "00001.png", "00002.png", "00003.png"]
        and (dest / "result.mp4").stat().st_size > 0
    )
    assert np.asarray(Image.open(dest / "00001.png")).shape == (64, 64, 3)
    assert "reverse:" in err
    # The full fine-tuned folder + base gives the same frames as the delta file (fp32 extraction differs
    # only by fp16 rounding of the delta, so compare loosely).
    dest2 = tmp_path / "out2"
    code, _, err = run(
        [
            *args,
            "--reverse",
            str(setup["reverse"]),
            "--base",
            str(setup["base"]),
            "--out",
            str(dest2),
            "--frames",
            "4",
        ]
        + FAST
    )
    assert code == 0, err
    a = np.asarray(Image.open(dest / "00002.png")).astype(int)
    b = np.asarray(Image.open(dest2 / "00002.png")).astype(int)
    assert np.abs(a - b).max() <= 2


def test_inbetween_chain_and_resize(setup, tmp_path):
    k = setup["keys"]
    dest = tmp_path / "chain"
    code, out, err = run(
        ["inbetween", "--first", str(k[0]), "--via", str(k[1]), "--last", str(k[2]),
         "--svd", str(setup["xt"]), "--out", str(dest), "--frames", "3", "--width", "128", *FAST]
    )  # fmt: skip
    assert code == 0, err
    assert len(list(dest.glob("*.png"))) == 5  # 3 + 3 - 1 shared keyframe
    assert np.asarray(Image.open(dest / "00004.png")).shape == (128, 128, 3)
    assert "no --reverse weights" in err


def test_cli_errors(setup, tmp_path):
    k = setup["keys"]
    code, _, err = run(
        [
            "inbetween",
            "--first",
            str(k[0]),
            "--last",
            str(k[1]),
            "--svd",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "svd" in err and "does not exist" in err
    code, _, err = run(
        ["inbetween", "--first", str(k[0]), "--last", str(k[1]), "--svd", str(setup["xt"]),
         "--out", str(tmp_path), "--width", "100", *FAST]
    )  # fmt: skip
    assert code == 2 and "multiple of 64" in err
    code, _, err = run(
        ["extract-reverse-delta", "--unet", str(setup["reverse"]), "--base", str(setup["base"]), "--out",
         str(tmp_path / "x.bin")]
    )  # fmt: skip
    assert code == 2 and ".safetensors" in err


def test_train_reverse_motion(setup, tmp_path):
    videos = tmp_path / "videos"
    for v in range(2):
        folder = videos / f"clip{v}"
        folder.mkdir(parents=True)
        for t in range(5):
            img = np.full((64, 64, 3), 40 * v, np.uint8)
            img[20:36, 8 + 8 * t : 24 + 8 * t] = (250, 60, 20)
            Image.fromarray(img).save(folder / f"{t:03d}.png")
    out = tmp_path / "trained.safetensors"
    code, text, err = run(
        ["train-reverse-motion", "--videos", str(videos), "--svd", str(setup["xt"]), "--out", str(out),
         "--steps", "2", "--batch-size", "1", "--frames", "4", "--width", "64", "--height", "64",
         "--device", "cpu", "--dtype", "fp32", "--log-every", "1"]
    )  # fmt: skip
    assert code == 0, err
    assert "trained 2 steps" in text and "step 2/2: loss" in err
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["format"] == DELTA_FORMAT and len(list(f.keys())) == 8
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
