"""Browser tests: the real ComfyUI frontend in headless Chromium (Debian's), driven by Playwright.

A real ComfyUI runs with the pack and everything the example workflows need (the DAVIS tennis clip,
tiny random models with the real formats under the templates' file names). For each example
workflow the test loads it in the editor, checks node titles and widget values, compares the
frontend's own ``graphToPrompt`` with the shipped API file, queues it from the page (with the CPU
settings a user would pick: fp32, a small size) and waits for success. The filmstrip extension is
checked on the tennis clip: thumbnails appear, a click changes the keyframes widget, and the saved
workflow carries the change. Screenshots go to ``$KFP_ARTIFACTS`` (default ``tests/artifacts``).

Skipped cleanly without ComfyUI, without Playwright (pip) or without Chromium at /usr/bin/chromium
($KFP_CHROMIUM); the browser is never downloaded.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from comfy_fixtures import (
    PACK_DIR_NAME,
    TENNIS,
)
from conftest import COMFYUI_PATH, REPO, comfyui_available

CHROMIUM = Path(os.environ.get("KFP_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("KFP_ARTIFACTS", REPO / "tests" / "artifacts"))
EXTENSION_URL = f"/extensions/{PACK_DIR_NAME}/"
# The flags Chromium needs on a machine without network or display (no background connections).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(not comfyui_available(), reason=f"no ComfyUI checkout at {COMFYUI_PATH}"),
    pytest.mark.skipif(not _playwright_available(), reason="no playwright (pip install playwright)"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)"),
]

# Per example workflow: the widget changes a CPU user makes before queueing ({node id: {widget: value}}).
CPU_SETTINGS: dict[str, dict[int, dict]] = {
    "remove_object": {1: {"frame_cap": 12}},
    "remove_object_two_stream": {1: {"frame_cap": 12}, 2: {"dtype": "fp32"}},
    "refine_highres": {3: {"dtype": "fp32"}, 4: {"n_iters": 3, "min_side": 96, "max_scales": 2}},
    "inbetween": {
        3: {"dtype": "fp32"},
        4: {"width": 128, "height": 64, "num_frames": 4, "steps": 2, "noise_injection_steps": 1},
    },
    "remove_long_clip": {2: {"frame_cap": 12}, 3: {"preset": "fast"}, 4: {"chunk": 6, "lookahead": 4}},
}
NEEDS_TENNIS = {"remove_object", "remove_object_two_stream", "remove_long_clip"}


@pytest.fixture(scope="module")
def server(comfy_server):
    return comfy_server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Editor:
    """One page of the ComfyUI editor, with the page's console errors recorded."""

    def __init__(self, browser, server) -> None:
        self.server = server
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e} {e.stack or ''}"))
        self.page.goto(server.url)
        self.page.wait_for_function(
            "window.app && window.app.graph && window.app.extensionManager", timeout=120_000
        )

    def _console(self, msg) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text} at {msg.location.get('url', '')}")

    def pack_errors(self) -> list[str]:
        """Errors that come from the pack's scripts or routes."""
        return [e for e in self.errors if EXTENSION_URL in e or "/kfp/" in e]

    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    def load(self, name: str) -> dict:
        """Load a template the way the template browser does (fetched from the server's route)."""
        wf = self.js(
            "async (url) => { const r = await fetch(url); return await r.json(); }",
            f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json",
        )
        self.js("async (wf) => { await window.app.loadGraphData(wf); }", wf)
        return wf

    def set_widgets(self, node_id: int, values: dict) -> None:
        self.js(
            """([id, values]) => {
                const node = window.app.graph.getNodeById(id);
                for (const [name, value] of Object.entries(values)) {
                    const w = node.widgets.find((w) => w.name === name);
                    if (!w) throw new Error(`node ${id} has no widget ${name}`);
                    w.value = value;
                    w.callback?.(value);
                }
            }""",
            [node_id, values],
        )

    def queue_and_wait(self, timeout: float = 600) -> dict:
        """Queue the graph from the page (as the Run button) and wait for its history entry."""
        urllib.request.urlopen(
            urllib.request.Request(
                f"{self.server.url}/history",
                data=json.dumps({"clear": True}).encode(),
                headers={"Content-Type": "application/json"},
            )
        ).read()
        self.js("async () => { await window.app.queuePrompt(0, 1); }")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            history = self.server.get("/history")
            for entry in history.values():
                status = entry.get("status", {})
                if status.get("completed") or status.get("status_str") == "error":
                    time.sleep(1.0)  # let the page handle the last websocket messages
                    return entry
            time.sleep(1.0)
        raise AssertionError(f"the workflow did not finish in {timeout} s:\n{self.server.log_text()[-3000:]}")

    def screenshot(self, name: str) -> Path:
        """A picture of the graph: no dialog (template browser, settings ...) may cover it."""
        dialogs = self.page.locator("[role=dialog]:visible, .p-dialog-mask:visible")
        assert dialogs.count() == 0, f"{name}: a dialog covers the graph: {dialogs.first.inner_text()[:200]}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.page.close()


