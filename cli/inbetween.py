"""Command line for generative inbetweening with SVD (SPEC C); registered by cli.py.

python -m keyframe_propagation inbetween --first A.png --last B.png --svd SVD --reverse DELTA --out DIR
python -m keyframe_propagation extract-reverse-delta --unet REVERSE_UNET --base IMG2VID --out DELTA
python -m keyframe_propagation train-reverse-motion --videos DIR --svd SVD --out DELTA
"""

from __future__ import annotations

import argparse
import sys
import time

from .checks import compute_device, output_folder
from .options import add_threads_argument
from .progress import progress_printer


def _device_and_dtype(args):
    device = compute_device(args.device)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "fp16" if device.type == "cuda" else "fp32"
    return device, dtype


def _add_model_args(p: argparse.ArgumentParser, reverse: bool = True) -> None:
    p.add_argument("--svd", required=True, help="SVD img2vid-xt: diffusers folder or svd_xt.safetensors")
    if reverse:
        p.add_argument(
            "--reverse",
            default="",
            help="reverse-motion weights: compact delta file or fine-tuned UNet folder",
        )
        p.add_argument(
            "--base", default="", help="with a fine-tuned UNet folder: the UNet it was fine-tuned from"
        )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp16", "bf16", "fp32"],
        help="weight precision (auto: fp16 on a GPU, fp32 on the CPU)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--config-dir", default="", help=argparse.SUPPRESS)  # configs for a non-xt single file


def cmd_inbetween(args) -> int:
    import torch

    from ..pipelines.clip import load_image_tensor, resolve_user_path, save_frames, write_video
    from ..pipelines.svd.conditioning import fit_keyframes
    from ..pipelines.svd.loading import load_inbetween_model
    from ..pipelines.svd.sampler import InbetweenSettings, inbetween_keyframes

    device, dtype = _device_and_dtype(args)
    paths = [args.first, *(args.via or []), args.last]
    keys = [load_image_tensor(resolve_user_path(p, [], what="keyframe")) for p in paths]
    keys = fit_keyframes(keys, args.width, args.height, "--width/--height")
    th, tw = keys[0].shape[:2]
    out = output_folder(args.out)
    model = load_inbetween_model(
        args.svd, args.reverse or None, args.base or None, dtype, args.config_dir or None
    )
    print(model.describe(), file=sys.stderr)
    if not model.has_reverse:
        print("note: no --reverse weights: the reverse branch uses the forward weights", file=sys.stderr)
    settings = InbetweenSettings(
        num_frames=args.frames,
        steps=args.steps,
        seed=args.seed,
        min_guidance=args.min_guidance,
        max_guidance=args.max_guidance,
        fusion=args.fusion,
        noise_injection_ratio=args.noise_injection_ratio,
        noise_injection_steps=args.noise_injection_steps,
        motion_bucket_id=args.motion_bucket_id,
        fps=args.fps,
        noise_aug_strength=args.noise_aug,
        decode_chunk_size=args.decode_chunk,
        mode=args.mode,
    )
    model.to(device)
    t0 = time.perf_counter()
    result = inbetween_keyframes(
        model,
        keys,
        settings,
        progress=progress_printer("inbetween"),
        device=device,
        offload_device="cpu" if args.offload else None,
    )
    dt = time.perf_counter() - t0
    names = [f"{t:05d}" for t in range(result.frames.shape[0])]
    save_frames(result.frames, out, names)
    video = write_video(result.frames, out / "result.mp4", args.video_fps or float(args.fps))
    if args.save_latents:
        torch.save(result.latents, out / "latents.pt")
    print(f"wrote {len(names)} frames ({tw}x{th}) and {video} to {out} in {dt:.1f} s")
    return 0


def cmd_extract(args) -> int:
    from ..pipelines.svd.loading import extract_reverse_delta

    path, n = extract_reverse_delta(args.unet, args.base, args.out, args.dtype)
    size = path.stat().st_size / 2**20
    print(f"wrote {n} reverse-motion tensors ({size:.1f} MiB, {args.dtype}) to {path}")
    print("the fine-tuned UNet folder and the base UNet are no longer needed for inbetweening")
    return 0


