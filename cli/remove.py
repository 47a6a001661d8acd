"""``remove`` and ``demo``: object removal on a clip without ComfyUI (flow propagation, or the
two-stream model's video protocol with ``--model``).

python -m keyframe_propagation demo --out DIR
python -m keyframe_propagation remove --frames DIR --masks DIR --out DIR [--model FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .checks import compute_device, output_folder, print_notes
from .options import add_threads_argument
from .progress import progress_printer


def _config_from_args(args):
    from ..pipelines.propagate import PropagationConfig

    return PropagationConfig(
        chunk=args.chunk,
        lookahead=args.lookahead,
        mask_dilation=args.mask_dilation,
        consistency=args.consistency,
        telea_radius=args.telea_radius,
        ghost_check=args.ghost_check if args.ghost_check > 0 else None,
        unseen_fill="carried" if getattr(args, "fill_model", "") else args.unseen_fill.replace("-", "_"),
        flow_prefill=bool(getattr(args, "flow_prefill", False)),
        flow_passes=int(getattr(args, "flow_passes", 1)),
    )


def _add_propagation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk", type=int, default=20, help="frames per chunk (bounds memory)")
    p.add_argument("--lookahead", type=int, default=40, help="backward propagation reach past a chunk")
    p.add_argument("--mask-dilation", type=int, default=0, help="grow masks by this many pixels")
    p.add_argument("--consistency", type=float, default=1.0, help="flow consistency threshold (px)")
    p.add_argument("--telea-radius", type=int, default=5, help="radius of the per-frame fallback")
    p.add_argument("--preset", default="medium", choices=["ultrafast", "fast", "medium"], help="DIS preset")
    p.add_argument(
        "--unseen-fill",
        default="per-frame",
        choices=["per-frame", "carried"],
        help="pixels no frame shows: filled in every frame on its own, or filled once and carried on "
        "with the flow (stable from frame to frame); always carried with --fill-model",
    )
    p.add_argument(
        "--ghost-check",
        type=float,
        default=0.0,
        help="refuse as sources pixels near the hole that do not move like the background (colour "
        "difference 0-1 where the background's motion puts them in the next or previous frame); stops "
        "ghost copies of objects crossing under the hole; 0 = off",
    )
    p.add_argument(
        "--flow-prefill",
        action="store_true",
        help="estimate the flow on frames whose hole is first filled smoothly from its edge, so the flow "
        "next to the hole follows the background, not the hole's or the object's outline",
    )
    p.add_argument(
        "--flow-passes",
        type=int,
        default=1,
        choices=[1, 2],
        help="2 = propagate twice (about twice the time): the flow is estimated again on the frames "
        "filled by the first pass, so more of the hole is filled from other frames",
    )


def cmd_remove(args) -> int:
    from ..pipelines.clip import ClipWriter, load_image_tensor, open_clip, resolve_user_path
    from ..pipelines.flow import FlowEstimator
    from ..pipelines.propagate import FillStats, PackedState, Resume, propagate_fill

    output_folder(args.out, create=False)  # refused now, made once the inputs are read
    if args.model or args.fill_model:  # refused before the clip is read
        args.device = str(compute_device(args.device or "auto"))
    fill = _fill_from_args(args)
    clip = open_clip(
        resolve_user_path(args.frames, [], what="frames"),
        resolve_user_path(args.masks, [], what="masks") if args.masks else None,
        keyframes=args.keyframes,
        frame_cap=args.frame_cap,
        skip_first=args.skip_first,
        every_nth=args.every_nth,
        width=args.width,
        height=args.height,
        invert_mask=args.invert_mask,
        edited=[load_image_tensor(resolve_user_path(p, [], what="edited")) for p in args.edited] or None,
        mask_threshold=args.mask_threshold,
        allow_large_holes=args.allow_large_holes,
    )
    print_notes(clip.notes)
    out = output_folder(args.out)
    cfg = _config_from_args(args)
    writer = ClipWriter(out, clip.names, clip.fps or args.fps, _fingerprint(args, clip), "result.mp4")
    T = len(clip)
    if writer.complete:
        print(f"{out} already holds the result of these inputs and settings ({T} frames and result.mp4)")
        return 0
    if writer.start:
        print(f"resuming at frame {writer.start} of {T}: {out} holds an interrupted run", file=sys.stderr)
    resume = Resume(writer.start, PackedState.from_tensors(writer.state)) if writer.start else None
    reach = (args.generate_every if args.model else cfg.chunk) + cfg.lookahead + 2
    frames, masks, edited = clip.frames(reach), clip.masks(), clip.keyframes.edited

    stats = FillStats()

    def sink(t, filled, unseen):
        writer.write(t, filled)

    def on_chunk(end, state):
        writer.checkpoint(end, state.to_tensors())

    try:
        with writer:
            if args.model:
                _remove_with_model(args, frames, masks, edited, sink, resume, on_chunk, fill, stats)
            else:
                propagate_fill(
                    frames,
                    masks,
                    sink=sink,
                    edited=edited,
                    estimator=FlowEstimator("dis", args.preset),
                    config=cfg,
                    progress=progress_printer("remove"),
                    resume=resume,
                    on_chunk=on_chunk,
                    fill=fill,
                    stats=stats,
                )
            _, video = writer.finish()
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {out} keeps the complete frames and a progress record; run the same command "
            "again to continue",
            file=sys.stderr,
        )
        return 130
    print(f"wrote {T - writer.start} frames and {video} to {out}")
    if stats.frames:
        print(stats.summary() + (" by LaMa" if args.fill_model else " by Telea"))
    return 0


def _fill_from_args(args):
    """``--fill-model``: the LaMa fill of never-seen pixels (None = Telea)."""
    if not args.fill_model:
        return None
    from ..pipelines.errors import PipelineError

    if args.fill_refine_iters < 0:  # refused before anything runs, not at the first never-seen pixel
        raise PipelineError(f"--fill-refine-iters: must be 0 or more, got {args.fill_refine_iters}")
    from ..pipelines.checks import parse_dtype
    from ..pipelines.clip import resolve_user_path
    from ..pipelines.refine.lama import load_lama
    from ..pipelines.refine.multiscale import RefineConfig, frame_filler

    path = resolve_user_path(args.fill_model, [], what="fill-model")
    model = load_lama(path, device=args.device, dtype=parse_dtype(args.dtype, "--dtype"))
    print(f"fill model: {Path(path).name} on {args.device}, {args.dtype}", file=sys.stderr)
    return frame_filler(model, RefineConfig(n_iters=args.fill_refine_iters), device=args.device)


def _fingerprint(args, clip) -> str:
    """What the result depends on: the clip (files, selection, size, edits) and the settings."""
    import hashlib

    from ..pipelines.clip import fingerprint_paths

    keys = ("chunk", "lookahead", "mask_dilation", "consistency", "telea_radius", "preset", "model", "dtype")
    keys += ("generate_every", "keyframe_offsets", "work_long_side", "keyframes", "device")
    h = hashlib.sha256(clip.fingerprint().encode())
    h.update(repr([(k, getattr(args, k, None)) for k in keys]).encode())
    if args.model:
        h.update(fingerprint_paths(args.model).encode())
    h.update(
        repr([(k, getattr(args, k)) for k in ("unseen_fill", "ghost_check", "fill_refine_iters")]).encode()
    )
    h.update(repr(_config_from_args(args)).encode())  # every propagation setting, defaults included
    if args.fill_model:
        h.update(fingerprint_paths(args.fill_model).encode())
    return h.hexdigest()


def _remove_with_model(
    args, frames, masks, edited, sink, resume=None, on_chunk=None, fill=None, stats=None
) -> None:
    """``remove --model``: the two-stream video protocol (as TwoStreamInpaint with a model)."""
    from ..pipelines.checks import parse_dtype
    from ..pipelines.flow import FlowEstimator
    from ..pipelines.two_stream.io import config_name, load_two_stream
    from ..pipelines.two_stream.video import TwoStreamVideoConfig, parse_offsets, remove_with_model

    device = args.device
    model = load_two_stream(args.model, device=device, dtype=parse_dtype(args.dtype, "--dtype"))
    print(
        f"model: {Path(args.model).name} ({config_name(model.config)}) on {device}, {args.dtype}",
        file=sys.stderr,
    )
    cfg = TwoStreamVideoConfig(
        generate_every=args.generate_every,
        keyframe_offsets=parse_offsets(args.keyframe_offsets),
        work_long_side=args.work_long_side,
        mask_dilation=args.mask_dilation,
        propagation=_config_from_args(args),
    )
    remove_with_model(
        frames,
        masks,
        model,
        sink=sink,
        edited=edited,
        estimator=FlowEstimator("dis", args.preset),
        config=cfg,
        progress=progress_printer("remove (chunks)"),
        resume=resume,
        on_chunk=on_chunk,
        fill=fill,
        stats=stats,
    )


def cmd_demo(args) -> int:
    import numpy as np
    import torch

    from ..pipelines.clip import save_frames, write_video
    from ..pipelines.propagate import PropagationConfig, propagate_fill, telea_fill
    from ..pipelines.testing.synthetic import make_clip, psnr_in_mask

    clip = make_clip(num_frames=args.frames, height=args.height, width=args.width, seed=args.seed)
    out = Path(args.out)
    names = [f"{t:05d}" for t in range(clip.frames.shape[0])]
    save_frames(clip.frames, out / "frames", names)
    masks_dir = out / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    for t, m in enumerate(clip.masks):
        save_frames(m[None, ..., None].expand(-1, -1, -1, 3), masks_dir, [names[t]])
    t0 = time.perf_counter()
    filled, unseen = propagate_fill(
        clip.frames, clip.masks, config=PropagationConfig(), progress=progress_printer("propagate")
    )
    dt = time.perf_counter() - t0
    telea = torch.stack([telea_fill(f, m) for f, m in zip(clip.frames, clip.masks)])
    save_frames(filled, out / "result", names)
    write_video(filled, out / "result.mp4", 12.0)
    mid = clip.frames.shape[0] // 2
    side = torch.cat([clip.frames[mid], telea[mid], filled[mid], clip.truth[mid]], dim=1)
    save_frames(side[None], out, ["side_by_side"])
    p_ours = psnr_in_mask(filled, clip.truth, clip.masks)
    p_telea = psnr_in_mask(telea, clip.truth, clip.masks)
    print(f"demo clip: {clip.frames.shape[0]} frames {args.width}x{args.height} in {out}")
    print(
        f"propagation: {clip.frames.shape[0] / dt:.1f} frames/s, {float(unseen.mean()) * 100:.2f}% "
        f"of pixels never seen"
    )
    print(
        f"PSNR inside the hole: flow propagation {p_ours:.2f} dB, per-frame Telea {p_telea:.2f} dB "
        f"({p_ours - p_telea:+.2f} dB)"
    )
    print(f"side by side (input | Telea | propagation | truth): {out / 'side_by_side.png'}")
    if not np.isfinite(p_ours):
        return 1
    return 0


def register(sub) -> None:
    """Add ``remove`` and ``demo`` to the CLI's subcommands."""
    r = sub.add_parser(
        "remove",
        help="remove the masked object from a clip (flow propagation, or the two-stream model with --model)",
    )
    r.add_argument("--frames", required=True, help="folder of frames or a video file")
    r.add_argument("--masks", default="", help="folder of masks (by name or order) or one mask image")
    r.add_argument(
        "--out",
        required=True,
        help="output folder: one PNG per frame (written as made) + result.mp4; a run that was "
        "interrupted continues where it stopped when run again with the same inputs and settings",
    )
    r.add_argument("--keyframes", default="0", help="keyframe indices, e.g. '0,20' or '0-60:20'")
    r.add_argument("--edited", nargs="*", default=[], help="edited keyframe images (replace keyframes)")
    r.add_argument("--frame-cap", type=int, default=0, help="use at most this many frames (0 = all)")
    r.add_argument("--skip-first", type=int, default=0, help="skip this many frames at the start")
    r.add_argument("--every-nth", type=int, default=1, help="use every n-th frame")
    r.add_argument("--width", type=int, default=0, help="resize frames to this width (0 = keep)")
    r.add_argument("--height", type=int, default=0, help="resize frames to this height (0 = keep)")
    r.add_argument("--invert-mask", action="store_true", help="the hole is black in the masks, not white")
    r.add_argument(
        "--mask-threshold",
        type=float,
        default=0.5,
        help="mask values above this fraction of the way from the darkest to the brightest are the hole "
        "(0.5 = half-way; 0 = any non-zero value)",
    )
    r.add_argument(
        "--allow-large-holes", action="store_true", help="fill frames whose hole covers 95%% or more"
    )
    r.add_argument("--fps", type=float, default=24.0, help="MP4 frame rate when the source has none")
    _add_propagation_args(r)
    r.add_argument(
        "--model",
        default="",
        help="two-stream model (.ckpt or .safetensors): use the paper's "
        "video protocol instead of flow propagation alone",
    )
    r.add_argument(
        "--fill-model",
        default="",
        help="LaMa weights (big-lama.pt, best.ckpt or .safetensors) to fill the pixels no frame shows "
        "where they first appear; the fill is carried on to the next frames with the flow",
    )
    r.add_argument(
        "--fill-refine-iters",
        type=int,
        default=0,
        help="with --fill-model: 0 = one plain pass; more = refine its fill over an image pyramid with "
        "this many iterations per level (as the refine command)",
    )
    r.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="model precision")
    r.add_argument("--device", default="", help="model device (default cuda if available, else cpu)")
    r.add_argument("--generate-every", type=int, default=20, help="with --model: generate every n-th frame")
    r.add_argument(
        "--keyframe-offsets",
        default="-40,-20,-10,10,20,40",
        help="with --model: keyframe offsets of each generated frame, written with '=' "
        "(--keyframe-offsets=-20,20); edited keyframes are always added",
    )
    r.add_argument(
        "--work-long-side", type=int, default=512, help="with --model: long side the model runs at"
    )
    add_threads_argument(r)
    r.set_defaults(func=cmd_remove)

    d = sub.add_parser(
        "demo",
        help="make a synthetic clip with known background, remove the object, report PSNR vs per-frame Telea",
    )
    d.add_argument("--out", default="out/demo", help="output folder (frames, masks, result, MP4)")
    d.add_argument("--frames", type=int, default=30, help="frames of the synthetic clip")
    d.add_argument("--width", type=int, default=320, help="width of the synthetic clip")
    d.add_argument("--height", type=int, default=192, help="height of the synthetic clip")
    d.add_argument("--seed", type=int, default=0, help="random seed of the synthetic clip")
    add_threads_argument(d)
    d.set_defaults(func=cmd_demo)
