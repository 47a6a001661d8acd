"""Where a clip's files are: user paths confined to ComfyUI's folders, image listings, fingerprints."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import PipelineError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")


def resolve_user_path(path: str | Path, allowed_roots: Sequence[str | Path], what: str = "path") -> Path:
    """Resolve a path typed by the user, confined to ``allowed_roots``.

    Relative paths are looked up under the first root (then the others); absolute paths must lie
    inside one of the roots after normalising ``..``. Containment is checked on the path as typed,
    not on symlink targets, as ComfyUI itself does: a link that the owner of the input folder put
    there (e.g. to a footage drive) is allowed, while ``..`` and absolute paths elsewhere are not.
    With no roots (CLI use) any existing path is allowed. ``what`` is the input's name used in
    messages (``frames``, ``masks``, ...).
    """
    # Windows "Copy as path" wraps the path in quotes; people paste it as is.
    text = str(path).strip().strip('"').strip("'").strip()
    if not text:
        raise PipelineError(f"{what}: no path given")
    p = Path(text).expanduser()
    roots = [Path(os.path.abspath(Path(r).expanduser())) for r in allowed_roots]

    if not roots:
        resolved = p.resolve()
        if not resolved.exists():
            raise PipelineError(f"{what}: '{text}' not found")
        return resolved

    if p.is_absolute():
        candidates = [Path(os.path.abspath(p))]
    else:
        candidates = [Path(os.path.abspath(root / p)) for root in roots]
    inside = [c for c in candidates if any(c == r or c.is_relative_to(r) for r in roots)]
    allowed = ", ".join(f"'{r}'" for r in roots)
    if not inside:
        raise PipelineError(
            f"{what}: '{text}' is outside the allowed folders ({allowed}); "
            "put the files in one of them or give a path relative to the first"
        )
    for c in inside:
        if c.exists():
            return c
    raise PipelineError(f"{what}: '{text}' not found (looked in {allowed})")


def _natural_key(name: str) -> tuple:
    # Alternating (text, number, text, ...) so frame2 sorts before frame10.
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, naturally sorted; hidden files (``.name``) ignored."""
    folder = Path(folder)
    files = [
        f
        for f in folder.iterdir()
        if not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]
    return sorted(files, key=lambda f: _natural_key(f.name))


def fingerprint_paths(*paths: Path | str | None) -> str:
    """A hash of the names, sizes and modification times (ns) of files and folders (recursively).

    Changes when a file is edited, added, removed or renamed; never raises (missing paths count by name).
    """
    h = hashlib.sha256()

    def stat_line(p: Path, label: str) -> None:
        try:
            st = p.stat()
            h.update(f"{label}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode("utf-8", "replace"))
        except OSError:
            h.update(f"{label}\0?\n".encode("utf-8", "replace"))

    for raw in paths:
        if raw is None:
            h.update(b"<none>\n")
            continue
        p = Path(raw)
        try:
            p = p.resolve()
        except (OSError, RuntimeError):
            pass
        h.update(f"<path>{p}\n".encode("utf-8", "replace"))
        try:
            if p.is_dir():
                for root, dirs, files in os.walk(p):
                    dirs.sort()
                    for name in sorted(files):
                        full = Path(root) / name
                        stat_line(full, full.relative_to(p).as_posix())
            else:
                stat_line(p, p.name)
        except OSError:
            h.update(b"?\n")
    return h.hexdigest()
