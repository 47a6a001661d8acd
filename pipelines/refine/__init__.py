"""High-resolution refinement (SPEC B): :mod:`.lama` (Big-LaMa's generator and its weight formats)
and :mod:`.multiscale` (the multiscale feature refinement that drives any front/rear-split model)."""

from .lama import FFCResNetGenerator, LamaConfig, load_lama
from .multiscale import Refinable, RefineConfig, RefineResult, multiscale_refine, refine_frames

__all__ = [
    "FFCResNetGenerator",
    "LamaConfig",
    "Refinable",
    "RefineConfig",
    "RefineResult",
    "load_lama",
    "multiscale_refine",
    "refine_frames",
]
