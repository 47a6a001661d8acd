"""What every command of the command line shares: the help layout (each option with its default) and
the CPU thread setting (``--threads``).

Threads. torch's CPU kernels run on an OpenMP pool whose threads, by default, spin at every barrier
before they sleep. The removal loop calls many small torch operations, so on a machine whose cores
are busy with other processes the spinning threads take the CPU from the thread doing the work:
``remove`` on the 70 DAVIS tennis frames took 52 s with torch's 2 threads next to one busy process,
12 s with 1 thread (README, Threads). The command line therefore asks OpenMP to let idle threads sleep
(``OMP_WAIT_POLICY=PASSIVE``, unless the environment sets a policy) before torch is first imported:
then all cores are never slower than one thread, and faster where the work is large. ``--threads N``
sets the thread count of torch and OpenCV. Inside ComfyUI nothing here runs: threads are ComfyUI's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

THREADS_HELP = (
    "CPU threads for torch and OpenCV; 0 = all cores (idle threads sleep instead of spinning, so a busy "
    "machine is not slowed down; see README, Threads)"
)


class HelpFormatter(argparse.HelpFormatter):
    """Help with every option's default: '(default: X)', 'off' for flags, 'none' for empty values.

    Required options and help texts that already say their default are left as they are.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or re.search(r"\bdefault\b", text)
            or action.required
            or action.default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default in (None, "", [], ()):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """The command line's parser: :class:`HelpFormatter` for the parser and every subcommand (the
    subparsers are made with the parent's class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N`` for a command (read by :func:`apply_threads`, which ``main`` calls)."""
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)


def prefer_sleeping_threads() -> bool:
    """Ask OpenMP to let idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the environment
    chose a policy. It only takes effect before torch is first imported (OpenMP reads it when it
    loads); returns whether it will."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


def apply_threads(n: int) -> None:
    """``--threads``: torch's intra-op threads and OpenCV's threads = ``n`` (0 = leave the defaults,
    all cores)."""
    if n < 0:
        from ..pipelines.errors import PipelineError

        raise PipelineError(f"--threads: {n} is negative; give a thread count, or 0 for all cores")
    if n == 0:
        return
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)
