"""One safe way to write results: location checks, a lock per output folder (`output_locks`), a
marker of what we wrote, and atomic publishing through hidden staging, with SIGTERM held back while
a rename is under way (`termination`).

Two shapes of output are supported:

* ``OutputFolder``: a folder a run publishes ENTRIES into (a video's mask folder, ``results.json``,
  ``overlay.mp4``). It is locked for the whole run (``.surgsam2.lock``, an ``flock`` the OS drops when
  the process dies, so never stale) and lists the entries our runs wrote in ``.surgsam2-output.json``.
  An existing entry is replaced only if that list names it (and ``overwrite`` is given); anything else
  in the folder is never touched.
* ``staged_folder``: a whole folder (a dataset, one video's masks) written in a hidden staging folder
  next to it and renamed into place. The published folder carries ``.surgsam2-output.json`` with a
  ``"folder"`` record (command and version, no time, so that equal runs give equal folders);
  ``overwrite`` only ever replaces a folder that carries it (or an empty one). While it is written,
  ``.surgsam2-lock-<name>`` beside it is held, so a second run writing the same folder is refused.
* ``atomic_file`` / ``atomic_write``: one file replaced atomically (checkpoints, trainer states).

Staging items are named ``.surgsam2-staging-<pid>-<token>-<name>`` and are held under an ``flock``
while in use, so the next run can tell the leftovers of a killed run from live work and remove them.
Every refusal is an ``OutputError`` (a ``ValueError``): one line naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

from surgsam2 import __version__
from surgsam2.data.output_locks import LOCK_GUARD, OutputError, acquire_lock, is_held, release_lock
from surgsam2.data.termination import deferred_termination

MARKER_NAME = ".surgsam2-output.json"
LOCK_NAME = ".surgsam2.lock"
FOLDER_LOCK_PREFIX = ".surgsam2-lock-"  # + a whole folder's name, beside it while it is written
STAGING_PREFIX = ".surgsam2-staging-"
MARKER_FORMAT = "surgsam2-output"
MARKER_VERSION = 1
# A staging item whose lock is free is left alone for this long after its last change: its creator
# may be between making it and locking it (microseconds), or its pid may have been reused.
STALE_AFTER_S = 10.0
_NAME_MAX = 255
_STAGING_NAME_BUDGET = _NAME_MAX - len(STAGING_PREFIX) - 40  # room for "<pid>-<token>-old-"

PathLike = Union[str, "os.PathLike[str]"]
InputPaths = Mapping[str, Union[PathLike, Iterable[PathLike], None]]
Notice = Callable[[str], None]


def _os_error(path: Path, error: OSError, doing: str) -> OutputError:
    """Map an OSError (permission, read-only, full disk, ...) to one line naming the path."""
    reason = error.strerror or str(error) or type(error).__name__
    return OutputError(f"cannot {doing} {path}: {reason}")


def _default_notice(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# where outputs may go


def protected_reason(path: PathLike) -> str | None:
    """Why `path` may never be an output folder (root, home, the current folder or a parent), or None."""
    resolved = Path(path).resolve()
    if resolved == Path(resolved.anchor):
        return "the filesystem root"
    if resolved == Path.home().resolve():
        return "the home folder"
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        return "the current folder"
    if resolved in cwd.parents:
        return "a parent of the current folder"
    return None


def _input_paths(value: PathLike | Iterable[PathLike] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(item) for item in value]


def check_output_location(output: PathLike, inputs: InputPaths | None = None, files_only: bool = False) -> Path:
    """Refuse an output that is, contains or lies inside an input, or is a protected folder.

    `inputs` maps a role ("--gt_root", "frames", ...) to a file or folder (or several, or None).
    `files_only`: the output is a file, or a folder that only receives named files, so it may be a
    protected folder or contain an input. Symlinks are followed, also for an output that does not
    exist yet. Returns the resolved output.
    """
    target = Path(output).resolve()
    reason = None if files_only else protected_reason(target)
    if reason is not None:
        raise OutputError(f"output folder {output} is {reason}; choose a dedicated output folder")
    for role, value in (inputs or {}).items():
        for given in _input_paths(value):
            source = given.resolve()
            if target == source:
                relation = "is"
            elif source in target.parents:
                relation = "lies inside"
            elif target in source.parents and not files_only:
                relation = "contains"
            else:
                continue
            raise OutputError(
                f"output {output} {relation} the input {role} {given}; choose an output folder outside the inputs"
            )
    return target


def _check_entry_name(name: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise OutputError(f"output entry name must be a plain file or folder name, got {name!r}")
    if name in (MARKER_NAME, LOCK_NAME) or name.startswith((STAGING_PREFIX, FOLDER_LOCK_PREFIX)):
        raise OutputError(f"output entry name {name!r} is reserved for surgsam2's own bookkeeping")
    return name


# ---------------------------------------------------------------------------------------------
# the marker: which entries (or which whole folder) our runs wrote


def _record(command: str, timed: bool = True) -> dict[str, str]:
    record = {"command": command, "version": __version__}
    return {**record, "time": _now()} if timed else record


def read_marker(folder: PathLike) -> dict[str, Any]:
    """The marker of `folder` ({} when there is none or it is unreadable: nothing is then ours)."""
    path = Path(folder) / MARKER_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        return {}
    if not isinstance(data.get("entries", {}), dict):
        data["entries"] = {}
    return data


def _marker_bytes(marker: Mapping[str, Any]) -> bytes:
    body = {**marker, "format": MARKER_FORMAT, "version": MARKER_VERSION}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")


def is_own_folder(folder: PathLike) -> bool:
    """True when `folder` was published whole by a surgsam2 run (its marker has a "folder" record)."""
    return isinstance(read_marker(folder).get("folder"), dict)


# ---------------------------------------------------------------------------------------------
# atomic files and staging items


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _staging_name(name: str, pid: int | None = None, tag: str = "") -> str:
    tail = name.encode("utf-8")[-_STAGING_NAME_BUDGET:].decode("utf-8", "ignore")
    return f"{STAGING_PREFIX}{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}-{tag}{tail}"


class _Staging:
    """A hidden staging file or folder under an exclusive flock (so it is never taken for a leftover)."""

    def __init__(self, parent: Path, name: str, folder: bool) -> None:
        self.path = parent / _staging_name(name)
        self.folder = folder
        self.fd = -1
        if folder:
            os.mkdir(self.path, 0o777)
        try:
            if folder:
                self.fd = os.open(self.path, os.O_RDONLY)
            else:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            if folder or self.fd >= 0:  # made here; a file that O_EXCL found existing is not ours
                self.discard()
            raise

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Remove the staging item (whatever the writer left in it) and drop the lock."""
        _remove(self.path)
        self.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name (torch.save, a
    safetensors writer); on success it is fsynced and renamed over ``path``, on any exception
    removed. The file is either the old one or the complete new one, never partial."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder; give a file path")

    def finish(staging: _Staging) -> None:
        os.fsync(staging.fd)
        os.replace(staging.path, target)

    with _staged(target.parent, target, False, finish) as temporary:
        yield temporary
    _fsync_folder(target.parent)


