"""Tests of the command line (cli/, run in-process; one `python -m` smoke test) and of comfy_client's
editor-workflow -> API-prompt conversion (no server needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli

from keyframe_propagation.cli.comfy_client import is_api_format, ui_to_api
from keyframe_propagation.pipelines.errors import PipelineError

N_FRAMES, WIDTH, HEIGHT = 12, 160, 96
DEMO_ARGS = ["--frames", str(N_FRAMES), "--width", str(WIDTH), "--height", str(HEIGHT)]
PSNR_RE = re.compile(
    r"PSNR inside the hole: flow propagation (?P<ours>[\d.]+) dB, "
    r"per-frame Telea (?P<telea>[\d.]+) dB \((?P<gain>[+-][\d.]+) dB\)"
)


pytestmark = pytest.mark.usefixtures("one_thread")


def read_rgb_u8(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"cannot read {path}"
    return img[:, :, ::-1]


def remove_args(frames: Path, masks: Path, out: Path, *extra: str) -> list[str]:
    return ["remove", "--frames", str(frames), "--masks", str(masks), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A demo clip (frames/ and masks/) for the ``remove`` tests."""
    out = tmp_path_factory.mktemp("demo")
    rc, _, err = run_cli(["demo", "--out", str(out), *DEMO_ARGS])
    assert rc == 0, err
    return out


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


