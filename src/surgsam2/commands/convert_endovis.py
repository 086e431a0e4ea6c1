"""Read the raw EndoVis 2017 (instrument_dataset_<k>/left_frames + ground_truth) or 2018
(seq_<k>/left_frames + ISINet instrument-type labels) layout and write
DST/<split>/{JPEGImages,Annotations,VOS/Annotations_vos_instrument,meta.json}. See
docs/endovis.md for the exact layouts, classes and splits.
"""

from __future__ import annotations

import argparse

from surgsam2.app.options import add_output_options, add_quiet_option


NAME = "convert-endovis"
HELP = "convert raw EndoVis 2017/2018 data to the VOS layout with the standard splits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--year", type=int, choices=(2017, 2018), required=True, help="challenge year")
    parser.add_argument("--src", required=True, help="raw data folder")
    parser.add_argument("--dst", required=True, help="output folder; each split goes to DST/<split>/")
    parser.add_argument("--split", choices=("train", "val", "all", "test"), default="all",
                        help="2017: fold's val datasets / the other six; 2018: val = seq 2, 5, 9, 15;"
                        " all = both (default); test = the EndoVis 2017 test release (datasets 1-10,"
                        " frames + the separately released TypeSegmentation ground truth; 2017 only)")  # fmt: skip
    parser.add_argument("--fold", type=int, choices=(0, 1, 2, 3),
                        help="2017 cross-validation fold (0: 1,3  1: 2,5  2: 4,8  3: 6,7; default 0)")  # fmt: skip
    parser.add_argument("--objects", choices=("instance", "class"),
                        help="2017: one object per label folder (instance, default; the test split"
                        " defaults to class) or per class; 2018: always class (object id = class id)")  # fmt: skip
    parser.add_argument("--labels-dir", help="2018: name of the instrument-type label folder"
                        " (default: instruments_masks or annotations)")  # fmt: skip
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="frame format")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    parser.add_argument("--workers", type=int, default=4, help="videos converted in parallel (default 4)")
    add_output_options(parser)
    add_quiet_option(parser, "no per-video lines")


def run(args: argparse.Namespace) -> int:
    from surgsam2.data.endovis import convert_endovis

    def report(split: str, video: str, frames: int) -> None:
        print(f"  {split}/{video}: {frames} frames", flush=True)

    summary = convert_endovis(
        args.src, args.dst, year=args.year, split=args.split, fold=args.fold, object_mode=args.objects,
        labels_dir=args.labels_dir, image_format=args.image_format, jpeg_quality=args.jpeg_quality,
        overwrite=args.overwrite, workers=args.workers, progress=None if args.quiet else report,
    )  # fmt: skip
    fold = f", fold {summary.fold}" if summary.fold is not None else ""
    print(f"EndoVis {summary.year} ({summary.layout}{fold}, objects per {summary.object_mode}):")
    for part in summary.splits:
        missing = f"; not found: {', '.join(part.missing)}" if part.missing else ""
        counts = f"{len(part.videos)} videos, {part.frames} frames, {part.objects} objects"
        print(f"  {part.split}: {counts} -> {part.root}{missing}")
    if summary.ignored:
        print(f"  not in the requested split(s): {', '.join(summary.ignored)}")
    print(f"done in {summary.seconds:.1f} s")
    return 0
