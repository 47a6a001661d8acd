"""TwoStreamModelLoader: the two-stream generator (SPEC A) from ComfyUI/models/two_stream.

The maths and the file formats are in ``pipelines/two_stream/``; this module is the ComfyUI glue:
model folder, dtype, and a ModelPatcher so ComfyUI's model management holds the weights (Two-Stream
Inpaint loads them onto the compute device; ComfyUI frees them when another model needs the room).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..pipelines.checks import DTYPES
from ..pipelines.two_stream.io import load_two_stream
from .common import CATEGORY, TwoStreamModel, given, managed, model_file, model_files, torch_dtype, validation

_HINT = "put a two-stream checkpoint (.ckpt or .safetensors) in ComfyUI/models/two_stream"


class TwoStreamModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KFP_TwoStreamModelLoader",
            display_name="Two-Stream Model Loader",
            category=CATEGORY,
            description=(
                "Loads a two-stream keyframe-guided inpainting model (Runway's 'Towards Unified Keyframe "
                "Propagation Models') from ComfyUI/models/two_stream: the reference's Lightning .ckpt "
                "(ours, ours_big, ours_no_ffc; detected from the weights) or a generator .safetensors "
                "(with or without the 'generator.' prefix). Connect it to Two-Stream Inpaint's model."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=model_files("two_stream"),
                    tooltip="Weights file in models/two_stream (.ckpt, .pt, .pth or .safetensors). The "
                    "architecture (ours / ours_big / ours_no_ffc or a custom size) is read from it.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="fp32",
                    tooltip="Precision of the weights and of the model's computation. fp32 is the "
                    "reference; fp16/bf16 halve the memory (bf16 is the safer one of the two; on CPU "
                    "use fp32 or bf16). Flow sampling and FFTs stay in fp32.",
                ),
            ],
            outputs=[
                TwoStreamModel.Output(
                    "two_stream_model",
                    display_name="model",
                    tooltip="The two-stream generator, kept on ComfyUI's offload device until Two-Stream "
                    "Inpaint runs it.",
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name: str | None = "", dtype: str | None = "fp32") -> bool | str:
        """Checked at queue time: the weights file exists and the dtype is one of the options."""
        return validation(
            cls,
            {"dtype": dtype},
            lambda: given(model_name) and model_file("two_stream", str(model_name), _HINT),
        )

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        import comfy.model_management as mm

        path = model_file("two_stream", model_name, _HINT)
        model = load_two_stream(path, device=mm.unet_offload_device(), dtype=torch_dtype(dtype))
        managed(model)  # held by ComfyUI's model management from now on
        return io.NodeOutput(model)


NODE_LIST: list[type[io.ComfyNode]] = [TwoStreamModelLoader]