def test_module_entry_point_help(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "keyframe_propagation", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for cmd in ("remove", "demo", "queue"):
        assert cmd in res.stdout


def test_error_exit_code_and_worded_message(tmp_path):
    rc, _, err = run_cli(["remove", "--frames", str(tmp_path / "absent"), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "error: frames:" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------


def test_demo_writes_outputs_and_reports_psnr_gain(tmp_path):
    out = tmp_path / "demo"
    rc, stdout, _ = run_cli(["demo", "--out", str(out), *DEMO_ARGS])
    assert rc == 0
    m = PSNR_RE.search(stdout)
    assert m, f"no PSNR line in:\n{stdout}"
    ours, telea, gain = float(m["ours"]), float(m["telea"]), float(m["gain"])
    assert abs((ours - telea) - gain) <= 0.011
    assert gain >= 5.0, stdout  # measured about +26 dB on this clip
    names = [f"{t:05d}.png" for t in range(N_FRAMES)]
    for sub in ("frames", "masks", "result"):
        assert sorted(p.name for p in (out / sub).iterdir()) == names, sub
    assert (out / "result.mp4").stat().st_size > 0
    side = read_rgb_u8(out / "side_by_side.png")
    assert side.shape == (HEIGHT, 4 * WIDTH, 3)  # input | Telea | propagation | truth
    frame = read_rgb_u8(out / "frames" / names[0])
    assert frame.shape == (HEIGHT, WIDTH, 3)
    mask = read_rgb_u8(out / "masks" / names[0])
    assert set(np.unique(mask).tolist()) == {0, 255}


# ------------------------------------------------------------------------------------------------
# remove
# ------------------------------------------------------------------------------------------------


def test_remove_writes_one_png_per_frame_and_keeps_known_pixels(demo_dir, tmp_path):
    out = tmp_path / "removed"
    rc, stdout, err = run_cli(remove_args(demo_dir / "frames", demo_dir / "masks", out))
    assert rc == 0, err
    assert f"wrote {N_FRAMES} frames" in stdout
    inputs = sorted(p.name for p in (demo_dir / "frames").iterdir())
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == inputs
    assert (out / "result.mp4").is_file() and (out / "result.mp4").stat().st_size > 0
    # Nothing else but the small progress record (which marks the job complete).
    assert sorted(p.name for p in out.iterdir()) == sorted([*inputs, "result.mp4", ".kfp_progress.json"])
    assert json.loads((out / ".kfp_progress.json").read_text())["complete"] is True
    cap = cv2.VideoCapture(str(out / "result.mp4"))
    try:
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    finally:
        cap.release()
    changed_inside = 0.0
    for name in inputs:
        src = read_rgb_u8(demo_dir / "frames" / name).astype(np.int16)
        res = read_rgb_u8(out / name).astype(np.int16)
        hole = read_rgb_u8(demo_dir / "masks" / name)[..., 0] > 0
        assert res.shape == src.shape
        assert np.abs(res - src)[~hole].max() <= 1, f"{name}: a known pixel changed"
        changed_inside += float(np.abs(res - src)[hole].mean())
    # The red object is gone from the hole.
    assert changed_inside / len(inputs) > 20.0


def test_remove_missing_frames_folder(tmp_path):
    missing = tmp_path / "nothing_here"
    rc, _, err = run_cli(["remove", "--frames", str(missing), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "error: frames:" in err and "nothing_here" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("by_name", [False, True], ids=["by_order", "by_name"])
def test_remove_mask_count_matches_neither(demo_dir, tmp_path, by_name):
    masks = tmp_path / "some_masks"
    masks.mkdir()
    for src in sorted((demo_dir / "masks").iterdir())[:5]:
        shutil.copy(src, masks / (src.name if by_name else f"m_{src.name}"))
    rc, _, err = run_cli(remove_args(demo_dir / "frames", masks, tmp_path / "o"))
    assert rc == 2
    assert "error: masks:" in err and "some_masks" in err
    assert "12" in err and ("5 masks" in err or "7 of 12" in err)
    assert not (tmp_path / "o").exists()


def test_remove_keyframes_out_of_range(demo_dir, tmp_path):
    rc, _, err = run_cli(
        remove_args(demo_dir / "frames", demo_dir / "masks", tmp_path / "o", "--keyframes", "0,50")
    )
    assert rc == 2
    assert "error: keyframes:" in err and "50" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# comfy_client: editor workflow -> API prompt
# ------------------------------------------------------------------------------------------------

OBJECT_INFO = {
    "LoadClip": {
        "input": {
            "required": {"path": ["STRING", {"default": ""}], "count": ["INT", {"default": 1}]},
            "optional": {"images": ["IMAGE"]},
        },
        "input_order": {"required": ["path", "count"], "optional": ["images"]},
        "output": ["IMAGE", "MASK"],
        "display_name": "Load Clip",
    },
    "Sampler": {
        # Dict order differs from input_order on purpose: the converter must follow input_order.
        "input": {
            "required": {
                "steps": ["INT", {"default": 20}],
                "images": ["IMAGE"],
                "seed": ["INT", {"default": 0, "control_after_generate": True}],
                "mode": [["fast", "slow"], {"default": "fast"}],
                "strength": ["FLOAT", {"default": 1.0}],
            },
            "optional": {
                "mask": ["MASK"],
                "enabled": ["BOOLEAN", {"default": True}],
                "label": ["STRING", {"forceInput": True}],
            },
        },
        "input_order": {
            "required": ["images", "seed", "steps", "mode", "strength"],
            "optional": ["mask", "enabled", "label"],
        },
        "output": ["IMAGE"],
        "display_name": "Sampler",
    },
    "Filter": {
        "input": {"required": {"images": ["IMAGE"], "amount": ["FLOAT", {"default": 0.5}]}},
        "output": ["IMAGE"],
        "display_name": "Filter",
    },
    "SaveImage": {
        # No input_order (older servers): the dict order is the widget order.
        "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "output": [],
        "display_name": "Save Image",
    },
}


def node(nid, ntype, widgets=(), inputs=(), mode=0, title=None):
    n = {"id": nid, "type": ntype, "mode": mode, "inputs": list(inputs), "widgets_values": list(widgets)}
    if title:
        n["title"] = title
    return n


def workflow(*nodes, links=()):
    return {"last_node_id": 9, "last_link_id": 9, "nodes": list(nodes), "links": list(links), "version": 0.4}


def base_workflow() -> dict:
    return workflow(
        node(1, "LoadClip", ["clips/a", 7], [{"name": "images", "type": "IMAGE", "link": None}]),
        node(
            2,
            "Sampler",
            [42, "randomize", 30, "slow", 0.25, False],
            [{"name": "images", "type": "IMAGE", "link": 11}, {"name": "mask", "type": "MASK", "link": 12}],
            title="My sampler",
        ),
        node(3, "SaveImage", ["out/run"], [{"name": "images", "type": "IMAGE", "link": 13}]),
        node(4, "Note", ["remember to set the paths"]),
        node(5, "LoadClip", ["clips/muted", 1], mode=2),
        links=[
            [11, 1, 0, 2, 0, "IMAGE"],
            {"id": 12, "origin_id": 1, "origin_slot": 1, "target_id": 2, "target_slot": 1, "type": "MASK"},
            [13, 2, 0, 3, 0, "IMAGE"],
        ],
    )


def test_ui_to_api_widgets_links_and_dropped_nodes():
    prompt = ui_to_api(base_workflow(), OBJECT_INFO)
    assert set(prompt) == {"1", "2", "3"}, "Note and muted nodes must be dropped"
    assert prompt["1"] == {
        "class_type": "LoadClip",
        "inputs": {"path": "clips/a", "count": 7},
        "_meta": {"title": "Load Clip"},
    }
    # seed's control_after_generate value ("randomize") is skipped, so steps gets 30, not "randomize".
    assert prompt["2"]["inputs"] == {
        "seed": 42,
        "steps": 30,
        "mode": "slow",
        "strength": 0.25,
        "enabled": False,
        "images": ["1", 0],
        "mask": ["1", 1],
    }
    assert prompt["2"]["class_type"] == "Sampler"
    assert prompt["2"]["_meta"]["title"] == "My sampler"
    assert prompt["3"]["inputs"] == {"filename_prefix": "out/run", "images": ["2", 0]}
    assert is_api_format(prompt)


def test_ui_to_api_seed_without_control_value_saved():
    """A workflow saved without the control value (older editors) must not shift the widgets."""
    wf = workflow(node(2, "Sampler", [42, 30, "slow", 0.25, True]))
    assert ui_to_api(wf, OBJECT_INFO)["2"]["inputs"] == {
        "seed": 42,
        "steps": 30,
        "mode": "slow",
        "strength": 0.25,
        "enabled": True,
    }


def test_ui_to_api_unknown_node_type_is_named():
    wf = workflow(node(1, "LoadClip", ["a", 1]), node(8, "NotInstalledNode", [1, 2]))
    with pytest.raises(PipelineError, match=r"NotInstalledNode.*\b8\b"):
        ui_to_api(wf, OBJECT_INFO)


def test_ui_to_api_unknown_type_of_muted_node_is_ignored():
    wf = workflow(node(1, "LoadClip", ["a", 1]), node(8, "NotInstalledNode", [1], mode=2))
    assert set(ui_to_api(wf, OBJECT_INFO)) == {"1"}


def test_ui_to_api_legacy_seed_name_has_control_value():
    info = {
        "OldSampler": {
            "input": {"required": {"seed": ["INT", {"default": 0}], "steps": ["INT", {"default": 20}]}},
            "input_order": {"required": ["seed", "steps"]},
            "output": [],
        }
    }
    wf = workflow(node(1, "OldSampler", [5, "fixed", 25]))
    assert ui_to_api(wf, info)["1"]["inputs"] == {"seed": 5, "steps": 25}


def test_ui_to_api_input_linked_to_muted_node_is_removed():
    wf = base_workflow()
    wf["links"].append([14, 5, 1, 2, 1, "MASK"])
    wf["links"] = [lk for lk in wf["links"] if not (isinstance(lk, dict) and lk["id"] == 12)]
    wf["nodes"][1]["inputs"][1]["link"] = 14  # Sampler.mask <- the muted LoadClip
    prompt = ui_to_api(wf, OBJECT_INFO)
    assert "mask" not in prompt["2"]["inputs"]


def test_ui_to_api_bypassed_node_passes_its_input_through():
    wf = workflow(
        node(1, "LoadClip", ["a", 1]),
        node(6, "Filter", [0.5], [{"name": "images", "type": "IMAGE", "link": 21}], mode=4),
        node(3, "SaveImage", ["x"], [{"name": "images", "type": "IMAGE", "link": 22}]),
        links=[[21, 1, 0, 6, 0, "IMAGE"], [22, 6, 0, 3, 0, "IMAGE"]],
    )
    prompt = ui_to_api(wf, OBJECT_INFO)
    assert set(prompt) == {"1", "3"}
    assert prompt["3"]["inputs"]["images"] == ["1", 0]


def test_is_api_format():
    api = {"1": {"class_type": "LoadClip", "inputs": {}}, "2": {"class_type": "X", "inputs": {}}}
    assert is_api_format(api)
    assert not is_api_format(base_workflow())
    assert not is_api_format({"1": {"inputs": {}}})
    assert not is_api_format({"1": {"class_type": "X"}, "extra": 3})
