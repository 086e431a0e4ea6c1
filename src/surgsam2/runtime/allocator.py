"""The C allocator's settings for tracking on the CPU: keep freed memory for reuse.

glibc's malloc returns the top of its heap to the kernel once more than a (dynamic) trim threshold
of it is free, and serves blocks above a (dynamic) size from fresh mappings; a tracked frame frees
and reallocates tens of MB of tensors, so every frame faulted them in again. Hiera-S at 512 px,
one object, 2 threads: about 9,900 page faults and 22 ms of kernel time a frame, about 460 and
2.4 ms with the heap kept (benchmarks/README.md, "Allocator").
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Free heap kept before trimming, and the block size from which malloc maps fresh memory (glibc's
# largest dynamic mmap threshold on 64-bit: blocks this large are rare and worth unmapping).
KEEP_FREE_BYTES = 1 << 30
MAP_FROM_BYTES = 32 << 20


def _user_chose_malloc_settings() -> bool:
    """Whether the environment already tunes or replaces malloc (glibc tunables, the MALLOC_*
    variables, a preloaded allocator): those settings are kept."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    legacy = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
    return "malloc" in tunables or any(name in os.environ for name in legacy) or bool(os.environ.get("LD_PRELOAD"))


def keep_freed_memory() -> bool:
    """Make glibc keep up to KEEP_FREE_BYTES of freed heap for reuse and map fresh memory only for
    blocks of MAP_FROM_BYTES or more. Process-wide; the commands call it at start, library users
    may. Returns whether it applied: False off Linux/glibc, or where the environment tunes
    malloc already. Peak memory is unchanged; memory freed after the peak stays with the process
    (up to KEEP_FREE_BYTES) instead of going back to the system."""
    if not sys.platform.startswith("linux") or _user_chose_malloc_settings():
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc (e.g. musl): other allocator, other settings
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, MAP_FROM_BYTES))
