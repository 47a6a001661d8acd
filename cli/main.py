"""Command line: the pack's jobs without ComfyUI, and queueing workflows on a ComfyUI server.

Each command group is a module of this package with a ``register(subparsers)`` function; the list
below is the whole command line. Commands import their heavy modules only when they run, so
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from ..pipelines.errors import PipelineError
from . import inbetween, queue, refine, remove, two_stream
from .options import Parser, apply_threads, prefer_sleeping_threads
from .progress import end_line

# In the order ``--help`` lists them.
COMMAND_GROUPS = (remove, two_stream, refine, inbetween, queue)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m keyframe_propagation",
        description="Keyframe propagation for video (the ComfyUI pack's jobs).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    prefer_sleeping_threads()  # before torch loads (see options.py)
    args = build_parser().parse_args(argv)
    try:
        apply_threads(getattr(args, "threads", 0))
        return int(args.func(args) or 0)
    except PipelineError as e:
        end_line()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
