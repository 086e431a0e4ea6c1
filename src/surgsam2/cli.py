"""`surgsam2 <command>`: a thin command line over the library. Parses, calls, reports.

Each command is a ``_cmd_<name>(args) -> int`` function plus its parser in ``build_parser``.
Library errors (ValueError, FileNotFoundError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """`surgsam2 evaluate`: score a prediction folder, write JSON + CSV, print the table."""
    from surgsam2.eval.evaluate import evaluate, write_results

    result = evaluate(
        args.gt_dir,
        args.pred_dir,
        protocol=args.protocol,
        meta=args.meta,
        workers=args.workers,
        allow_missing_videos=args.allow_missing_videos,
    )
    json_path, csv_path = write_results(result, args.output)
    print(result.format_table())
    print(f"wrote {json_path} and {csv_path}")
    return 0


def _synth_size(text: str) -> tuple[int, int]:
    """argparse type for `--size WxH` ("320x256" -> (320, 256))."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 320x256, got {text!r}") from None
    return width, height


def _cmd_synth(args: argparse.Namespace) -> int:
    """`surgsam2 synth`: write a synthetic surgical-video dataset in the VOS layout."""
    from surgsam2.data.synthetic import SyntheticVideoConfig, write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out,
        videos=args.videos,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        jpeg_quality=args.jpeg_quality,
        image_format=args.image_format,
        overwrite=args.overwrite,
        config=SyntheticVideoConfig(reentry_probability=args.reentry),
    )
    print(
        f"wrote {len(summary.videos)} videos x {summary.frames} frames ({summary.width}x{summary.height},"
        f" {summary.objects} instruments) to {summary.root} in {summary.seconds:.1f} s"
    )
    return 0


# surgsam2.model.sam2.PRECISIONS, repeated here so that parsing arguments imports no torch
# (tests/test_checkpoint.py keeps the two equal).
_PRECISIONS = ("fp32", "bf16", "mixed")


def _add_model_arguments(parser: argparse.ArgumentParser, default_model: str = "nano") -> None:
    """--model/--checkpoint/--image-size/--device/--dtype, shared by commands that run a model."""
    parser.add_argument("--model", default=default_model, help=f"model config name (default {default_model})")
    parser.add_argument("--checkpoint", help="checkpoint file (.pt/.pth/.safetensors); default: the packaged one")
    parser.add_argument("--image-size", type=int, help="model input size (default: the config's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--dtype", choices=_PRECISIONS, default="fp32",
                        help="model precision; mixed = fp32 with bf16 memory attention (default fp32)")  # fmt: skip
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="with a CUDA device: replay the model's parts as CUDA graphs (faster)")  # fmt: skip


def _load_model_from_args(args: argparse.Namespace):
    from surgsam2.model.checkpoint import load_model

    if args.cuda_graphs and not args.device.startswith("cuda"):
        raise ValueError(f"--cuda-graphs needs a CUDA device (--device cuda), got --device {args.device}")
    model = load_model(
        args.model, checkpoint=args.checkpoint, image_size=args.image_size, device=args.device, dtype=args.dtype
    )
    if args.cuda_graphs:
        model.use_cuda_graphs()
    return model


def _point_argument(text: str) -> tuple[float, float, int]:
    """argparse type for `--points X,Y[:LABEL]` (label 1 object, 0 background; default 1)."""
    coords, _, label = text.partition(":")
    try:
        x, y = (float(value) for value in coords.split(","))
        label_value = int(label) if label else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y:LABEL, got {text!r}") from None
    if label_value not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 0 or 1, got {label_value}")
    return x, y, label_value


