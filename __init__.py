"""Keyframe propagation for video, as a ComfyUI node pack.

Importing this package is cheap and works without ComfyUI (the CLI and the tests import it):
the nodes, which need ComfyUI's API, are imported only when ComfyUI calls ``comfy_entrypoint``.
"""

WEB_DIRECTORY = "./web"

__version__ = "0.1.0"


async def comfy_entrypoint():
    """ComfyUI V3 entry point: returns the pack's extension (its node list)."""
    from .nodes import KeyframePropagationExtension

    return KeyframePropagationExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
