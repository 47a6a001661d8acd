"""``queue``: run a workflow on a ComfyUI server headless, wait, and download its outputs.

python -m keyframe_propagation queue WORKFLOW.json --server http://127.0.0.1:8188 --out DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..pipelines.errors import PipelineError


def cmd_queue(args) -> int:
    from .comfy_client import ComfyClient

    client = ComfyClient(args.server)
    wf = json.loads(Path(args.workflow).read_text())
    prompt = client.to_api(wf)
    for kv in args.set or []:
        key, _, value = kv.partition("=")
        node, _, name = key.partition(".")
        if node not in prompt or not name:
            raise PipelineError(f"--set {kv}: expected NODE_ID.input=value with a node id of the workflow")
        prompt[node]["inputs"][name] = json.loads(value) if value[:1] in "[{0123456789-tf" else value
    pid = client.queue(prompt)
    print(f"queued prompt {pid}")
    entry = client.wait(pid, timeout=args.timeout, on_progress=lambda s: print(s, file=sys.stderr))
    files = client.download_outputs(entry, Path(args.out)) if args.out else []
    for f in files:
        print(f"downloaded {f}")
    print("status:", entry.get("status", {}).get("status_str", "unknown"))
    return 0


def register(sub) -> None:
    """Add ``queue`` to the CLI's subcommands."""
    q = sub.add_parser(
        "queue", help="queue a workflow (API or UI format) on a ComfyUI server, wait, download the outputs"
    )
    q.add_argument("workflow", help="workflow .json (API format, or the editor's format)")
    q.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address")
    q.add_argument("--out", default="", help="folder to download output files into")
    q.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the prompt")
    q.add_argument("--set", action="append", help="override an input: NODE_ID.input=value")
    q.set_defaults(func=cmd_queue)
