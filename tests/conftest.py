"""Shared fixtures: paths to the real data and to a ComfyUI checkout (tests skip cleanly without)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KFP_DATA", REPO.parent / "shared" / "data"))
REFERENCE = REPO.parent / "shared" / "reference"
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", Path.home() / "comfy" / "ComfyUI")).expanduser()


def comfyui_available() -> bool:
    return (COMFYUI_PATH / "main.py").is_file() and (COMFYUI_PATH / "comfy_api").is_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def comfy_nodes(tmp_path_factory):
    """The pack's node module, imported with ComfyUI's API on sys.path (no server). Previews the nodes
    save go to a temporary folder, not into the checkout's temp/."""
    if not comfyui_available():
        pytest.skip(f"no ComfyUI checkout at {COMFYUI_PATH} (set COMFYUI_PATH)")
    if str(COMFYUI_PATH) not in sys.path:
        sys.path.insert(0, str(COMFYUI_PATH))
    try:
        from comfy.cli_args import args

        args.cpu = True  # as `main.py --cpu`: this machine has no GPU
        import comfy_api.latest  # noqa: F401
    except Exception as e:  # ComfyUI's requirements missing
        pytest.skip(f"ComfyUI at {COMFYUI_PATH} does not import: {e}")
    import folder_paths

    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))
    import keyframe_propagation.nodes as nodes

    return nodes


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (use: ``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on two shared cores, two threads slow the model tests down badly when anything else runs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference_keys(filename: str) -> dict:
    """A reference checkpoint's key list from ../shared/reference (the test skips without it)."""
    path = REFERENCE / filename
    if not path.is_file():
        pytest.skip(f"reference key list {path} not found")
    import json

    return json.loads(path.read_text())
