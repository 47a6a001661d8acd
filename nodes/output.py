"""Results written as they are made, under ComfyUI's output folder (the pack's long-clip outputs).

A node that makes a clip frame by frame (Two-Stream Inpaint, Multiscale Refine) hands each frame to a
:class:`ClipOutput`: it writes ``output/<folder>/<frame name>.png`` and ``<folder>.mp4`` (H.264)
through the pipelines' :class:`~..pipelines.clip.ClipWriter`, commits after each chunk (so queueing
the same prompt again after Cancel or a crash continues from there), shows the last frame on the node
while the job runs, and gives the node's outputs: the result as a clip read back from the files, a
VIDEO of the MP4 (for core Save/Preview Video) and the ``ui`` entry that shows the video.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

import torch

from ..pipelines.clip import ClipWriter, ImageFiles, LazyClip
from ..pipelines.errors import PipelineError
from .common import ComfyProgress, output_folder, saved_result


def job_fingerprint(*parts: object) -> str:
    """A hash of what a result depends on (clip fingerprints, settings, model fingerprints)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def module_fingerprint(module: torch.nn.Module | None) -> str:
    """A hash of a model's weights (its identity for resuming: any changed weight starts over)."""
    if module is None:
        return "none"
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ClipOutput:
    """One node run's result clip, written frame by frame (see the module docstring).

    clip: the input clip (names, fps, masks, keyframes of the result); folder: the user's folder name
    under the output folder; fingerprint: :func:`job_fingerprint` of the inputs and settings.
    ``start`` / ``state``: where the job resumes (0 / None for a new job); ``complete``: the folder
    already holds this job's whole result.
    """

    def __init__(self, clip: LazyClip, folder: str, fingerprint: str, progress: ComfyProgress) -> None:
        self.clip, self.progress = clip, progress
        self.folder = output_folder(folder)
        self.writer = ClipWriter(self.folder, clip.names, clip.fps, fingerprint, f"{self.folder.name}.mp4")
        self.start, self.state, self.complete = self.writer.start, self.writer.state, self.writer.complete
        self.kept: dict[int, torch.Tensor] = {}
        self.keep = set(clip.keyframes.indices)
        self._last: torch.Tensor | None = None

    def sink(self, t: int, frame: torch.Tensor, *_: object) -> None:
        """Write frame ``t`` (frames come in order from ``start``)."""
        self.writer.write(t, frame, check=self.progress.check)
        if t in self.keep:
            self.kept[t] = frame
        self._last = frame

    def on_chunk(self, end: int, state: dict[str, torch.Tensor] | None = None) -> None:
        """Commit the first ``end`` frames (and what a resumed run needs); show the last one."""
        self.writer.checkpoint(end, state)
        if self._last is not None:
            self.progress.preview(self._last)
        self.progress(end, len(self.clip), f"{end}/{len(self.clip)} frames written to {self.folder.name}")

    def finish(self) -> tuple[LazyClip, object, dict, torch.Tensor]:
        """(the result clip read from the files, a VIDEO of the MP4, the ``ui`` entry, the keyframes'
        result frames ``(K, H, W, 3)``)."""
        from comfy_api.latest import InputImpl

        frames, video = self.writer.finish()
        source = ImageFiles(frames, self.folder, list(range(len(frames))))
        result = self.clip.with_frames(source)
        idx = self.clip.keyframes.indices
        keys = [self.kept[k] if k in self.kept else result.frame(k) for k in idx]
        key_frames = torch.stack(keys) if keys else torch.zeros(0, *self.clip.size, 3)
        if video is None:  # pragma: no cover - the pack's outputs always have a video
            raise PipelineError("output_folder: no video was written")
        ui = {"images": [saved_result(video)], "animated": (True,)}
        return result, InputImpl.VideoFromFile(str(video)), ui, key_frames

    def __enter__(self) -> ClipOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.writer.abort()


def video_of(frames: torch.Tensor, fps: float):
    """A VIDEO of frames held in memory (core VideoFromComponents)."""
    from comfy_api.latest import InputImpl, Types

    rate = Fraction(round((fps if fps and fps > 0 else 24.0) * 1000), 1000)
    return InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=None, frame_rate=rate))


__all__ = ["ClipOutput", "job_fingerprint", "module_fingerprint", "video_of"]
