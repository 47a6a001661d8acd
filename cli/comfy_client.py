"""A small client for ComfyUI's HTTP API: queue a workflow headless, wait, download the outputs.

Accepts API-format prompts as they are, and converts UI-format workflows (what the editor saves, and
the pack's templates) through the server's ``/object_info``. Standard library only.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..pipelines.errors import PipelineError

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Nodes that exist only in the editor.
UI_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def is_api_format(workflow: dict) -> bool:
    return (
        bool(workflow)
        and "nodes" not in workflow
        and all(isinstance(v, dict) and "class_type" in v for v in workflow.values())
    )


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(workflow: dict, object_info: dict[str, Any]) -> dict[str, dict]:
    """Convert an editor workflow (nodes + links) into an API prompt.

    Widget values are assigned to the node's widget inputs in the server's input order (seed-like
    inputs carry one extra "control after generate" value, as in the editor); linked inputs become
    ``[source_node_id, output_index]``. As the editor's ``graphToPrompt`` does: muted nodes (mode 2)
    and editor-only nodes are left out together with the inputs linked to them, and bypassed nodes
    (mode 4) pass the first input of the matching type through to their consumers.
    """
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type"))
        else:
            links[link[0]] = (link[1], link[2], link[5] if len(link) > 5 else None)
    nodes = {n["id"]: n for n in workflow["nodes"]}

    def source(src: int, slot: int, link_type: str | None, depth: int = 0) -> tuple[int, int] | None:
        """The node output feeding a link, following bypassed nodes; None if it leads nowhere."""
        node = nodes.get(src)
        if node is None or depth > len(nodes):
            return None
        if node["type"] == "Reroute":
            raise PipelineError(
                "workflow: Reroute nodes are not supported by the converter; "
                "export the workflow in API format from the editor instead"
            )
        mode = node.get("mode", 0)
        if node["type"] in UI_ONLY_NODES or mode == 2:
            return None
        if mode == 4:
            outputs = node.get("outputs") or []
            out_type = outputs[slot].get("type") if slot < len(outputs) else link_type
            for inp in node.get("inputs", []):
                if inp.get("type") == out_type and inp.get("link") in links:
                    return source(*links[inp["link"]], depth=depth + 1)
            return None
        return src, slot

    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in UI_ONLY_NODES or node.get("mode", 0) in (2, 4):
            continue
        if ntype not in object_info:
            raise PipelineError(
                f"workflow: node type '{ntype}' (node {node['id']}) is not installed on the server"
            )
        info = object_info[ntype]
        order = info.get("input_order") or {
            k: list(info["input"].get(k, {})) for k in ("required", "optional")
        }
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            values = []
        inputs: dict[str, Any] = {}
        vi = 0
        for name in [*order.get("required", []), *order.get("optional", [])]:
            spec = specs[name]
            if not _is_widget(spec):
                continue
            if vi < len(values):
                inputs[name] = values[vi]
                vi += 1
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            # The editor adds a "control after generate" widget to seed-like INT inputs.
            seed_like = opts.get("control_after_generate") or (
                spec[0] == "INT" and name in ("seed", "noise_seed")
            )
            if seed_like and vi < len(values) and isinstance(values[vi], str):
                vi += 1
        for inp in node.get("inputs", []):
            link = inp.get("link")
            if link is None or link not in links:
                continue
            found = source(*links[link])
            if found is None:
                inputs.pop(inp["name"], None)
                continue
            inputs[inp["name"]] = [str(found[0]), found[1]]
        prompt[str(node["id"])] = {
            "class_type": ntype,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or info.get("display_name", ntype)},
        }
    return prompt


class ComfyClient:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, data: dict | None = None) -> Any:
        url = f"{self.server}{path}"
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise PipelineError(f"server: {url} answered {e.code}: {detail[:2000]}") from None
        except urllib.error.URLError as e:
            raise PipelineError(f"server: cannot reach {url} ({e.reason}); is ComfyUI running?") from None
        return json.loads(raw) if raw else None

    def object_info(self) -> dict:
        return self._request("/object_info")

    def to_api(self, workflow: dict) -> dict:
        if is_api_format(workflow):
            return workflow
        if "nodes" not in workflow:
            raise PipelineError("workflow: neither API format nor an editor workflow (no 'nodes')")
        return ui_to_api(workflow, self.object_info())

    def queue(self, prompt: dict) -> str:
        res = self._request("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if res.get("node_errors"):
            raise PipelineError(f"server rejected the workflow: {json.dumps(res['node_errors'])[:2000]}")
        return res["prompt_id"]

    def wait(
        self,
        prompt_id: str,
        timeout: float = 3600.0,
        poll: float = 0.5,
        on_progress: Callable[[str], None] | None = None,
    ) -> dict:
        """Poll the history until the prompt finished; on failure raise with the server's message."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            hist = self._request(f"/history/{prompt_id}")
            entry = (hist or {}).get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error":
                    msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    detail = msgs[0][1] if msgs else status
                    if isinstance(detail, dict):
                        detail = f"{detail.get('node_type')}: {detail.get('exception_message', '').strip()}"
                    raise PipelineError(f"workflow failed on the server: {detail}")
                return entry
            time.sleep(poll)
        raise PipelineError(f"server: prompt {prompt_id} did not finish within {timeout:.0f} s")

    def download_outputs(self, entry: dict, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for node_out in entry.get("outputs", {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if not isinstance(item, dict) or "filename" not in item:
                        continue
                    q = urllib.parse.urlencode(
                        {
                            "filename": item["filename"],
                            "subfolder": item.get("subfolder", ""),
                            "type": item.get("type", "output"),
                        }
                    )
                    with urllib.request.urlopen(f"{self.server}/view?{q}", timeout=self.timeout) as r:
                        dest = folder / item["filename"]
                        dest.write_bytes(r.read())
                    out.append(dest)
        return out
