"""Shared fixtures: paths to the real data and to a ComfyUI checkout (tests skip cleanly without)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

import cpu_torchvision
import pytest

# A torchvision built for another torch (the registry's CUDA build next to a CPU torch) breaks every
# import of it, transformers' included: make its pure-Python parts import (a no-op elsewhere).
cpu_torchvision.install()

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KFP_DATA", REPO.parent / "shared" / "data"))
REFERENCE = REPO.parent / "shared" / "reference"
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", Path.home() / "comfy" / "ComfyUI")).expanduser()


# Set by .ci/run once it has installed ComfyUI's requirements: then a ComfyUI that cannot start fails
# the integration tests instead of skipping them.
REQUIRE_COMFYUI = os.environ.get("KFP_REQUIRE_COMFYUI", "") not in ("", "0")


def comfyui_available() -> bool:
    return (COMFYUI_PATH / "main.py").is_file() and (COMFYUI_PATH / "comfy_api").is_dir()


def comfyui_missing_reason() -> str:
    if (COMFYUI_PATH / "main.py").is_file():
        return f"ComfyUI at {COMFYUI_PATH} has no comfy_api (the V3 node API needs ComfyUI 0.3.64 or newer)"
    return f"no ComfyUI checkout at {COMFYUI_PATH} (set COMFYUI_PATH)"


def skip_or_fail(reason: str) -> None:
    """Skip (ComfyUI is optional), or fail where .ci/run has installed it (KFP_REQUIRE_COMFYUI=1)."""
    if REQUIRE_COMFYUI:
        pytest.fail(f"{reason} (KFP_REQUIRE_COMFYUI is set)", pytrace=False)
    pytest.skip(reason)


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
        skip_or_fail(comfyui_missing_reason())
    if str(COMFYUI_PATH) not in sys.path:
        sys.path.insert(0, str(COMFYUI_PATH))
    try:
        from comfy.cli_args import args

        args.cpu = True  # as `main.py --cpu`: this machine has no GPU
        import comfy_api.latest  # noqa: F401
    except ModuleNotFoundError as e:  # ComfyUI's requirements missing
        skip_or_fail(f"ComfyUI at {COMFYUI_PATH} does not import: {missing_modules_hint([str(e.name)])}")
    except Exception as e:
        skip_or_fail(f"ComfyUI at {COMFYUI_PATH} does not import: {type(e).__name__}: {e}")
    import folder_paths

    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))
    import keyframe_propagation.nodes as nodes

    return nodes


@pytest.fixture(scope="module")
def one_thread():
    """torch and OpenCV on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the runs are small, and on two shared cores two threads slow them down badly when anything else
    runs."""
    import cv2
    import torch

    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One real ComfyUI for every integration and browser test: a base directory with the demo clip,
    tiny random models under the templates' names and the inputs the tests queue (see
    comfy_fixtures.shared_base). Skipped, with the reason, when ComfyUI is absent or cannot start."""
    if not comfyui_available():
        skip_or_fail(comfyui_missing_reason())
    from comfy_fixtures import Server, shared_base

    srv = Server(shared_base(tmp_path_factory.mktemp("comfy_base")))
    try:
        srv.start()
    except RuntimeError as e:
        srv.stop()
        missing = sorted(set(re.findall(r"No module named '([^']+)'", str(e))))
        if missing:  # ComfyUI's own requirements are not installed: not the pack's failure
            skip_or_fail(f"ComfyUI at {COMFYUI_PATH} cannot start: {missing_modules_hint(missing)}")
        raise
    try:
        yield srv
    finally:
        srv.stop()


def missing_modules_hint(missing: list[str]) -> str:
    """What to tell a user whose ComfyUI lacks modules: which, and the command that installs them
    (ComfyUI's requirements without its torch lines, so the torch already installed stays)."""
    req = COMFYUI_PATH / "requirements.txt"
    return (
        f"missing Python modules {', '.join(missing)}; install ComfyUI's requirements, keeping your torch: "
        f"grep -vE '^(torch|torchvision|torchaudio)([<>=!~ ]|$)' {req} > /tmp/comfyui-req.txt && "
        f"{Path(sys.executable).name} -m pip install -r /tmp/comfyui-req.txt requests "
        "(or run bash .ci/run, which does this and runs the tests)"
    )


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``python -m keyframe_propagation ARGV`` in this process: (exit code, stdout, stderr)."""
    from keyframe_propagation.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def node_defaults(node_cls) -> dict:
    """Widget defaults of a node, from its schema (for calling ``execute`` as ComfyUI would)."""
    out = {}
    for inp in node_cls.GET_SCHEMA().inputs:
        if getattr(inp, "default", None) is not None:
            out[inp.id] = inp.default
    return out


def reference_keys(filename: str) -> dict:
    """A reference checkpoint's key list from ../shared/reference (the test skips without it)."""
    path = REFERENCE / filename
    if not path.is_file():
        pytest.skip(f"reference key list {path} not found")
    import json

    return json.loads(path.read_text())


def assert_cancel_during_a_blocked_estimate(run) -> None:
    """``run(estimator, progress)`` stops (the progress callback raising, as Cancel) while a single
    flow estimate is still running, not after it: a 4K estimate takes seconds. The estimate blocks
    until this helper releases it, so the run can only stop during it."""
    import threading

    import torch

    class Cancelled(Exception):
        pass

    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def estimator(a, b):
        started.set()
        release.wait(5)
        finished.set()
        return torch.zeros(a.shape[0], 2, a.shape[1], a.shape[2])

    def progress(done, total, text):
        if started.is_set():
            raise Cancelled

    try:
        with pytest.raises(Cancelled):
            run(estimator, progress)
        assert not finished.is_set(), "the run stopped only after the estimate"
    finally:
        release.set()
