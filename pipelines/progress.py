"""Progress reporting and cancellation shared by every pipeline.

Pipelines take an optional ``progress`` callback ``progress(done, total, text)``. The callback may
raise (ComfyUI's node glue raises its interrupt exception when the user presses Cancel), so a
pipeline calls it between units of work (frames, chunks, iterations) and never half-writes a result.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]


def report(progress: ProgressFn | None, done: int, total: int, text: str = "") -> None:
    """Call ``progress`` if given. Exceptions from the callback (Cancel) propagate."""
    if progress is not None:
        progress(done, total, text)
