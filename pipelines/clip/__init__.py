"""Clip input and output, the input side of every method (and the output side of the CLI).

Conventions: frames are float32 ``(T, H, W, 3)`` RGB in [0, 1]; masks float32 ``(T, H, W)`` with
1 = hole (region to fill), 0 = known. Every function that repairs user input (a mask of the wrong
size, a static mask broadcast to all frames, ...) logs the fix-up and returns it as a note; problems
the user has to fix raise :class:`~..errors.PipelineError` naming the input as the user sees it.

- :mod:`.paths`: user paths confined to allowed folders, image listings, fingerprints.
- :mod:`.read`: frame sources (folders, video files and streams through PyAV, IMAGE batches) read
  on demand, with sizes from the headers; whole clips as tensors.
- :mod:`.masks`: masks from folders, single images, MASK batches or alpha, read on demand.
- :mod:`.keyframes`: the keyframe-list syntax and artist-edited keyframes.
- :mod:`.lazy`: :class:`LazyClip`, a clip read frame by frame (what long clips travel as).
- :mod:`.prepare`: the one path from the user's inputs to a clip (:func:`open_clip`, lazy) or to
  tensors (:func:`prepare_clip`).
- :mod:`.write`: frames and H.264 MP4s, never half-written; :class:`ClipWriter` writes a clip as it
  is made and resumes an interrupted job.
"""

from .keyframes import apply_edited_keyframes, check_keyframe_syntax, edited_images, parse_keyframes
from .lazy import LazyClip, available_memory
from .masks import (
    MaskSource,
    binarize_mask,
    check_holes,
    check_threshold,
    fit_mask,
    load_masks,
    open_masks,
    read_mask_file,
)
from .paths import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, fingerprint_paths, list_images, resolve_user_path
from .prepare import PreparedClip, check_resize, open_clip, prepare_clip, resize_clip
from .read import (
    MAX_IMAGE_PIXELS,
    Clip,
    FrameSource,
    ImageFiles,
    VideoFile,
    clip_from_images,
    image_size,
    load_frames,
    load_image_tensor,
    open_frames,
)
from .write import ClipWriter, VideoEncoder, save_frames, write_video

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "ClipWriter",
    "FrameSource",
    "ImageFiles",
    "LazyClip",
    "MaskSource",
    "PreparedClip",
    "VideoEncoder",
    "VideoFile",
    "apply_edited_keyframes",
    "available_memory",
    "edited_images",
    "image_size",
    "open_clip",
    "open_frames",
    "open_masks",
    "binarize_mask",
    "check_holes",
    "check_keyframe_syntax",
    "check_resize",
    "check_threshold",
    "clip_from_images",
    "fingerprint_paths",
    "fit_mask",
    "list_images",
    "load_frames",
    "load_image_tensor",
    "load_masks",
    "parse_keyframes",
    "prepare_clip",
    "read_mask_file",
    "resize_clip",
    "resolve_user_path",
    "save_frames",
    "write_video",
]
