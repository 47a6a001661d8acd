"""``queue``: run a workflow on a ComfyUI server headless, wait, and download its outputs.

python -m keyframe_propagation queue WORKFLOW.json --server http://127.0.0.1:8188 --out DIR
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..pipelines.errors import PipelineError, short_list


def cmd_queue(args) -> int:
    from .checks import output_folder
    from .comfy_client import ComfyClient

    wf = read_workflow(args.workflow)
    overrides = [parse_set(kv) for kv in args.set or []]
    out = output_folder(args.out, create=False) if args.out else None
    client = ComfyClient(args.server)
    prompt = client.to_api(wf)
    for kv, (node, name, value) in zip(args.set or [], overrides):
        if node not in prompt:
            raise PipelineError(
                f"--set {kv}: the workflow has no node '{node}' (its nodes: {short_list(sorted(prompt))})"
            )
        prompt[node]["inputs"][name] = value
    pid = client.queue(prompt)
    print(f"queued prompt {pid}")
    entry = client.wait(pid, timeout=args.timeout, on_progress=lambda s: print(s, file=sys.stderr))
    files = client.download_outputs(entry, out) if out is not None else []
    for f in files:
        print(f"downloaded {f}")
    print("status:", entry.get("status", {}).get("status_str", "unknown"))
    return 0


def read_workflow(path: str) -> dict:
    """A workflow file (API or editor format) as a dict; a one-line error naming it otherwise."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(
            f"workflow: '{path}' not found" if not p.exists() else f"workflow: '{path}' is a folder"
        )
    try:
        wf = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"workflow: cannot read '{path}': {e}") from e
    except json.JSONDecodeError as e:
        raise PipelineError(
            f"workflow: '{path}' is not JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from e
    if not isinstance(wf, dict):
        raise PipelineError(f"workflow: '{path}' holds a {type(wf).__name__}, not a workflow object")
    return wf


def parse_set(kv: str) -> tuple[str, str, object]:
    """``NODE_ID.input=value`` -> (node id, input, value). The value is JSON when the whole of it is
    valid JSON (``20``, ``true``, ``[1, 2]``, ``"text"``), else the text as typed (``0,20,40``)."""
    key, eq, value = kv.partition("=")
    node, _, name = key.strip().partition(".")
    if not eq or not node or not name:
        raise PipelineError(f"--set {kv}: expected NODE_ID.input=value, e.g. --set 1.frame_cap=20")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if isinstance(parsed, float) and not math.isfinite(parsed):
        parsed = value  # NaN / Infinity are not values a workflow takes
    return node, name.strip(), parsed


def register(sub) -> None:
    """Add ``queue`` to the CLI's subcommands."""
    q = sub.add_parser(
        "queue", help="queue a workflow (API or UI format) on a ComfyUI server, wait, download the outputs"
    )
    q.add_argument("workflow", help="workflow .json (API format, or the editor's format)")
    q.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address")
    q.add_argument("--out", default="", help="folder to download output files into")
    q.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the prompt")
    q.add_argument(
        "--set",
        action="append",
        help="override an input: NODE_ID.input=value (JSON when the whole value is JSON, else text)",
    )
    q.set_defaults(func=cmd_queue)
