"""Generate a held-out synthetic surgical clip, track its instruments from their first-appearance
masks with the packaged model, write masks and an overlay video, print J&F.
"""

from __future__ import annotations

import argparse
import sys

from surgsam2.app.options import add_memory_options, add_quiet_option


NAME = "demo"
HELP = "the embedded default end to end: synthetic clip, tracking, masks, overlay, J&F"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument("--model", default="nano", help="model config (default nano)")
    parser.add_argument("--checkpoint", help="checkpoint (default: the packaged one)")
    parser.add_argument("--random-weights", action="store_true",
                        help="allow a model without packaged weights to run untrained")  # fmt: skip
    add_memory_options(parser, prune_option=False)
    parser.add_argument("--frames", type=int, default=60, help="clip length (default 60)")
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> int:
    from surgsam2.pipelines.demo import run_demo

    summary = run_demo(
        args.out, model_name=args.model, checkpoint=args.checkpoint, memory=args.memory,
        frames=args.frames, progress=not args.quiet, random_weights=args.random_weights,
        warn=lambda message: print(message, file=sys.stderr),
    )  # fmt: skip
    print(
        f"demo: {summary.objects} instruments over {summary.frames} frames in {summary.seconds:.1f} s;"
        f" J&F {100 * summary.j_and_f:.1f}, Dice {100 * summary.dice:.1f} ({args.memory})\n"
        f"  clip {summary.dataset}\n  masks {summary.masks}\n  overlay {summary.overlay}\n  results {summary.results}"
    )
    return 0
