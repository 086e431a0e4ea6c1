"""Surgical SAM 2's vos_inference: each object is prompted on its first appearance in
--input_mask_dir and tracked forward (all objects of a video batched). Writes
<out>/<video>/<id:03d>/<frame>.png per object and <out>/<video>/all/<frame>.png combined. Under
torchrun the videos are split over the processes (video i -> rank i % world size); --streams N
tracks N videos of a process together. Exit code 1 when a video failed (named on stderr; the
others complete).
"""

from __future__ import annotations

import argparse
import sys

from surgsam2.app.options import (
    ModelOptions,
    add_memory_options,
    add_model_options,
    add_output_options,
    add_quiet_option,
)
from surgsam2.pipelines.prompts import PROMPT_TYPES


NAME = "vos-inference"
HELP = "track every prompted instrument of a VOS dataset, write masks, optionally evaluate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base_video_dir", "--base-video-dir", required=True,
                        help="frames: <dir>/<video>/<frame>.jpg|png (e.g. <dataset>/JPEGImages)")  # fmt: skip
    parser.add_argument("--input_mask_dir", "--input-mask-dir", required=True,
                        help="prompt masks: <dir>/<video>/<frame>.png, objects on first appearance")  # fmt: skip
    parser.add_argument("--output_mask_dir", "--output-mask-dir", required=True, help="output folder")
    parser.add_argument("--gt_root", "--gt-root",
                        help="ground truth <dir>/<video>/<frame>.png: evaluate (surgsam2 protocol)")  # fmt: skip
    parser.add_argument("--video_list_file", "--video-list-file", help="text file of video names, one a line")
    parser.add_argument("--score_thresh", "--score-thresh", type=float, default=0.0,
                        help="threshold on the mask logits (default 0.0)")  # fmt: skip
    add_model_options(parser, default_device="auto")
    add_memory_options(parser)
    parser.add_argument("--fill-hole-area", "--fill_hole_area", type=int,
                        help="fill mask holes up to this many low-res pixels (default: model's, 8;"
                        " the official scripts use 0)")  # fmt: skip
    parser.add_argument("--prompt-type", "--prompt_type", choices=PROMPT_TYPES, default="mask",
                        help="prompt made from the first-appearance mask")  # fmt: skip
    parser.add_argument("--meta", help="meta.json (object id -> instrument class) for class-based IoUs")
    parser.add_argument("--output", help="results JSON (default <output_mask_dir>/results.json); CSV next to it")
    parser.add_argument("--workers", type=int, default=1, help="processes scoring videos (default 1)")
    parser.add_argument("--streams", type=int, default=1,
                        help="videos tracked together, the image encoder batched across them (same"
                        " masks; default 1: one video at a time; under torchrun: per process)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of random-init weights and of the 5-point samples (default 0)")  # fmt: skip
    add_output_options(parser)
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> int:
    from surgsam2.pipelines.vos_inference import VOSInferenceConfig, run_vos_inference

    config = VOSInferenceConfig(
        base_video_dir=args.base_video_dir, input_mask_dir=args.input_mask_dir,
        output_mask_dir=args.output_mask_dir, gt_root=args.gt_root, video_list_file=args.video_list_file,
        score_thresh=args.score_thresh, model=ModelOptions.from_args(args), memory=args.memory,
        num_frame_to_prune=args.num_frame_to_prune, fill_hole_area=args.fill_hole_area,
        prompt_type=args.prompt_type, meta=args.meta, output=args.output, workers=args.workers,
        seed=args.seed, overwrite=args.overwrite, progress=not args.quiet, streams=args.streams,
    )  # fmt: skip
    report = run_vos_inference(config)
    if report.rank != 0:
        return report.exit_code
    if report.evaluation is not None:
        print(report.evaluation.format_table())
        print(f"wrote {report.results_path} and {report.csv_path}")
    written = len(report.videos) - len(report.failed)
    print(f"{written}/{len(report.videos)} videos written to {config.output_mask_dir}")
    if report.failed:
        print(
            f"surgsam2 vos-inference: {len(report.failed)} video(s) failed: "
            + "; ".join(f"{r.video} ({r.error})" for r in report.failed),
            file=sys.stderr,
        )
    return report.exit_code
