"""Options shared by every command, defined once: model (name, checkpoint, image size, device,
precision, CUDA graphs, compile, random weights), memory policy, output overwrite, progress.

The choices come from the library's own torch-free vocabulary (the policy table the registry is
bound to, the model precisions, the device names), so a new policy or precision appears in every
command without an edit here, and the parsers work where torch is not installed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from surgsam2.export.engines import ENGINE_PRECISIONS, RUNTIME_ENGINES
from surgsam2.memory.policy_table import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY, POLICY_NAMES, policy_help
from surgsam2.model.configs import MODEL_CONFIGS, get_config
from surgsam2.model.precisions import PRECISIONS
from surgsam2.runtime.device_names import DEVICE_HELP

if TYPE_CHECKING:  # torch is imported where a model is loaded, so the parsers work without it
    import torch

    from surgsam2.model.sam2 import SAM2Model

DEFAULT_MODEL = "nano"


@dataclass
class ModelOptions:
    """Which network to run, with which weights, where and how (one per command run)."""

    name: str = DEFAULT_MODEL
    checkpoint: Path | None = None
    image_size: int | None = None
    device: str | None = "auto"
    dtype: str = "fp32"
    cuda_graphs: bool = False
    compile: bool = False
    random_weights: bool = False
    seed: int = 0  # of the random initialisation, with random_weights

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        """The options `add_model_options` parsed."""
        return cls(
            name=args.model,
            checkpoint=Path(args.checkpoint) if args.checkpoint else None,
            image_size=args.image_size,
            device=getattr(args, "device", "cpu"),  # absent where a command runs no model (export)
            dtype=getattr(args, "dtype", "fp32"),
            cuda_graphs=getattr(args, "cuda_graphs", False),
            compile=getattr(args, "compile", False),
            random_weights=args.random_weights,
            seed=getattr(args, "seed", 0) or 0,
        )


def add_model_options(
    parser: argparse.ArgumentParser, default_model: str = DEFAULT_MODEL, default_device: str = "cpu",
    runtime: bool = True,
) -> None:  # fmt: skip
    """--model --checkpoint --image-size --random-weights, and (with ``runtime``) --device --dtype
    --cuda-graphs."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=default_model,
                       help=f"model config: {', '.join(MODEL_CONFIGS)} (default {default_model})")  # fmt: skip
    group.add_argument("--checkpoint", help="weights (.pt/.pth/.safetensors); default: the packaged ones (nano)")
    group.add_argument("--image-size", "--image_size", type=int,
                       help="model input side (default: the checkpoint's, else the config's)")  # fmt: skip
    if runtime:
        add_runtime_options(group, default_device)
    group.add_argument("--random-weights", action="store_true",
                       help="run a model that has no packaged weights with a random initialisation"
                       " (tests, speed); without it such a model needs --checkpoint")  # fmt: skip


def add_runtime_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default_device: str = "cpu") -> None:
    """--device --dtype --cuda-graphs: where and in which precision the network runs."""
    parser.add_argument("--device", default=default_device, help=f"{DEVICE_HELP} (default {default_device})")
    parser.add_argument("--dtype", choices=PRECISIONS, default="fp32",
                        help="precision; mixed = fp32 with bf16 memory attention (default fp32)")  # fmt: skip
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="with a CUDA device: replay the model's parts as CUDA graphs (faster)")  # fmt: skip


def add_memory_options(parser: argparse.ArgumentParser, prune_option: bool = True) -> None:
    """--memory (every registered policy) and --num-frame-to-prune."""
    parser.add_argument("--memory", choices=POLICY_NAMES, default=DEFAULT_POLICY,
                        help=f"memory policy (default {DEFAULT_POLICY}): " + policy_help())  # fmt: skip
    if prune_option:
        parser.add_argument("--num-frame-to-prune", "--num_frame_to_prune", type=int,
                            default=DEFAULT_NUM_FRAME_TO_PRUNE,
                            help=f"efp, qefp, refp, xefp: memories pruned from attention (default {DEFAULT_NUM_FRAME_TO_PRUNE})")  # fmt: skip


