"""Builds the example workflows (editor format + API format) from a compact description.

The editor format is LiteGraph's (what ComfyUI saves); widget values are laid out in the order the
server's ``/object_info`` gives, so the file loads as a template with no missing widgets. The API
copy is made from it with the pack's own converter (``comfy_client.ui_to_api``), which the
integration tests also check against the live server.

Regenerate against a running ComfyUI that has the pack installed:

    python tests/workflow_builder.py --server http://127.0.0.1:8188
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "example_workflows"

REMOVE_OBJECT_NOTE = """## Remove an object from a clip (no model download)

1. Put your clip in ComfyUI's **input** folder: a folder of frames (or a video file) and a folder of
   masks (white = the object to remove; one mask per frame, same file names, or one mask for all).
   To try it first, make a demo clip: `python -m keyframe_propagation demo --out ComfyUI/input/keyframe_demo`.
2. In **Load Keyframes** set `frames` and `masks` to those paths (relative to the input folder).
   Use `frame_cap` to try a few frames first, `width`/`height` to work smaller.
3. Queue. **Flow Estimate** computes optical flow (OpenCV DIS, no weights); **Two-Stream Inpaint**
   fills every hole pixel from the frames where the background is visible, and reports in `unseen`
   the pixels no frame showed (filled per frame).
4. Results are saved as PNG frames and an MP4 under `output/keyframe_propagation/`.

If the removed object leaves a halo, raise `mask_dilation` on Two-Stream Inpaint."""


def save_frames_and_video(first_id: int, source: int, prefix: str, fps: float) -> list[dict[str, Any]]:
    """Save Image (PNG frames) + Create Video -> Save Video (MP4) of node ``source``'s first output,
    right of the graph; ids first_id .. first_id + 2."""
    return [
        {
            "id": first_id,
            "type": "SaveImage",
            "pos": [1240, 60],
            "size": [320, 300],
            "widgets": {"filename_prefix": prefix},
            "links": {"images": (source, 0)},
        },
        {
            "id": first_id + 1,
            "type": "CreateVideo",
            "pos": [1240, 400],
            "size": [270, 80],
            "widgets": {"fps": fps},
            "links": {"images": (source, 0)},
        },
        {
            "id": first_id + 2,
            "type": "SaveVideo",
            "pos": [1540, 400],
            "size": [320, 300],
            "widgets": {"filename_prefix": prefix, "format": "mp4", "codec": "h264"},
            "links": {"video": (first_id + 1, 0)},
        },
    ]


def remove_object_spec() -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "type": "KFP_LoadKeyframes",
            "pos": [40, 60],
            "size": [380, 720],
            "widgets": {"frames": "keyframe_demo/frames", "masks": "keyframe_demo/masks", "keyframes": "0"},
        },
        {
            "id": 2,
            "type": "KFP_FlowEstimate",
            "pos": [460, 60],
            "size": [340, 520],
            "links": {"images": (1, 0), "masks": (1, 1)},
        },
        {
            "id": 3,
            "type": "KFP_TwoStreamInpaint",
            "pos": [840, 60],
            "size": [360, 600],
            "links": {"images": (1, 0), "masks": (1, 1), "keyframes": (1, 2), "flow": (2, 0)},
        },
        *save_frames_and_video(first_id=4, source=3, prefix="keyframe_propagation/removed", fps=24.0),
        {"id": 8, "type": "MarkdownNote", "pos": [40, 820], "size": [760, 330], "note": REMOVE_OBJECT_NOTE},
    ]


LONG_CLIP_NOTE = """## Remove an object from a long clip (read frame by frame, written as made)

For clips of hundreds or thousands of frames, at 1080p or 4K: memory stays that of one chunk.

1. Put the video in ComfyUI's **input** folder and pick it in **Load Video** (or set `frames` on
   Load Keyframes to a folder of frames and leave `video` unconnected). Put the masks in a folder
   under input (white = the object to remove; one per frame, by name or in order, or one for all)
   and set `masks` to it.
