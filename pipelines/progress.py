"""Progress reporting and cancellation shared by every pipeline.

Pipelines take an optional ``progress`` callback ``progress(done, total, text)``. The callback may
raise (ComfyUI's node glue raises its interrupt exception when the user presses Cancel), so a
pipeline calls it between units of work (frames, chunks, iterations) and never half-writes a result.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]


class PipelineError(ValueError):
    """A problem with the user's input, worded for the user: it names the input and what is wrong."""


def report(progress: ProgressFn | None, done: int, total: int, text: str = "") -> None:
    """Call ``progress`` if given. Exceptions from the callback (Cancel) propagate."""
    if progress is not None:
        progress(done, total, text)


def scaled(progress: ProgressFn | None, start: int, span: int, total: int) -> ProgressFn | None:
    """A callback that maps a sub-task's ``(done, sub_total)`` into ``[start, start + span]`` of ``total``."""
    if progress is None:
        return None

    def _cb(done: int, sub_total: int, text: str = "") -> None:
        frac = done / max(sub_total, 1)
        progress(start + round(frac * span), total, text)

    return _cb
