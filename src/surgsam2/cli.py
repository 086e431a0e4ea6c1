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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgsam2",
        description="Promptable segmentation and tracking of surgical instruments (SAM 2 + EFP).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- commands: each block adds one subparser and sets func ---------------------------

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
