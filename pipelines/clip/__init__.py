"""Clip input and output, the input side of every method (and the output side of the CLI).

Conventions: frames are float32 ``(T, H, W, 3)`` RGB in [0, 1]; masks float32 ``(T, H, W)`` with
1 = hole (region to fill), 0 = known. Every function that repairs user input (a mask of the wrong
size, a static mask broadcast to all frames, ...) logs the fix-up and returns it as a note; problems
the user has to fix raise :class:`~..errors.PipelineError` naming the input as the user sees it.

- :mod:`.paths`: user paths confined to allowed folders, image listings, fingerprints.
- :mod:`.read`: decoding images, folders of frames, videos and GIFs; IMAGE batches.
- :mod:`.masks`: masks from folders, single images, MASK batches or alpha.
- :mod:`.keyframes`: the keyframe-list syntax and artist-edited keyframes.
- :mod:`.prepare`: the one path from the user's inputs to frames, masks and keyframes.
- :mod:`.write`: frames and MP4s, never half-written.
"""

from .keyframes import apply_edited_keyframes, parse_keyframes
from .masks import binarize_mask, check_holes, fit_mask, load_masks, read_mask_file
from .paths import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, fingerprint_paths, list_images, resolve_user_path
from .prepare import PreparedClip, prepare_clip, resize_clip
from .read import Clip, clip_from_images, load_frames, load_image_tensor
from .write import save_frames, write_video

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "PreparedClip",
    "apply_edited_keyframes",
    "binarize_mask",
    "check_holes",
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