@pytest.fixture(scope="module")
def _page(browser, server):
    """One editor page for the module: loading the frontend costs seconds, and each test loads its
    own graph into it."""
    ed = Editor(browser, server)
    yield ed
    ed.close()


@pytest.fixture
def editor(_page):
    _page.errors.clear()
    return _page


def _widget_values(editor: Editor) -> dict:
    """{node id: {"type", "title", "values"}} of the loaded graph, serialisable widgets only."""
    return editor.js(
        """() => Object.fromEntries(window.app.graph._nodes.map((n) => [n.id, {
            type: n.type, title: n.title,
            values: (n.widgets ?? []).filter((w) => w.serialize !== false).map((w) => w.value),
        }]))"""
    )


@pytest.mark.parametrize("name", list(CPU_SETTINGS))
def test_example_workflow_in_the_editor(editor: Editor, name: str):
    if name in NEEDS_TENNIS and not TENNIS.is_dir():
        pytest.skip(f"real data not found at {TENNIS}")
    wf = editor.load(name)
    shipped = json.loads((REPO / "example_workflows" / "api" / f"{name}_api.json").read_text())

    # Every node type is known to the editor (no "missing nodes"), with its title and widget values.
    missing = editor.js(
        "(types) => types.filter((t) => !window.LiteGraph.registered_node_types[t])",
        sorted({n["type"] for n in wf["nodes"]}),
    )
    assert not missing, f"{name}: missing node types {missing}"
    loaded = _widget_values(editor)
    for node in wf["nodes"]:
        got = loaded[str(node["id"])]
        assert got["type"] == node["type"]
        if "title" in node:
            assert got["title"] == node["title"]
        n = len(node.get("widgets_values", []))
        assert got["values"][:n] == node.get("widgets_values", []), f"{name}: node {node['id']} widgets"
        assert len(got["values"]) == n, f"{name}: node {node['id']} has widgets the file does not set"

    # The shipped API copy is exactly what the frontend exports for this workflow.
    prompt = editor.js("async () => (await window.app.graphToPrompt()).output")
    # Core Load Video adds its preview widget once the video has loaded (timing-dependent); it is
    # exported as an input the server ignores, so it is not part of the shipped copy.
    for node in prompt.values():
        if node["class_type"] == "LoadVideo":
            node["inputs"].pop("video-preview", None)
    assert prompt == shipped

    # Queue it from the page with CPU settings and wait for success.
    for node_id, values in CPU_SETTINGS[name].items():
        editor.set_widgets(node_id, values)
    entry = editor.queue_and_wait()
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    saved = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert saved, f"{name}: no image saved"
    # Our nodes with previews reported an animation the editor shows.
    animated = [
        nid
        for nid, out in entry["outputs"].items()
        if out.get("animated") == [True] and loaded[nid]["type"].startswith("KFP_")
    ]
    if name != "refine_highres":
        assert animated, f"{name}: no animated preview from the pack's nodes"
    editor.page.wait_for_timeout(1500)  # previews finish loading
    editor.screenshot(name)
    assert not editor.pack_errors(), editor.pack_errors()


