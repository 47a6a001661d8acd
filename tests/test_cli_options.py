"""What every command shares (cli/options.py): each option's help shows its default, and ``--threads``
sets torch's and OpenCV's threads; the command line lets OpenMP's idle threads sleep."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_cli

from keyframe_propagation.cli.main import build_parser

# Commands that compute (the others only read/write files or talk to a server).
COMPUTING = ("remove", "demo", "refine", "inbetween", "train-two-stream", "train-reverse-motion")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def visible_options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in p._actions if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
    ]


def test_every_command_is_listed():
    assert set(subcommands()) >= {*COMPUTING, "convert-two-stream", "extract-reverse-delta", "queue"}


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help_and_shows_its_default(name):
    p = subcommands()[name]
    fmt = p._get_formatter()
    for a in visible_options(p):
        assert a.help and a.help.strip(), f"{name} {a.dest}: no help text"
        shown = fmt._expand_help(a)
        if a.required or not a.option_strings:
            continue
        assert "default" in shown, f"{name} {'/'.join(a.option_strings)}: help does not show the default"
        if "default" in a.help:  # the help text says it in its own words
            continue
        if isinstance(a, argparse._StoreTrueAction):
            assert shown.endswith("(default: off)")
        elif a.default in (None, "", [], ()):
            assert shown.endswith("(default: none)")
        else:
            assert shown.endswith(f"(default: {a.default})")
    # The defaults reach the printed help (the formatter is the subcommand's, not only the top level's).
    assert "(default:" in p.format_help() or all(a.required for a in visible_options(p) if a.option_strings)


@pytest.mark.parametrize("name", COMPUTING)
def test_computing_commands_take_threads(name):
    p = subcommands()[name]
    (threads,) = [a for a in p._actions if "--threads" in a.option_strings]
    assert threads.default == 0 and threads.type is int


def test_threads_sets_torch_and_opencv(tmp_path):
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(2)
        cv2.setNumThreads(2)
        rc, _, err = run_cli(
            [
                "demo",
                "--out",
                str(tmp_path),
                "--frames",
                "3",
                "--width",
                "64",
                "--height",
                "48",
                "--threads",
                "1",
            ]
        )
        assert rc == 0, err
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
        rc, _, err = run_cli(
            ["demo", "--out", str(tmp_path), "--frames", "3", "--width", "64", "--height", "48"]
        )
        assert rc == 0, err
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)  # 0 = left as they are
        rc, _, err = run_cli(["demo", "--out", str(tmp_path), "--threads", "-2"])
        assert rc == 2 and "--threads" in err
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def _policy_in_child(env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = (
        "import os, sys; from keyframe_propagation.cli.options import prefer_sleeping_threads; "
        "ok = prefer_sleeping_threads(); print(ok, os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO.parent
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_command_line_lets_idle_openmp_threads_sleep():
    # Set before torch loads (importing the CLI does not load torch), and the user's choice is kept.
    assert _policy_in_child(None) == "True PASSIVE False"
    assert _policy_in_child("ACTIVE") == "True ACTIVE False"