def _box_argument(text: str) -> tuple[float, float, float, float]:
    """argparse type for `--box X0,Y0,X1,Y1`."""
    try:
        x0, y0, x1, y1 = (float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1, got {text!r}") from None
    return x0, y0, x1, y1


def _cmd_segment(args: argparse.Namespace) -> int:
    """`surgsam2 segment`: track prompted objects through a video and write masks (+ overlay)."""
    from surgsam2.pipelines import prompts_from_mask_file, segment_source
    from surgsam2.tracking.prompts import Prompt

    if args.prompt_mask:
        prompts = prompts_from_mask_file(args.prompt_mask)
    else:
        points = [(x, y) for x, y, _ in args.points] if args.points else None
        labels = [label for _, _, label in args.points] if args.points else None
        prompts = {args.object_id: Prompt(points=points, labels=labels, box=args.box)}
    model = _load_model_from_args(args)
    summary = segment_source(
        model,
        args.input,
        prompts,
        args.out,
        prompt_frame=args.prompt_frame,
        memory=args.memory,
        overlay=args.overlay,
        overwrite=args.overwrite,
        max_frames=args.max_frames,
        progress=not args.quiet,
    )
    overlay = f", overlay {summary.overlay}" if summary.overlay else ""
    print(
        f"tracked objects {summary.objects} over {summary.frames} frames in {summary.seconds:.1f} s"
        f" ({summary.frames_per_second:.1f} frames/s): masks in {summary.masks_dir}{overlay}"
    )
    return 0


def _cmd_vos_inference(args: argparse.Namespace) -> int:
    """`surgsam2 vos-inference`: track every prompted object of a VOS dataset, write masks, evaluate."""
    from surgsam2.eval.vos_inference import VOSInferenceConfig, run_vos_inference

    config = VOSInferenceConfig(
        base_video_dir=args.base_video_dir,
        input_mask_dir=args.input_mask_dir,
        output_mask_dir=args.output_mask_dir,
        gt_root=args.gt_root,
        video_list_file=args.video_list_file,
        score_thresh=args.score_thresh,
        model=args.model,
        checkpoint=args.checkpoint,
        image_size=args.image_size,
        memory=args.memory,
        num_frame_to_prune=args.num_frame_to_prune,
        fill_hole_area=args.fill_hole_area,
        device=args.device,
        cuda_graphs=args.cuda_graphs,
        dtype=args.dtype,
        prompt_type=args.prompt_type,
        meta=args.meta,
        output=args.output,
        workers=args.workers,
        seed=args.seed,
        progress=not args.quiet,
    )
    report = run_vos_inference(config)
    if report.rank != 0:
        return report.exit_code
    if report.evaluation is not None:
        print(report.evaluation.format_table())
        print(f"wrote {report.results_path} and {report.csv_path}")
    written = len(report.videos) - len(report.failed)
    print(f"{written}/{len(report.videos)} videos written to {config.output_mask_dir}")
    if report.failed:
        print(
            f"surgsam2 vos-inference: {len(report.failed)} video(s) failed: "
            + "; ".join(f"{r.video} ({r.error})" for r in report.failed),
            file=sys.stderr,
        )
    return report.exit_code


def _cmd_convert_endovis(args: argparse.Namespace) -> int:
    """`surgsam2 convert-endovis`: raw EndoVis 2017/2018 data to the VOS layout, standard splits."""
    from surgsam2.data.endovis import convert_endovis

    def report(split: str, video: str, frames: int) -> None:
        print(f"  {split}/{video}: {frames} frames", flush=True)

    summary = convert_endovis(
        args.src,
        args.dst,
        year=args.year,
        split=args.split,
        fold=args.fold,
        object_mode=args.objects,
        labels_dir=args.labels_dir,
        image_format=args.image_format,
        jpeg_quality=args.jpeg_quality,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=None if args.quiet else report,
    )
    fold = f", fold {summary.fold}" if summary.fold is not None else ""
    print(f"EndoVis {summary.year} ({summary.layout}{fold}, objects per {summary.object_mode}):")
    for part in summary.splits:
        missing = f"; not found: {', '.join(part.missing)}" if part.missing else ""
        print(f"  {part.split}: {len(part.videos)} videos, {part.frames} frames, {part.objects} objects -> {part.root}{missing}")
    if summary.ignored:
        print(f"  not in the requested split(s): {', '.join(summary.ignored)}")
    print(f"done in {summary.seconds:.1f} s")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """`surgsam2 bench`: ours vs the official predictor on the same clip and weights, or a long stream."""
    from surgsam2.bench import BenchConfig, OfficialUnavailableError, run_bench, run_stream, write_json

    config = BenchConfig(
        model=args.model,
        image_size=args.image_size,
        objects=args.objects,
        frames=args.frames,
        warmup=args.warmup,
        memory=args.memory,
        dtype=args.dtype,
        against_official=args.against_official,
        official_dtype=args.official_dtype,
        threads=args.threads,
        seed=args.seed,
        profile=args.profile,
        sdpa_baseline=args.sdpa_baseline,
        key_cache_baseline=args.key_cache_baseline,
        compile=args.compile,
        device=args.device,
        cuda_graphs=args.cuda_graphs,
        stream_frames=args.stream_frames,
        progress=not args.quiet,
    )
    try:
        result = run_stream(config) if config.stream_frames else run_bench(config)
    except OfficialUnavailableError as error:
        print(f"surgsam2 bench: error: {error}", file=sys.stderr)
        return 2
    print(result.format_table())
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """`surgsam2 demo`: the embedded default end to end (synthetic clip -> tracking -> J&F)."""
    from surgsam2.model.checkpoint import default_checkpoint
    from surgsam2.pipelines import run_demo

    if args.checkpoint is None and default_checkpoint(args.model) is None:
        print(f"note: no trained checkpoint is packaged for {args.model!r}; the demo runs random weights")
    summary = run_demo(
        args.out, model_name=args.model, checkpoint=args.checkpoint, memory=args.memory,
        frames=args.frames, progress=not args.quiet,
    )  # fmt: skip
    print(
        f"demo: {summary.objects} instruments over {summary.frames} frames in {summary.seconds:.1f} s;"
        f" J&F {100 * summary.j_and_f:.1f}, Dice {100 * summary.dice:.1f} ({args.memory})\n"
        f"  clip {summary.dataset}\n  masks {summary.masks}\n  overlay {summary.overlay}\n  results {summary.results}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """`surgsam2 train`: train or fine-tune SAM 2 from a YAML config (also under torchrun: DDP)."""
    from surgsam2.train.config import load_config
    from surgsam2.train.trainer import run_training

    config = load_config(args.config, args.set or [])
    if args.out is not None:
        config.train.out_dir = args.out
    if args.max_steps is not None:
        config.train.max_steps = args.max_steps
    run_training(config, resume=args.resume)  # validates the config again
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgsam2",
        description="Promptable segmentation and tracking of surgical instruments (SAM 2 + EFP).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- commands: each block adds one subparser and sets func ---------------------------

    train_parser = commands.add_parser(
        "train",
        help="train or fine-tune SAM 2 on VOS-layout data from a YAML config (torchrun: multi-GPU)",
        description="Train SAM 2 on clips of VOS-layout datasets with simulated prompts (SAM 2's"
        " recipe). Checkpoints, metrics.jsonl and loss.png go to train.out_dir. Run under"
        " `torchrun --nproc_per_node N` for DDP.",
    )
    train_parser.add_argument("--config", required=True, help="training YAML (configs/train/*.yaml)")
    train_parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the out dir")
    train_parser.add_argument("--out", help="output folder (overrides train.out_dir)")
    train_parser.add_argument("--max-steps", type=int, help="total optimizer steps (overrides epochs)")
    train_parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                              help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")  # fmt: skip
    train_parser.set_defaults(func=_cmd_train)

    demo_parser = commands.add_parser(
        "demo",
        help="the embedded default end to end: synthetic clip, tracking, masks, overlay, J&F",
        description="Generate a held-out synthetic surgical clip, track its instruments from their"
        " first-appearance masks with the packaged model, write masks and an overlay video, print J&F.",
    )
    demo_parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    demo_parser.add_argument("--model", default="nano", help="model config (default nano)")
    demo_parser.add_argument("--checkpoint", help="checkpoint (default: the packaged one)")
    demo_parser.add_argument("--memory", choices=("efp", "fifo"), default="efp", help="memory policy (default efp)")
    demo_parser.add_argument("--frames", type=int, default=60, help="clip length (default 60)")
    demo_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    demo_parser.set_defaults(func=_cmd_demo)

    bench_parser = commands.add_parser(
        "bench",
        help="speed and memory of our tracker, side by side with the official SAM 2 predictor",
        description="Track a synthetic clip at --image-size with random weights and report per-frame"
        " latency (median, p90), frames/s, achieved GFLOP/s against this machine's matmul peak, state"
        " held and peak memory; with --against-official the official sam2 video predictor runs on the"
        " same frames and weights in the same process, frame by frame in alternation."
        " See benchmarks/README.md.",
    )
    bench_parser.add_argument("--model", default="sam2.1_hiera_s", help="model config (default sam2.1_hiera_s)")
    bench_parser.add_argument("--image-size", type=int, default=512, help="input size, frames drawn at it (default 512)")
    bench_parser.add_argument("--objects", type=int, default=1, help="objects prompted on frame 0 (default 1)")
    bench_parser.add_argument("--frames", type=int, default=40, help="timed frames (default 40)")
    bench_parser.add_argument("--warmup", type=int, default=5, help="untimed frames first, incl. the prompt (default 5)")
    bench_parser.add_argument("--memory", choices=("efp", "fifo"), default="efp", help="our memory policy (default efp)")
    bench_parser.add_argument("--dtype", choices=_PRECISIONS, default="fp32",
                              help="our precision; mixed = fp32 with bf16 memory attention (default fp32)")  # fmt: skip
    bench_parser.add_argument("--against-official", action="store_true",
                              help="also run the official sam2 predictor (test-only dependency)")  # fmt: skip
    bench_parser.add_argument("--official-dtype", choices=("fp32", "bf16"), default="fp32",
                              help="official precision; bf16 = torch.autocast, as its users do (default fp32)")  # fmt: skip
    bench_parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    bench_parser.add_argument("--seed", type=int, default=0, help="seed of the clip and the random weights")
    bench_parser.add_argument("--profile", action="store_true",
                              help="also time the stages (encoder, memory attention, decoder, ...)")  # fmt: skip
    bench_parser.add_argument("--sdpa-baseline", action="store_true",
                              help="also run ours with the bf16 CPU matmul attention off (before/after)")  # fmt: skip
    bench_parser.add_argument("--key-cache-baseline", action="store_true",
                              help="also run ours recomputing memory keys every frame (before/after the key cache)")  # fmt: skip
    bench_parser.add_argument("--compile", action="store_true",
                              help="torch.compile our model (compile time falls in the warm-up: use --warmup 20,"
                                   " memory and pointer counts grow until frame 16)")  # fmt: skip
    bench_parser.add_argument("--device", default="cpu",
                              help="where both sides run: cpu, cuda or cuda:N (default cpu)")  # fmt: skip
    bench_parser.add_argument("--cuda-graphs", action="store_true",
                              help="with --device cuda: replay our model's parts as CUDA graphs")  # fmt: skip
    bench_parser.add_argument("--stream-frames", type=int, metavar="N",
                              help="instead: run our tracker N frames, report state MB along the way")  # fmt: skip
    bench_parser.add_argument("--json", help="also write the results to this JSON file (rewritten)")
    bench_parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    bench_parser.set_defaults(func=_cmd_bench)

    convert_parser = commands.add_parser(
        "convert-endovis",
        help="convert raw EndoVis 2017/2018 data to the VOS layout with the standard splits",
        description="Read the raw EndoVis 2017 (instrument_dataset_<k>/left_frames + ground_truth) or"
        " 2018 (seq_<k>/left_frames + ISINet instrument-type labels) layout and write"
        " DST/<split>/{JPEGImages,Annotations,VOS/Annotations_vos_instrument,meta.json}."
        " See docs/endovis.md for the exact layouts, classes and splits.",
    )
    convert_parser.add_argument("--year", type=int, choices=(2017, 2018), required=True, help="challenge year")
    convert_parser.add_argument("--src", required=True, help="raw data folder")
    convert_parser.add_argument("--dst", required=True, help="output folder; each split goes to DST/<split>/")
    convert_parser.add_argument("--split", choices=("train", "val", "all"), default="all",
                                help="2017: fold's val datasets / the other six; 2018: val = seq 2, 5, 9, 15;"
                                " all = both (default)")  # fmt: skip
    convert_parser.add_argument("--fold", type=int, choices=(0, 1, 2, 3),
                                help="2017 cross-validation fold (0: 1,3  1: 2,5  2: 4,8  3: 6,7; default 0)")  # fmt: skip
    convert_parser.add_argument("--objects", choices=("instance", "class"),
                                help="2017: one object per label folder (instance, default) or per class;"
                                " 2018: always class (object id = class id)")  # fmt: skip
    convert_parser.add_argument("--labels-dir", help="2018: name of the instrument-type label folder"
                                " (default: instruments_masks or annotations)")  # fmt: skip
    convert_parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="frame format")
    convert_parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    convert_parser.add_argument("--workers", type=int, default=4, help="videos converted in parallel (default 4)")
    convert_parser.add_argument("--overwrite", action="store_true", help="replace non-empty DST/<split> folders")
    convert_parser.add_argument("--quiet", action="store_true", help="no per-video lines")
    convert_parser.set_defaults(func=_cmd_convert_endovis)

    segment_parser = commands.add_parser(
        "segment",
        help="track prompted instruments through a video, folder of frames, camera or stream",
        description="Prompt objects on one frame (a mask PNG, points or a box) and track them through"
        " INPUT with a bounded memory. Writes <out>/<video>/<frame>.png (pixel = object id).",
    )
    segment_parser.add_argument("input", help="video file, folder of numbered frames, camera index or stream URL")
    _add_model_arguments(segment_parser)
    segment_parser.add_argument("--memory", choices=("efp", "fifo"), default="efp",
                                help="memory policy: efp (Surgical SAM 2, default) or fifo (SAM 2)")  # fmt: skip
    prompt_group = segment_parser.add_mutually_exclusive_group(required=True)
    prompt_group.add_argument("--prompt-mask", help="PNG mask on the prompt frame (pixel = object id; 0/255 = object 1)")
    prompt_group.add_argument("--points", nargs="+", type=_point_argument, metavar="X,Y[:LABEL]",
                              help="clicks in frame pixels, label 1 object (default) or 0 background")  # fmt: skip
    prompt_group.add_argument("--box", type=_box_argument, metavar="X0,Y0,X1,Y1", help="box around the object")
    segment_parser.add_argument("--object-id", type=int, default=1, help="id of the object prompted by points/box")
    segment_parser.add_argument("--prompt-frame", type=int, default=0, help="frame the prompt is on (default 0)")
    segment_parser.add_argument("--out", required=True, help="output folder for the masks")
    segment_parser.add_argument("--overlay", help="also write this .mp4 with the masks drawn on the frames")
    segment_parser.add_argument("--max-frames", type=int, help="stop after this many frames (e.g. for a camera)")
    segment_parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    segment_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    segment_parser.set_defaults(func=_cmd_segment)

    evaluate_parser = commands.add_parser(
        "evaluate",
        help="score predicted masks against ground truth (J, F, J&F, Dice, EndoVis IoUs)",
        description="Evaluate a prediction folder against a ground-truth folder of palette PNGs"
        " (<dir>/<video>/<frame>.png). Writes a JSON (rewritten each run) and a CSV next to it.",
    )
    evaluate_parser.add_argument("--gt-dir", required=True, help="ground-truth folder: <video>/<frame>.png")
    evaluate_parser.add_argument("--pred-dir", required=True, help="prediction folder, same layout")
    evaluate_parser.add_argument(
        "--protocol", choices=("davis", "surgsam2"), default="surgsam2",
        help="davis: objects of the first frame; surgsam2: each object from its first appearance"
        " (both skip the first and last frames; default surgsam2)",
    )  # fmt: skip
    evaluate_parser.add_argument("--meta", help="meta.json (object id -> instrument class) for class-based IoUs")
    evaluate_parser.add_argument("--output", required=True, help="results JSON; the CSV goes next to it")
    evaluate_parser.add_argument("--workers", type=int, default=1, help="processes scoring videos in parallel")
    evaluate_parser.add_argument(
        "--allow-missing-videos", action="store_true",
        help="score a video missing from --pred-dir as empty instead of failing",
    )  # fmt: skip
    evaluate_parser.set_defaults(func=_cmd_evaluate)

    synth_parser = commands.add_parser(
        "synth",
        help="write a synthetic surgical-video dataset (VOS layout, meta.json, prompt masks)",
        description="Procedurally draw surgical clips (tissue, 1-4 instruments of the 7 EndoVis18"
        " classes, smoke, blur, flicker) with exact masks, deterministic per seed, in the VOS layout.",
    )
    synth_parser.add_argument("--out", required=True, help="output dataset folder")
    synth_parser.add_argument("--videos", type=int, default=4, help="number of clips (default 4)")
    synth_parser.add_argument("--frames", type=int, default=100, help="frames per clip (default 100)")
    synth_parser.add_argument("--size", type=_synth_size, default=(320, 256), metavar="WxH",
                              help="frame size (default 320x256)")  # fmt: skip
    synth_parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth_parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    synth_parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="frame format")
    synth_parser.add_argument(
        "--reentry", type=float, default=0.3,
        help="probability that an instrument leaves the view and comes back (default 0.3)",
    )  # fmt: skip
    synth_parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    synth_parser.set_defaults(func=_cmd_synth)

    vos_parser = commands.add_parser(
        "vos-inference",
        help="track every prompted instrument of a VOS dataset, write masks, optionally evaluate",
        description="Surgical SAM 2's vos_inference: each object is prompted on its first appearance"
        " in --input_mask_dir and tracked forward (all objects of a video batched). Writes"
        " <out>/<video>/<id:03d>/<frame>.png per object and <out>/<video>/all/<frame>.png combined."
        " Under torchrun the videos are split over the processes (video i -> rank i % world size)."
        " Exit code 1 when a video failed (named on stderr; the others complete).",
    )
    vos_parser.add_argument("--base_video_dir", "--base-video-dir", required=True,
                            help="frames: <dir>/<video>/<frame>.jpg|png (e.g. <dataset>/JPEGImages)")  # fmt: skip
    vos_parser.add_argument("--input_mask_dir", "--input-mask-dir", required=True,
                            help="prompt masks: <dir>/<video>/<frame>.png, objects on first appearance")  # fmt: skip
    vos_parser.add_argument("--output_mask_dir", "--output-mask-dir", required=True, help="output folder")
    vos_parser.add_argument("--gt_root", "--gt-root",
                            help="ground truth <dir>/<video>/<frame>.png: evaluate (surgsam2 protocol)")  # fmt: skip
    vos_parser.add_argument("--video_list_file", "--video-list-file", help="text file of video names, one a line")
    vos_parser.add_argument("--score_thresh", "--score-thresh", type=float, default=0.0,
                            help="threshold on the mask logits (default 0.0)")  # fmt: skip
    vos_parser.add_argument("--model", default="nano", help="model config name (default nano)")
    vos_parser.add_argument("--checkpoint", help="checkpoint (.pt/.pth/.safetensors); none: random weights")
    vos_parser.add_argument("--image-size", "--image_size", type=int,
                            help="model input size (default: the checkpoint's or config's; SurgSAM2: 512)")  # fmt: skip
    vos_parser.add_argument("--memory", choices=("efp", "fifo"), default="efp",
                            help="memory policy: efp (Surgical SAM 2, default) or fifo (SAM 2)")  # fmt: skip
    vos_parser.add_argument("--num-frame-to-prune", "--num_frame_to_prune", type=int, default=2,
                            help="EFP: memories pruned from attention (default 2)")  # fmt: skip
    vos_parser.add_argument("--fill-hole-area", "--fill_hole_area", type=int,
                            help="fill mask holes up to this many low-res pixels (default: model's, 8;"
                            " the official scripts use 0)")  # fmt: skip
    vos_parser.add_argument("--device", help="torch device (default: cuda, this rank's GPU, if available, else cpu)")
    vos_parser.add_argument("--cuda-graphs", action="store_true",
                            help="with a CUDA device: replay the model's parts as CUDA graphs (faster)")  # fmt: skip
    vos_parser.add_argument("--dtype", choices=_PRECISIONS, default="fp32",
                            help="model precision; mixed = fp32 with bf16 memory attention (default fp32)")  # fmt: skip
    vos_parser.add_argument("--prompt-type", "--prompt_type", choices=("mask", "1-point", "5-point", "box"),
                            default="mask", help="prompt made from the first-appearance mask")  # fmt: skip
    vos_parser.add_argument("--meta", help="meta.json (object id -> instrument class) for class-based IoUs")
    vos_parser.add_argument("--output", help="results JSON (default <output_mask_dir>/results.json); CSV next to it")
    vos_parser.add_argument("--workers", type=int, default=1, help="processes scoring videos (default 1)")
    vos_parser.add_argument("--seed", type=int, default=0,
                            help="seed of random-init weights and of the 5-point samples (default 0)")  # fmt: skip
    vos_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    vos_parser.set_defaults(func=_cmd_vos_inference)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"surgsam2 {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"surgsam2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
