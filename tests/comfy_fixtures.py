"""What the example workflows need in a ComfyUI base directory, built by the tests (no download).

Each ``add_*`` puts inputs and tiny random models with the real formats under the names the templates
use; the integration and browser tests combine them in a temporary ``--base-directory``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cpu_torchvision
import numpy as np
import torch
from conftest import COMFYUI_PATH, DATA, REPO
from PIL import Image

PACK_DIR_NAME = "comfyui-keyframe-propagation"
TENNIS = DATA / "davis_tennis_240p"
SVD_PAIR = DATA / "svd_kf_pair_720p"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comfyui_python() -> list[str]:
    """How to start ComfyUI's main.py: ``python main.py``, or, where this Python's torchvision does not
    import on its own (a build for another torch), through the same hook as the tests
    (tests/cpu_torchvision.py) so ComfyUI starts as it would with a matching torchvision."""
    if not cpu_torchvision.needed():
        return [sys.executable, "main.py"]
    tests = str(Path(__file__).resolve().parent)
    boot = (
        f"import runpy, sys; sys.path.insert(0, {tests!r}); import cpu_torchvision; "
        "cpu_torchvision.install(); sys.path.pop(0); sys.argv = ['main.py', *sys.argv[1:]]; "
        "runpy.run_path('main.py', run_name='__main__')"
    )
    return [sys.executable, "-c", boot]


class Server:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        cmd = [
            *comfyui_python(),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--dont-print-server",
            "--base-directory",
            str(self.base),
            "--database-url",
            "sqlite:///:memory:",
        ]
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/system_stats", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start in {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            raw = r.read()
        return json.loads(raw)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@contextmanager
def serve(base: Path) -> Iterator[Server]:
    """A real ComfyUI on ``base`` for the duration of the block."""
    srv = Server(base)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def new_base(base: Path) -> Path:
    """An empty base directory with the pack linked into custom_nodes/, for a returning user: a new
    user's first page opens the template browser over the graph (Comfy.TutorialCompleted unset)."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


def shared_base(base: Path) -> Path:
    """The base directory of the session's one ComfyUI: the pack, the demo clip and every template's
    tiny models and inputs. Test modules add their own extra files under it (ComfyUI rescans model
    folders when they change)."""
    new_base(base)
    add_demo_clip(base)
    add_long_clip(base)
    add_two_stream(base)
    add_refine(base)
    add_inbetween(base)
    return base


def add_long_clip(base: Path) -> bool:
    """input/long_clip.mp4 (the tennis clip as a video) and input/long_clip_masks, when present."""
    if not TENNIS.is_dir():
        return False
    from keyframe_propagation.pipelines.clip import load_frames, write_video

    inp = base / "input"
    inp.mkdir(parents=True, exist_ok=True)
    write_video(load_frames(TENNIS / "frames").frames, inp / "long_clip.mp4", 24.0)
    if not (inp / "long_clip_masks").exists():
        (inp / "long_clip_masks").symlink_to(TENNIS / "masks", target_is_directory=True)
    return True


def add_demo_clip(base: Path) -> bool:
    """input/keyframe_demo/{frames,masks}: the real DAVIS tennis clip (70 frames), when present."""
    demo = base / "input" / "keyframe_demo"
    demo.mkdir(parents=True, exist_ok=True)
    if not TENNIS.is_dir():
        return False
    for sub in ("frames", "masks"):
        if not (demo / sub).exists():
            (demo / sub).symlink_to(TENNIS / sub, target_is_directory=True)
    return True


def add_two_stream(base: Path, seed: int = 0) -> Path:
    """models/two_stream/tiny.safetensors, also under the template's name ours_big.safetensors."""
    from keyframe_propagation.pipelines.two_stream.io import save_two_stream
    from keyframe_propagation.pipelines.two_stream.model import TwoStreamGenerator

    models = base / "models" / "two_stream"
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_two_stream(TwoStreamGenerator("tiny").eval(), models / "tiny.safetensors")
    # The example workflow's file name, holding the tiny model (the config is read from the shapes).
    (models / "ours_big.safetensors").write_bytes((models / "tiny.safetensors").read_bytes())
    return models


def add_refine(base: Path) -> None:
    """models/inpaint/big-lama.pt (a tiny LaMa as TorchScript) and input/refine_{image,mask}.png."""
    from keyframe_propagation.pipelines.refine.lama import LamaConfig
    from keyframe_propagation.pipelines.testing.lama import random_lama

    (base / "models" / "inpaint").mkdir(parents=True, exist_ok=True)
    tiny = random_lama(LamaConfig(ngf=8, n_blocks=2), seed=1).eval()
    torch.jit.trace(tiny, torch.rand(1, 4, 32, 32)).save(str(base / "models" / "inpaint" / "big-lama.pt"))
    (base / "input").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    img = (rng.random((192, 256, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(base / "input" / "refine_image.png")
    mask = np.zeros((192, 256, 3), np.uint8)
    mask[60:120, 80:180] = 255
    Image.fromarray(mask).save(base / "input" / "refine_mask.png")


def add_inbetween(base: Path) -> None:
    """A tiny SVD folder under the template's name, a compact reverse-motion delta extracted from a
    "released" reverse UNet (the img2vid base with its 32 temporal V/O weights changed), and the two
    keyframes input/inbetween_{first,last}.png (the real pair when present)."""
    from keyframe_propagation.pipelines.svd.loading import extract_reverse_delta
    from keyframe_propagation.pipelines.testing.svd import build_reverse_unet_folder, build_svd_folder

    models = base / "models"
    build_svd_folder(models / "diffusers" / "stable-video-diffusion-img2vid-xt", seed=0)
    img2vid = build_svd_folder(base / "img2vid", seed=1)
    build_reverse_unet_folder(img2vid, base / "released")
    (models / "reverse_motion").mkdir(parents=True, exist_ok=True)
    extract_reverse_delta(
        base / "released", img2vid, models / "reverse_motion" / "svd_reverse_motion_delta.safetensors", "fp32"
    )
    inp = base / "input"
    inp.mkdir(exist_ok=True)
    for src_name, dst_name, seed in (("start", "first", 0), ("end", "last", 1)):
        src = SVD_PAIR / f"{src_name}.png"
        if src.is_file():
            img = Image.open(src).convert("RGB").resize((256, 144))
        else:
            rng = np.random.default_rng(seed)
            img = Image.fromarray(rng.integers(0, 255, (144, 256, 3), dtype=np.uint8))
        img.save(inp / f"inbetween_{dst_name}.png")
