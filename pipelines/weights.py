"""Shared by the weight loaders (LaMa, two-stream): safe checkpoint reading and layout checks."""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import torch


class _Inert:
    """Stand-in for a class a checkpoint names but weights don't need (Lightning callbacks, configs).

    Unpickled instead of the real class, it runs no code: it accepts and drops any state.
    """

    def __new__(cls, *args: object, **kwargs: object) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def torch_load_weights_only(path: str) -> object:
    """``torch.load(weights_only=True)``; classes other than tensors and containers (Lightning's
    ModelCheckpoint, OmegaConf configs ...) are replaced by inert stand-ins instead of failing.
    Classes from modules torch refuses outright (os, builtins, ...) still fail."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not names:
            raise
        stubs = [(type(n.rsplit(".", 1)[-1], (_Inert,), {}), n) for n in names]
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)


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
