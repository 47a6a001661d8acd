"""Integration: a real ComfyUI server with the pack linked into custom_nodes/.

Starts ComfyUI from ``$COMFYUI_PATH`` (default ``~/comfy/ComfyUI``) on a free loopback port with a
temporary base directory, and skips cleanly when there is no checkout.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from comfy_fixtures import PACK_DIR_NAME, TENNIS
from conftest import COMFYUI_PATH, REPO, comfyui_available, run_cli

from keyframe_propagation.cli.comfy_client import ComfyClient, ui_to_api
from keyframe_propagation.pipelines.errors import PipelineError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
]

NODE_IDS = ["KFP_LoadKeyframes", "KFP_FlowEstimate", "KFP_TwoStreamInpaint"]


@pytest.fixture(scope="module")
def server(comfy_server):
    return comfy_server


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_pack_imports_without_failure(server):
    log = server.log_text()
    failed = [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and PACK_DIR_NAME in ln]
    assert not failed, log[-3000:]
    assert f"custom_nodes/{PACK_DIR_NAME}" in log  # the pack was found and timed as loaded
    assert "Error while calling comfy_entrypoint" not in log


def test_every_node_listed_with_tooltips(object_info):
    for node_id in NODE_IDS:
        assert node_id in object_info, node_id
        info = object_info[node_id]
        assert info["category"] == "keyframe propagation"
        assert info["description"]
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), node_id


def test_template_and_api_copy_are_served(server):
    templates = server.get("/api/workflow_templates")
    assert "remove_object" in templates.get(PACK_DIR_NAME, [])
    # The API copy lives in a subfolder, so it is not listed as a (broken) template...
    assert not any(name.endswith("_api") for name in templates.get(PACK_DIR_NAME, []))
    # ...but is served next to it.
    ui = server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/remove_object.json")
    assert {n["type"] for n in ui["nodes"]} >= set(NODE_IDS)
    api = server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/api/remove_object_api.json")
    assert {v["class_type"] for v in api.values()} >= set(NODE_IDS)


def test_every_template_has_a_thumbnail_and_notes(server):
    """The template browser shows <name>.jpg next to <name>.json; each workflow explains itself."""
    names = server.get("/api/workflow_templates")[PACK_DIR_NAME]
    assert sorted(names) == sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    for name in names:
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.read(3) == b"\xff\xd8\xff"
        ui = server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json")
        notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        text = "\n".join(notes)
        assert "input" in text or "models/" in text, f"{name}: the note does not say what to change"


def test_ui_template_converts_to_the_shipped_api_copy(object_info):
    ui = json.loads((REPO / "example_workflows" / "remove_object.json").read_text())
    api = json.loads((REPO / "example_workflows" / "api" / "remove_object_api.json").read_text())
    assert ui_to_api(ui, object_info) == api
    # Every widget value of the template is accepted by the server's input spec.
    for node in ui["nodes"]:
        if node["type"] in object_info:
            assert len(node["widgets_values"]) >= sum(
                1
                for s in {
                    **object_info[node["type"]]["input"]["required"],
                    **object_info[node["type"]]["input"].get("optional", {}),
                }.values()
                if isinstance(s[0], list) or s[0] in {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
            )


@pytest.mark.skipif(not TENNIS.is_dir(), reason=f"real data not found at {TENNIS}")
def test_api_example_runs_on_real_clip(server):
    api = json.loads((REPO / "example_workflows" / "api" / "remove_object_api.json").read_text())
    api["1"]["inputs"]["frame_cap"] = 12
    client = ComfyClient(server.url)
    pid = client.queue(api)
    entry = client.wait(pid, timeout=300)
    assert entry["status"]["status_str"] == "success"
    images = entry["outputs"]["4"]["images"]
    assert len(images) == 12
    out = client.download_outputs(entry, server.base / "downloaded")
    assert any(p.suffix == ".mp4" for p in out) and sum(p.suffix == ".png" for p in out) >= 12
    from PIL import Image

    first = Image.open(next(p for p in out if p.name.startswith("removed") and p.suffix == ".png"))
    assert first.size == (432, 240)


@pytest.mark.skipif(not TENNIS.is_dir(), reason=f"real data not found at {TENNIS}")
def test_cli_queue_converts_the_ui_template(server, tmp_path):
    out = tmp_path / "outs"
    rc, stdout, stderr = run_cli(
        [
            "queue",
            str(REPO / "example_workflows" / "remove_object.json"),
            "--server",
            server.url,
            "--out",
            str(out),
            "--set",
            "1.frame_cap=6",
            "--set",
            "3.chunk=4",
        ]
    )
    assert rc == 0, stderr + stdout
    assert "status: success" in stdout
    assert len(list(out.glob("removed*.png"))) == 6


def test_bad_input_gives_a_clear_error(server):
    api = json.loads((REPO / "example_workflows" / "api" / "remove_object_api.json").read_text())
    api["1"]["inputs"]["frames"] = "no_such_clip"
    client = ComfyClient(server.url)
    # Refused at queue time (HTTP 400 with the node's errors), before anything runs.
    with pytest.raises(PipelineError, match="answered 400.*frames: 'no_such_clip' not found"):
        client.queue(api)


@pytest.mark.skipif(not TENNIS.is_dir(), reason=f"real data not found at {TENNIS}")
def test_cancel_interrupts_a_running_removal(server):
    api = json.loads((REPO / "example_workflows" / "api" / "remove_object_api.json").read_text())
    api["1"]["inputs"]["keyframes"] = "1"  # another input, so nothing is cached from earlier tests
    api["2"]["inputs"]["preset"] = "fast"
    client = ComfyClient(server.url)
    pid = client.queue(api)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:  # wait until it runs
        q = server.get("/queue")
        if q["queue_running"]:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    req = urllib.request.Request(f"{server.url}/interrupt", data=b"{}", method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    t1 = time.monotonic()
    with pytest.raises(PipelineError):
        client.wait(pid, timeout=120)
    hist = server.get(f"/history/{pid}")[pid]
    kinds = [m[0] for m in hist["status"]["messages"]]
    assert "execution_interrupted" in kinds
    assert time.monotonic() - t1 < 30  # stopped promptly, not after the whole clip


@pytest.mark.slow
@pytest.mark.skipif(not TENNIS.is_dir(), reason=f"real data not found at {TENNIS}")
def test_full_tennis_clip_completes_in_comfyui(server):
    """The zero-download default on the whole 70-frame DAVIS tennis clip, through the API example."""
    api = json.loads((REPO / "example_workflows" / "api" / "remove_object_api.json").read_text())
    api["1"]["inputs"]["keyframes"] = "0,-1"  # differs from the other tests: nothing cached
    client = ComfyClient(server.url)
    entry = client.wait(client.queue(api), timeout=900)
    assert entry["status"]["status_str"] == "success"
    assert len(entry["outputs"]["4"]["images"]) == 70
    assert entry["outputs"]["6"]  # the MP4
