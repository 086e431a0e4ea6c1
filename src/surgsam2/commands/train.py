"""Train SAM 2 on clips of VOS-layout datasets with simulated prompts (SAM 2's recipe).
Checkpoints, metrics.jsonl and loss.png go to train.out_dir. Run under `torchrun
--nproc_per_node N` for DDP.
"""

from __future__ import annotations

import argparse


NAME = "train"
HELP = "train or fine-tune SAM 2 on VOS-layout data from a YAML config (torchrun: multi-GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (configs/train/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the out dir")
    parser.add_argument("--out", help="output folder (overrides train.out_dir)")
    parser.add_argument("--max-steps", type=int, help="total optimizer steps (overrides epochs)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from surgsam2.train.config import load_config
    from surgsam2.train.trainer import run_training

    config = load_config(args.config, args.set or [])
    if args.out is not None:
        config.train.out_dir = args.out
    if args.max_steps is not None:
        config.train.max_steps = args.max_steps
    run_training(config, resume=args.resume, config_file=args.config)  # validates the config again
    return 0
