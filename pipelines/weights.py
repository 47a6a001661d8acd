"""Checks shared by the weight loaders (LaMa, two-stream): what a file lacks or has too much of."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    show: int = 3,
    ignore_missing: tuple[str, ...] = (),
) -> list[str]:
    """Describe how ``found`` differs from ``expected``: missing, unexpected and mis-shaped entries.

    Returns one phrase per kind of difference, each with the first ``show`` names (empty = equal
    layout). Missing keys ending in one of ``ignore_missing`` are not reported.
    """
    missing = [k for k in expected if k not in found and not k.endswith(ignore_missing)]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {', '.join(missing[:show])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:show])})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (first: {'; '.join(shapes[:show])})")
    return parts
