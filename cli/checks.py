"""Checks of command-line arguments made before any work starts, each raising a PipelineError that
names the option (``--out: ...``), so a run never fails half-way on a path or device it could have
refused at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..pipelines.errors import PipelineError


def output_folder(path: str | os.PathLike, what: str = "--out", create: bool = True) -> Path:
    """An output folder, created if needed (with ``create``; else only checked: nothing is made before
    the inputs are read); refused when it is a file or cannot be created or written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PipelineError(f"{what}: '{p}' is a file, not a folder; give a folder for the outputs")
    if not create:
        top = next(a for a in (p, *p.absolute().parents) if a.exists())
        if not top.is_dir():
            raise PipelineError(f"{what}: cannot create the folder '{p}' ('{top}' is a file)")
        if not os.access(top, os.W_OK | os.X_OK):
            raise PipelineError(f"{what}: cannot create or write the folder '{p}' (no permission in '{top}')")
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PipelineError(f"{what}: cannot create the folder '{p}' ({e.strerror or e})") from e
    if not os.access(p, os.W_OK | os.X_OK):
        raise PipelineError(f"{what}: cannot write into the folder '{p}' (permission denied)")
    return p


def output_image(path: str | os.PathLike, what: str = "--out") -> Path:
    """An output image file: an extension the image writer knows (none = .png), in a folder that can be
    created and written (checked, not made); refused when the path is a folder."""
    import cv2

    p = Path(path)
    if p.is_dir():
        raise PipelineError(f"{what}: '{p}' is a folder; give an image file name such as '{p / 'out.png'}'")
    if not p.suffix:
        p = p.with_suffix(".png")
    if not cv2.haveImageWriter(str(p)):
        raise PipelineError(
            f"{what}: cannot write images with the extension '{p.suffix}'; use .png, .jpg, .tif or .webp"
        )
    if p.parent.is_file():
        raise PipelineError(f"{what}: cannot create the folder '{p.parent}' ('{p.parent}' is a file)")
    output_folder(p.parent, what, create=False)
    return p


def compute_device(name: str, what: str = "--device"):
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps`` -> a torch
    device; refused when it does not exist on this machine."""
    import torch

    text = (name or "auto").strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise PipelineError(f"{what}: '{text}' is not a device; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(
                f"{what}: '{text}' asked for, but CUDA is not available (torch {torch.__version__}); "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(f"{what}: '{text}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise PipelineError(f"{what}: 'mps' asked for, but it is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise PipelineError(f"{what}: '{text}' is not supported; use auto, cpu, cuda or cuda:N")
    return device


def print_notes(notes: list[str]) -> None:
    """Fix-ups as ``note: ...`` lines and warnings as ``warning: ...`` lines, on stderr."""
    from ..pipelines.errors import WARNING

    for n in notes:
        print(n if n.startswith(WARNING) else f"note: {n}", file=sys.stderr)
