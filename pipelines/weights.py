"""Reading weight files, for every loader of the pack (LaMa, two-stream, RAFT, SVD, reverse motion).

One reader for the formats users keep: ``.safetensors`` (with its metadata), pickled torch files
(``.ckpt``/``.pt``/``.pth``/``.bin``, always ``weights_only=True``; Lightning checkpoints' ``state_dict``
entry) and TorchScript archives (their state dict). Plus prefix stripping and one report of how a
state dict differs from the model's.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .errors import PipelineError


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


def torch_load_weights_only(path: str | os.PathLike, mmap: bool = False) -> object:
    """``torch.load(weights_only=True)``; classes other than tensors and containers (Lightning's
    ModelCheckpoint, OmegaConf configs ...) are replaced by inert stand-ins instead of failing.
    Classes from modules torch refuses outright (os, builtins, ...) still fail. ``mmap`` maps the
    file instead of reading it (large UNets of which a few tensors are needed)."""
    path = os.fspath(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not names:
            raise
        stubs = [(type(n.rsplit(".", 1)[-1], (_Inert,), {}), n) for n in names]
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether a file is a TorchScript archive (a zip with code), not a pickled state dict."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _is_safetensors(path: str) -> bool:
    return path.lower().endswith(".safetensors")


def read_weights(
    path: str | os.PathLike, what: str = "model", names: Iterable[str] | None = None, mmap: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The tensors of a weight file and its metadata.

    Tensors: a safetensors file's; a torch file's ``state_dict`` entry when present (Lightning), else
    its top-level dict; a TorchScript archive's state dict. With ``names`` only those tensors are
    read (absent names are left out; a torch file is memory-mapped, as with ``mmap``). Metadata: a
    safetensors file's metadata strings, or a torch file's top-level entries that are not tensors.
    Raises PipelineError naming ``what`` and the file when it is missing, unreadable (corrupt,
    truncated, pickled code) or holds no tensors.
    """
    path = os.fspath(path)
    name = Path(path).name
    if not os.path.isfile(path):
        raise PipelineError(f"{what}: '{path}' not found")
    wanted = None if names is None else list(names)
    meta: dict[str, object] = {}
    try:
        if _is_safetensors(path):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                keys = list(f.keys())
                pick = keys if wanted is None else [k for k in wanted if k in set(keys)]
                obj: object = {k: f.get_tensor(k) for k in pick}
        elif is_torchscript(path):
            obj = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            obj = torch_load_weights_only(path, mmap=mmap or wanted is not None)
    except Exception as e:  # corrupt, truncated, pickled code ...: say which file
        raise PipelineError(f"{what}: cannot read '{name}' ({path}): {type(e).__name__}: {e}") from e
    if isinstance(obj, Mapping) and not _is_safetensors(path):
        meta = {str(k): v for k, v in obj.items() if k != "state_dict" and not isinstance(v, torch.Tensor)}
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise PipelineError(f"{what}: '{name}' holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if wanted is not None:
        tensors = {k: tensors[k] for k in wanted if k in tensors}
    elif not tensors:
        raise PipelineError(f"{what}: '{name}' holds no tensors")
    return tensors, meta


def weight_keys(path: str | os.PathLike, what: str = "model") -> list[str]:
    """Tensor names of a weight file (a safetensors file's header only; a torch file memory-mapped)."""
    path = os.fspath(path)
    if _is_safetensors(path) and os.path.isfile(path):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return list(f.keys())
        except Exception as e:
            raise PipelineError(f"{what}: cannot read '{Path(path).name}' ({path}): {e}") from e
    return list(read_weights(path, what, mmap=True)[0])


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` with the prefix removed (all entries when ``prefix`` is empty)."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


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


__all__ = [
    "is_torchscript",
    "read_weights",
    "state_dict_mismatch",
    "strip_prefix",
    "torch_load_weights_only",
    "weight_keys",
]
