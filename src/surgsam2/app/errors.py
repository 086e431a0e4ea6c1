"""How a failure becomes one line for the user: the message without a traceback, naming the file
or device concerned; used by the command line and by batch jobs that report a failed video."""

from __future__ import annotations

import errno

# Errors whose message already says what went wrong; others get their type name in front.
_SELF_EXPLAINING = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)


def _os_error_line(error: OSError) -> str:
    """``<what failed>: <path>`` for an OSError, with advice where there is an obvious one."""
    reason = error.strerror or str(error) or type(error).__name__
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    where = " -> ".join(str(p) for p in paths)
    advice = {
        errno.ENOSPC: " (free some space or choose another output folder)",
        errno.EACCES: " (choose a folder you can write to)",
        errno.EPERM: " (choose a folder you can write to)",
        errno.EROFS: " (the file system is read-only; choose another output folder)",
    }.get(error.errno or 0, "")
    return f"{reason}: {where}{advice}" if where else f"{reason}{advice}"


def one_line(error: BaseException) -> str:
    """A one-line description of ``error`` for a person (first line of the message)."""
    if isinstance(error, OSError) and not isinstance(error, _SELF_EXPLAINING) and error.strerror:
        return _os_error_line(error)
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError)) and error.strerror:
        return _os_error_line(error)
    text = str(error).strip()
    message = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, _SELF_EXPLAINING):
        return message
    if isinstance(error, RuntimeError) and "CUDA" in message:
        return f"CUDA error: {message}"
    return f"{type(error).__name__}: {message}"
