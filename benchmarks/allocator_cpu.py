"""glibc's malloc as it comes against `surgsam2.runtime.allocator.keep_freed_memory` (what every
`surgsam2` command sets at start), on the tracker's CPU frame.

The setting is process-wide, so each side runs in its own child process, the sides alternating
pair by pair (``--pairs``). Each child builds the model (seeded random weights, object-score head
biased as `surgsam2 bench` does), tracks a synthetic clip with ``--objects`` objects prompted
on frame 0 and times the frames after ``--warmup``; it reports the median frame, page faults and
kernel (sys) CPU time per frame, peak RSS and the bf16 matmul peak measured after its frames.

    PYTHONPATH=src .venv/bin/python benchmarks/allocator_cpu.py --model sam2.1_hiera_s --image-size 512 --objects 1 --pairs 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SIDES = ("default", "keep")


def child(args: argparse.Namespace) -> None:
    """Track the clip in this process with malloc as ``args.child`` says; print one JSON line."""
    if args.child == "keep":
        from surgsam2.runtime.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("keep_freed_memory did not apply here (not glibc, or malloc tuned by the environment)")
    import torch

    from surgsam2.bench.machine import measure_matmul_peak, peak_rss_bytes
    from surgsam2.bench.runners import RANDOM_OBJECT_SCORE_BIAS, make_clip
    from surgsam2.model.checkpoint import load_model
    from surgsam2.tracking.prompts import Prompt
    from surgsam2.tracking.tracker import Tracker

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model, checkpoint=None, image_size=args.image_size, dtype="bf16")
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(RANDOM_OBJECT_SCORE_BIAS)
    clip = make_clip(args.image_size, args.warmup + args.frames, args.objects, 0, None)
    tracker = Tracker(model)
    prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}
    for index in range(args.warmup):
        tracker.step(clip.frames[index], prompts if index == 0 else None)
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = []
    for frame in clip.frames[args.warmup :]:
        start = time.perf_counter()
        tracker.step(frame)
        seconds.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "median_ms": 1e3 * statistics.median(seconds),
        "faults_per_frame": (after.ru_minflt - before.ru_minflt) / args.frames,
        "sys_ms_per_frame": 1e3 * (after.ru_stime - before.ru_stime) / args.frames,
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "bf16_peak": measure_matmul_peak().bf16_gflops,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_s")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--frames", type=int, default=10, help="timed frames per child")
    parser.add_argument("--warmup", type=int, default=18, help="untimed frames first (prompt on frame 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    passed = ["--model", args.model, "--image-size", str(args.image_size), "--objects", str(args.objects),
              "--frames", str(args.frames), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"{args.model} {args.image_size} px, {args.objects} object(s), bf16, {args.threads} thread(s), "
          f"{args.frames} timed frames after {args.warmup}, {args.pairs} pairs of processes")
    for pair in range(args.pairs):
        order = SIDES if pair % 2 == 0 else SIDES[::-1]
        for side in order:
            output = subprocess.run([sys.executable, __file__, *passed, "--child", side], check=True,
                                    capture_output=True, text=True, env=environment).stdout
            row = json.loads(output.strip().splitlines()[-1])
            results[side].append(row)
            print(f"  pair {pair + 1} {side:>7}: {row['median_ms']:7.1f} ms, {row['faults_per_frame']:7.0f} faults and "
                  f"{row['sys_ms_per_frame']:5.1f} ms sys a frame, peak RSS {row['peak_rss_mb']:6.0f} MB, "
                  f"bf16 peak {row['bf16_peak']:.0f}")
    ratios = [d["median_ms"] / k["median_ms"] for d, k in zip(results["default"], results["keep"])]
    for side in SIDES:
        rows = results[side]
        print(f"{side:>7}: median frame {statistics.median(r['median_ms'] for r in rows):.1f} ms, "
              f"faults {statistics.median(r['faults_per_frame'] for r in rows):.0f}, "
              f"sys {statistics.median(r['sys_ms_per_frame'] for r in rows):.1f} ms a frame, "
              f"peak RSS {statistics.median(r['peak_rss_mb'] for r in rows):.0f} MB")
    print("default / keep, pair by pair: " + ", ".join(f"{r:.3f}" for r in ratios)
          + f"; median {statistics.median(ratios):.3f}x")


if __name__ == "__main__":
    main()
