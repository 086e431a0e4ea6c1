"""`surgsam2.runtime.allocator.keep_freed_memory`: freed tensor memory is reused instead of being
returned to the kernel and faulted in again, the environment's own malloc settings win, and every
command applies it."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest

from surgsam2.runtime import allocator

SRC = Path(__file__).resolve().parents[1] / "src"

# A 24 MB tensor made and freed in a fresh interpreter, glibc's own accounting (mallinfo2, glibc
# >= 2.33) read while it lives and after: bytes in fresh mappings, and free bytes the heap keeps.
ONE_BLOCK = """
import ctypes, json, sys, torch
sys.path.insert(0, {src!r})
from surgsam2.runtime.allocator import keep_freed_memory
fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if {keep}:
    assert keep_freed_memory()
block = torch.ones(6 << 20)
alive = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(json.dumps({{"mapped_while_alive": alive.hblkhd, "heap_free_after": freed.fordblks}}))
"""


def one_block(keep: bool) -> dict[str, int]:
    """glibc's accounting around ONE_BLOCK's 24 MB tensor, in a fresh interpreter."""
    code = ONE_BLOCK.format(src=str(SRC), keep=keep)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def _has_mallinfo2() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_freed_memory_stays_in_the_heap_for_reuse() -> None:
    """As malloc comes, a 24 MB block is a fresh mapping, unmapped when freed (so the next frame
    faults its pages in again); with the setting it comes from the heap and stays there, free,
    when the tensor is freed."""
    block = 24 << 20
    default, kept = one_block(keep=False), one_block(keep=True)
    print(f"[allocator] mapped while alive: as it comes {default['mapped_while_alive'] >> 20} MB, kept "
          f"{kept['mapped_while_alive'] >> 20} MB; heap free after: kept {kept['heap_free_after'] >> 20} MB")
    assert default["mapped_while_alive"] >= block
    assert kept["mapped_while_alive"] < block
    assert kept["heap_free_after"] >= block


@pytest.mark.parametrize(
    "variable, value",
    [("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"), ("MALLOC_TRIM_THRESHOLD_", "0"), ("LD_PRELOAD", "libjemalloc.so.2")],
)
def test_environment_malloc_settings_win(variable: str, value: str, monkeypatch) -> None:
    """Where the environment tunes or replaces malloc, nothing is changed (returns False)."""
    monkeypatch.setenv(variable, value)
    assert allocator.keep_freed_memory() is False


def test_every_command_keeps_freed_memory(monkeypatch, tmp_path) -> None:
    """The command line applies the setting before running a command (here one that fails on its
    input at once)."""
    from surgsam2 import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    code = cli.main(["evaluate", "--gt-dir", str(tmp_path / "gt"), "--pred-dir", str(tmp_path / "pred"),
                     "--output", str(tmp_path / "results.json")])
    assert code != 0 and calls == [1]
