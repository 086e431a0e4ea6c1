"""Prompt objects on one frame (a mask PNG, points or a box) and track them through INPUT with a
bounded memory. Writes <out>/<video>/<frame>.png (pixel = object id), each mask named after its
input frame.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgsam2.app.options import (
    ModelOptions,
    add_engine_options,
    add_memory_options,
    add_model_options,
    check_engine_options,
    add_output_options,
    add_quiet_option,
    load_model_for_run,
)


def _point_argument(text: str) -> tuple[float, float, int]:
    """argparse type for `--points X,Y[:LABEL]` (label 1 object, 0 background; default 1)."""
    coords, _, label = text.partition(":")
    try:
        x, y = (float(value) for value in coords.split(","))
        label_value = int(label) if label else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y:LABEL, got {text!r}") from None
    if label_value not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 0 or 1, got {label_value}")
    return x, y, label_value


def _box_argument(text: str) -> tuple[float, float, float, float]:
    """argparse type for `--box X0,Y0,X1,Y1`."""
    try:
        x0, y0, x1, y1 = (float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1, got {text!r}") from None
    return x0, y0, x1, y1


NAME = "segment"
HELP = "track prompted instruments through a video, folder of frames, camera or stream"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="video file, folder of numbered frames, camera index or stream URL")
    add_model_options(parser)
    add_memory_options(parser)
    add_engine_options(parser)
    prompt_group = parser.add_mutually_exclusive_group(required=True)
    prompt_group.add_argument("--prompt-mask", help="PNG mask on the prompt frame (pixel = object id; 0/255 = object 1)")
    prompt_group.add_argument("--points", nargs="+", type=_point_argument, metavar="X,Y[:LABEL]",
                              help="clicks in frame pixels, label 1 object (default) or 0 background")  # fmt: skip
    prompt_group.add_argument("--box", type=_box_argument, metavar="X0,Y0,X1,Y1", help="box around the object")
    prompt_group.add_argument("--prompts", metavar="FILE",
                              help="prompts on any frames from a JSON file (as `surgsam2 serve` exports them);"
                              " replayed forward and backward as SAM 2 does")  # fmt: skip
    parser.add_argument("--object-id", type=int,
                        help="id (1-255) of the object prompted by points/box (default 1)")  # fmt: skip
    parser.add_argument("--prompt-frame", type=int, default=0, help="frame the prompt is on (position, default 0)")
    parser.add_argument("--out", required=True, help="output folder for the masks")
    parser.add_argument("--overlay", help="also write this .mp4 with the masks drawn on the frames")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames (e.g. for a camera)")
    add_output_options(parser)
    add_quiet_option(parser)


def run(args: argparse.Namespace) -> int:
    from surgsam2.pipelines.segment import prompts_from_mask_file, segment_source
    from surgsam2.tracking.prompts import Prompt

    check_engine_options(args)
    if args.prompts:
        if args.engine != "torch":
            raise ValueError(f"--prompts replays on the torch engine only (drop --engine {args.engine})")
        return _replay(args)
    if args.prompt_mask:
        if args.object_id is not None:
            raise ValueError("--object-id applies to --points/--box; a --prompt-mask's pixel values are its object ids")
        prompts = prompts_from_mask_file(args.prompt_mask)
    else:
        points = [(x, y) for x, y, _ in args.points] if args.points else None
        labels = [label for _, _, label in args.points] if args.points else None
        prompts = {1 if args.object_id is None else args.object_id: Prompt(points=points, labels=labels, box=args.box)}
    options = ModelOptions.from_args(args)
    inputs = {"--prompt-mask": args.prompt_mask, "--checkpoint": options.checkpoint, "--onnx-dir": args.onnx_dir}
    model, make_tracker = None, None
    if args.engine != "torch":
        make_tracker = _export_tracker_factory(args)
    else:
        model = load_model_for_run(options, warn=lambda message: print(message, file=sys.stderr))
    summary = segment_source(
        model, args.input, prompts, args.out, prompt_frame=args.prompt_frame, memory=args.memory,
        num_frame_to_prune=args.num_frame_to_prune, overlay=args.overlay, overwrite=args.overwrite,
        max_frames=args.max_frames, progress=not args.quiet,
        other_inputs={role: Path(path) for role, path in inputs.items() if path}, make_tracker=make_tracker,
    )  # fmt: skip
    overlay = f", overlay {summary.overlay}" if summary.overlay else ""
    print(
        f"tracked objects {summary.objects} over {summary.frames} frames in {summary.seconds:.1f} s"
        f" ({summary.frames_per_second:.1f} frames/s): masks in {summary.masks_dir}{overlay}"
    )
    return 0


def _export_tracker_factory(args: argparse.Namespace) -> Callable[[int | None], Any]:
    """``make_tracker(num_frames)`` for an engine running the export (onnx, openvino) at --dtype;
    the export is checked (manifest) up front."""
    from surgsam2.export.manifest import load_manifest
    from surgsam2.export.runtime import OnnxTracker

    load_manifest(args.onnx_dir)

    def make_tracker(num_frames: int | None) -> OnnxTracker:
        tracker = OnnxTracker(
            args.onnx_dir, memory=args.memory, num_frame_to_prune=args.num_frame_to_prune, num_frames=num_frames,
            engine=args.engine, precision=args.dtype,
        )  # fmt: skip
        print(f"engine {tracker.describe()}", file=sys.stderr)  # the precision it runs, as compiled
        return tracker

    return make_tracker


def _replay(args: argparse.Namespace) -> int:
    """`--prompts FILE`: the prompts of a file, on their own frames, over a video or frame folder."""
    from surgsam2.pipelines.prompt_files import read_prompts_file
    from surgsam2.pipelines.replay import replay_prompts

    given = [flag for flag, value in (("--object-id", args.object_id), ("--overlay", args.overlay),
                                      ("--max-frames", args.max_frames)) if value is not None]  # fmt: skip
    if given or args.prompt_frame != 0:
        raise ValueError(f"--prompts names its own frames and objects: drop {', '.join(given) or '--prompt-frame'}")
    prompts = read_prompts_file(args.prompts)
    options = ModelOptions.from_args(args)
    inputs = {"--prompts": Path(args.prompts), **({"--checkpoint": options.checkpoint} if options.checkpoint else {})}
    model = load_model_for_run(options, warn=lambda message: print(message, file=sys.stderr))
    summary = replay_prompts(
        model, args.input, prompts, args.out, memory=args.memory, num_frame_to_prune=args.num_frame_to_prune,
        overwrite=args.overwrite, progress=not args.quiet, other_inputs=inputs,
    )  # fmt: skip
    print(
        f"tracked objects {summary.objects} over {summary.frames} frames in {summary.seconds:.1f} s"
        f" ({summary.frames_per_second:.1f} frames/s): masks in {summary.masks_dir}"
    )
    return 0
