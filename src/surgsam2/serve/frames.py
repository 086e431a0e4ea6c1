"""A clip's frames as a lazily read, bounded-cache sequence, opened only from safe places: a
frame folder or video under the data directory, or an upload kept in the session's temp dir."""

from __future__ import annotations

import zipfile
from pathlib import Path

from surgsam2.data.vos import IMAGE_EXTENSIONS
from surgsam2.pipelines.replay import DEFAULT_CACHE_BYTES, decode_video_to_folder
from surgsam2.pipelines.replay import FrameSequence as LazyFrames

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
ZIP_EXPANSION_LIMIT = 20  # a zip may unpack to at most this many times the upload limit


def resolve_in_data_dir(data_dir: Path | None, relative: str) -> Path:
    """The path ``relative`` names inside ``data_dir``; refuses absolute paths, ``..`` and symlinks
    that lead outside it (ValueError), and missing paths (FileNotFoundError)."""
    if data_dir is None:
        raise ValueError("the server was started without --data-dir: upload a video or a zip of frames instead")
    if not relative or "\x00" in relative:
        raise ValueError("empty path")
    candidate = Path(relative)
    if candidate.is_absolute() or relative.startswith(("/", "\\")) or ":" in candidate.parts[0]:
        raise ValueError(f"path {relative!r} must be relative to the data directory")
    if ".." in candidate.parts or ".." in relative.replace("\\", "/").split("/"):
        raise ValueError(f"path {relative!r} may not contain '..'")
    root = data_dir.resolve()
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"path {relative!r} leads outside the data directory")
    if not resolved.exists():
        raise FileNotFoundError(f"no such file or folder in the data directory: {relative}")
    return resolved


def list_data_dir(data_dir: Path | None, limit: int = 500) -> list[dict[str, str]]:
    """Frame folders and video files under ``data_dir`` (two levels), as relative paths."""
    if data_dir is None:
        return []
    root = data_dir.resolve()
    entries: list[dict[str, str]] = []
    for path in sorted(root.glob("*")) + sorted(root.glob("*/*")):
        if len(entries) >= limit:
            break
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            continue  # a symlink out of the data directory is not offered
        if path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
            entries.append({"path": path.relative_to(root).as_posix(), "kind": "frames"})
        elif path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            entries.append({"path": path.relative_to(root).as_posix(), "kind": "video"})
    return entries


def extract_frame_zip(archive: Path, folder: Path, max_bytes: int) -> Path:
    """Unpack the image files of a zip of frames flat into ``folder``; refuses member names with
    folders or '..', duplicate names, and archives that unpack to more than ``max_bytes``."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ValueError("the upload is not a readable zip file") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_EXTENSIONS]
        if not members:
            raise ValueError(f"the zip holds no frames ({'/'.join(IMAGE_EXTENSIONS)} files)")
        if sum(m.file_size for m in members) > max_bytes:
            raise ValueError(f"the zip unpacks to more than {max_bytes // 2**20} MB")
        folder.mkdir(parents=True, exist_ok=True)
        names: set[str] = set()
        for member in members:
            name = member.filename.replace("\\", "/")
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"zip member {member.filename!r} has an unsafe name")
            base = name.rsplit("/", 1)[-1]
            if base.startswith(".") or base in names:
                raise ValueError(f"zip member {member.filename!r} is hidden or a duplicate frame name")
            names.add(base)
            (folder / base).write_bytes(zf.read(member))
    return folder


def open_frames(path: Path, work_dir: Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> LazyFrames:
    """Frames of a frame folder, or of a video file decoded into ``work_dir`` first."""
    if path.is_dir():
        return LazyFrames(path, cache_bytes)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise ValueError(f"unsupported file {path.name}: open a frame folder or a video ({', '.join(VIDEO_EXTENSIONS)})")
    return LazyFrames(decode_video_to_folder(path, work_dir / "frames"), cache_bytes)
