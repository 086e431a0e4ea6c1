"""Procedurally draw surgical clips (tissue, 1-4 instruments of the 7 EndoVis18 classes, smoke,
blur, flicker) with exact masks, deterministic per seed, in the VOS layout.
"""

from __future__ import annotations

import argparse

from surgsam2.app.options import add_output_options


def _synth_size(text: str) -> tuple[int, int]:
    """argparse type for `--size WxH` ("320x256" -> (320, 256))."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 320x256, got {text!r}") from None
    return width, height


NAME = "synth"
HELP = "write a synthetic surgical-video dataset (VOS layout, meta.json, prompt masks)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.add_argument("--videos", type=int, default=4, help="number of clips, 1-10000 (default 4)")
    parser.add_argument("--frames", type=int, default=100, help="frames per clip, 1-100000 (default 100)")
    parser.add_argument("--size", type=_synth_size, default=(320, 256), metavar="WxH",
                        help="frame size, 16-4096 px a side (default 320x256)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="frame format")
    parser.add_argument("--reentry", type=float, default=0.3,
                        help="probability that an instrument leaves the view and comes back (default 0.3)")  # fmt: skip
    add_output_options(parser)


def run(args: argparse.Namespace) -> int:
    from surgsam2.data.synthetic import SyntheticVideoConfig, write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
        jpeg_quality=args.jpeg_quality, image_format=args.image_format, overwrite=args.overwrite,
        config=SyntheticVideoConfig(reentry_probability=args.reentry),
    )  # fmt: skip
    print(
        f"wrote {len(summary.videos)} videos x {summary.frames} frames ({summary.width}x{summary.height},"
        f" {summary.objects} instruments) to {summary.root} in {summary.seconds:.1f} s"
    )
    return 0