2. **Load Keyframes** has `stream` on: it reads frames and masks only when Two-Stream Inpaint asks
   for them, and hands the clip on through `clip`. (Its `frames` and `masks` outputs then hold the
   keyframes only.)
3. **Flow Estimate** on a clip only carries its settings (DIS preset, or RAFT weights) and previews
   the first frames' flow: **Two-Stream Inpaint** computes the flow per chunk and writes every frame
   as a PNG (named as the input frames) and an MP4 to `output/<output_folder>/` as it goes; the node
   shows the last written frame and `k/n frames written`. Cancel stops within a frame; queue the
   same prompt again to continue from the last complete chunk (changed inputs or settings start
   over).
4. **Save Video** keeps a copy of the MP4 under `output/video/`; the result is also a `clip` for
   Multiscale Refine or Clip to Images.

Memory: a chunk (`chunk` + `lookahead` frames) at a time, within a fixed budget whatever the frame
size (the rest waits in temporary files): 100 frames of 4K peak under 4 GiB above an idle ComfyUI."""


def remove_long_clip_spec() -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "type": "LoadVideo",
            "pos": [40, 60],
            "size": [340, 400],
            "widgets": {"file": "long_clip.mp4"},
        },
        {
            "id": 2,
            "type": "KFP_LoadKeyframes",
            "pos": [420, 60],
            "size": [380, 820],
            "widgets": {"frames": "", "masks": "long_clip_masks", "keyframes": "0", "stream": True},
            "links": {"video": (1, 0)},
        },
        {
            "id": 3,
            "type": "KFP_FlowEstimate",
            "pos": [840, 60],
            "size": [340, 560],
            "widgets": {"preset": "medium"},
            "links": {"clip": (2, 3)},
        },
        {
            "id": 4,
            "type": "KFP_TwoStreamInpaint",
            "pos": [1220, 60],
            "size": [360, 700],
            "widgets": {"output_folder": "keyframe_propagation/long_clip"},
            "links": {"clip": (2, 3), "flow": (3, 0)},
        },
        {
            "id": 5,
            "type": "SaveVideo",
            "pos": [1620, 60],
            "size": [360, 420],
            "widgets": {"filename_prefix": "video/long_clip", "format": "mp4", "codec": "h264"},
            "links": {"video": (4, 3)},
        },
        {"id": 6, "type": "MarkdownNote", "pos": [40, 920], "size": [760, 460], "note": LONG_CLIP_NOTE},
    ]


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return not opts.get("forceInput") and (
        isinstance(kind, list) or kind in {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
    )


WORKFLOW_IDS = {
    "remove_object": "6b0e2a3c-5f1d-4c2e-9a7b-0d1e2f3a4b51",
    "inbetween": "0c7d4e2b-8a91-4f3e-b6d5-2e9f1a7c3b62",
}


def build_ui(spec: list[dict[str, Any]], object_info: dict[str, Any], name: str = "") -> dict[str, Any]:
    """Editor-format workflow from the compact spec (widget defaults from object_info)."""
    nodes, links = [], []
    by_id = {n["id"]: n for n in spec}
    out_links: dict[tuple[int, int], list[int]] = {}
    link_id = 0
    for order, n in enumerate(spec):
        if n["type"] == "MarkdownNote":
            nodes.append(
                {
                    "id": n["id"],
                    "type": "MarkdownNote",
                    "pos": n["pos"],
                    "size": n["size"],
                    "flags": {},
                    "order": order,
                    "mode": 0,
                    "inputs": [],
                    "outputs": [],
                    "properties": {},
                    "widgets_values": [n["note"]],
                    "color": "#432",
                    "bgcolor": "#653",
                }
            )
            continue
        info = object_info[n["type"]]
        order_names = info.get("input_order") or {
            k: list(info["input"].get(k, {})) for k in ("required", "optional")
        }
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        inputs, widgets = [], []
        upload = False  # the upload button's value is saved after the node's other widgets
        for name in [*order_names.get("required", []), *order_names.get("optional", [])]:
            s = specs[name]
            if _is_widget(s):
                opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                default = opts.get("default", s[0][0] if isinstance(s[0], list) and s[0] else None)
                if s[0] == "COMBO" and default is None:
                    default = (opts.get("options") or [""])[0]
                widgets.append(n.get("widgets", {}).get(name, default))
                # The editor saves an extra value after seed-like INTs and image-upload combos.
                if opts.get("control_after_generate") or (s[0] == "INT" and name in ("seed", "noise_seed")):
                    widgets.append("fixed")
                if opts.get("image_upload") or opts.get("video_upload"):
                    upload = True
            else:
                entry: dict[str, Any] = {"name": name, "type": s[0], "link": None}
                if name in n.get("links", {}):
                    link_id += 1
                    src, slot = n["links"][name]
                    entry["link"] = link_id
                    src_type = object_info[by_id[src]["type"]]["output"][slot]
                    links.append([link_id, src, slot, n["id"], len(inputs), src_type])
                    out_links.setdefault((src, slot), []).append(link_id)
                inputs.append(entry)
        if upload:
            widgets.append("image")
        unknown = set(n.get("widgets", {})) - set(specs)
        if unknown:
            raise KeyError(f"{n['type']} has no inputs {unknown}")
        outputs = [
            {"name": nm, "type": tp, "links": [], "slot_index": i}
            for i, (nm, tp) in enumerate(zip(info["output_name"], info["output"]))
        ]
        nodes.append(
            {
                "id": n["id"],
                "type": n["type"],
                "pos": n["pos"],
                "size": n["size"],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": outputs,
                "properties": {"Node name for S&R": n["type"]},
                "widgets_values": widgets,
                **({"title": n["title"]} if "title" in n else {}),
            }
        )
    for node in nodes:
        for out in node["outputs"]:
            out["links"] = out_links.get((node["id"], out["slot_index"]), [])
    return {
        "id": "6b0e2a3c-5f1d-4c2e-9a7b-0d1e2f3a4b51",
        "revision": 0,
        "last_node_id": max(n["id"] for n in spec),
        "last_link_id": link_id,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
        "version": 0.4,
    }


INBETWEEN_NOTE = """## Generate the frames between two keyframes (Stable Video Diffusion)

