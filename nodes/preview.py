"""Previews on the nodes: animated WebP results, the flow picture, and LoadKeyframes' filmstrip route.

The pictures are made in ``pipelines.preview``; this module saves them where ComfyUI's frontend
finds them (the temp folder) and serves the filmstrip to the pack's web extension (``web/js``).
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..pipelines import preview as pv
from .common import comfy_progress

log = logging.getLogger("keyframe_propagation")

# Filmstrips of the last LoadKeyframes runs (server memory, at most 16 runs / 64 MiB).
FILMSTRIPS = pv.FilmstripStore()
ROUTE = "/kfp/filmstrip"
PREVIEW_FPS = 8.0


def animated(cls: type[io.ComfyNode], frames: torch.Tensor, fps: float = PREVIEW_FPS) -> dict:
    """Save (N, h, w, 3) frames as a looping WebP in the temp folder; the node's ``ui`` dict."""
    result = ui.ImageSaveHelper.save_animated_webp(
        frames,
        filename_prefix="kfp_preview",
        folder_type=io.FolderType.temp,
        cls=cls,
        fps=fps,
        lossless=False,
        quality=80,
        method=0,  # fastest encoder: a preview, not a deliverable
    )
    return ui.SavedImages([result], is_animated=len(frames) > 1).as_dict()


def clip_preview(
    cls: type[io.ComfyNode], frames: torch.Tensor, masks: torch.Tensor | None = None, fps: float = 0.0
) -> dict:
    """A short animation of a clip (B, H, W, 3), the holes of ``masks`` tinted when given."""
    idx, anim = pv.animation(frames, masks)
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    rate = (fps / step) if fps > 0 else PREVIEW_FPS
    return animated(cls, anim, max(2.0, min(rate, 24.0)))


def flow_ui(cls: type[io.ComfyNode], forward: torch.Tensor, occlusion: torch.Tensor) -> dict:
    """Colour-wheel flow beside the occlusion mask, animated over the clip."""
    _, anim = pv.flow_preview(forward, occlusion)
    return animated(cls, anim)


def filmstrip_ui(
    frames: torch.Tensor, masks: torch.Tensor | None, keyframes: list[int], source: str, owner: str | None
) -> dict:
    """Make and keep the filmstrip of a LoadKeyframes run; the ``ui`` entry the extension reads."""
    # At 4K each picture takes about half a second: progress, and Cancel, after each.
    strip = pv.make_filmstrip(frames, masks, keyframes, source, progress=comfy_progress())
    FILMSTRIPS.put(strip, owner)
    return {"kfp_filmstrip": [strip.meta()]}


def register_routes() -> None:
    """Add the filmstrip routes to ComfyUI's server (no-op outside a running server)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or getattr(server, "_kfp_routes", False):
        return
    server._kfp_routes = True
    routes = server.routes

    @routes.get(ROUTE + "/{run}")
    async def filmstrip_meta(request: web.Request) -> web.Response:
        strip = FILMSTRIPS.get(request.match_info["run"])
        if strip is None:
            return web.json_response({"error": "unknown run: queue Load Keyframes again"}, status=404)
        return web.json_response(strip.meta())

    @routes.get(ROUTE + "/{run}/{frame}")
    async def filmstrip_frame(request: web.Request) -> web.Response:
        try:
            frame = int(request.match_info["frame"])
        except ValueError:
            return web.json_response({"error": "frame: not an integer"}, status=400)
        data = FILMSTRIPS.picture(request.match_info["run"], frame)
        if data is None:
            return web.json_response({"error": "unknown run: queue Load Keyframes again"}, status=404)
        return web.Response(
            body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )
