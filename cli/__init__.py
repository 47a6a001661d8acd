"""The command line (``python -m keyframe_propagation``) and the ComfyUI HTTP client, over ``pipelines/``.

- :mod:`.main`: the parser and ``main``; :mod:`.progress`: the progress printer.
- One module per command group: :mod:`.remove` (``remove``, ``demo``), :mod:`.two_stream`
  (``convert-two-stream``, ``train-two-stream``), :mod:`.refine`, :mod:`.inbetween` (``inbetween``,
  ``extract-reverse-delta``, ``train-reverse-motion``), :mod:`.queue`.
- :mod:`.comfy_client`: queue a workflow on a running ComfyUI and download its outputs.
"""

from .main import main

__all__ = ["main"]