1. Models (nothing is downloaded):
   - SVD img2vid-xt: the diffusers folder in `models/diffusers/stable-video-diffusion-img2vid-xt`,
     or `svd_xt.safetensors` in `models/checkpoints` (then pick `checkpoints/svd_xt.safetensors`).
   - Reverse-motion weights: the compact delta file in `models/reverse_motion/` (make it once with
     `python -m keyframe_propagation extract-reverse-delta`), or the released
     `svd_reverse_motion_with_attnflip` UNet folder in `models/reverse_motion/` together with the
     img2vid (14-frame) base selected in `base_unet`.
2. Put the first and last keyframe in ComfyUI's **input** folder and select them in the two Load Image
   nodes (any size: they are resized to the sampler's width x height, a multiple of 64).
3. Queue. 25 frames at 1024x576 with 50 steps need a GPU; lower `steps` (25 works) or
   `noise_injection_steps` for speed, `decode_chunk_size` for memory.
4. Frames are saved as PNGs and an MP4 under `output/keyframe_propagation/`."""


def inbetween_spec() -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "type": "LoadImage",
            "pos": [40, 60],
            "size": [300, 320],
            "title": "First keyframe",
            "widgets": {"image": "inbetween_first.png"},
        },
        {
            "id": 2,
            "type": "LoadImage",
            "pos": [40, 420],
            "size": [300, 320],
            "title": "Last keyframe",
            "widgets": {"image": "inbetween_last.png"},
        },
        {
            "id": 3,
            "type": "KFP_ReverseSVDLoader",
            "pos": [380, 60],
            "size": [400, 200],
            "widgets": {
                "svd_model": "diffusers/stable-video-diffusion-img2vid-xt",
                "reverse_weights": "reverse_motion/svd_reverse_motion_delta.safetensors",
                "dtype": "fp16",
            },
        },
        {
            "id": 4,
            "type": "KFP_DualDirectionalSampler",
            "pos": [820, 60],
            "size": [380, 860],
            "widgets": {"num_frames": 25, "width": 1024, "height": 576, "steps": 50, "seed": 42},
            "links": {"model": (3, 0), "first_frame": (1, 0), "last_frame": (2, 0)},
        },
        *save_frames_and_video(first_id=5, source=4, prefix="keyframe_propagation/inbetween", fps=7.0),
        {"id": 8, "type": "MarkdownNote", "pos": [40, 960], "size": [760, 360], "note": INBETWEEN_NOTE},
    ]


TWO_STREAM_NOTE = """## Remove an object with the two-stream model (keyframe-guided inpainting)

1. Model: put a two-stream checkpoint in `models/two_stream/`: the Lightning `.ckpt` as released, or
   its generator-only `.safetensors` made with
   `python -m keyframe_propagation convert-two-stream IN.ckpt models/two_stream/ours_big.safetensors`.
   Select it in **Two-Stream Model Loader** (fp16/bf16 on a GPU, fp32 on a CPU).
2. Clip: as in the *remove_object* template (frames + masks in the input folder). Edited keyframes
   connected to Load Keyframes are always given to the model.
3. The model generates every `generate_every`-th frame (20) from keyframes at `keyframe_offsets`
   (+-10, 20, 40) at `work_long_side` (512) and the frames in between are propagated with flow.
   Flow Estimate runs at 256x256 as the model was trained.
4. Results are saved as PNG frames and an MP4 under `output/keyframe_propagation/`."""


def remove_object_two_stream_spec() -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "type": "KFP_LoadKeyframes",
            "pos": [40, 60],
            "size": [380, 720],
            "widgets": {"frames": "keyframe_demo/frames", "masks": "keyframe_demo/masks", "keyframes": "0"},
        },
        {
            "id": 2,
            "type": "KFP_TwoStreamModelLoader",
            "pos": [460, 640],
            "size": [340, 110],
            "widgets": {"model_name": "ours_big.safetensors", "dtype": "fp16"},
        },
        {
            "id": 3,
            "type": "KFP_FlowEstimate",
            "pos": [460, 60],
            "size": [340, 540],
            "widgets": {"work_width": 256, "work_height": 256},
            "links": {"images": (1, 0), "masks": (1, 1)},
        },
        {
            "id": 4,
            "type": "KFP_TwoStreamInpaint",
            "pos": [840, 60],
            "size": [360, 640],
            "links": {
                "images": (1, 0),
                "masks": (1, 1),
                "keyframes": (1, 2),
                "flow": (3, 0),
                "model": (2, 0),
            },
        },
        *save_frames_and_video(
            first_id=5, source=4, prefix="keyframe_propagation/removed_two_stream", fps=24.0
        ),
        {"id": 8, "type": "MarkdownNote", "pos": [40, 820], "size": [760, 360], "note": TWO_STREAM_NOTE},
    ]


REFINE_NOTE = """## Inpaint a high-resolution image with LaMa + multiscale refinement

1. Model: put big-lama in `models/inpaint/`: the TorchScript `big-lama.pt` most ComfyUI users already
   have (only its weights are read), Big-LaMa's Lightning `best.ckpt`, or a generator `.safetensors`.
2. Load the image and its mask (white = the region to fill; the mask's red channel is used) in the
   two load nodes.
3. Multiscale Refine runs LaMa on a small version and then optimises its features at each larger
   scale (the reference's defaults: 15 iterations, lr 0.002, min side 512, up to 3 scales, 1.8 MP).
   `crop` and `early_stop` are speed-ups, off by default. Fast settings: `crop` and `early_stop` on,
   `patience` 3, `lr` 0.006 (at 1024x1024 about 5x faster, at the same loss). `checkpointing` saves
   memory.
4. To refine another inpainting node's result instead, connect it to `guide`."""


def refine_highres_spec() -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "type": "LoadImage",
            "pos": [40, 60],
            "size": [300, 320],
            "title": "Image",
            "widgets": {"image": "refine_image.png"},
        },
        {
            "id": 2,
            "type": "LoadImageMask",
            "pos": [40, 420],
            "size": [300, 320],
            "title": "Mask (white = hole)",
            "widgets": {"image": "refine_mask.png", "channel": "red"},
        },
        {
            "id": 3,
            "type": "KFP_InpaintModelLoader",
            "pos": [380, 60],
            "size": [320, 110],
            "widgets": {"model_name": "big-lama.pt", "dtype": "fp32"},
        },
        {
            "id": 4,
            "type": "KFP_MultiscaleRefine",
            "pos": [740, 60],
            "size": [340, 520],
            "links": {"image": (1, 0), "mask": (2, 0), "model": (3, 0)},
        },
        {
            "id": 5,
            "type": "SaveImage",
            "pos": [1120, 60],
            "size": [360, 400],
            "widgets": {"filename_prefix": "keyframe_propagation/refined"},
            "links": {"images": (4, 0)},
        },
        {"id": 6, "type": "MarkdownNote", "pos": [380, 620], "size": [700, 300], "note": REFINE_NOTE},
    ]


EXAMPLES = {
    "refine_highres": refine_highres_spec,
    "remove_object": remove_object_spec,
    "inbetween": inbetween_spec,
    "remove_object_two_stream": remove_object_two_stream_spec,
    "remove_long_clip": remove_long_clip_spec,
}


# Screenshots (1600x1000, from tests/test_browser.py): the graph canvas without the editor's side bar
# and top bars.
CANVAS_BOX = (64, 80, 1600, 1000)
DOCS = ROOT / "docs" / "screenshots"


def write_pictures(shots: Path) -> None:
    """Template thumbnails (example_workflows/<name>.jpg, what the template browser shows) and the
    README's screenshots (docs/screenshots/) from the browser test's screenshots in ``shots``."""
    from PIL import Image

    DOCS.mkdir(parents=True, exist_ok=True)
    for png in sorted(shots.glob("*.png")):
        canvas = Image.open(png).convert("RGB").crop(CANVAS_BOX)
        if png.stem in EXAMPLES:
            thumb = canvas.resize((512, round(512 * canvas.height / canvas.width)), Image.LANCZOS)
            thumb.save(WORKFLOWS / f"{png.stem}.jpg", quality=85)
        canvas.resize((1200, round(1200 * canvas.height / canvas.width)), Image.LANCZOS).save(
            DOCS / f"{png.stem}.jpg", quality=80
        )
        print("pictures of", png.stem)


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT.parent))
    p = argparse.ArgumentParser()
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument(
        "--pictures",
        type=Path,
        help="only make the template thumbnails and README screenshots from this folder of browser-test "
        "screenshots (tests/artifacts)",
    )
    args = p.parse_args()
    if args.pictures:
        write_pictures(args.pictures)
        return
    with urllib.request.urlopen(f"{args.server}/object_info") as r:
        info = json.loads(r.read())
    from keyframe_propagation.cli.comfy_client import ui_to_api

    (WORKFLOWS / "api").mkdir(parents=True, exist_ok=True)
    for name, spec in EXAMPLES.items():
        ui = build_ui(spec(), info, name)
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n")
        api = ui_to_api(ui, info)
        (WORKFLOWS / "api" / f"{name}_api.json").write_text(json.dumps(api, indent=2) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
