"""Reading weight files, for every loader of the pack (LaMa, two-stream, RAFT, SVD, reverse motion).

One reader for the formats users keep: ``.safetensors`` (with its metadata), pickled torch files
(``.ckpt``/``.pt``/``.pth``/``.bin``, always ``weights_only=True``; Lightning checkpoints' ``state_dict``
entry) and TorchScript archives (their parameters and buffers, read by a restricted unpickler: none of
the archive's code runs, unlike ``torch.jit.load``). Every floating-point tensor read is checked finite.
Plus prefix stripping and one report of how a state dict differs from the model's.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
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


# ------------------------------------------------------------------------------------------------
# TorchScript archives, read without running their code
# ------------------------------------------------------------------------------------------------
# torch.jit.load compiles the archive's code/ and runs it (a class's __setstate__ runs while loading),
# so a crafted file can do anything. The tensors need none of it: data.pkl is a pickle of the module
# objects (each a class named __torch__.<module>.<Class> with its attributes as state) whose tensors
# point at the records data/<key>. A restricted unpickler builds inert stand-ins for the classes,
# tensors from the records, and nothing else.

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """An object of a TorchScript class, as data: its qualified class name and its pickled state."""

    qualname = ""

    def __setstate__(self, state: object) -> None:
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor without storage")
    return storage.as_strided(tuple(size), tuple(stride), int(offset))  # bounds are checked by torch


def _rebuild_parameter(data, *_ignored) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter that is not a tensor")
    return data


def _same(value, *_ignored):
    return value


# The only callables data.pkl may name (TorchScript's list/dict type helpers just return their input).
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _same,
    ("torch.jit._pickle", "build_doublelist"): _same,
    ("torch.jit._pickle", "build_boollist"): _same,
    ("torch.jit._pickle", "build_tensorlist"): _same,
    ("torch.jit._pickle", "restore_type_tag"): _same,
}


def _read_record(archive: zipfile.ZipFile, name: str) -> bytes:
    """A record of the archive; refused when it would inflate to more than the whole file holds
    (TorchScript stores tensors uncompressed, so only a crafted file has such a record)."""
    info = archive.getinfo(name)
    on_disk = os.path.getsize(archive.filename) if archive.filename else info.compress_size
    if info.file_size > 2 * on_disk + (1 << 20):
        raise pickle.UnpicklingError(f"record {name} inflates to {info.file_size} bytes")
    return archive.read(info)


class _ScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.classes: dict[str, type] = {}
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a TorchScript archive's data")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage {pid!r:.80}")
        key = str(key)
        if key not in self.storages:
            raw = _read_record(self.archive, f"{self.prefix}/data/{key}")
            itemsize = torch.empty((), dtype=kind.dtype).element_size()
            if len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f"record data/{key} is shorter than its {numel} elements")
            buf = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=torch.uint8) if numel else None
            flat = buf.view(kind.dtype) if buf is not None else torch.empty(0, dtype=kind.dtype)
            self.storages[key] = flat
        return self.storages[key]


def _declared_tensors(archive: zipfile.ZipFile, prefix: str, qualname: str) -> set[str] | None:
    """The parameter and buffer names a TorchScript class declares in its code (read as text), or
    None when the class's code is not found (all its tensor attributes are kept then)."""
    module, _, cls = qualname.rpartition(".")
    try:
        text = _read_record(archive, f"{prefix}/code/{module.replace('.', '/')}.py").decode(
            "utf-8", "replace"
        )
    except KeyError:
        return None
    m = re.search(rf"^class {re.escape(cls)}\b.*?(?=^class |\Z)", text, re.S | re.M)
    if m is None:
        return None
    names: set[str] = set()
    for field in ("__parameters__", "__buffers__"):
        f = re.search(rf"{field} = \[(.*?)\]", m.group(0), re.S)
        if f is None:
            return None
        names.update(re.findall(r'"([^"]+)"', f.group(1)))
    return names


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive (``torch.jit.save``), as ``state_dict()``
    would name them, without running any of the archive's code."""
    with zipfile.ZipFile(path) as z:
        pkls = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkls:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        prefix = pkls[0][: -len("/data.pkl")]
        order = f"{prefix}/byteorder"
        if order in z.namelist() and _read_record(z, order).strip() != b"little":
            raise pickle.UnpicklingError("a big-endian archive; re-save it on a little-endian machine")
        root = _ScriptUnpickler(_read_record(z, pkls[0]), z, prefix).load()
        out: dict[str, torch.Tensor] = {}
        declared: dict[str, set[str] | None] = {}
        seen: set[int] = set()

        def walk(obj: object, where: str) -> None:
            if not isinstance(obj, _ScriptObject) or id(obj) in seen:
                return
            seen.add(id(obj))
            state = getattr(obj, "state", None)
            if not isinstance(state, Mapping):
                return
            if obj.qualname not in declared:
                declared[obj.qualname] = _declared_tensors(z, prefix, obj.qualname)
            keep = declared[obj.qualname]
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    if keep is None or name in keep:
                        out[where + str(name)] = value
                elif isinstance(value, _ScriptObject):
                    walk(value, f"{where}{name}.")

        walk(root, "")
    return out


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(tensors: Mapping[str, torch.Tensor], what: str, name: str) -> None:
    """Refuse weights with NaN or infinite values (a damaged file, or saved from a diverged training):
    they would give black or NaN results, not an error."""
    bad = nonfinite_tensors(tensors)
    if bad:
        raise PipelineError(
            f"{what}: '{name}' has NaN or infinite weights in {len(bad)} tensors (first: "
            f"{', '.join(bad[:3])}); the file is damaged or was saved from a diverged training"
        )


def check_finite_module(module: torch.nn.Module, what: str, name: str) -> None:
    """:func:`check_finite` on a built module's parameters and buffers."""
    check_finite(dict(module.named_parameters()) | dict(module.named_buffers()), what, name)


def _is_safetensors(path: str) -> bool:
    return path.lower().endswith(".safetensors")


def read_weights(
    path: str | os.PathLike,
    what: str = "model",
    names: Iterable[str] | None = None,
    mmap: bool = False,
    finite: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The tensors of a weight file and its metadata.

    Tensors: a safetensors file's; a torch file's ``state_dict`` entry when present (Lightning), else
    its top-level dict; a TorchScript archive's state dict. With ``names`` only those tensors are
    read (absent names are left out; a torch file is memory-mapped, as with ``mmap``). Metadata: a
    safetensors file's metadata strings, or a torch file's top-level entries that are not tensors.
    Raises PipelineError naming ``what`` and the file when it is missing, unreadable (corrupt,
    truncated, pickled code) or holds no tensors, and (with ``finite``) when a floating-point tensor
    read holds NaN or infinity.
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
            obj = read_torchscript_tensors(path)
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
    if finite:
        check_finite(tensors, what, name)
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
    return list(read_weights(path, what, mmap=True, finite=False)[0])


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
    "check_finite",
    "check_finite_module",
    "is_torchscript",
    "nonfinite_tensors",
    "read_torchscript_tensors",
    "read_weights",
    "state_dict_mismatch",
    "strip_prefix",
    "torch_load_weights_only",
    "weight_keys",
]
