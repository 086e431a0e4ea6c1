"""Export the tracking step as ONNX graphs (image encoder + neck, prompt encoder + mask decoder,
memory attention over bounded memory slots and fixed pointer slots with validity masks, memory
encoder, the attention keys of a written memory, a mask prompt's pointer) and a
manifest.json with the model config, normalisation, memory policy, graph signatures and checksums.
The output folder is written whole or not at all, and never over a folder we did not write.
"""

from __future__ import annotations

import argparse
import sys

from surgsam2.app.options import add_memory_options, add_model_options, add_output_options

NAME = "export"
HELP = "export the tracking step as ONNX graphs plus a manifest (fp32 files; run by onnx fp32, openvino fp32/bf16)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, runtime=False)
    add_memory_options(parser)
    add_output_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    parser.add_argument("--out", required=True, help="output folder (written whole, atomically)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    parser.add_argument("--conditioning-slots", type=int, default=4,
                        help="prompted frames memory attention holds at once (default 4)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from surgsam2.app.options import ModelOptions, load_model_for_run
    from surgsam2.data.outputs import staged_folder
    from surgsam2.export.onnx_export import ExportOptions, export_onnx

    options = ExportOptions(
        opset=args.opset, memory=args.memory, num_frame_to_prune=args.num_frame_to_prune,
        conditioning_slots=args.conditioning_slots,
    )  # fmt: skip
    model_options = ModelOptions.from_args(args)  # on the CPU, in fp32: what the graphs are traced from
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError("the ONNX export needs the onnx package: pip install 'surgsam2[onnx]'") from None
    model = load_model_for_run(model_options, lambda line: print(line, file=sys.stderr))
    inputs = {"checkpoint": args.checkpoint} if args.checkpoint else None
    with staged_folder(args.out, overwrite=args.overwrite, inputs=inputs, command=NAME) as folder:
        manifest = export_onnx(model, folder, options, checkpoint=args.checkpoint)
    print(f"wrote {len(manifest['graphs'])} ONNX graphs and manifest.json to {args.out}")
    return 0
