"""The spill store: a streamed job's window in memory up to a budget, in temporary files beyond it,
and the same results bit for bit (propagation, the two-stream protocol's propagation, video windows)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from keyframe_propagation.pipelines import clip as fr
from keyframe_propagation.pipelines import propagate as prop
from keyframe_propagation.pipelines.clip import read as read_mod
from keyframe_propagation.pipelines.propagate import PackedState, PropagationConfig, Resume, propagate_fill
from keyframe_propagation.pipelines.spill import SpillStore, entry_bytes
from keyframe_propagation.pipelines.testing.synthetic import make_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def _entry(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "f": torch.randn(2, 5, 7, generator=g),
        "b": torch.rand(5, 7, generator=g) > 0.5,
        "i": torch.tensor([seed, 3, 4, 9], dtype=torch.int64),
        "u": torch.randint(0, 256, (4, 6, 3), generator=g, dtype=torch.uint8),
    }


def test_spill_store_gives_back_what_it_was_given_in_memory_or_from_files():
    one = entry_bytes(_entry(0))
    store = SpillStore(budget=2 * one, name="test")
    for k in range(5):
        store[k] = _entry(k)
    # Over the budget, the largest keys went to files; the two smallest stay in memory.
    assert store.memory_bytes == 2 * one and store.spilled == 3 and len(store) == 5
    assert store._dir is not None and len(list(store._dir.iterdir())) == 3 * 4
    for k in range(5):
        got, want = store[k], _entry(k)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), (k, name)
    assert torch.equal(store.pop(4)["f"], _entry(4)["f"]) and 4 not in store
    store.drop_below(2)
    assert store.keys() == [2, 3] and store.memory_bytes == 0
    folder = store._dir
    store.close()
    assert not folder.exists() and len(store) == 0


def _lazy_sequence(frames: torch.Tensor):
    class Lazy:
        def __len__(self):
            return frames.shape[0]

        def __getitem__(self, t):
            return frames[t]

    return Lazy()


def test_propagation_with_its_window_in_files_equals_the_one_in_memory(monkeypatch):
    clip = make_clip(num_frames=14, height=40, width=64, seed=3)
    cfg = PropagationConfig(chunk=4, lookahead=5)
    whole, unseen = propagate_fill(clip.frames, clip.masks, config=cfg)

    stores: list[SpillStore] = []
    original = SpillStore.__init__

    def recording(self, *a, **k):
        original(self, *a, **k)
        stores.append(self)

    monkeypatch.setattr(prop.SpillStore, "__init__", recording)
    tight = dataclasses.replace(cfg, memory_mb=0)  # every flow pair and state goes to a file
    spilled, unseen2 = propagate_fill(_lazy_sequence(clip.frames), clip.masks, config=tight)
    assert torch.equal(whole, spilled) and torch.equal(unseen, unseen2)
    assert {s.name for s in stores} == {"flows", "states"} and all(s.spilled > 0 for s in stores)
    assert all(s._dir is None for s in stores)  # the files are gone when the job ends
    # memory_mb is not part of a job's identity (resume records, fingerprints).
    assert repr(tight) == repr(cfg) and tight == cfg

    # A resumed run from files equals the uninterrupted one too.
    states: dict[int, PackedState] = {}
    propagate_fill(clip.frames, clip.masks, config=tight, on_chunk=lambda e, s: states.__setitem__(e, s))
    got = []
    propagate_fill(
        clip.frames, clip.masks, config=tight, resume=Resume(8, states[8]), sink=lambda t, f, u: got.append(f)
    )
    assert torch.equal(torch.stack(got), whole[8:])


def test_a_video_window_in_files_reads_the_same_frames(tmp_path, monkeypatch):
    clip = make_clip(num_frames=12, height=32, width=48, seed=1)
    path = fr.write_video(clip.frames, tmp_path / "c.mp4", 10.0)
    want = [fr.open_frames(path).read(i)[0] for i in range(12)]
    monkeypatch.setattr(read_mod, "_WINDOW_BYTES", 2 * 32 * 48 * 3)  # two frames in memory
    src = fr.open_frames(path)
    src.set_window(8)
    for i in (0, 5, 7, 6, 3, 1, 9, 2, 11, 4):  # back and forth inside the window, and past it
        assert np.array_equal(src.read(i)[0], want[i]), i
    assert src._store.spilled > 0 and len(src._store) <= 8
