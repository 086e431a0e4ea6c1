"""`surgsam2 <command>`: a thin command line over the library. Parses, calls, reports.

Each command is a ``_cmd_<name>(args) -> int`` function plus its parser in ``build_parser``.
Library errors (ValueError, FileNotFoundError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """`surgsam2 evaluate`: score a prediction folder, write JSON + CSV, print the table."""
    from surgsam2.eval.evaluate import evaluate, write_results

    result = evaluate(
        args.gt_dir,
        args.pred_dir,
        protocol=args.protocol,
        meta=args.meta,
        workers=args.workers,
        allow_missing_videos=args.allow_missing_videos,
    )
    json_path, csv_path = write_results(result, args.output)
    print(result.format_table())
    print(f"wrote {json_path} and {csv_path}")
    return 0


def _synth_size(text: str) -> tuple[int, int]:
    """argparse type for `--size WxH` ("320x256" -> (320, 256))."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 320x256, got {text!r}") from None
    return width, height


def _cmd_synth(args: argparse.Namespace) -> int:
    """`surgsam2 synth`: write a synthetic surgical-video dataset in the VOS layout."""
    from surgsam2.data.synthetic import SyntheticVideoConfig, write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out,
        videos=args.videos,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        jpeg_quality=args.jpeg_quality,
        image_format=args.image_format,
        overwrite=args.overwrite,
        config=SyntheticVideoConfig(reentry_probability=args.reentry),
    )
    print(
        f"wrote {len(summary.videos)} videos x {summary.frames} frames ({summary.width}x{summary.height},"
        f" {summary.objects} instruments) to {summary.root} in {summary.seconds:.1f} s"
    )
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser, default_model: str = "nano") -> None:
    """--model/--checkpoint/--image-size/--device/--dtype, shared by commands that run a model."""
    parser.add_argument("--model", default=default_model, help=f"model config name (default {default_model})")
    parser.add_argument("--checkpoint", help="checkpoint file (.pt/.pth/.safetensors); default: the packaged one")
    parser.add_argument("--image-size", type=int, help="model input size (default: the config's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="model precision (default fp32)")


def _load_model_from_args(args: argparse.Namespace):
    import torch

    from surgsam2.model.checkpoint import load_model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    return load_model(args.model, checkpoint=args.checkpoint, image_size=args.image_size, device=args.device, dtype=dtype)


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


def _cmd_segment(args: argparse.Namespace) -> int:
    """`surgsam2 segment`: track prompted objects through a video and write masks (+ overlay)."""
    from surgsam2.pipelines import prompts_from_mask_file, segment_source
    from surgsam2.tracking.prompts import Prompt

    if args.prompt_mask:
        prompts = prompts_from_mask_file(args.prompt_mask)
    else:
        points = [(x, y) for x, y, _ in args.points] if args.points else None
        labels = [label for _, _, label in args.points] if args.points else None
        prompts = {args.object_id: Prompt(points=points, labels=labels, box=args.box)}
    model = _load_model_from_args(args)
    summary = segment_source(
        model,
        args.input,
        prompts,
        args.out,
        prompt_frame=args.prompt_frame,
        memory=args.memory,
        overlay=args.overlay,
        overwrite=args.overwrite,
        max_frames=args.max_frames,
        progress=not args.quiet,
    )
    overlay = f", overlay {summary.overlay}" if summary.overlay else ""
    print(
        f"tracked objects {summary.objects} over {summary.frames} frames in {summary.seconds:.1f} s"
        f" ({summary.frames_per_second:.1f} frames/s): masks in {summary.masks_dir}{overlay}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgsam2",
        description="Promptable segmentation and tracking of surgical instruments (SAM 2 + EFP).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- commands: each block adds one subparser and sets func ---------------------------

    segment_parser = commands.add_parser(
        "segment",
        help="track prompted instruments through a video, folder of frames, camera or stream",
        description="Prompt objects on one frame (a mask PNG, points or a box) and track them through"
        " INPUT with a bounded memory. Writes <out>/<video>/<frame>.png (pixel = object id).",
    )
    segment_parser.add_argument("input", help="video file, folder of numbered frames, camera index or stream URL")
    _add_model_arguments(segment_parser)
    segment_parser.add_argument("--memory", choices=("efp", "fifo"), default="efp",
                                help="memory policy: efp (Surgical SAM 2, default) or fifo (SAM 2)")  # fmt: skip
    prompt_group = segment_parser.add_mutually_exclusive_group(required=True)
    prompt_group.add_argument("--prompt-mask", help="PNG mask on the prompt frame (pixel = object id; 0/255 = object 1)")
    prompt_group.add_argument("--points", nargs="+", type=_point_argument, metavar="X,Y[:LABEL]",
                              help="clicks in frame pixels, label 1 object (default) or 0 background")  # fmt: skip
    prompt_group.add_argument("--box", type=_box_argument, metavar="X0,Y0,X1,Y1", help="box around the object")
    segment_parser.add_argument("--object-id", type=int, default=1, help="id of the object prompted by points/box")
    segment_parser.add_argument("--prompt-frame", type=int, default=0, help="frame the prompt is on (default 0)")
    segment_parser.add_argument("--out", required=True, help="output folder for the masks")
    segment_parser.add_argument("--overlay", help="also write this .mp4 with the masks drawn on the frames")
    segment_parser.add_argument("--max-frames", type=int, help="stop after this many frames (e.g. for a camera)")
    segment_parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    segment_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    segment_parser.set_defaults(func=_cmd_segment)

    evaluate_parser = commands.add_parser(
        "evaluate",
        help="score predicted masks against ground truth (J, F, J&F, Dice, EndoVis IoUs)",
        description="Evaluate a prediction folder against a ground-truth folder of palette PNGs"
        " (<dir>/<video>/<frame>.png). Writes a JSON (rewritten each run) and a CSV next to it.",
    )
    evaluate_parser.add_argument("--gt-dir", required=True, help="ground-truth folder: <video>/<frame>.png")
    evaluate_parser.add_argument("--pred-dir", required=True, help="prediction folder, same layout")
    evaluate_parser.add_argument(
        "--protocol", choices=("davis", "surgsam2"), default="surgsam2",
        help="davis: objects of the first frame; surgsam2: each object from its first appearance"
        " (both skip the first and last frames; default surgsam2)",
    )  # fmt: skip
    evaluate_parser.add_argument("--meta", help="meta.json (object id -> instrument class) for class-based IoUs")
    evaluate_parser.add_argument("--output", required=True, help="results JSON; the CSV goes next to it")
    evaluate_parser.add_argument("--workers", type=int, default=1, help="processes scoring videos in parallel")
    evaluate_parser.add_argument(
        "--allow-missing-videos", action="store_true",
        help="score a video missing from --pred-dir as empty instead of failing",
    )  # fmt: skip
    evaluate_parser.set_defaults(func=_cmd_evaluate)

    synth_parser = commands.add_parser(
        "synth",
        help="write a synthetic surgical-video dataset (VOS layout, meta.json, prompt masks)",
        description="Procedurally draw surgical clips (tissue, 1-4 instruments of the 7 EndoVis18"
        " classes, smoke, blur, flicker) with exact masks, deterministic per seed, in the VOS layout.",
    )
    synth_parser.add_argument("--out", required=True, help="output dataset folder")
    synth_parser.add_argument("--videos", type=int, default=4, help="number of clips (default 4)")
    synth_parser.add_argument("--frames", type=int, default=100, help="frames per clip (default 100)")
    synth_parser.add_argument("--size", type=_synth_size, default=(320, 256), metavar="WxH",
                              help="frame size (default 320x256)")  # fmt: skip
    synth_parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth_parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    synth_parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="frame format")
    synth_parser.add_argument(
        "--reentry", type=float, default=0.3,
        help="probability that an instrument leaves the view and comes back (default 0.3)",
    )  # fmt: skip
    synth_parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    synth_parser.set_defaults(func=_cmd_synth)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"surgsam2 {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"surgsam2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
