"""A randomly initialised LaMa generator with Big-LaMa's layout (tests and benchmarks, no download)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..refine.lama import FFCResNetGenerator, LamaConfig


def random_lama(config: LamaConfig | None = None, seed: int = 0, calibrate: bool = True, **overrides: object):
    """A randomly initialised generator for tests and benchmarks (no real weights needed).

    With ``calibrate`` the BatchNorm statistics are estimated on a few random masked images, so the
    network's activations and output spread like a trained one's (with PyTorch's default statistics
    the 18 blocks output a nearly constant 0.5 and the refinement has little to work with).
    Returned in eval mode with frozen weights.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        model = FFCResNetGenerator(config, **overrides)
        if calibrate:
            for mod in model.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.momentum = None  # cumulative average over the calibration batches
                    mod.reset_running_stats()
            model.train()
            side = 16 * model.modulo
            with torch.no_grad():
                for _ in range(2):
                    img = torch.rand(2, 3, side, side, generator=gen)
                    m = (torch.rand(2, 1, side // 8, side // 8, generator=gen) > 0.6).float()
                    m = torch.nn.functional.interpolate(m, size=(side, side), mode="nearest")
                    model(torch.cat([img * (1 - m), m], dim=1))
            for mod in model.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.momentum = 0.1
        model.eval().requires_grad_(False)
    return model