def atomic_write(path: PathLike, data: bytes | str) -> Path:
    """Write a file atomically (`atomic_file`); permissions as any new file. OSErrors become one line."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_file(path) as temporary, open(temporary, "wb") as handle:
        handle.write(payload)
    return Path(path)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _is_leftover(path: Path) -> bool:
    """True when a staging item's lock is free and its creator is gone (or it is old)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live run holds it
    finally:
        os.close(fd)
    pid_text = path.name[len(STAGING_PREFIX) :].split("-", 1)[0]
    if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
        return True
    with contextlib.suppress(OSError):
        return time.time() - path.lstat().st_mtime > STALE_AFTER_S
    return False


def remove_stale_staging(folder: PathLike, notice: Notice | None = None) -> list[Path]:
    """Remove the staging items an interrupted run left in `folder`; say so through `notice`."""
    removed = []
    with contextlib.suppress(OSError):
        for path in sorted(Path(folder).iterdir()):
            if path.name.startswith(STAGING_PREFIX) and _is_leftover(path):
                _remove(path)
                removed.append(path)
    for path in removed:
        (notice or _default_notice)(f"removed unfinished output of an interrupted run: {path}")
    return removed


# ---------------------------------------------------------------------------------------------
# publishing


def _publish(staging: Path, target: Path, replace: bool = True) -> None:
    """Rename `staging` to `target` atomically.

    With `replace`, an existing `target` (checked to be ours) is moved aside first and deleted once the
    new one is in place. Without it, a staging folder only takes the place of a missing or empty
    folder: the rename itself fails when another run filled `target` meanwhile.
    """
    aside: Path | None = None
    if replace and (target.is_dir() and not target.is_symlink() or staging.is_dir() and os.path.lexists(target)):
        aside = target.parent / _staging_name(target.name, tag="old-")
        os.rename(target, aside)
    try:
        (os.replace if replace else os.rename)(staging, target)
    except BaseException:
        if aside is not None:
            with contextlib.suppress(OSError):
                os.rename(aside, target)
        raise
    if aside is not None:
        _remove(aside)
    _fsync_folder(target.parent)


