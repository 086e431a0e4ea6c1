"""``manifest.json`` of an exported model: what was exported and how to check it is intact.

Torch-free (json and hashlib only), so that a runtime without PyTorch can read it. It records the
model config, image size, input normalisation, memory policy and slot counts, and per graph its
file, sha256, precision (fp32: the files are stored in fp32), and input/output names, shapes and
dtypes, and the precisions each engine can run the files in (``engine_precisions``). `load_manifest` refuses, in
one line each, a missing or altered file, a manifest of another package version, or of another
model config or image size than the caller expects.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from surgsam2 import __version__

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "surgsam2-onnx"
# 2: memory attention reads each memory's keys, computed once by the memory_keys graph.
MANIFEST_VERSION = 2


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (with its format and version fields) as folder/manifest.json."""
    payload = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, **manifest}
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def _read(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ONNX export manifest here (run `surgsam2 export` into {folder})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a surgsam2 ONNX manifest")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path}: manifest format {manifest.get('format_version')!r}, this surgsam2 reads format"
            f" {MANIFEST_VERSION}; export again"
        )
    return manifest


def _check_graphs(folder: Path, manifest: dict[str, Any]) -> None:
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise ValueError(f"{folder / MANIFEST_NAME}: lists no graphs")
    for name, graph in graphs.items():
        path = folder / str(graph.get("file", ""))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: graph {name!r} of the manifest is missing; export again")
        if file_sha256(path) != graph.get("sha256"):
            raise ValueError(f"{path}: graph {name!r} was altered (sha256 differs from the manifest); export again")


def load_manifest(
    folder: str | Path, *, model: str | None = None, image_size: int | None = None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The verified manifest of an export folder: every graph file present with its checksum, made
    by this package version, and (when given) of ``model``, ``image_size`` and ``config``."""
    folder = Path(folder)
    manifest = _read(folder)
    where = folder / MANIFEST_NAME
    if manifest.get("package_version") != __version__:
        raise ValueError(
            f"{where}: exported by surgsam2 {manifest.get('package_version')}, this is {__version__}; export again"
        )
    exported = manifest.get("model", {})
    if model is not None and exported.get("name") != model:
        raise ValueError(f"{where}: exports model {exported.get('name')!r}, expected {model!r}")
    if image_size is not None and manifest.get("image_size") != image_size:
        raise ValueError(f"{where}: exported at image size {manifest.get('image_size')}, expected {image_size}")
    if config is not None and exported.get("config") != config:
        recorded = exported.get("config", {})
        differing = sorted(key for key in set(config) | set(recorded) if config.get(key) != recorded.get(key))
        raise ValueError(f"{where}: exported with another model config (differs in {', '.join(differing[:5])})")
    _check_graphs(folder, manifest)
    return manifest


__all__ = ["MANIFEST_NAME", "file_sha256", "load_manifest", "write_manifest"]
