"""ComfyUI glue shared by the pack's nodes: custom types, progress/Cancel, model folders, errors.

Everything that touches ComfyUI lives in ``nodes/``; the maths is in ``pipelines/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io

from ..pipelines.checks import DTYPES, parse_dtype
from ..pipelines.errors import PipelineError, short_list

# Custom types, declared once for every node of the pack.
Keyframes = io.Custom("KEYFRAMES")
Flow = io.Custom("FLOW")
TwoStreamModel = io.Custom("TWO_STREAM_MODEL")
# A clip read frame by frame (pipelines.clip.LazyClip): how long clips travel between the pack's nodes.
Clip = io.Custom("KFP_CLIP")

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
    path = folder_paths.get_full_path(folder, model_name)
    if path is None:
        raise PipelineError(f"{what}: '{model_name}' not found in models/{folder}; {hint}")
    return path


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
def on_compute_device(
    model: torch.nn.Module | Sequence[torch.nn.Module], need_bytes: int
) -> Iterator[torch.device]:
    """Run a block with ``model`` (or several models, loaded together) on ComfyUI's compute device by
    ComfyUI's model management (:func:`managed`, :func:`load_on_compute_device`). ``need_bytes``: what
    the run needs on the device, the weights included (ComfyUI counts those itself; the rest is asked
    for as the run's memory). The models stay loaded afterwards, like ComfyUI's own models, until
    ComfyUI frees them.
    """
    import comfy.model_management as mm

    models = [model] if isinstance(model, torch.nn.Module) else list(model)
    patchers = [managed(m) for m in models]
    weights = sum(p.model_size() for p in patchers)
    device = load_on_compute_device(patchers, max(0, int(need_bytes) - weights))
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


class ComfyProgress:
    """A pipeline's ``progress(done, total, text)`` in ComfyUI: progress bar, text and Cancel.

    ComfyUI's interrupt check raises when the user presses Cancel; raising from the callback stops
    the pipeline between frames. The pipeline's text ("chunk 2/5", "step 3/25") is shown on the
    running node (ComfyUI's progress-text message) when it changes. ``preview(frame)`` shows a frame
    on the node while it runs (ComfyUI's live preview, as samplers show latents).
    """

    def __init__(self, node_total: int = 100) -> None:
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(node_total)
        self.send_text = _progress_text_sender()
        self.last = ""

    def __call__(self, done: int, total: int, text: str = "") -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)
        if text and text != self.last and self.send_text is not None:
            self.last = text
            self.send_text(text)

    def check(self) -> None:
        """Raise ComfyUI's interrupt exception if the user pressed Cancel (nothing else)."""
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()

    def preview(self, frame: torch.Tensor, max_size: int = 512) -> None:
        """Show ``frame`` (H, W, 3) in [0, 1] on the running node."""
        from PIL import Image

        u8 = (frame.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        try:
            self.bar.update_absolute(
                self.bar.current, self.bar.total, ("JPEG", Image.fromarray(u8), max_size)
            )
        except Exception:  # a preview is a nicety: never fail the node for it
            pass


def comfy_progress(node_total: int = 100) -> ComfyProgress:
    """The progress callback for a pipeline run by a node (see :class:`ComfyProgress`)."""
    return ComfyProgress(node_total)


def output_folder(name: str, what: str = "output_folder") -> Path:
    """A folder under ComfyUI's output folder from a name typed by the user (``a/b``); created.

    Absolute paths and ``..`` that leave the output folder are refused.
    """
    text = (name or "").strip().strip("/\\")
    if not text:
        raise PipelineError(f"{what}: no folder given; type a folder name, e.g. keyframe_propagation/removed")
    root = Path(folder_paths.get_output_directory()).resolve()
    path = (root / text).resolve()
    if Path(text).is_absolute() or not (path == root or path.is_relative_to(root)):
        raise PipelineError(f"{what}: '{name}' is outside ComfyUI's output folder; give a folder inside it")
    if path == root:
        raise PipelineError(f"{what}: give a subfolder of ComfyUI's output folder, not the folder itself")
    path.mkdir(parents=True, exist_ok=True)
    return path


def saved_result(path: Path) -> dict:
    """The ``ui`` entry (filename, subfolder, type) of a file written under the output folder."""
    root = Path(folder_paths.get_output_directory()).resolve()
    rel = Path(path).resolve().relative_to(root)
    return {
        "filename": rel.name,
        "subfolder": rel.parent.as_posix() if rel.parent != Path(".") else "",
        "type": "output",
    }


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


# Default of a socket input in a node's ``validate_inputs``: ComfyUI passes None for a connected input
# (its value is not known before the run) and nothing for an unconnected optional one.
NOT_CONNECTED = object()


def check_widgets(node_cls, values: Mapping[str, object], skip: tuple[str, ...] = ()) -> None:
    """ComfyUI's own checks of widget values (number ranges, dropdown options), for the inputs a
    node's ``validate_inputs`` declares: ComfyUI skips its range checks for those inputs, and in this
    version checks no V3 dropdown at all. Values of connected inputs (None) are not checked."""
    specs = {i.id: i for i in node_cls.define_schema().inputs}  # GET_SCHEMA sets class attributes
    for name, value in values.items():
        spec = specs.get(name)
        if value is None or value is NOT_CONNECTED or spec is None or name in skip:
            continue
        if isinstance(spec, io.Combo.Input) and spec.options:
            if value not in spec.options:
                raise PipelineError(f"{name}: {value!r} is not one of {short_list(list(spec.options), 8)}")
        elif isinstance(spec, (io.Int.Input, io.Float.Input)):
            kind = "a whole number" if isinstance(spec, io.Int.Input) else "a number"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PipelineError(f"{name}: {value!r} is not {kind}")
            if isinstance(spec, io.Int.Input) and value != int(value):
                raise PipelineError(f"{name}: {value!r} is not {kind}")
            if spec.min is not None and value < spec.min:
                raise PipelineError(f"{name}: {value!r} is below the minimum {spec.min}")
            if spec.max is not None and value > spec.max:
                raise PipelineError(f"{name}: {value!r} is above the maximum {spec.max}")


def validation(node_cls, values: Mapping[str, object], *checks: Callable[[], object], skip=()) -> bool | str:
    """A node's ``validate_inputs`` answer: True, or the first problem's message (ComfyUI then refuses
    the prompt at queue time, HTTP 400 with the node's errors). Checks the widget values
    (:func:`check_widgets`), then runs ``checks`` (each raises PipelineError on a problem)."""
    try:
        check_widgets(node_cls, values, skip)
        for check in checks:
            check()
    except PipelineError as e:
        return str(e)
    return True


def widget_values(args: Mapping[str, object]) -> dict[str, object]:
    """A ``validate_inputs``' arguments (its ``locals()`` on entry) without ``cls``."""
    return {k: v for k, v in args.items() if k != "cls"}


def given(value: object) -> bool:
    """Whether a ``validate_inputs`` value is known now (not a connected or an absent input)."""
    return value is not None and value is not NOT_CONNECTED


def input_roots() -> list[str]:
    """Folders LoadKeyframes may read from: ComfyUI's input and output folders."""
    return [folder_paths.get_input_directory(), folder_paths.get_output_directory()]


__all__ = [
    "CATEGORY",
    "Clip",
    "ComfyProgress",
    "DTYPES",
    "NOT_CONNECTED",
    "NO_MODEL",
    "Flow",
    "Keyframes",
    "PackModel",
    "PipelineError",
    "TwoStreamModel",
    "check_widgets",
    "comfy_progress",
    "current_node_id",
    "given",
    "input_roots",
    "model_file",
    "load_on_compute_device",
    "managed",
    "model_files",
    "module_bytes",
    "on_compute_device",
    "output_folder",
    "saved_result",
    "register_model_folders",
    "torch_dtype",
    "unload",
    "validation",
    "widget_values",
]
