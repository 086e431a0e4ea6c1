"""Procedurally draw surgical clips (tissue, 1-4 instruments of the 7 EndoVis18 classes, smoke,
blur, flicker) with exact masks, deterministic per seed, in the VOS layout.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from surgsam2.app.options import add_output_options


def _synth_size(text: str) -> tuple[int, int]:
    """argparse type for `--size WxH` ("320x256" -> (320, 256))."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 320x256, got {text!r}") from None
    return width, height


def _instrument_range(text: str) -> tuple[int, int]:
    """argparse type for `--instruments MIN-MAX` ("2-3" -> (2, 3); "2" -> (2, 2))."""
    try:
        parts = [int(part) for part in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, e.g. 2-3, got {text!r}")
    return parts[0], parts[-1]


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
    parser.add_argument("--preset", choices=("default", "hard"), default="default",
                        help="generator settings: default, or hard (the memory benchmark's hard set: 2-3 "
                             "instruments that leave and come back, 4 occluders, camera motion 2, smoke 1); "
                             "the options below override it")  # fmt: skip
    parser.add_argument("--reentry", type=float, default=None,
                        help="probability that an instrument leaves the view and comes back (default 0.3)")  # fmt: skip
    parser.add_argument("--late-entry", type=float, default=None,
                        help="probability that an instrument but the first enters late (default 0.3)")  # fmt: skip
    parser.add_argument("--occluders", type=int, default=None,
                        help="blood / dense smoke / glare events per clip, 0-64 (default 0)")  # fmt: skip
    parser.add_argument("--camera-motion", type=float, default=None,
                        help="scale of camera drift / zoom / roll, >= 0 (default 1)")  # fmt: skip
    parser.add_argument("--smoke", type=float, default=None, help="smoke strength 0-1 (default 0.5)")
    parser.add_argument("--instruments", type=_instrument_range, default=None, metavar="MIN-MAX",
                        help="instruments per clip, 1-4 (default 1-4)")  # fmt: skip
    add_output_options(parser)


def synth_config(args: argparse.Namespace):  # -> SyntheticVideoConfig (imported lazily)
    """The generator settings: the preset with the options given on the command line applied."""
    from surgsam2.data.synthetic import SYNTHETIC_PRESETS

    overrides = {
        field: value
        for field, value in (
            ("reentry_probability", args.reentry), ("late_entry_probability", args.late_entry),
            ("occluders", args.occluders), ("camera_motion", args.camera_motion), ("smoke", args.smoke),
        )
        if value is not None
    }  # fmt: skip
    if args.instruments is not None:
        overrides["min_instruments"], overrides["max_instruments"] = args.instruments
    return replace(SYNTHETIC_PRESETS[args.preset], **overrides).validate()


def run(args: argparse.Namespace) -> int:
    from surgsam2.data.synthetic import write_synthetic_dataset

    config = synth_config(args)
    summary = write_synthetic_dataset(
        args.out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
        jpeg_quality=args.jpeg_quality, image_format=args.image_format, overwrite=args.overwrite,
        config=config,
    )  # fmt: skip
    print(
        f"wrote {len(summary.videos)} videos x {summary.frames} frames ({summary.width}x{summary.height},"
        f" {summary.objects} instruments) to {summary.root} in {summary.seconds:.1f} s"
    )
    return 0
