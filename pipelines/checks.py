"""Checks of the user's input, each raising a :class:`PipelineError` that names the input.

One shape check (``check_shape``, after kornia's ``KORNIA_CHECK_SHAPE``), one mask normaliser for
every node and pipeline that takes masks (``as_masks``), masks with nothing known
(``check_known_pixels``), results that cannot be right (``check_finite_result``), integer options
(``check_int``) and weight precisions (``parse_dtype``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import PipelineError, wh

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_shape(x: torch.Tensor, spec: str, what: str, known: dict[str, int] | None = None) -> dict[str, int]:
    """Check ``x.shape`` against ``spec`` and return the sizes of its named dimensions.

    ``spec`` is comma-separated, one entry per dimension: a number (that size exactly), numbers
    joined by ``|`` (one of them), or a name (any size; a name used twice must have the same size
    both times, and a name in ``known`` must have that size). Example: ``check_shape(frames,
    "T,H,W,3", "frames")`` -> ``{"T": 70, "H": 240, "W": 432}``; then ``check_shape(masks, "T,H,W",
    "masks", known=that)`` checks the masks against the frames. Raises PipelineError ``"<what>:
    expected shape (T, H, W, 3), got (...)"`` (with the known sizes filled in).
    """
    dims = [d.strip() for d in spec.split(",")]
    shape = tuple(int(s) for s in x.shape)
    sizes: dict[str, int] = dict(known or {})
    ok = len(shape) == len(dims)
    if ok:
        for d, s in zip(dims, shape):
            choices = d.split("|")
            if all(c.isdigit() for c in choices):
                ok = s in {int(c) for c in choices}
            elif sizes.setdefault(d, s) != s:
                ok = False
            if not ok:
                break
    if not ok:
        shown = [str(known[d]) if known and d in known else d for d in dims]
        raise PipelineError(f"{what}: expected shape ({', '.join(shown)}), got {shape}")
    return sizes


def as_masks(
    mask: torch.Tensor,
    n: int,
    size: tuple[int, int] | None = None,
    what: str = "masks",
    resize: bool = False,
) -> torch.Tensor:
    """A MASK in any of the layouts users pass -> ``(n, H, W)`` float32 on the same device.

    Accepts ``(H, W)``, ``(N, H, W)`` and ``(N, H, W, 1)`` with N = n, or N = 1 for every frame
    (broadcast, no copy). Values are kept (binarising is the caller's choice). With ``size`` the
    masks must have that (H, W), or with ``resize`` are resized to it (bilinear, align_corners=True).
    Raises PipelineError naming ``what`` for any other layout, count or size.
    """
    m = mask
    if m.dim() == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise PipelineError(f"{what}: expected masks (N, H, W), got shape {tuple(mask.shape)}")
    if m.shape[0] not in (1, n):
        raise PipelineError(
            f"{what}: {m.shape[0]} masks for {n} frames; give one mask per frame or one for all frames"
        )
    m = m.float()
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        if not resize:
            raise PipelineError(
                f"{what}: size {wh(tuple(m.shape[-2:]))} differs from the frames' {wh(tuple(size))}"
            )
        m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=True)[:, 0]
    return m.expand(n, -1, -1) if m.shape[0] != n else m


def check_finite_result(x: torch.Tensor, what: str, hint: str) -> torch.Tensor:
    """``x`` unchanged, or PipelineError ``"<what> has NaN or infinite values ...; <hint>"`` when a
    result holds any: a black or NaN frame is never reported as a success."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise PipelineError(f"{what} has NaN or infinite values ({bad} of {x.numel()}); {hint}")
    return x


def check_known_pixels(masks, what: str = "masks", known_frames=()) -> None:
    """Refuse masks ``(T, H, W)`` (1 = hole) with no known pixel in any frame: nothing can be filled
    from them (the result would be the input unchanged). ``known_frames``: frames that count as fully
    known whatever their mask (edited keyframes). Lazy mask sequences (not tensors) are not read."""
    if not isinstance(masks, torch.Tensor) or masks.numel() == 0 or len(known_frames):
        return
    if float(masks.detach().amin()) > 0.5:  # no temporary the size of the clip
        raise all_hole_error(what)


def all_hole_error(what: str = "masks") -> PipelineError:
    """The error for masks that leave no pixel of any frame known."""
    return PipelineError(
        f"{what}: every pixel of every frame is a hole, so nothing is known to fill them from; the "
        "masks are probably inverted or blank white (check invert_mask and mask_threshold)"
    )


def check_int(value: object, name: str, minimum: int, hint: str) -> int:
    """``value`` as an int >= ``minimum`` (bools and fractions refused); ``hint`` says what to give."""
    try:
        as_int = int(value)  # type: ignore[call-overload]
        ok = as_int == value and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok or as_int < minimum:
        raise PipelineError(f"{name}: {value!r} is not valid; {hint}")
    return as_int


def parse_dtype(name: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """``"fp32"``, ``"fp16"``, ``"bf16"`` (or a torch dtype) -> the torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise PipelineError(f"{what}: expected one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


__all__ = [
    "DTYPES",
    "as_masks",
    "check_finite_result",
    "check_int",
    "check_known_pixels",
    "check_shape",
    "parse_dtype",
]
