"""Average the weights of several checkpoints of one model (e.g. the last checkpoints of a training
run) into one checkpoint file, loadable like any other (`--checkpoint`). The mean is uniform,
accumulated in float64; the checkpoints must be of the same model at the same image size. The
source files and their training steps are recorded in the new file's metadata.

    surgsam2 average-checkpoints --out runs/nano/averaged.pt runs/nano/checkpoints/model_step000{12..28}00.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surgsam2.app.options import add_output_options

NAME = "average-checkpoints"
HELP = "average the weights of several checkpoints of one model into one checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (at least two) of the same model")
    parser.add_argument("--out", required=True, help="the averaged checkpoint file (.pt, or .safetensors)")
    add_output_options(parser)


def run(args: argparse.Namespace) -> int:
    from surgsam2.data.outputs import OutputFolder, check_output_location
    from surgsam2.train.averaging import average_checkpoints, save_averaged

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the path of the checkpoint file to write")
    for path in args.checkpoints:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
    inputs = {"checkpoint": list(args.checkpoints)}
    check_output_location(out, inputs, files_only=True)  # the file itself is never an input
    with OutputFolder(out.parent, inputs=inputs, overwrite=args.overwrite, command=NAME, files_only=True) as folder:
        folder.claim(out.name)  # before the work: an existing file of someone else's is refused now
        averaged = average_checkpoints(args.checkpoints)
        with folder.stage_file(out.name) as staged:
            save_averaged(averaged, staged)
    steps = [source["train_step"] for source in averaged.sources]
    print(f"wrote {out}: the mean of {len(args.checkpoints)} {averaged.config_name} checkpoints (steps {steps})")
    return 0
