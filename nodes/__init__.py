"""The pack's ComfyUI nodes (V3 API). Imported only inside ComfyUI."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .common import register_model_folders
from .flow import FlowEstimate
from .inbetween import NODE_LIST as INBETWEEN_NODES
from .inpaint import TwoStreamInpaint
from .keyframes import ClipToImages, LoadKeyframes
from .preview import register_routes
from .refine import NODE_LIST as REFINE_NODES
from .two_stream import NODE_LIST as TWO_STREAM_NODES

NODES: list[type[io.ComfyNode]] = [
    LoadKeyframes,
    FlowEstimate,
    *TWO_STREAM_NODES,
    TwoStreamInpaint,
    *REFINE_NODES,
    *INBETWEEN_NODES,
    ClipToImages,
]


class KeyframePropagationExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()
        register_routes()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.x calls only this at start-up (before the server adds its routes).
        register_model_folders()
        register_routes()
        return NODES
