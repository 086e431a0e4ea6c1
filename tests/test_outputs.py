"""surgsam2.data.outputs: where outputs may go, the folder lock, the marker, atomic staging, SIGTERM."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from surgsam2.data import outputs
from surgsam2.data.outputs import (
    LOCK_NAME,
    MARKER_NAME,
    STAGING_PREFIX,
    OutputError,
    OutputFolder,
    atomic_write,
    check_output_location,
    read_marker,
    remove_stale_staging,
    staged_folder,
)
from surgsam2.data.termination import Terminated, terminate_as_interrupt

SRC = Path(outputs.__file__).resolve().parents[2]

# A helper process: "lock" holds an OutputFolder open, "stage" also stages an entry in it, "whole"
# stages a whole folder with staged_folder. It prints "ready <pid>" and sleeps; a SIGTERM becomes
# Terminated (exit 143) when "term" is given.
HELPER = textwrap.dedent(
    """
    import contextlib, os, sys, time
    from pathlib import Path
    from surgsam2.data.outputs import OutputFolder, staged_folder
    from surgsam2.data.termination import Terminated, terminate_as_interrupt

    mode, out, handle_term = sys.argv[1], Path(sys.argv[2]), sys.argv[3:] == ["term"]
    try:
        with contextlib.ExitStack() as stack:
            if handle_term:
                stack.enter_context(terminate_as_interrupt())
            if mode == "whole":
                staging = stack.enter_context(staged_folder(out))
            else:
                folder = stack.enter_context(OutputFolder(out, command="helper " + mode))
                if mode == "stage":
                    staging = stack.enter_context(folder.stage_dir("video"))
            if mode != "lock":
                (staging / "00000.png").write_bytes(b"x")
            print("ready", os.getpid(), flush=True)
            time.sleep(60)
    except Terminated:
        sys.exit(143)
    """
)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def _helper(mode: str, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-c", HELPER, mode, str(out), *extra], stdout=subprocess.PIPE, text=True, env=env
    )
    line = process.stdout.readline()
    assert line.startswith("ready"), f"helper did not start: {line!r}"
    return process


def _stop(process: subprocess.Popen, sig: int) -> int:
    process.send_signal(sig)
    code = process.wait(timeout=30)
    process.stdout.close()
    return code


def _staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX))


# --- where outputs may go -----------------------------------------------------------------------


def test_output_overlapping_an_input_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "D"
    (data / "Annotations" / "v").mkdir(parents=True)
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"w")
    inputs = {"--gt_root": data / "Annotations", "--checkpoint": ckpt, "frames": None}
    cases = {
        data / "Annotations": "is the input --gt_root",
        data / "Annotations" / "v" / "new": "lies inside the input --gt_root",
        data: "contains the input --gt_root",
        tmp_path / "models": "contains the input --checkpoint",
    }
    for output, expected in cases.items():
        with pytest.raises(OutputError) as error:
            check_output_location(output, inputs)
        assert expected in _one_line(error) and str(output) in str(error.value)
    link = tmp_path / "link"
    link.symlink_to(data / "Annotations")
    with pytest.raises(OutputError, match="is the input --gt_root"):
        check_output_location(link, inputs)
    with pytest.raises(OutputError, match="lies inside the input --gt_root"):
        check_output_location(link / "not_yet", inputs)
    # several paths for one role; unrelated inputs are fine and the resolved output is returned
    with pytest.raises(OutputError, match="input frames"):
        check_output_location(tmp_path / "f2" / "out", {"frames": [tmp_path / "f1", tmp_path / "f2"]})
    assert check_output_location(tmp_path / "out", inputs) == (tmp_path / "out").resolve()
    with pytest.raises(OutputError, match="is the input --gt_root"):
        OutputFolder(data / "Annotations", inputs=inputs).open()
    with pytest.raises(OutputError, match="contains the input --gt_root"):
        with staged_folder(data, overwrite=True, inputs=inputs):
            pass
    assert (data / "Annotations" / "v").is_dir()


def test_protected_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for path, reason in [
        (work, "the current folder"),
        (Path("."), "the current folder"),
        (tmp_path, "a parent of the current folder"),
        (tmp_path / "home", "the home folder"),
        (Path("/"), "the filesystem root"),
    ]:
        with pytest.raises(OutputError) as error:
            check_output_location(path)
        assert reason in _one_line(error)
    with pytest.raises(OutputError, match="the current folder"):
        with staged_folder(work):  # even empty: renaming onto the current folder is never right
            pass
    assert check_output_location("out") == work.resolve() / "out"


def test_a_failed_run_leaves_a_folder_it_made_as_it_found_it(tmp_path: Path) -> None:
    made, existing = tmp_path / "made", tmp_path / "existing"
    existing.mkdir()
    (existing / "video").mkdir()  # the user's, named like an entry
    for out in (made, existing):
        with pytest.raises(RuntimeError), OutputFolder(out) as folder:
            with folder.stage_dir("video2"):
                raise RuntimeError("boom")
    with pytest.raises(OutputError, match="not written by surgsam2"), OutputFolder(existing, overwrite=True) as folder:
        folder.claim("video")
    assert not made.exists()  # made by the run, nothing published: removed
    assert sorted(p.name for p in existing.iterdir()) == ["video"]  # the user's folder as it was, no lock file
    with OutputFolder(made) as folder:
        folder.write_file("results.json", "{}")
    assert sorted(p.name for p in made.iterdir()) == sorted([LOCK_NAME, MARKER_NAME, "results.json"])


def test_output_folder_that_is_a_file_or_under_a_file(tmp_path: Path) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    with pytest.raises(OutputError, match="exists and is a file") as error:
        OutputFolder(existing).open()
    _one_line(error)
    with pytest.raises(OutputError) as error:
        OutputFolder(existing / "out").open()
    assert "cannot create output folder" in _one_line(error) and "Not a directory" in str(error.value)
    with pytest.raises(OutputError, match="is not a folder"):
        with staged_folder(existing, overwrite=True):
            pass
    assert existing.read_text() == "mine"


# --- the lock -----------------------------------------------------------------------------------


def test_a_whole_folder_being_written_is_locked(tmp_path: Path) -> None:
    """Two runs writing one dataset folder (synth, convert-endovis): the second is refused at once,
    not after doing its work, and no lock file is left beside the folder afterwards."""
    out = tmp_path / "ds"
    holder = _helper("whole", out)
    try:
        with pytest.raises(OutputError) as error:
            with staged_folder(out, overwrite=True):
                pass
        assert "is in use by another surgsam2 run" in _one_line(error)
    finally:
        _stop(holder, signal.SIGKILL)
    with staged_folder(out) as staging:
        (staging / "meta.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(STAGING_PREFIX)) == ["ds"]


def test_second_process_is_refused_and_lock_is_never_stale(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = _helper("lock", out)
    try:
        with pytest.raises(OutputError) as error:
            OutputFolder(out).open()
        message = _one_line(error)
        assert "is in use by another surgsam2 run" in message and f"pid {holder.pid}, started" in message
        assert "helper lock" in message
    finally:
        _stop(holder, signal.SIGKILL)  # killed: the OS drops its lock
    with OutputFolder(out) as folder:
        folder.write_file("results.json", "{}")
    assert (out / "results.json").read_text() == "{}"


def test_same_process_may_reopen_a_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def locked_elsewhere() -> bool:
        fd = os.open(out / LOCK_NAME, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    with OutputFolder(out) as first:
        with OutputFolder(out) as second:
            second.write_file("a.json", "1")
        assert locked_elsewhere()  # still held by `first`
        first.write_file("b.json", "2")
    assert not locked_elsewhere()
    assert sorted(read_marker(out)["entries"]) == ["a.json", "b.json"]
    folder = OutputFolder(out).open()
    folder.open()  # opening an open folder is a no-op
    folder.close()
    folder.close()
    assert not locked_elsewhere()


# --- the marker ---------------------------------------------------------------------------------


def test_marker_written_and_respected(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "user_folder").mkdir(parents=True)
    (out / "user_folder" / "keep.png").write_bytes(b"user")
    (out / "notes.txt").write_text("user")
    with OutputFolder(out, command="segment") as folder:
        assert folder.claim("video") is False
        with folder.stage_dir("video") as staging:
            (staging / "00000.png").write_bytes(b"first")
        folder.write_file("results.json", '{"run": 1}')
        folder.write_file("results.json", '{"run": 1.5}')  # this run's own entry: no overwrite needed
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["format"] == "surgsam2-output" and sorted(marker["entries"]) == ["results.json", "video"]
    assert marker["entries"]["video"]["command"] == "segment" and marker["entries"]["video"]["version"]
    assert "time" in marker["entries"]["video"]

    with OutputFolder(out) as folder:  # ours, no overwrite: refused before any work
        with pytest.raises(OutputError) as error:
            folder.claim("video")
        assert "exists from an earlier run; pass --overwrite" in _one_line(error)
        with pytest.raises(OutputError, match="pass --overwrite"):
            folder.write_file("results.json", "{}")
        folder.write_file("results.json", '{"run": 2}', replace_own=True)
        for name in ("notes.txt", "user_folder"):  # not ours: refused even when replacing our own
            with pytest.raises(OutputError) as error:
                folder.write_file(name, "x", replace_own=True)
            assert "was not written by surgsam2; refusing to replace it" in _one_line(error)
    assert json.loads((out / "results.json").read_text()) == {"run": 2}

    with OutputFolder(out, overwrite=True) as folder:
        for name in ("notes.txt", "user_folder"):
            with pytest.raises(OutputError, match="not written by surgsam2"):
                folder.claim(name)
            with pytest.raises(OutputError, match="not written by surgsam2"):
                with folder.stage_dir(name):
                    pass
        assert folder.claim("video") is True
        with pytest.raises(OutputError, match="both named 'video'"):
            folder.claim("video")
        with folder.stage_dir("video") as staging:
            (staging / "00001.png").write_bytes(b"second")
    assert sorted(p.name for p in (out / "video").iterdir()) == ["00001.png"]
    assert (out / "notes.txt").read_text() == "user" and (out / "user_folder" / "keep.png").read_bytes() == b"user"
    assert _staging(out) == []


def test_entry_names_are_plain(tmp_path: Path) -> None:
    with OutputFolder(tmp_path / "out") as folder:
        for name in ("", ".", "..", "../x", "a/b", MARKER_NAME, LOCK_NAME, STAGING_PREFIX + "1-2-x"):
            with pytest.raises(OutputError) as error:
                folder.claim(name)
            _one_line(error)
    with pytest.raises(OutputError, match="is not open"):
        OutputFolder(tmp_path / "out").claim("x")


# --- staging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_staging_removed_and_nothing_published_on_failure(tmp_path: Path, failure: BaseException) -> None:
    out = tmp_path / "out"
    with OutputFolder(out) as folder:
        with pytest.raises(type(failure)):
            with folder.stage_dir("video") as staging:
                (staging / "00000.png").write_bytes(b"half")
                raise failure
        with pytest.raises(type(failure)):
            with folder.stage_file("overlay.mp4") as temp:
                assert temp.name.endswith("overlay.mp4") and temp.parent == out
                temp.write_bytes(b"half")
                raise failure
    assert not out.exists()  # made by this run, which published nothing: removed again
    with pytest.raises(type(failure)):
        with staged_folder(tmp_path / "ds") as staging:
            (staging / "meta.json").write_text("{}")
            raise failure
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stage_file_publishes_with_suffix(tmp_path: Path) -> None:
    with OutputFolder(tmp_path / "out") as folder:
        with folder.stage_file("overlay.mp4") as temp:
            assert temp.suffix == ".mp4"
            temp.write_bytes(b"video")
    assert (tmp_path / "out" / "overlay.mp4").read_bytes() == b"video"
    assert "overlay.mp4" in read_marker(tmp_path / "out")["entries"]


def test_stale_staging_of_a_killed_run_is_removed_with_a_notice(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = _helper("stage", out)
    assert _stop(killed, signal.SIGKILL) == -signal.SIGKILL
    left = _staging(out)
    assert len(left) == 1 and left[0].startswith(f"{STAGING_PREFIX}{killed.pid}-")
    notices: list[str] = []
    with OutputFolder(out, notice=notices.append):
        pass
    assert _staging(out) == [] and not (out / "video").exists()
    assert notices == [f"removed unfinished output of an interrupted run: {out / left[0]}"]


def test_live_staging_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = _helper("whole", tmp_path / "ds")
    try:
        left = _staging(tmp_path)
        assert len(left) == 1
        with monkeypatch.context() as patch:
            patch.setattr(outputs, "STALE_AFTER_S", 0.0)  # however old: its lock says it is in use
            assert remove_stale_staging(tmp_path, notice=pytest.fail) == []
        assert _staging(tmp_path) == left
        # a staging item of this process that was just made (not locked yet) is not taken either
        mine = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-0000-x"
        mine.mkdir()
        assert remove_stale_staging(tmp_path, notice=pytest.fail) == []
        mine.rmdir()
    finally:
        _stop(live, signal.SIGKILL)
    with pytest.warns(RuntimeWarning, match="removed unfinished output of an interrupted run"):
        with staged_folder(tmp_path / "ds") as staging:
            (staging / "meta.json").write_text("{}")
    assert _staging(tmp_path) == [] and (tmp_path / "ds" / "meta.json").is_file()


# --- OS errors become one line ------------------------------------------------------------------


def test_full_disk_while_publishing_is_one_line_and_keeps_the_old_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with OutputFolder(out) as folder:
        with folder.stage_dir("video") as staging:
            (staging / "00000.png").write_bytes(b"old")
    real_replace = os.replace

    def full(src: object, dst: object) -> None:
        if Path(str(dst)).name == "video":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with OutputFolder(out, overwrite=True) as folder:
        with pytest.raises(OutputError) as error:
            with folder.stage_dir("video") as staging:
                (staging / "00000.png").write_bytes(b"new")
        assert _one_line(error) == f"cannot write {out / 'video'}: No space left on device"
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out / "video" / "00000.png").read_bytes() == b"old"  # the old entry is back in place
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MARKER_NAME, "video"])
    assert "video" in read_marker(out)["entries"]


def test_os_errors_inside_staging(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputFolder(out) as folder:
        with pytest.raises(OutputError) as error:
            with folder.stage_dir("video") as staging:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "00003.png"))
        assert _one_line(error) == f"cannot write {out / 'video'}: No space left on device"
        with pytest.raises(FileNotFoundError):  # not about our output: left as it is
            with folder.stage_dir("video"):
                open(tmp_path / "missing_input.jpg", "rb")
        with pytest.raises(OutputError) as error:  # a full disk reported without a file name
            with folder.stage_file("results.json"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        assert _one_line(error) == f"cannot write {out / 'results.json'}: No space left on device"
    assert not out.exists()  # made by this run, which published nothing: removed again


def test_results_files_are_readable_like_masks(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        with OutputFolder(tmp_path / "out") as folder:
            results = folder.write_file("results.json", "{}")
            with folder.stage_dir("video") as staging:
                (staging / "00000.png").write_bytes(b"m")
            with folder.stage_file("overlay.mp4") as temp:
                temp.write_bytes(b"v")
        single = atomic_write(tmp_path / "bench.json", b"{}")
        with staged_folder(tmp_path / "ds") as staging:
            (staging / "meta.json").write_text("{}")
    finally:
        os.umask(previous)
    for path in (results, single, tmp_path / "out" / "overlay.mp4", tmp_path / "ds" / MARKER_NAME):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for path in (tmp_path / "out" / "video", tmp_path / "ds"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_write(tmp_path, "x")
    with pytest.raises(OutputError) as error:
        atomic_write(target / "under_a_file.json", "x")
    assert "Not a directory" in _one_line(error)


# --- whole folders ------------------------------------------------------------------------------


def test_staged_folder_replaces_only_its_own_folders(tmp_path: Path) -> None:
    ours, foreign, empty = tmp_path / "ours", tmp_path / "foreign", tmp_path / "empty"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "frame.jpg").write_bytes(b"user")
    empty.mkdir()
    with staged_folder(ours, command="synth") as staging:
        (staging / "a.txt").write_text("a")
    assert read_marker(ours)["folder"]["command"] == "synth"
    assert "time" not in read_marker(ours)["folder"]  # equal runs publish equal folders, byte for byte
    with pytest.raises(OutputError) as error:
        with staged_folder(ours):
            pass
    assert "not empty" in _one_line(error) and "--overwrite" in str(error.value)
    with staged_folder(ours, overwrite=True) as staging:
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in ours.iterdir()) == [MARKER_NAME, "b.txt"]
    for overwrite in (False, True):
        with pytest.raises(OutputError) as error:
            with staged_folder(foreign, overwrite=overwrite):
                pytest.fail("refused before any work")
        assert "was not written by surgsam2" in _one_line(error) and "choose another output folder" in str(error.value)
    assert (foreign / "sub" / "frame.jpg").read_bytes() == b"user"
    with staged_folder(empty) as staging:
        (staging / "c.txt").write_text("c")
    assert (empty / "c.txt").read_text() == "c"
    # an OutputFolder's marker lists entries, it does not make the whole folder ours
    mixed = tmp_path / "mixed"
    with OutputFolder(mixed) as folder:
        folder.write_file("results.json", "{}")
    (mixed / "user.txt").write_text("user")
    with pytest.raises(OutputError, match="not written by surgsam2"):
        with staged_folder(mixed, overwrite=True):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign", "mixed", "ours"]


def test_staged_folder_filled_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputError) as error:
        with staged_folder(out) as staging:
            (staging / "mine.txt").write_text("mine")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")  # another program wrote here meanwhile
    assert "not written by surgsam2" in _one_line(error)
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and _staging(tmp_path) == []


# --- SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_cleans_staging_and_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = _helper("stage", out, "term")
    assert _staging(out)
    assert _stop(process, signal.SIGTERM) == 143
    assert not out.exists()  # no staging, no "video", no marker: the folder the run made is gone
    process = _helper("whole", tmp_path / "ds", "term")
    assert _stop(process, signal.SIGTERM) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with OutputFolder(out) as folder:  # the lock went with the process
        folder.write_file("results.json", "{}")


def test_terminate_as_interrupt_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as error:
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert isinstance(error.value, KeyboardInterrupt) and error.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before

    # a SIGTERM during a publish's renames waits until the entry is fully in place
    out = tmp_path / "out"
    with OutputFolder(out) as folder:
        with folder.stage_dir("video") as staging:
            (staging / "00000.png").write_bytes(b"old")
    real_replace = os.replace

    def signalled(src: object, dst: object) -> None:
        if Path(str(dst)).name == "video":
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", signalled)
    with pytest.raises(Terminated):
        with terminate_as_interrupt(), OutputFolder(out, overwrite=True) as folder:
            with folder.stage_dir("video") as staging:
                (staging / "00000.png").write_bytes(b"new")
    assert (out / "video" / "00000.png").read_bytes() == b"new"
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, MARKER_NAME, "video"])
