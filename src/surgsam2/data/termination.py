"""SIGTERM handled like Ctrl-C: `Terminated` (a KeyboardInterrupt) is raised in the main thread,
so every ``finally`` and staging cleanup runs and a command exits 143 with nothing half-published.
While an output is being renamed into place (`deferred_termination`), a SIGTERM waits until the
rename is complete, so an entry is never left half-replaced."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

TERMINATED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM seen as an interrupt, so every ``finally`` and staging cleanup runs (exit 143)."""

    exit_code = TERMINATED_EXIT_CODE


_termination = {"defer_depth": 0, "pending": False}


def _on_sigterm(signum: int, frame: Any) -> None:
    if _termination["defer_depth"]:
        _termination["pending"] = True
        return
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def deferred_termination() -> Iterator[None]:
    """Hold a SIGTERM that arrives during a publish's renames until they are done."""
    _termination["defer_depth"] += 1
    try:
        yield
    finally:
        _termination["defer_depth"] -= 1
        if not _termination["defer_depth"] and _termination["pending"]:
            _termination["pending"] = False
            raise Terminated(f"terminated by signal {int(signal.SIGTERM)}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main thread.

    Outside the main thread signals cannot be handled, so it does nothing there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
