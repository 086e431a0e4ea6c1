"""Evaluate a prediction folder against a ground-truth folder of palette PNGs
(<dir>/<video>/<frame>.png, frames matched by name). Writes a JSON (rewritten each run) and a
CSV next to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


NAME = "evaluate"
HELP = "score predicted masks against ground truth (J, F, J&F, Dice, EndoVis IoUs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-dir", required=True, help="ground-truth folder: <video>/<frame>.png")
    parser.add_argument("--pred-dir", required=True,
                        help="prediction folder, same layout (a vos-inference output folder also works)")  # fmt: skip
    parser.add_argument(
        "--protocol", choices=("davis", "surgsam2"), default="surgsam2",
        help="davis: objects of the first frame; surgsam2: each object from its first appearance"
        " (both skip the first and last frames; default surgsam2)",
    )  # fmt: skip
    parser.add_argument("--meta", help="meta.json (object id -> instrument class) for class-based IoUs")
    parser.add_argument("--output", required=True, help="results JSON; the CSV goes next to it")
    parser.add_argument("--workers", type=int, default=1, help="processes scoring videos in parallel")
    parser.add_argument("--allow-missing-videos", action="store_true",
                        help="score a video missing from --pred-dir, or without any matching frame, as empty"
                        " instead of failing")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from surgsam2.eval.evaluate import evaluate
    from surgsam2.eval.results import check_results_path, write_results

    inputs = {"--gt-dir": args.gt_dir, "--meta": args.meta}
    if Path(args.output).resolve().parent != Path(args.pred_dir).resolve():
        inputs["--pred-dir"] = args.pred_dir  # results may sit beside the video folders, never in one
    check_results_path(args.output, inputs)  # before the scoring
    result = evaluate(
        args.gt_dir, args.pred_dir, protocol=args.protocol, meta=args.meta, workers=args.workers,
        allow_missing_videos=args.allow_missing_videos,
        warn=lambda message: print(f"surgsam2 evaluate: warning: {message}", file=sys.stderr),
    )  # fmt: skip
    json_path, csv_path = write_results(result, args.output, inputs=inputs)
    print(result.format_table())
    print(f"wrote {json_path} and {csv_path}")
    return 0