@contextlib.contextmanager
def _staged(parent: Path, target: Path, folder: bool, finish: Callable[[_Staging], None]) -> Iterator[Path]:
    """Yield a locked staging item in `parent`; `finish` publishes it on success (SIGTERM deferred).

    On any exception (KeyboardInterrupt and SIGTERM included) the staging item is removed and nothing
    is published; OSErrors about our own paths become one-line ``OutputError``s.
    """
    try:
        staging = _Staging(parent, target.name, folder)
    except OSError as error:
        raise _os_error(target, error, "write") from None
    try:
        yield staging.path
        with deferred_termination():  # a SIGTERM now waits until the publish is complete
            finish(staging)
    except BaseException as error:
        staging.discard()
        if isinstance(error, OSError) and _concerns(error, (staging.path, target)):
            raise _os_error(target, error, "write") from None
        raise
    staging.release()


def _concerns(error: OSError, paths: Iterable[Path]) -> bool:
    """True when the OSError is about one of `paths` or something inside them (or names no file)."""
    names = [name for name in (error.filename, getattr(error, "filename2", None)) if name is not None]
    if not names:
        return error.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
    for name in names:
        text = os.fsdecode(name) if isinstance(name, (str, bytes)) else str(name)
        if any(text == str(path) or text.startswith(str(path) + os.sep) for path in paths):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# a whole folder published at once


def _replaceable(given: Path, target: Path, overwrite: bool) -> bool:
    """Whether publishing at `target` replaces a folder; refuse a file, or a non-empty folder that is
    not ours (always) or is ours without `overwrite`."""
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(f"output path {given} exists and is not a folder; choose a folder path")
    try:
        non_empty = target.is_dir() and any(target.iterdir())
    except OSError as error:
        raise _os_error(given, error, "read") from None
    if not non_empty:
        return False
    own = is_own_folder(target)
    if not own:
        refusal = " even with --overwrite" if overwrite else ""
        raise OutputError(
            f"output folder {given} is not empty and was not written by surgsam2 (it has no {MARKER_NAME});"
            f" refusing to replace it{refusal}: choose another output folder"
        )
    if not overwrite:
        raise OutputError(
            f"output folder {given} is not empty: it holds an earlier run's output"
            " (use --overwrite / overwrite=True to replace it)"
        )
    return True


