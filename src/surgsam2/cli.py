"""`surgsam2 <command>`: a thin command line over the library. Parses, calls, reports.

Each command is a ``_cmd_<name>(args) -> int`` function plus its parser in ``build_parser``.
Library errors (ValueError, FileNotFoundError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgsam2",
        description="Promptable segmentation and tracking of surgical instruments (SAM 2 + EFP).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # --- commands: each block adds one subparser and sets func ---------------------------

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
