"""Training-step benchmark: forward, backward and optimizer time of one step of a training config,
with our attention kernel choice ("ours") and with every attention on SDPA ("sdpa"), alternating
step by step in one process on the same clips, prompts and weights.

    .venv/bin/python benchmarks/train_step.py --config configs/train/nano_synthetic_stage4.yaml \
        [--steps 8] [--warmup 2] [--threads 1] [--json FILE]

Clips come from a small synthetic dataset written to a temporary folder (the config's data roots
are not needed); weights are random (the config's init checkpoint is not loaded) and the learning
rate is 0, so both variants compute the same steps on the same weights. One process: a
`torchrun` run adds DDP's all-reduce on top. A benchmark, not a test: nothing asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from surgsam2.data.synthetic import write_synthetic_dataset
from surgsam2.memory.policies import make_policy
from surgsam2.model import attention as attention_kernels
from surgsam2.train.config import load_config
from surgsam2.train.losses import LOSS_NAMES, weighted_total
from surgsam2.train.model_forward import ClipForward
from surgsam2.train.optim import build_optimizer
from surgsam2.train.trainer import build_dataset, build_train_model

VARIANTS = ("ours", "sdpa")
PHASES = ("forward", "backward", "optimizer")


def sdpa_only() -> contextlib.AbstractContextManager:
    """Every attention on SDPA within the block: both bf16 matmul-path choices patched off."""
    return mock.patch.multiple(
        attention_kernels,
        use_matmul_attention=lambda *args: False,
        use_training_matmul_attention=lambda *args: False,
    )


def time_step(clip_forward, optimizer, config, clip, seed: int, sdpa: bool) -> dict[str, float]:
    """Seconds of the forward (with the losses), backward and optimizer step of one clip."""
    torch.manual_seed(seed)
    attention = sdpa_only() if sdpa else contextlib.nullcontext()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.amp == "bf16")
    started = time.perf_counter()
    with attention:
        with autocast:
            outputs = clip_forward(clip["frames"][None], clip["masks"][None], clip["valid"][None], seed)
        num_objects = outputs["num_objects"].float().clamp(min=1.0)
        loss = weighted_total({name: outputs[name].float() / num_objects for name in LOSS_NAMES}, config.loss)
        forward_done = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    backward_done = time.perf_counter()
    optimizer.step()
    finished = time.perf_counter()
    return {
        "forward": forward_done - started,
        "backward": backward_done - forward_done,
        "optimizer": finished - backward_done,
        "predictions": float(outputs["num_predictions"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training config (YAML)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the recipes use 1 per process)")
    parser.add_argument("--json", help="write every step's times here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as data_dir:
        write_synthetic_dataset(data_dir, videos=4, frames=24, seed=4242)
        config = load_config(args.config, [f"data.roots=[{data_dir}]", "model.init_checkpoint=null"])
        torch.manual_seed(config.train.seed)
        model = build_train_model(config)
        model.train()
        policy = make_policy(config.model.train_memory_policy, config.model.num_frame_to_prune)
        clip_forward = ClipForward(
            model, config.prompts, config.loss, policy, high_res_dropout=config.model.high_res_dropout
        )
        optimizer = build_optimizer(model, config.optim)
        for group in optimizer.param_groups:
            group["lr"] = 0.0  # same weights for every step and variant
        dataset = build_dataset(config)
        clips = [dataset[index % len(dataset)] for index in range(args.warmup + args.steps)]

    times: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for index, clip in enumerate(clips):
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]  # load drift hits both alike
        for variant in order:
            measured = time_step(clip_forward, optimizer, config, clip, seed=1000 + index, sdpa=variant == "sdpa")
            if index >= args.warmup:
                times[variant].append(measured)

    frames = config.data.num_frames
    print(
        f"training step, {config.model.name} at {config.model.image_size} px, {frames}-frame clips, up to "
        f"{config.data.max_objects} objects, amp {config.train.amp}, {args.threads} thread(s), "
        f"{args.steps} timed steps per variant (median seconds)"
    )
    medians = {
        variant: {phase: statistics.median(step[phase] for step in steps) for phase in PHASES}
        for variant, steps in times.items()
    }
    totals = {
        variant: statistics.median(sum(step[phase] for phase in PHASES) for step in steps)
        for variant, steps in times.items()
    }
    print(f"{'variant':<8}" + "".join(f"{phase:>11}" for phase in PHASES) + f"{'step':>9}")
    for variant in VARIANTS:
        print(f"{variant:<8}" + "".join(f"{medians[variant][p]:>11.3f}" for p in PHASES) + f"{totals[variant]:>9.3f}")
    print(f"sdpa / ours step time: {totals['sdpa'] / totals['ours']:.2f}x")
    if args.json:
        record = {
            "config": args.config,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "median_s": medians,
            "step_median_s": totals,
            "steps": times,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