# The engines a command can track with: our torch model, or an ONNX export on one of its runtimes.
ENGINES: tuple[str, ...] = ("torch", *RUNTIME_ENGINES)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """--engine torch|onnx|openvino and --onnx-dir (the export folder the runtime engines run)."""
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=ENGINES, default="torch",
                       help="torch (default), or an export of `surgsam2 export --format onnx` on ONNX Runtime (onnx,"
                       " fp32) or OpenVINO (openvino: --dtype fp32, or bf16 compiled from the fp32 files)")  # fmt: skip
    group.add_argument("--onnx-dir", type=Path, metavar="DIR",
                       help="the ONNX export folder (with --engine onnx or openvino)")  # fmt: skip


def check_engine_options(args: argparse.Namespace) -> None:
    """One-line errors for an inconsistent engine choice (export folder, precision, device),
    before anything is loaded."""
    engine = args.engine
    if engine != "torch" and args.onnx_dir is None:
        raise ValueError(f"--engine {engine} needs --onnx-dir DIR (an export of `surgsam2 export --format onnx`)")
    if engine == "torch" and args.onnx_dir is not None:
        raise ValueError(f"--onnx-dir applies to --engine {' or '.join(RUNTIME_ENGINES)}")
    if engine != "torch":
        dtype = getattr(args, "dtype", "fp32")
        if dtype not in ENGINE_PRECISIONS[engine]:
            raise ValueError(f"--dtype {dtype}: --engine {engine} runs {', '.join(ENGINE_PRECISIONS[engine])}")
        device = getattr(args, "device", "cpu")
        if device not in ("cpu", "auto"):
            raise ValueError(f"--device {device}: --engine {engine} runs on the CPU (use --engine torch for {device})")
    if args.onnx_dir is not None and not Path(args.onnx_dir).is_dir():
        raise FileNotFoundError(f"--onnx-dir {args.onnx_dir}: no such folder")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--overwrite: replace what an earlier run of ours wrote (never anything else)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs an earlier surgsam2 run wrote there (never other files)")  # fmt: skip


def add_quiet_option(parser: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    parser.add_argument("--quiet", action="store_true", help=what)


def check_model_options(options: ModelOptions) -> torch.device:
    """Everything about ``options`` that can fail before loading (device, CUDA graphs, weights
    given or random weights asked for); returns the resolved device."""
    from surgsam2.model.checkpoint import default_checkpoint
    from surgsam2.runtime.devices import is_cuda, resolve_device

    get_config(options.name, options.image_size)  # an unknown model or a bad size fails first
    device = resolve_device(options.device)
    if options.cuda_graphs and not is_cuda(device):
        raise ValueError(f"--cuda-graphs needs a CUDA device (--device cuda), got device {str(device)!r}")
    if options.checkpoint is not None and options.random_weights:
        raise ValueError("--checkpoint and --random-weights exclude each other")
    if options.checkpoint is not None and not Path(options.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {options.checkpoint}")
    if options.checkpoint is None and default_checkpoint(options.name) is None and not options.random_weights:
        raise ValueError(
            f"model {options.name!r} has no packaged weights: pass --checkpoint FILE (official SAM 2 or"
            " Surgical SAM 2 weights), or --random-weights to run an untrained network"
        )
    return device


def load_model_for_run(options: ModelOptions, warn: Callable[[str], None]) -> SAM2Model:
    """The programs' one model loader: options checked, weights loaded (random ones only when
    asked for, with a warning), precision set, then CUDA graphs / compile when asked for."""
    import torch

    from surgsam2.model.checkpoint import default_checkpoint, load_model

    device = check_model_options(options)
    if options.checkpoint is None and default_checkpoint(options.name) is None:
        torch.manual_seed(options.seed)
        warn(f"warning: {options.name} runs with RANDOM weights (seed {options.seed}): its masks mean nothing")
    model = load_model(options.name, options.checkpoint, options.image_size, device=device, dtype=options.dtype)
    if options.cuda_graphs:
        model.use_cuda_graphs()
    if options.compile:
        model.compile_parts()
    return model
