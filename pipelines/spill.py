"""Values kept in memory up to a byte budget and in temporary files beyond it, bit for bit.

The window of a streamed removal (the flows of a chunk and its lookahead, the backward states of a
chunk, a video's recently decoded frames) grows with the frame size: at 4K it is four times that of
1080p. A :class:`SpillStore` keeps such values in memory up to ``budget`` bytes and writes the rest to
raw files in a private temporary folder, read back exactly when asked, so the memory of a job no longer
depends on its resolution (the operating system's file cache is not the process's memory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

Entry = dict[str, torch.Tensor]


def entry_bytes(entry: Entry) -> int:
    return sum(int(t.numel()) * t.element_size() for t in entry.values())


class SpillStore:
    """``store[key] = {name: tensor}``, ``store[key]``, ``key in store``, ``store.pop(key)``.

    Keys are ints (frame indices). When the entries in memory exceed ``budget`` bytes, those with the
    largest keys go to files first (the consumers here need the smaller keys sooner). An entry read
    back from a file stays a file (it is read at most a few times). Tensors come back on the CPU,
    contiguous, with their dtype, shape and values. ``close()`` removes the files (also on garbage
    collection); ``spilled`` counts the entries written.
    """

    def __init__(self, budget: int, name: str = "store") -> None:
        self.budget, self.name = int(budget), name
        self._memory: dict[int, Entry] = {}
        self._bytes = 0
        self._files: dict[int, dict[str, tuple[torch.dtype, tuple[int, ...]]]] = {}
        self._dir: Path | None = None
        self.spilled = 0

    def __contains__(self, key: int) -> bool:
        return key in self._memory or key in self._files

    def __len__(self) -> int:
        return len(self._memory) + len(self._files)

    def keys(self) -> list[int]:
        return sorted([*self._memory, *self._files])

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def __setitem__(self, key: int, entry: Entry) -> None:
        self.pop(key)
        entry = {k: v.detach().to("cpu") for k, v in entry.items()}
        self._memory[key] = entry
        self._bytes += entry_bytes(entry)
        while self._bytes > self.budget and self._memory:
            self._spill(max(self._memory))

    def __getitem__(self, key: int) -> Entry:
        if key in self._memory:
            return self._memory[key]
        if key not in self._files:
            raise KeyError(key)
        out = {}
        for name, (dtype, shape) in self._files[key].items():
            raw = np.fromfile(self._path(key, name), dtype=np.uint8)
            out[name] = torch.from_numpy(raw).view(dtype).reshape(shape)
        return out

    def pop(self, key: int) -> Entry | None:
        if key in self._memory:
            entry = self._memory.pop(key)
            self._bytes -= entry_bytes(entry)
            return entry
        if key in self._files:
            entry = self[key]
            self._remove(key)
            return entry
        return None

    def drop_below(self, key: int) -> None:
        for k in [k for k in self.keys() if k < key]:
            if k in self._memory:
                self._bytes -= entry_bytes(self._memory.pop(k))
            else:
                self._remove(k)

    def close(self) -> None:
        self._memory.clear()
        self._files.clear()
        self._bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self) -> None:  # pragma: no cover - close() is the normal way
        try:
            self.close()
        except Exception:
            pass

    def _path(self, key: int, name: str) -> Path:
        return self._dir / f"{key}_{name}.bin"

    def _spill(self, key: int) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"kfp-{self.name}-"))
        entry = self._memory.pop(key)
        self._bytes -= entry_bytes(entry)
        index = {}
        for name, t in entry.items():
            t = t.contiguous()
            index[name] = (t.dtype, tuple(t.shape))
            t.reshape(-1).view(torch.uint8).numpy().tofile(self._path(key, name))
        self._files[key] = index
        self.spilled += 1

    def _remove(self, key: int) -> None:
        for name in self._files.pop(key):
            try:
                os.remove(self._path(key, name))
            except OSError:
                pass


__all__ = ["SpillStore", "entry_bytes"]
