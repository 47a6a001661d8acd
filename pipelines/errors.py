"""User-facing errors and the helpers that word messages about the user's input.

A :class:`PipelineError` names the input as the user sees it (``masks: ...``, ``keyframes: ...``) and
says what is wrong and what to do. Fix-ups that need no action are *notes*: logged on the
``keyframe_propagation`` logger and returned to the caller, which shows them (the node's UI text, the
CLI's ``note:`` lines). *Warnings* are notes about a result that may not be what the user meant
(masks that look inverted): logged as warnings and kept with the notes, prefixed ``warning:``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger("keyframe_propagation")

# How many offending names a message lists before "...".
LIST_MAX = 5


class PipelineError(ValueError):
    """A problem with the user's input, worded for the user: it names the input and what is wrong."""


def note(notes: list[str], text: str) -> None:
    """Record a fix-up: logged for the console and kept for the node's UI."""
    logger.info(text)
    notes.append(text)


WARNING = "warning: "


def warn(notes: list[str], text: str) -> None:
    """Record something the user should look at (the result may not be what they meant): logged as
    a warning and kept, prefixed ``warning: ``, with the notes."""
    logger.warning(text)
    notes.append(WARNING + text)


def short_list(items: Sequence[object], limit: int = LIST_MAX) -> str:
    """``"a, b, c, ..."``: the first ``limit`` items of a list for a message."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def wh(hw: Sequence[int]) -> str:
    """A ``(height, width)`` size written width x height, as image editors show it."""
    return f"{hw[1]}x{hw[0]}"


__all__ = ["LIST_MAX", "WARNING", "PipelineError", "logger", "note", "short_list", "warn", "wh"]
