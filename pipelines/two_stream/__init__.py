"""The two-stream keyframe-guided inpainting model (SPEC A; Runway's "Towards Unified Keyframe
Propagation Models") and its video protocol.

- :mod:`.model`: the generator (``ours``, ``ours_big``, ``ours_no_ffc`` and any other size).
- :mod:`.io`: reading, checking, converting and writing its weights.
- :mod:`.flows`: the optical flow its deformable writes take.
- :mod:`.video`: the paper's video protocol (generate every n-th frame, propagate between).
- :mod:`.train`: training from any folder of images.
"""

from .io import config_name, convert_two_stream, load_two_stream, save_two_stream
from .model import CONFIGS, TwoStreamConfig, TwoStreamGenerator
from .video import TwoStreamVideo, TwoStreamVideoConfig, parse_offsets, remove_with_model

__all__ = [
    "CONFIGS",
    "TwoStreamConfig",
    "TwoStreamGenerator",
    "TwoStreamVideo",
    "TwoStreamVideoConfig",
    "config_name",
    "convert_two_stream",
    "load_two_stream",
    "parse_offsets",
    "remove_with_model",
    "save_two_stream",
]
