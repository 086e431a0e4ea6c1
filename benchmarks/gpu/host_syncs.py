"""Where one steady-state frame of our tracker waits for the GPU: torch's sync debug mode set to
"warn" around `Tracker.step`, each synchronising call counted by its Python source line.

    python benchmarks/gpu/host_syncs.py --model sam2.1_hiera_s --image-size 512 --objects 3 [--json F]

Random weights (nothing is downloaded); needs a CUDA GPU. ``--steady-frames``: the ring bank with
steady frames as one CUDA graph (the inspected frame, 20 frames after the prompt, is a replay); its
one wait per frame, for the masks' copy, is an event's synchronize, which the debug mode does not
count (it is printed beside the count).
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings
from pathlib import Path

import torch

from surgsam2.bench import BenchConfig, build_our_model, make_clip
from surgsam2.memory.policy_table import DEFAULT_POLICY, POLICY_NAMES
from surgsam2.memory.ring import BANK_KINDS, DEFAULT_BANK
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.tracker import Tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_s")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "mixed"))
    parser.add_argument("--frames", type=int, default=20, help="frames tracked before the inspected one")
    parser.add_argument("--json", type=Path, help="also write the count and where each sync is to this file")
    parser.add_argument("--bank", default=DEFAULT_BANK, choices=BANK_KINDS, help="the tracker's memory bank")
    parser.add_argument("--memory", default=DEFAULT_POLICY, choices=POLICY_NAMES, help="the memory policy")
    parser.add_argument("--steady-frames", action="store_true", help="steady frames as one graph (ring bank)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_syncs.py: needs a CUDA GPU")
    config = BenchConfig(
        model=args.model, image_size=args.image_size, objects=args.objects, dtype=args.dtype, device="cuda"
    ).validate()
    model = build_our_model(config, None)
    clip = make_clip(args.image_size, args.frames + 1, args.objects, seed=0, jpeg_dir=None)
    bank = "ring" if args.steady_frames else args.bank
    tracker = Tracker(model, memory=args.memory, bank=bank, steady_frames=args.steady_frames)
    prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}
    for index in range(args.frames):
        tracker.step(clip.frames[index], prompts if index == 0 else None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker.step(clip.frames[args.frames])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    where = collections.Counter(
        f"{w.filename.split('site-packages/')[-1].split('src/')[-1]}:{w.lineno}"
        for w in caught
        if "synchroniz" in str(w.message)
    )
    steady = "" if tracker.steady is None else f", steady frames {tracker.steady.stats} (+1 event wait)"
    print(
        f"host syncs in one steady-state frame ({args.model} @ {args.image_size}, {args.objects} object(s),"
        f" {args.dtype}, {args.memory}, {bank} bank{steady}): {sum(where.values())}"
    )
    for line, count in where.most_common():
        print(f"  {count:3d}  {line}")
    if args.json:
        record = {"model": args.model, "image_size": args.image_size, "objects": args.objects, "dtype": args.dtype,
                  "memory": args.memory, "bank": bank, "steady_frames": args.steady_frames,
                  "host_syncs": sum(where.values()), "where": dict(where.most_common())}
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