def cmd_train(args) -> int:
    from ..pipelines.svd.loading import load_inbetween_model, save_reverse_delta
    from ..pipelines.svd.train import TrainSettings, load_videos, train_reverse_motion

    device, dtype = _device_and_dtype(args)
    if dtype == "fp16":
        print("note: training keeps float32 master copies of the 32 tensors", file=sys.stderr)
    s = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    clips = load_videos(args.videos, s.num_frames, s.height, s.width)
    model = load_inbetween_model(
        args.svd, args.init_reverse or None, args.base or None, dtype, args.config_dir or None
    ).to(device)
    print(f"{len(clips)} videos; {model.describe()}", file=sys.stderr)
    t0 = time.perf_counter()
    delta, losses = train_reverse_motion(
        model,
        clips,
        s,
        progress=progress_printer("train"),
        log_every=args.log_every,
        log=lambda m: print(m, file=sys.stderr),
    )
    k = max(1, min(10, len(losses) // 2))
    path = save_reverse_delta(
        delta, args.out, args.save_dtype, source=f"trained from {args.svd}", steps=str(s.steps)
    )
    print(
        f"trained {s.steps} steps in {time.perf_counter() - t0:.1f} s: "
        f"loss {sum(losses[:k]) / k:.4f} (first {k}) -> {sum(losses[-k:]) / k:.4f} (last {k}); wrote {path}"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser("inbetween", help="generate the frames between two keyframes (SVD, dual-directional)")
    p.add_argument("--first", required=True, help="first keyframe image")
    p.add_argument("--last", required=True, help="last keyframe image")
    p.add_argument("--via", action="append", help="keyframes in between, in order (each pair is a segment)")
    p.add_argument("--out", required=True, help="output folder: one PNG per frame + result.mp4")
    _add_model_args(p)
    p.add_argument(
        "--frames", type=int, default=0, help="frames per segment incl. keyframes (0 = the model's)"
    )
    p.add_argument("--width", type=int, default=0, help="resize keyframes to this width (multiple of 64)")
    p.add_argument("--height", type=int, default=0, help="resize keyframes to this height (multiple of 64)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--seed", type=int, default=0, help="noise seed (segment k uses seed + k)")
    p.add_argument(
        "--min-guidance", type=float, default=1.0, help="classifier-free guidance at the first frame"
    )
    p.add_argument(
        "--max-guidance", type=float, default=3.0, help="classifier-free guidance at the last frame"
    )
    p.add_argument(
        "--fusion", default="average", choices=["average", "weighted"], help="how the two branches are fused"
    )
    p.add_argument(
        "--noise-injection-ratio",
        type=float,
        default=0.5,
        help="share of the first steps that re-inject noise",
    )
    p.add_argument(
        "--noise-injection-steps", type=int, default=5, help="re-injections per such step (0 = off)"
    )
    p.add_argument(
        "--motion-bucket-id", type=int, default=127, help="SVD motion conditioning (more = more motion)"
    )
    p.add_argument("--fps", type=int, default=7, help="SVD fps conditioning")
    p.add_argument(
        "--noise-aug", type=float, default=0.02, help="noise added to the keyframes before encoding"
    )
    p.add_argument(
        "--decode-chunk", type=int, default=8, help="frames the VAE decodes at once (less = less memory)"
    )
    p.add_argument(
        "--mode",
        default="fused",
        choices=["fused", "reference"],
        help="fused: one batched UNet call per step; reference: one per branch (same result)",
    )
    p.add_argument("--offload", action="store_true", help="keep idle parts on the CPU")
    p.add_argument("--video-fps", type=float, default=0.0, help="MP4 frame rate (default: --fps)")
    p.add_argument("--save-latents", action="store_true", help="also write latents.pt")
    add_threads_argument(p)
    p.set_defaults(func=cmd_inbetween)

    e = sub.add_parser(
        "extract-reverse-delta",
        help="write the compact reverse-motion delta file from the fine-tuned UNet folder and its base UNet",
    )
    e.add_argument("--unet", required=True, help="fine-tuned reverse-motion UNet folder (or its parent)")
    e.add_argument(
        "--base", required=True, help="the UNet it was fine-tuned from (img2vid folder or svd.safetensors)"
    )
    e.add_argument("--out", required=True, help="output .safetensors")
    e.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="precision of the file")
    e.set_defaults(func=cmd_extract)

    t = sub.add_parser("train-reverse-motion", help="fine-tune the reverse-motion tensors (Algorithm 1)")
    t.add_argument("--videos", required=True, help="folder of training videos and/or frame folders")
    t.add_argument("--out", required=True, help="output compact delta .safetensors")
    _add_model_args(t, reverse=False)
    t.add_argument("--init-reverse", default="", help="start from these reverse weights (delta file)")
    t.add_argument("--base", default="", help=argparse.SUPPRESS)
    t.add_argument("--steps", type=int, default=15000, help="optimiser steps (the paper: about 15k)")
    t.add_argument("--batch-size", type=int, default=4, help="clips per step")
    t.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    t.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    t.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clipping")
    t.add_argument("--frames", type=int, default=14, help="frames per training clip")
    t.add_argument("--width", type=int, default=1024, help="training width")
    t.add_argument("--height", type=int, default=576, help="training height")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--log-every", type=int, default=100, help="print the loss every n steps")
    t.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations (less memory)"
    )
    t.add_argument(
        "--save-dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="precision of the output file"
    )
    add_threads_argument(t)
    t.set_defaults(func=cmd_train)
