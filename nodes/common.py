"""ComfyUI glue shared by the pack's nodes: custom types, progress/Cancel, model folders, errors.

Everything that touches ComfyUI lives in ``nodes/``; the maths is in ``pipelines/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import folder_paths
import torch
from comfy_api.latest import io

from ..pipelines.checks import DTYPES, parse_dtype
from ..pipelines.errors import PipelineError
from ..pipelines.progress import ProgressFn

# Custom types, declared once for every node of the pack.
Keyframes = io.Custom("KEYFRAMES")
Flow = io.Custom("FLOW")
TwoStreamModel = io.Custom("TWO_STREAM_MODEL")

CATEGORY = "keyframe propagation"

# Model folders of the pack, registered with ComfyUI (models/<name>) unless the user already has them
# (extra_model_paths.yaml entries are kept).
MODEL_FOLDERS = {
    "optical_flow": {".pth", ".pt", ".safetensors"},
    "two_stream": {".ckpt", ".pt", ".pth", ".safetensors"},
    "inpaint": {".ckpt", ".pt", ".pth", ".safetensors"},
    # Compact reverse-motion delta files, and fine-tuned UNet folders (listed by the SVD loader).
    "reverse_motion": {".safetensors"},
}


def register_model_folders() -> None:
    for name, exts in MODEL_FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], set(exts))


NO_MODEL = "none"


def model_file(folder: str, model_name: str, hint: str, what: str = "model_name") -> str:
    """Full path of a loader's ``model_name`` in a model folder; a clear error when none is chosen.

    ``hint`` says which file to put there ("put big-lama.pt ... in ComfyUI/models/inpaint"); ``what``
    is the input's name in messages.
    """
    if not model_name or model_name == NO_MODEL:
        raise PipelineError(f"{what}: no file in models/{folder}; {hint}")
    return folder_paths.get_full_path_or_raise(folder, model_name)


def torch_dtype(dtype: str) -> torch.dtype:
    """A loader's dtype option as a torch dtype; a clear error for anything else."""
    return parse_dtype(dtype, "dtype")


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's weights and buffers, as ComfyUI counts them."""
    import comfy.model_management as mm

    return int(mm.module_size(module))


