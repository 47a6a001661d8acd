"""The two places where the pack relies on diffusers' private API, in one module.

- ``_resize_with_antialiasing`` of the SVD pipeline module: the keyframe's resize to CLIP's 224 px,
  bit for bit as the pipeline does it (the forward branch must reproduce the pipeline).
- ``EulerDiscreteScheduler._step_index``: noise re-injection redoes a step at the same sigma, and the
  scheduler advances its index on every ``step()``.

``DIFFUSERS_SUPPORTED`` is the range the pack is tested with (``pyproject.toml`` pins it; the tests
check the installed version and both uses). Outside it these raise a clear error instead of a deep
AttributeError.
"""

from __future__ import annotations

import torch

from ..errors import PipelineError

DIFFUSERS_SUPPORTED = ">=0.30,<0.43"


def _unsupported(what: str, e: Exception) -> PipelineError:
    import diffusers

    return PipelineError(
        f"diffusers {diffusers.__version__}: {what} is missing ({e}); this pack supports diffusers"
        f"{DIFFUSERS_SUPPORTED} (pip install 'diffusers{DIFFUSERS_SUPPORTED}')"
    )


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The SVD pipeline's own antialiased resize of ``(N, C, H, W)`` images in [-1, 1]."""
    try:
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )
    except ImportError as e:
        raise _unsupported("the SVD pipeline's _resize_with_antialiasing", e) from e
    return _resize_with_antialiasing(x, size)


def set_step_index(scheduler: object, index: int) -> None:
    """Make the scheduler's next ``step()`` the step at ``index`` (it advances by one on every step)."""
    if not hasattr(scheduler, "_step_index"):
        raise _unsupported(f"{type(scheduler).__name__}._step_index", AttributeError("_step_index"))
    scheduler._step_index = index  # type: ignore[attr-defined]


__all__ = ["DIFFUSERS_SUPPORTED", "resize_with_antialiasing", "set_step_index"]
