"""Progress reporting and cancellation shared by every pipeline.

Pipelines take an optional ``progress`` callback ``progress(done, total, text)``. The callback may
raise (ComfyUI's node glue raises its interrupt exception when the user presses Cancel), so a
pipeline calls it between units of work (frames, chunks, iterations) and never half-writes a result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ProgressFn = Callable[[int, int, str], None]


def report(progress: ProgressFn | None, done: int, total: int, text: str = "") -> None:
    """Call ``progress`` if given. Exceptions from the callback (Cancel) propagate."""
    if progress is not None:
        progress(done, total, text)


def run_checked(fn: Callable[[], T], check: Callable[[], None] | None, interval: float = 0.2) -> T:
    """``fn()``, with ``check()`` called every ``interval`` seconds while it runs.

    So Cancel (raised by ``check``) is seen during one long call, such as OpenCV's inpainting or flow
    estimate of a large frame, and not only after it. ``fn`` runs in a worker thread (OpenCV and torch
    release the GIL while they compute). When ``check`` raises, the exception propagates at once and
    what ``fn`` returns later is dropped, so ``fn`` must only compute: no files, nothing shared that
    a later call changes. Without ``check``, ``fn()`` is called directly.
    """
    if check is None:
        return fn()
    import torch  # here: the command line imports this module before it sets up torch's threads

    result: dict[str, object] = {}
    finished = threading.Event()
    # Grad and inference mode are per thread: the worker computes as the caller would.
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def work() -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                result["value"] = fn()
        except BaseException as exc:  # handed to the caller as is
            result["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, name="keyframe-propagation-work", daemon=True).start()
    while not finished.wait(interval):
        check()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
