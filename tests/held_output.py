"""A test helper: an output folder held (locked) by another process, as a concurrent run holds it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_HOLDER = """
import sys, time
from surgsam2.data.outputs import OutputFolder
with OutputFolder(sys.argv[1], command=sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def held_output_folder(path: Path, command: str = "another run") -> Iterator[None]:
    """While inside, another process holds ``path``'s run lock."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), command], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
