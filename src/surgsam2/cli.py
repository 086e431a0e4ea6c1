"""`surgsam2 <command>`: the command line. Each command lives in `surgsam2.commands.<name>`
(its name, help, arguments and what it runs); this module puts them together and turns every failure into
one line on stderr and an exit code: 2 bad input or PyTorch missing, 130 interrupted, 143 terminated (SIGTERM).

The parsers need no torch (commands import it where they run a model), so every `--help` and
`segment --engine onnx` work in an environment with ONNX Runtime only (requirements-onnx.txt).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from surgsam2.app.errors import one_line
from surgsam2.data.termination import TERMINATED_EXIT_CODE, Terminated, terminate_as_interrupt
from surgsam2.runtime.allocator import keep_freed_memory

INTERRUPTED_EXIT_CODE = 130
BAD_INPUT_EXIT_CODE = 2
# The modules of the torch-free ONNX runtime's requirements (requirements-onnx.txt).
TORCH_FREE_PACKAGES = ("numpy", "onnxruntime", "cv2", "PIL", "tqdm")
TORCH_MISSING = (
    "this needs PyTorch, which is not installed here (pip install torch); without it,"
    " `surgsam2 segment --engine onnx --onnx-dir DIR` runs an ONNX export"
)


def missing_module_message(error: ModuleNotFoundError) -> str | None:
    """The one-line error for a module missing from a torch-free install (None: not that case).

    Where torch is not installed, every command but the ONNX engine's needs the full install, whose
    missing piece is PyTorch; a package of the ONNX runtime's own (requirements-onnx.txt) is named.
    """
    root = (error.name or "").partition(".")[0]
    if root in TORCH_FREE_PACKAGES:
        return f"this needs the Python package {root!r}, which is not installed here (pip install -r requirements-onnx.txt)"
    if root == "torch" or importlib.util.find_spec("torch") is None:
        return TORCH_MISSING
    return None


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (`surgsam2.commands.COMMANDS`)."""
    from surgsam2.commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="surgsam2",
        description="Promptable segmentation and tracking of surgical instruments (SAM 2 + EFP).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command_parser = commands.add_parser(command.NAME, help=command.HELP, description=command.__doc__)
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; failures are one line on stderr and a non-zero exit code."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # frames reuse freed tensors' memory instead of faulting it in again
    with terminate_as_interrupt():
        try:
            return int(args.func(args) or 0)
        except Terminated:
            print(f"surgsam2 {args.command}: terminated; unfinished outputs were removed", file=sys.stderr)
            return TERMINATED_EXIT_CODE
        except KeyboardInterrupt:
            print(f"surgsam2 {args.command}: interrupted; unfinished outputs were removed", file=sys.stderr)
            return INTERRUPTED_EXIT_CODE
        except ModuleNotFoundError as error:
            message = missing_module_message(error)
            if message is None:
                raise
            print(f"surgsam2 {args.command}: error: {message}", file=sys.stderr)
            return BAD_INPUT_EXIT_CODE
        except MemoryError:
            print(f"surgsam2 {args.command}: error: out of memory (try a smaller --image-size or fewer frames)",
                  file=sys.stderr)  # fmt: skip
            return BAD_INPUT_EXIT_CODE
        except (ValueError, OSError) as error:
            print(f"surgsam2 {args.command}: error: {one_line(error)}", file=sys.stderr)
            return BAD_INPUT_EXIT_CODE
        except RuntimeError as error:
            if "CUDA" not in str(error) and "out of memory" not in str(error):
                raise
            print(f"surgsam2 {args.command}: error: {one_line(error)}", file=sys.stderr)
            return BAD_INPUT_EXIT_CODE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
