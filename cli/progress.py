"""The command line's progress printer: a pipeline's ``progress(done, total, text)`` on stderr."""

from __future__ import annotations

import sys
import time

from ..pipelines.progress import ProgressFn

# Whether a progress line is open on stderr (printed without its newline yet).
_open = [False]


def end_line() -> None:
    """End an open progress line, so the next message (an error) starts on a line of its own."""
    if _open[0]:
        print(file=sys.stderr)
        _open[0] = False


def progress_printer(label: str) -> ProgressFn:
    """Print ``label: done/total text`` on one line of stderr, at most twice a second."""
    last = [0.0]

    def _cb(done: int, total: int, text: str = "") -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or done >= total:
            last[0] = now
            print(f"\r{label}: {done}/{total} {text}   ", end="", file=sys.stderr, flush=True)
            _open[0] = True
            if done >= total:
                end_line()

    return _cb
