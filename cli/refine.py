"""``python -m keyframe_propagation refine``: multiscale refinement of a LaMa fill without ComfyUI.

python -m keyframe_propagation refine --model big-lama.pt --image IMG --mask MASK --out OUT.png
(``--n-iters 0``: one plain LaMa pass at the working size.)
"""

from __future__ import annotations

import argparse

from .options import add_threads_argument


def register(sub) -> None:
    """Add ``refine`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "refine",
        help="inpaint one image at high resolution with LaMa + multiscale refinement",
        description="Fill the masked region of an image with a LaMa generator (best.ckpt, .safetensors or "
        "big-lama.pt), refined over an image pyramid (Geomagical's multiscale feature refinement).",
    )
    p.add_argument(
        "--model", required=True, help="LaMa weights: best.ckpt, generator .safetensors or big-lama.pt"
    )
    p.add_argument("--image", required=True, help="image to inpaint")
    p.add_argument("--mask", required=True, help="mask image (white = hole; see --mask-threshold)")
    p.add_argument(
        "--mask-threshold",
        type=float,
        default=0.5,
        help="mask values above this fraction of the way from the darkest to the brightest are the hole "
        "(0.5 = half-way; 0 = any non-zero value)",
    )
    p.add_argument("--out", required=True, help="output image file (.png, .jpg ...)")
    p.add_argument("--guide", default="", help="optional inpainted image used as the coarsest scale")
    p.add_argument("--n-iters", type=int, default=15, help="passes per refined scale; 0 = plain LaMa")
    p.add_argument("--lr", type=float, default=0.002, help="Adam learning rate on the features")
    p.add_argument("--min-side", type=int, default=512, help="short side of the coarsest scale (roughly)")
    p.add_argument("--max-scales", type=int, default=3, help="at most this many pyramid scales")
    p.add_argument(
        "--px-budget", type=int, default=1_800_000, help="downscale larger images to this many pixels"
    )
    p.add_argument("--crop", action="store_true", help="refine only the hole's box + margin at finer scales")
    p.add_argument("--crop-margin", type=int, default=128, help="context around the hole's box (pixels)")
    p.add_argument("--early-stop", action="store_true", help="stop a scale when the loss plateaus")
    p.add_argument("--patience", type=int, default=2, help="early stopping: stale passes before stopping")
    p.add_argument(
        "--min-improvement", type=float, default=0.005, help="early stopping: relative improvement"
    )
    p.add_argument("--checkpointing", action="store_true", help="recompute activations (less memory)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights' precision")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    add_threads_argument(p)
    p.add_argument(
        "--working-size",
        action="store_true",
        help="write the result at the pixel-budget working size (default: the input size, known pixels kept)",
    )
    p.set_defaults(func=cmd_refine)


def cmd_refine(args) -> int:
    import time

    from ..pipelines.checks import parse_dtype
    from ..pipelines.clip import check_holes, load_image_tensor, load_masks, resolve_user_path, save_frames
    from ..pipelines.refine.lama import load_lama
    from ..pipelines.refine.multiscale import RefineConfig, refine_frames
    from .checks import compute_device, output_image, print_notes
    from .progress import progress_printer

    device = compute_device(args.device)
    target = output_image(args.out)
    dtype = parse_dtype(args.dtype, "--dtype")
    image = load_image_tensor(args.image, "image")
    h, w = image.shape[:2]
    mask_path = resolve_user_path(args.mask, [], what="mask")
    masks, notes = load_masks(mask_path, 1, (h, w), threshold=args.mask_threshold)
    notes += check_holes(masks, allow_large_holes=True)
    print_notes(notes)
    guide = load_image_tensor(args.guide, "guide")[None] if args.guide else None
    cfg = RefineConfig(
        n_iters=args.n_iters,
        lr=args.lr,
        min_side=args.min_side,
        max_scales=args.max_scales,
        px_budget=args.px_budget,
        checkpoint_segments=9 if args.checkpointing else 0,
        autocast="none" if args.precision == "fp32" else args.precision,
        crop=args.crop,
        crop_margin=args.crop_margin,
        early_stop=args.early_stop,
        patience=args.patience,
        min_improvement=args.min_improvement,
    )
    cfg.check()
    model = load_lama(args.model, device=device, dtype=dtype)
    t0 = time.perf_counter()
    out = refine_frames(
        model,
        image[None],
        masks,
        cfg,
        guides=guide,
        progress=progress_printer("refine"),
        device=device,
        restore_size=not args.working_size,
    )
    dt = time.perf_counter() - t0
    (written,) = save_frames(out, target.parent, [target.stem], target.suffix)
    oh, ow = out.shape[1:3]
    print(f"wrote {written} ({ow}x{oh}) in {dt:.1f} s")
    return 0
