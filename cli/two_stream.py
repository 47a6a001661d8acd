"""Command line of the two-stream model: weight conversion and training.

python -m keyframe_propagation convert-two-stream IN.ckpt OUT.safetensors
python -m keyframe_propagation train-two-stream --images DIR --out DIR [--config ours] [--steps N] ...

(``remove --model FILE`` in :mod:`.remove` runs the video protocol.) Heavy modules are imported inside
the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_threads_argument


def cmd_convert(args: argparse.Namespace) -> int:
    from ..pipelines.two_stream.io import config_name, convert_two_stream

    path, cfg = convert_two_stream(args.input, args.output)
    print(f"wrote {path} ({config_name(cfg)}: {cfg.n_blocks} GI blocks, {cfg.block_type} LIF blocks)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..pipelines.two_stream.train.loop import TrainConfig, train

    cfg = TrainConfig(
        images=args.images,
        out=args.out,
        config=args.config,
        size=args.size,
        n_keyframes=args.keyframes,
        steps=args.steps,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr=args.lr,
        disc_lr_factor=args.disc_lr_factor,
        warmup_steps=args.warmup,
        decay_steps=args.decay_steps,
        perceptual_weights=args.perceptual_weights,
        weight_perceptual=args.perceptual_weight,
        flow=args.flow,
        log_every=args.log_every,
        save_every=args.save_every,
        resume=args.resume,
        seed=args.seed,
        device=args.device,
    )
    result = train(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"trained {result.step} steps; last checkpoint {result.last}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``convert-two-stream`` and ``train-two-stream`` to the CLI's subcommands."""
    c = sub.add_parser(
        "convert-two-stream",
        help="extract the generator of a two-stream checkpoint (.ckpt/.safetensors) into a "
        "generator-only .safetensors",
    )
    c.add_argument("input", help="Lightning .ckpt (generator.* keys) or .safetensors")
    c.add_argument("output", help="output .safetensors (keys without the 'generator.' prefix)")
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser(
        "train-two-stream",
        help="train a two-stream model from a folder of images (synthetic keyframes and masks)",
    )
    t.add_argument("--images", required=True, help="folder of training images (any size, any content)")
    t.add_argument("--out", default="out/two_stream", help="folder for checkpoints and log.jsonl")
    t.add_argument(
        "--config", default="ours", choices=["ours", "ours_big", "ours_no_ffc", "tiny"], help="architecture"
    )
    t.add_argument("--size", type=int, default=256, help="crop size (multiple of 8; the paper: 256)")
    t.add_argument("--keyframes", type=int, default=2, help="keyframes per example (the paper: 2)")
    t.add_argument("--steps", type=int, default=1000, help="optimiser steps in total (resume continues)")
    t.add_argument("--batch-size", type=int, default=8, help="examples per batch")
    t.add_argument("--accumulate", type=int, default=4, help="batches per step (effective batch 32)")
    t.add_argument("--lr", type=float, default=3.2e-4, help="generator learning rate")
    t.add_argument("--disc-lr-factor", type=float, default=0.1, help="discriminator lr / generator lr")
    t.add_argument("--warmup", type=int, default=1000, help="linear warm-up steps")
    t.add_argument("--decay-steps", type=int, default=0, help="cosine decay length (0 = the rest of the run)")
    t.add_argument("--perceptual-weights", default="", help="ADE20k ResNet50-dilated encoder weights")
    t.add_argument("--perceptual-weight", type=float, default=30.0, help="weight of the perceptual loss")
    t.add_argument("--flow", default="dis", choices=["dis", "none"], help="flow for the deformable writes")
    t.add_argument("--log-every", type=int, default=10, help="log the losses every n steps")
    t.add_argument("--save-every", type=int, default=500, help="write a checkpoint every n steps")
    t.add_argument("--resume", default="", help="checkpoint to continue from (its last.ckpt)")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    add_threads_argument(t)
    t.set_defaults(func=cmd_train)
