"""Model and algorithm code of the pack: plain torch / OpenCV / kornia.

Nothing in this package imports ComfyUI (``comfy``, ``folder_paths``, ``server``), so every
pipeline runs and is tested without it, and from the command line.
"""