# ----------------------------------------------------------------------------------------------
# The pack's models in ComfyUI's model management
# ----------------------------------------------------------------------------------------------
class PackModel(torch.nn.Module):
    """One of the pack's networks as ComfyUI's model management holds it (the module a
    ``ModelPatcher`` moves): the network itself, plus tensors that travel with it outside any module
    (the SVD UNet's 32 reverse-motion tensors, kept in a dict its attention processors read).

    A holder, not the network itself, because ComfyUI sets ``device`` and bookkeeping attributes on
    the module it manages, and diffusers' models have a read-only ``device``.
    """

    def __init__(self, network: torch.nn.Module, extra: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.network = network
        self.extra = extra

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.extra is not None:  # moved (and cast) with the network, in place in the shared dict
            for k, t in self.extra.items():
                self.extra[k] = fn(t)
        return self


def managed(network: torch.nn.Module, extra: dict[str, torch.Tensor] | None = None):
    """The ``comfy.model_patcher.ModelPatcher`` holding ``network`` for ComfyUI (made the first time,
    then kept on the network): its real size (weights, buffers and ``extra``), ComfyUI's compute
    device as load device and its offload device, as ComfyUI's own model loaders set them."""
    import comfy.model_management as mm
    import comfy.model_patcher

    patcher = network.__dict__.get("_kfp_patcher")
    if patcher is None:
        size = int(mm.module_size(network)) + sum(
            t.numel() * t.element_size() for t in (extra or {}).values()
        )
        patcher = comfy.model_patcher.ModelPatcher(
            PackModel(network, extra),
            load_device=mm.get_torch_device(),
            offload_device=mm.unet_offload_device(),
            size=size,
        )
        network.__dict__["_kfp_patcher"] = patcher
    return patcher


def load_on_compute_device(patchers: list, memory_required: int) -> torch.device:
    """Load ``patchers`` onto ComfyUI's compute device through its model management: other models
    are freed for them (and ``memory_required`` more bytes for the run), and they stay loaded, counted
    by ComfyUI, until it frees them for another model. Loaded fully: the pack's networks are plain
    torch modules, which cannot run partly offloaded."""
    import comfy.model_management as mm

    # Outside inference mode (ComfyUI runs nodes in it): weights moved here stay usable by autograd
    # (Multiscale Refine back-propagates through the network).
    with torch.inference_mode(False):
        mm.load_models_gpu(list(patchers), memory_required=int(memory_required), force_full_load=True)
    return mm.get_torch_device()


def unload(patcher) -> None:
    """Move a loaded model back to its offload device and drop it from ComfyUI's loaded models."""
    import comfy.model_management as mm

    for i, loaded in enumerate(mm.current_loaded_models):
        if loaded.model is patcher:
            with torch.inference_mode(False):
                if loaded.model_unload():
                    mm.current_loaded_models.pop(i)
            return


@contextmanager
def on_compute_device(model: torch.nn.Module, need_bytes: int) -> Iterator[torch.device]:
    """Run a block with ``model`` loaded on ComfyUI's compute device by ComfyUI's model management
    (:func:`managed`, :func:`load_on_compute_device`). ``need_bytes``: what the run needs on the
    device, the weights included (ComfyUI counts those itself; the rest is asked for as the run's
    memory). The model stays loaded afterwards, like ComfyUI's own models, until ComfyUI frees it.
    """
    import comfy.model_management as mm

    patcher = managed(model)
    device = load_on_compute_device([patcher], max(0, int(need_bytes) - patcher.model_size()))
    try:
        yield device
    finally:
        mm.soft_empty_cache()


def model_files(folder: str, allow_none: bool = False) -> list[str]:
    """Files in a model folder, for a combo; never empty (ComfyUI needs one option).

    With ``allow_none`` the first option is "none", so saved workflows stay valid whatever files a
    user has.
    """
    try:
        files = list(folder_paths.get_filename_list(folder))
    except Exception:
        files = []
    if allow_none:
        return [NO_MODEL, *files]
    return files or [NO_MODEL]


def comfy_progress(node_total: int = 100) -> ProgressFn:
    """Adapt a pipeline's ``progress(done, total, text)`` to ComfyUI: progress bar, text and Cancel.

    ComfyUI's interrupt check raises when the user presses Cancel; raising from the callback stops
    the pipeline between frames. The pipeline's text ("chunk 2/5", "step 3/25") is shown on the
    running node (ComfyUI's progress-text message) when it changes.
    """
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(node_total)
    send_text = _progress_text_sender()
    last = [""]

    def _cb(done: int, total: int, text: str = "") -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)
        if text and text != last[0] and send_text is not None:
            last[0] = text
            send_text(text)

    return _cb


def _progress_text_sender() -> Callable[[str], None] | None:
    """A function showing a text on the running node, or None outside a prompt (tests, CLI)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    node_id = current_node_id()
    server = getattr(PromptServer, "instance", None)
    if node_id is None or server is None or not hasattr(server, "send_progress_text"):
        return None  # outside a prompt, or an older ComfyUI: the bar alone

    def send(text: str) -> None:
        try:
            server.send_progress_text(text, node_id)
        except Exception:  # the text is a nicety: never fail the node for it
            pass

    return send


def current_node_id() -> str | None:
    """The running node's id in the graph (None outside a prompt)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    ctx = get_executing_context()
    return None if ctx is None else str(ctx.node_id)


def input_roots() -> list[str]:
    """Folders LoadKeyframes may read from: ComfyUI's input and output folders."""
    return [folder_paths.get_input_directory(), folder_paths.get_output_directory()]


__all__ = [
    "CATEGORY",
    "DTYPES",
    "NO_MODEL",
    "Flow",
    "Keyframes",
    "PackModel",
    "PipelineError",
    "TwoStreamModel",
    "comfy_progress",
    "current_node_id",
    "input_roots",
    "model_file",
    "load_on_compute_device",
    "managed",
    "model_files",
    "module_bytes",
    "on_compute_device",
    "register_model_folders",
    "torch_dtype",
    "unload",
]
