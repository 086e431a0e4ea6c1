"""How close does the bf16 image encoder (Hiera trunk + FPN neck) run to this CPU's matmul peak?

Seeded random weights, one random image; prints ms per call (best and median of --rounds), the
achieved GFLOP/s (each side's FLOPs counted once with `FlopCounterMode`) and its fraction of the
machine's bf16 matmul peak (2048^3, measured in the same run at each thread count). ``--profile``
adds the top-15 ops of one call (`torch.profiler`, self CPU time).

``--against REF ...`` also builds the encoder of the package as it was at each git commit REF
(its ``src/surgsam2`` extracted to a temporary folder and imported as ``surgsam2_ref<i>``), loads
the same weights, prints how far its features are from ours, and alternates the sides call by
call: before/after measured in one process under the same load.

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/encoder_cpu.py \\
        --model sam2.1_hiera_s --image-size 512 --threads 2 1 [--against HEAD~3 HEAD~1] [--profile]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from package_at import import_package_at
from surgsam2.bench.machine import count_flops, load_average, measure_matmul_peak


def build_encoder(package: str, model: str, image_size: int, dtype: str) -> nn.Module:
    """The image encoder of ``package``'s ``load_model`` (random weights, seed 0)."""
    loader = importlib.import_module(f"{package}.model.checkpoint").load_model
    torch.manual_seed(0)
    return loader(model, checkpoint=None, image_size=image_size, dtype=dtype).image_encoder.eval()


def run_encoder(encoder: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's multi-scale features, finest first."""
    return list(encoder(image)["backbone_fpn"])


def compare(name: str, ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    """Print the largest difference per level, relative to the level's scale."""
    worst = [
        ((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(ours, theirs)
    ]
    print(f"{name}: max |ours - ref| / max |ref| per level: " + ", ".join(f"{w:.2e}" for w in worst))


def time_sides(
    sides: dict[str, nn.Module], image: torch.Tensor, rounds: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Seconds per call of each side on ``clock``, the sides alternating call by call (order
    rotating)."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            run_encoder(sides[name], image)
            seconds[name].append(clock() - start)
    return seconds


def bf16_peak_cpu_clock(size: int = 2048, repeats: int = 8) -> float:
    """`measure_matmul_peak`'s bf16 rate on the process CPU-time clock (GFLOP/s per thread-second
    used), the peak that matches ``--clock cpu``."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).bfloat16()
    b = torch.randn(size, size, generator=generator).bfloat16()
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        torch.mm(a, b)
        best = min(best, time.process_time() - start)
    return 2.0 * size**3 / best / 1e9


def print_profile(encoder: nn.Module, image: torch.Tensor) -> None:
    """Top-15 ops of one call by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        run_encoder(encoder, image)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_s")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--against", metavar="REF", nargs="*", default=[], help="git commits to compare against in the same process")
    parser.add_argument("--profile", action="store_true", help="print a top-15 op profile per side")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (steadier on a loaded machine, where "
        "being descheduled inflates wall time; peak measured on the same clock)",
    )
    args = parser.parse_args()

    # no_grad, not inference_mode: the trunk's position-embedding cache reads version counters.
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        sides = {"ours": build_encoder("surgsam2", args.model, args.image_size, args.dtype)}
        for index, commit in enumerate(args.against):
            package = import_package_at(commit, Path(folder) / str(index), f"surgsam2_ref{index}")
            ref = build_encoder(package, args.model, args.image_size, args.dtype)
            ref.load_state_dict(sides["ours"].state_dict())
            sides[commit] = ref
        dtype = next(sides["ours"].parameters()).dtype
        image = torch.randn(1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1)).to(dtype)
        gflop: dict[str, float] = {}
        outputs: dict[str, list[torch.Tensor]] = {}
        for name, encoder in sides.items():
            with count_flops() as flops:
                outputs[name] = run_encoder(encoder, image)
            gflop[name] = flops.total / 1e9
        for commit in args.against:
            compare(f"{args.dtype} features vs {commit}", outputs["ours"], outputs[commit])
        print(f"{args.model} {args.image_size} px trunk + neck, {args.dtype}, GFLOP per call: "
              + ", ".join(f"{name} {value:.1f}" for name, value in gflop.items())
              + f"; load average before {load_average()}")
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        print(f"clock: {args.clock}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            time_sides(sides, image, 1, clock)  # warm-up at this thread count
            peak = measure_matmul_peak().bf16_gflops if args.clock == "wall" else bf16_peak_cpu_clock()
            seconds = time_sides(sides, image, args.rounds, clock)
            for name, values in seconds.items():
                best, median = min(values), statistics.median(values)
                print(f"  {threads} thread(s) {name:>16}: best {1e3 * best:6.1f} ms, median {1e3 * median:6.1f} ms, "
                      f"{gflop[name] / best:5.0f} GFLOP/s = {gflop[name] / best / peak:.2f} of the bf16 peak "
                      f"{peak:.0f} GFLOP/s")
            for commit in args.against:
                print(f"  {threads} thread(s) speedup ours / {commit}: best {min(seconds[commit]) / min(seconds['ours']):.3f}, "
                      f"median {statistics.median(seconds[commit]) / statistics.median(seconds['ours']):.3f}")
            if args.profile:
                for name, encoder in sides.items():
                    print(f"--- profile, {name}, {threads} thread(s)")
                    print_profile(encoder, image)
        print(f"load average after {load_average()}")


if __name__ == "__main__":
    main()