@contextlib.contextmanager
def staged_folder(
    out_dir: PathLike,
    *,
    overwrite: bool = False,
    inputs: InputPaths | None = None,
    command: str = "",
    notice: Notice | None = None,
) -> Iterator[Path]:
    """Yield a hidden staging folder beside `out_dir`; on success it becomes `out_dir` atomically.

    The published folder carries our marker. `overwrite` replaces only a folder that carries it (an
    empty folder is always fine); a non-empty folder without it is refused, as is an output that
    overlaps `inputs` or is a protected folder. On any exception nothing is published.
    """
    given = Path(out_dir)
    target = check_output_location(given, inputs)
    _replaceable(given, target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _os_error(given, error, "create output folder") from None
    lock = target.parent / f"{FOLDER_LOCK_PREFIX}{target.name}"  # beside the folder, gone at the end
    acquire_lock(lock, given, command)
    try:
        with _staged_whole_folder(given, target, overwrite, command, notice) as staging:
            yield staging
    finally:
        release_lock(lock, remove=True)


@contextlib.contextmanager
def _staged_whole_folder(
    given: Path, target: Path, overwrite: bool, command: str, notice: Notice | None
) -> Iterator[Path]:
    """`staged_folder`'s staging and publishing, under its lock."""
    _replaceable(given, target, overwrite)
    remove_stale_staging(target.parent, notice)

    def finish(staging: _Staging) -> None:
        fd = os.open(staging.path / MARKER_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:  # a plain write: the whole staging folder is published atomically
            _write_all(fd, _marker_bytes({"folder": _record(command, timed=False)}))
        finally:
            os.close(fd)
        replace = _replaceable(given, target, overwrite)
        try:
            _publish(staging.path, target, replace=replace)
        except OSError as error:
            if replace or error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise OutputError(
                f"output folder {given} was filled by another run while this one was writing;"
                " nothing was replaced: choose another output folder"
            ) from None

    with _staged(target.parent, target, True, finish) as staging:
        yield staging


# ---------------------------------------------------------------------------------------------
# a locked folder that runs publish entries into


class OutputFolder:
    """A locked output folder whose entries (sub-folders or files) are published atomically.

    Use as a context manager (or ``open()`` / ``close()``). Call ``claim`` for every entry before any
    work, then write each with ``stage_dir``, ``stage_file`` or ``write_file``.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        inputs: InputPaths | None = None,
        overwrite: bool = False,
        command: str = "",
        notice: Notice | None = None,
        lock: bool = True,
        files_only: bool = False,
    ) -> None:
        self.given = Path(path)
        # True: the folder only receives named files (a results JSON, an overlay video), so it may be
        # the current or home folder; nothing else in it is ever touched.
        self.files_only = files_only
        self.path = self.given
        self.inputs = dict(inputs or {})
        self.overwrite = bool(overwrite)
        self.command = command
        self.notice = notice
        self.lock = lock  # False: another process of the same run holds the lock (torchrun ranks)
        self.published: set[str] = set()
        self._claimed: set[str] = set()
        self._is_open = False
        self._created = False

    def open(self) -> OutputFolder:
        """Check the location, create the folder, take its lock and remove a killed run's staging."""
        if self._is_open:
            return self
        target = check_output_location(self.given, self.inputs, files_only=self.files_only)
        if os.path.lexists(target) and not target.is_dir():
            raise OutputError(f"output folder {self.given} exists and is a file; choose a folder path")
        created = not os.path.lexists(target)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _os_error(self.given, error, "create output folder") from None
        if self.lock:
            acquire_lock(target / LOCK_NAME, target, self.command)
        self.path, self._is_open, self._created = target, True, created
        remove_stale_staging(target, self.notice)
        return self

    def close(self) -> None:
        """Release the lock. What was published stays; a run that published nothing leaves no lock
        file in a folder without our outputs, and removes a folder it created itself."""
        if not self._is_open:
            return
        self._is_open = False
        if not self.lock:
            return
        # A folder that holds nothing of ours (no entry published, no marker) is left as found.
        no_trace = not self.published and not (self.path / MARKER_NAME).exists()
        release_lock(self.path / LOCK_NAME, remove=no_trace)
        if no_trace and self._created and not is_held(self.path / LOCK_NAME):
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty

    def __enter__(self) -> OutputFolder:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def entry(self, name: str) -> Path:
        """The final path of entry `name`."""
        return self.path / _check_entry_name(name)

    def check_entry(self, name: str, replace_own: bool | None = None) -> bool:
        """May this run write entry `name`? Returns whether it exists; refuses with an OutputError.

        A missing entry is free; one our runs wrote needs `overwrite` (or `replace_own`); anything
        else is never replaced.
        """
        if not self._is_open:
            raise OutputError(f"output folder {self.given} is not open")
        target = self.entry(name)
        if not os.path.lexists(target):
            return False
        if name in self.published:
            return True
        entries = read_marker(self.path).get("entries", {})
        if target.is_symlink() or name not in entries:
            raise OutputError(
                f"{target} was not written by surgsam2; refusing to replace it; choose another output folder"
            )
        if not (self.overwrite or replace_own):
            raise OutputError(f"{target} exists from an earlier run; pass --overwrite to replace it")
        return True

    def claim(self, name: str, replace_own: bool | None = None) -> bool:
        """``check_entry`` before any work; the same name claimed twice in one run is refused."""
        if name in self._claimed:
            raise OutputError(f"two outputs of this run are both named {name!r} in {self.path}; rename one")
        exists = self.check_entry(name, replace_own)
        self._claimed.add(name)
        return exists

    def _finisher(self, name: str, replace_own: bool | None, record: bool = True) -> Callable[[_Staging], None]:
        def finish(staging: _Staging) -> None:
            if not staging.folder:
                os.fsync(staging.fd)
            with LOCK_GUARD:
                self.check_entry(name, replace_own)
                if not record:
                    _publish(staging.path, self.path / name)
                    self.published.add(name)
                    return
                previous = self._mark(name, _record(self.command))
                try:
                    _publish(staging.path, self.path / name)
                except BaseException:
                    with contextlib.suppress(Exception):
                        self._mark(name, previous)
                    raise
            self.published.add(name)

        return finish

    def _mark(self, name: str, record: dict[str, str] | None) -> dict[str, str] | None:
        """Set (or with None, drop) entry `name` in the marker; returns its previous record."""
        marker = read_marker(self.path)
        entries = marker.setdefault("entries", {})
        previous = entries.pop(name, None)
        if record is not None:
            entries[name] = record
        atomic_write(self.path / MARKER_NAME, _marker_bytes(marker))
        return previous

    @contextlib.contextmanager
    def stage_dir(self, name: str, replace_own: bool | None = None, record: bool = True) -> Iterator[Path]:
        """Yield a staging folder published as entry `name` on success (removed on any exception).

        ``record=False`` publishes without listing the entry in the marker: for a process that does
        not hold the lock, whose entries the lock holder lists afterwards with `record`.
        """
        self.check_entry(name, replace_own)
        with _staged(self.path, self.path / name, True, self._finisher(name, replace_own, record)) as staging:
            yield staging

    def record(self, names: Iterable[str]) -> None:
        """List entries published with ``record=False`` (by this or another process) as ours."""
        names = [_check_entry_name(name) for name in names]
        with LOCK_GUARD:
            marker = read_marker(self.path)
            entries = marker.setdefault("entries", {})
            for name in names:
                entries[name] = _record(self.command)
            atomic_write(self.path / MARKER_NAME, _marker_bytes(marker))
        self.published.update(names)

    def remove_own(self, name: str) -> bool:
        """Remove entry `name` if our runs wrote it and ``overwrite`` was given (an earlier run's
        output of something that failed this time); anything else is left alone."""
        target = self.entry(name)
        with LOCK_GUARD:
            if not self.overwrite or name not in read_marker(self.path).get("entries", {}):
                return False
            if os.path.lexists(target) and not target.is_symlink():
                _remove(target)
            self._mark(name, None)
        self.published.discard(name)
        return True

    @contextlib.contextmanager
    def stage_file(self, name: str, replace_own: bool | None = None) -> Iterator[Path]:
        """Yield a temp file path (same suffix as `name`) published as entry `name` on success."""
        self.check_entry(name, replace_own)
        with _staged(self.path, self.path / name, False, self._finisher(name, replace_own)) as staging:
            yield staging

    def write_file(self, name: str, data: bytes | str, *, replace_own: bool | None = None) -> Path:
        """Write entry `name` atomically; `replace_own=True` rewrites our own file without overwrite."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        with self.stage_file(name, replace_own) as temp:
            with open(temp, "wb") as handle:
                handle.write(payload)
        return self.path / name
