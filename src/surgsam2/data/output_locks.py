"""Run locks of output folders: an exclusive ``flock`` on a lock file, which the system drops
when the process ends (so a lock is never stale), re-entrant within one process. The lock file
records who holds it, so a refused run can say which run is in the way."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from surgsam2.data.termination import deferred_termination

_held: dict[Path, list[int]] = {}  # lock file -> [descriptor, open count]
LOCK_GUARD = threading.RLock()  # also serialises marker updates within this process


class OutputError(ValueError):
    """A refused or failed output: one line naming the path and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


def acquire_lock(lock_file: Path, subject: Path, command: str = "") -> None:
    """Take the exclusive lock ``lock_file`` guarding output ``subject`` (re-entrant in-process)."""
    with LOCK_GUARD:
        held = _held.get(lock_file)
        if held is not None:
            held[1] += 1
            return
        for _ in range(8):  # a lock file removed (and made again) between open and flock: retry
            fd = _locked_descriptor(lock_file, subject)
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(lock_file, follow_symlinks=False).st_ino:
                    break
            os.close(fd)
        else:
            raise OutputError(f"cannot lock output {subject}: its lock file keeps changing")
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info = f"pid {os.getpid()}, started {started}" + (f", {command}" if command else "")
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, " ".join(info.split()).encode("utf-8"), 0)
        _held[lock_file] = [fd, 1]


def _locked_descriptor(lock_file: Path, subject: Path) -> int:
    """An open descriptor of ``lock_file`` under our exclusive flock, or `OutputError`."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        raise OutputError(f"cannot lock output {subject}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip() or "pid unknown"
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"cannot lock output {subject}: {error.strerror or error}") from None
        raise OutputError(
            f"output folder {subject} is in use by another surgsam2 run ({holder});"
            " wait for it to finish or choose another output folder"
        ) from None
    return fd


def release_lock(lock_file: Path, remove: bool = False) -> None:
    """Release the lock (at the last of this process's acquisitions); with ``remove`` the lock file
    goes too, unlinked while still held so that no other run can be holding it."""
    with LOCK_GUARD, deferred_termination():
        held = _held.get(lock_file)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _held[lock_file]
            with contextlib.suppress(OSError):
                if remove:
                    lock_file.unlink()
                else:
                    os.ftruncate(held[0], 0)
            os.close(held[0])


def is_held(lock_file: Path) -> bool:
    """Whether this process holds ``lock_file``."""
    return lock_file in _held
