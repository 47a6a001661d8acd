"""Shared helpers of the benchmarks: where the data is, loading clips, lazy clips, tables, machine info.

The real footage lives outside the repository (``../shared/data`` next to the checkout, or ``$KFP_DATA``)
and is never copied in. Scripts call :func:`require_data` first and exit 0 with a "skipped" line when it
is missing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from keyframe_propagation.pipelines.clip import list_images, load_image_tensor, read_mask_file

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"  # git-ignored

TENNIS = "davis_tennis_240p"
CAR = "running_car_540p"
CAR_LOGO = "mask_logo_972x540.png"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """``$KFP_DATA`` if set, else ``<checkout>/../shared/data``."""
    env = os.environ.get("KFP_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def require_data(*sets: str) -> Path:
    """The data folder; prints a skip line and exits 0 when it (or one of ``sets``) is absent."""
    root = data_dir()
    missing = [s for s in sets if not (root / s).is_dir()]
    if not root.is_dir() or missing:
        what = str(root) if not root.is_dir() else ", ".join(str(root / s) for s in missing)
        print(f"skipped: data not found ({what}); set KFP_DATA to the folder holding {', '.join(sets)}")
        sys.exit(0)
    return root


def frame_files(root: Path, name: str) -> list[Path]:
    return list_images(root / name / "frames")


def mask_files(root: Path, name: str) -> list[Path]:
    return list_images(root / name / "masks")


def read_frame(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One frame -> (H, W, 3) float32 in [0, 1]; resized to ``size`` (H, W) if given.

    Downscaling uses INTER_AREA, upscaling INTER_LINEAR.
    """
    img = load_image_tensor(path, "frame")
    if size is None or tuple(img.shape[:2]) == tuple(size):
        return img
    h, w = int(img.shape[0]), int(img.shape[1])
    interp = cv2.INTER_AREA if size[0] * size[1] < h * w else cv2.INTER_LINEAR
    out = cv2.resize(img.numpy(), (size[1], size[0]), interpolation=interp)
    return torch.from_numpy(np.ascontiguousarray(out)).clamp_(0, 1)


def read_mask(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One mask -> (H, W) float32, 1 = hole; resized to ``size`` (H, W) by nearest neighbour."""
    m = read_mask_file(path).astype(np.uint8)
    if size is not None and m.shape != tuple(size):
        m = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy((m > 0).astype(np.float32))


def load_clip(files: Sequence[Path], size: tuple[int, int] | None = None) -> torch.Tensor:
    """(T, H, W, 3) float32 frames."""
    return torch.stack([read_frame(f, size) for f in files])


def load_mask_clip(files: Sequence[Path], size: tuple[int, int] | None = None) -> torch.Tensor:
    """(T, H, W) float32 masks, 1 = hole."""
    return torch.stack([read_mask(f, size) for f in files])


class PingPong:
    """A lazy clip of ``length`` items: ``files`` played forward, then backward, then forward ...

    Items are read from disk on access (``loader(path)``) and only the last ``cache`` are kept, so
    memory does not grow with ``length``.
    """

    def __init__(self, files: Sequence[Path], length: int, loader: Callable[[Path], torch.Tensor], cache=4):
        if not files:
            raise ValueError("PingPong: no files")
        self.files, self.length, self.loader, self.cache = list(files), int(length), loader, int(cache)
        self._lru: OrderedDict[int, torch.Tensor] = OrderedDict()

    def source_index(self, t: int) -> int:
        n = len(self.files)
        if n == 1:
            return 0
        period = 2 * (n - 1)
        p = t % period
        return p if p < n else period - p

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, t: int) -> torch.Tensor:
        t = int(t)
        if t < 0:
            t += self.length
        if not 0 <= t < self.length:
            raise IndexError(t)
        i = self.source_index(t)
        if i in self._lru:
            self._lru.move_to_end(i)
            return self._lru[i]
        item = self.loader(self.files[i])
        self._lru[i] = item
        if len(self._lru) > self.cache:
            self._lru.popitem(last=False)
        return item


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return indent + "  ".join(parts).rstrip()

    sep = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (first column left-aligned, the others right-aligned)."""
    out = ["| " + " | ".join(str(h) for h in headers) + " |"]
    out.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


DEFAULT_THREADS = 1
THREADS_HELP = "torch intra-op threads (default 1: steady timings on a shared machine; 0 = torch's default)"


def set_threads(n: int) -> None:
    """Set torch's intra-op threads (0 = leave torch's default)."""
    if n > 0:
        torch.set_num_threads(n)


def machine_line() -> str:
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.2f} at start"
    return (
        f"{cpu_model()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), "
        f"Python {platform.python_version()}"
        f"{load}"
    )


def header(title: str) -> None:
    print(f"== {title} ==")
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}; machine: {machine_line()}")


def save_panel(path: Path, images: Sequence[torch.Tensor], labels: Sequence[str]) -> Path:
    """Write (H, W, 3) [0, 1] images side by side, each labelled, as a PNG."""
    tiles = []
    for img, label in zip(images, labels):
        u8 = (img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)[..., ::-1].copy()
        scale = max(0.4, u8.shape[0] / 600)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(u8, (0, 0), (tw + 8, th + base + 6), (0, 0, 0), -1)
        cv2.putText(u8, label, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(u8)
        tiles.append(np.full((u8.shape[0], 4, 3), 255, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(tiles[:-1], axis=1))
    return path


def show_hole(frame: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """The frame with its hole tinted red (what the method is asked to fill)."""
    red = torch.tensor([1.0, 0.0, 0.0])
    m = (hole > 0.5)[..., None]
    return torch.where(m, 0.35 * frame + 0.65 * red, frame)


class Stopwatch:
    """Accumulates wall time of ``with`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1


# ----------------------------------------------------------------------------------------------
# Peak-memory probes (Linux /proc; used by the memory measurements in fresh subprocesses)
# ----------------------------------------------------------------------------------------------


def proc_status(field: str) -> float | None:
    """A ``VmXXX`` field of /proc/self/status in MiB, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_hwm() -> bool:
    """Reset the peak-RSS high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_mib() -> float:
    """This process's peak RSS (ru_maxrss) in MiB."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


# --------------------------------------------------------------------------------------------------
# Measurements in fresh subprocesses (peak memory of one run, without what earlier runs left behind)
# --------------------------------------------------------------------------------------------------

RESULT = "RESULT "


def print_result(result: dict) -> None:
    """What a child run prints for :func:`run_child` to read."""
    print(RESULT + json.dumps(result))


def run_child(script: str, spec: dict, threads: int, env: dict[str, str] | None = None) -> dict | None:
    """Run ``script --threads N --child SPEC`` (in ``env``, default this process's environment) and
    return the dict its :func:`print_result` printed, or None (with the child's error printed) when it
    failed."""
    cmd = [
        sys.executable,
        str(Path(script).resolve()),
        "--threads",
        str(threads),
        "--child",
        json.dumps(spec),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    print(f"  measurement {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return None
