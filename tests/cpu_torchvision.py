"""Make the pure-Python parts of a torchvision built for another torch importable (tests only).

On CPU-only test machines torch is the local CPU build, while the registry's torchvision (pulled in by
ComfyUI's requirements, through spandrel) is a CUDA build whose compiled extension cannot load
against it. Importing that torchvision then fails with "operator torchvision::nms does not exist"
(its meta registrations need the ``nms`` operator), and so does everything that imports it:
ComfyUI at start-up, and transformers' image processors whenever torchvision is installed (even
``from diffusers import StableVideoDiffusionPipeline``).

:func:`install` adds an import hook: at the first ``import torchvision``, if its extension does not
load, the ``torchvision::nms`` and ``torchvision::qnms`` schemas are defined with a plain-torch CPU
``nms``, so torchvision imports and its pure-Python parts (transforms, the RAFT model) work. Where
the extension loads (a matching torchvision, as users have), or where torchvision is not installed,
the hook does nothing. ``tests/conftest.py`` installs it in the test process, and
``comfy_fixtures.Server`` in the ComfyUI it starts when this machine needs it (:func:`needed`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

_LIBS: list = []  # keeps the operator library alive


def _extension_path() -> str | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for name in os.listdir(spec.submodule_search_locations[0]):
        if name.startswith("_C") and name.endswith((".so", ".pyd")):
            return os.path.join(spec.submodule_search_locations[0], name)
    return None


def _nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression: indices of the kept boxes, best score first."""
    import torch

    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    dropped = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if dropped[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        dropped |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _define_ops() -> None:
    import torch

    path = _extension_path()
    if path is None:
        return  # no torchvision: nothing to do
    try:
        torch.ops.load_library(path)
        return  # the extension matches this torch
    except Exception:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    _LIBS.append(lib)


class _Finder:
    """Runs :func:`_define_ops` once, just before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            try:
                _define_ops()
            except Exception as e:  # never block the import itself
                print(f"[cpu_torchvision] failed: {e}", file=sys.stderr)
        return None


def install() -> None:
    """Install the hook (before torchvision is imported; a no-op if it already was)."""
    if "torchvision" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


def needed(python: str = sys.executable) -> bool:
    """Whether ``python`` has a torchvision that does not import on its own (checked in a child)."""
    code = (
        "import importlib.util, sys\n"
        "if importlib.util.find_spec('torchvision') is None: sys.exit(0)\n"
        "import torchvision\n"
    )
    res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return res.returncode != 0


if __name__ == "__main__":  # python tests/cpu_torchvision.py: say whether this environment needs the hook
    print("needed" if needed() else "not needed")