@pytest.mark.skipif(not TENNIS.is_dir(), reason=f"real data not found at {TENNIS}")
def test_filmstrip_toggles_keyframes(editor: Editor):
    editor.load("remove_object")
    # Before a run: the node says what to do, and nothing fails.
    assert "Queue the workflow" in editor.page.locator("[data-kfp=filmstrip]").inner_text()
    editor.set_widgets(1, {"frame_cap": 12})
    editor.set_widgets(3, {"chunk": 12})
    entry = editor.queue_and_wait()
    assert entry["status"]["status_str"] == "success"
    meta = entry["outputs"]["1"]["kfp_filmstrip"][0]
    assert meta["num_frames"] == 12 and meta["keyframes"] == [0]

    thumbs = editor.page.locator("[data-kfp=filmstrip] .kfp-thumb")
    thumbs.first.wait_for(timeout=30_000)
    n = thumbs.count()
    assert 2 <= n <= 12
    frames = [int(thumbs.nth(i).get_attribute("data-frame")) for i in range(n)]
    assert frames[0] == 0 and frames == sorted(frames)
    # Thumbnails are real pictures served by the pack's route.
    editor.page.wait_for_function(
        "() => [...document.querySelectorAll('[data-kfp=filmstrip] .kfp-thumb img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    assert "kfp-key" in thumbs.nth(0).get_attribute("class")  # keyframe 0 is marked

    # Clicking a thumbnail adds that frame as a keyframe; the widget, the saved workflow and the
    # prompt carry it. Clicking keyframe 0 removes it.
    target = frames[2]
    thumbs.nth(2).click()
    thumbs.nth(0).click()
    value = editor.js(
        "() => window.app.graph.getNodeById(1).widgets.find((w) => w.name === 'keyframes').value"
    )
    assert value == str(target)
    saved = editor.js("() => window.app.graph.serialize()")
    node = next(n for n in saved["nodes"] if n["id"] == 1)
    assert node["widgets_values"][2] == str(target)
    prompt = editor.js("async () => (await window.app.graphToPrompt()).output")
    assert prompt["1"]["inputs"]["keyframes"] == str(target)
    assert "kfp-key" in thumbs.nth(2).get_attribute("class")
    assert "kfp-key" not in thumbs.nth(0).get_attribute("class")

    # The scrubber shows any frame at the node's width.
    slider = editor.page.locator("[data-kfp=filmstrip] input[type=range]")
    slider.fill("5")
    big = editor.page.locator("[data-kfp=filmstrip] .kfp-view img")
    assert big.get_attribute("src").endswith(f"/kfp/filmstrip/{meta['run']}/5")
    editor.page.wait_for_function(
        "() => { const i = document.querySelector('[data-kfp=filmstrip] .kfp-view img');"
        " return i.complete && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    editor.screenshot("filmstrip")
    assert not editor.pack_errors(), editor.pack_errors()

    # A run the server no longer has (restart, evicted): a message, no exception.
    editor.js(
        "() => window.app.graph.getNodeById(1).onExecuted({kfp_filmstrip: [{run: 'gone', num_frames: 3}]})"
    )
    editor.page.wait_for_function(
        "() => document.querySelector('[data-kfp=filmstrip]').innerText.includes('expired')", timeout=10_000
    )
    assert not [e for e in editor.errors if "pageerror" in e and EXTENSION_URL in e]


def test_filmstrip_route_rejects_bad_requests(server):
    for path, code in ((f"/kfp/filmstrip/{'0' * 32}", 404), (f"/kfp/filmstrip/{'0' * 32}/x", 400)):
        with pytest.raises(urllib.request.HTTPError) as e:
            urllib.request.urlopen(server.url + path)
        assert e.value.code == code
        assert "error" in json.loads(e.value.read())


def test_filmstrip_keyframe_grammar_matches_load_keyframes(editor: Editor):
    """The extension reads the keyframes widget with the same grammar as the node (oracle: Python's
    parse_keyframes), so a click toggles one frame and keeps the others."""
    from keyframe_propagation.pipelines.clip import parse_keyframes
    from keyframe_propagation.pipelines.errors import PipelineError

    cases = ["0", "0,20,40", "0-60:20", "10-14", "0,-1", "[3, 5]", "0 20 40", "5-2", "", "0,,7,", "x", "0,99"]
    cases += ["-10--1:3", "0-9:0", " 1 ; 2 ", "0 - 6 : 2"]
    got = editor.js(
        """async (cases) => {
            const m = await import('/extensions/comfyui-keyframe-propagation/js/filmstrip.js');
            return cases.map((c) => { const s = m.parseKeyframes(c, 70); return s && m.formatKeyframes(s); });
        }""",
        cases,
    )
    for text, js in zip(cases, got):
        try:
            expected = ",".join(str(i) for i in parse_keyframes(text, 70))
        except PipelineError:
            expected = None
        assert js == expected, text
