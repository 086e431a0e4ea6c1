"""Track a synthetic clip at --image-size with random weights and report per-frame latency (median,
p90), frames/s, achieved GFLOP/s against this machine's matmul peak, state held and peak memory;
with --against-official the official sam2 video predictor runs on the same frames and weights in
the same process, frame by frame in alternation. With --engine torch,onnx,openvino: the engines
on the same frames, each in its fastest precision, their masks against our fp32 torch tracker.
With --streams N: one tracker against N copies of the clip tracked together (ours only).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys

from surgsam2.app.options import add_memory_options, add_quiet_option, add_runtime_options


NAME = "bench"
HELP = "speed and memory of our tracker, side by side with the official SAM 2 predictor"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="sam2.1_hiera_s", help="model config (default sam2.1_hiera_s)")
    parser.add_argument("--image-size", type=int, default=512, help="input size, frames drawn at it (default 512)")
    parser.add_argument("--objects", type=int, default=1, help="objects prompted on frame 0, 1..16 (default 1)")
    parser.add_argument("--frames", type=int, default=40, help="timed frames (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames first, incl. the prompt (default 5)")
    add_memory_options(parser, prune_option=False)
    add_runtime_options(parser)  # both sides run on --device; --dtype and --cuda-graphs are ours
    parser.add_argument("--against-official", action="store_true",
                        help="also run the official sam2 predictor (test-only dependency)")  # fmt: skip
    parser.add_argument("--official-dtype", choices=("fp32", "bf16"), default="fp32",
                        help="official precision; bf16 = torch.autocast, as its users do (default fp32)")  # fmt: skip
    parser.add_argument("--official-vos-optimized", action="store_true",
                        help="the official predictor in its VOS mode (vos_optimized=True: torch.compile;"
                        " use --warmup 20 or more)")  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip and the random weights")
    parser.add_argument("--profile", action="store_true",
                        help="also time the stages (encoder, memory attention, decoder, ...) and give each its"
                             " GFLOP/s and fraction of the matmul peak")  # fmt: skip
    parser.add_argument("--key-cache-baseline", action="store_true",
                        help="also run ours recomputing memory keys every frame (before/after the key cache)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile our model (compile time falls in the warm-up: use --warmup 20,"
                        " memory and pointer counts grow until frame 16)")  # fmt: skip
    parser.add_argument("--steady-frames", action="store_true",
                        help="ours with the ring bank, each steady-state frame (from frame 16 after the prompt)"
                        " run as one host-free step: on a GPU one CUDA graph per object count")  # fmt: skip
    parser.add_argument("--stream-frames", type=int, metavar="N",
                        help="instead: run our tracker N frames, report state MB along the way")  # fmt: skip
    parser.add_argument("--engine", action="append", metavar="ENGINE[,ENGINE]",
                        help="instead: these engines on the same frames (torch, onnx, openvino; repeat or comma"
                        " list), each in its fastest precision, masks against our fp32 torch tracker")  # fmt: skip
    parser.add_argument("--streams", type=int, metavar="N",
                        help="instead: one tracker against N copies of the clip tracked together (image"
                        " encoder batched), frames/s in all and per stream; ours only (the official"
                        " predictor has no multi-stream mode)")  # fmt: skip
    parser.add_argument("--json", help="also write the results to this JSON file (rewritten)")
    add_quiet_option(parser, "no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from surgsam2.bench import (
        BenchConfig,
        OfficialUnavailableError,
        check_json_path,
        run_bench,
        run_stream,
        run_streams,
        write_json,
    )
    from surgsam2.bench.engines import parse_engines, run_engines

    if args.json:
        check_json_path(args.json)  # a bad --json fails before the run, not after it

    config = BenchConfig(
        model=args.model, image_size=args.image_size, objects=args.objects, frames=args.frames,
        warmup=args.warmup, memory=args.memory, dtype=args.dtype, against_official=args.against_official,
        official_dtype=args.official_dtype, official_vos_optimized=args.official_vos_optimized,
        threads=args.threads, seed=args.seed, profile=args.profile,
        key_cache_baseline=args.key_cache_baseline, compile=args.compile, device=args.device,
        cuda_graphs=args.cuda_graphs, steady_frames=args.steady_frames, stream_frames=args.stream_frames,
        progress=not args.quiet,
        engines=parse_engines(args.engine or []), streams=args.streams,
    )  # fmt: skip
    try:
        if config.engines:
            result = run_engines(config)
        elif config.streams is not None:
            result = run_streams(config)
        else:
            result = run_stream(config) if config.stream_frames else run_bench(config)
    except OfficialUnavailableError as error:
        print(f"surgsam2 bench: error: {error}", file=sys.stderr)
        return 2
    print(result.format_table())
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0
