"""ONNX export of the tracking step (issue 15, first step): nano's graphs against our torch parts
(tests/onnx_graph_checks.py: |onnx - torch| <= 1e-4 * max(1, |torch|); the Hiera models' in
tests/test_onnx_video_parity.py), the validity masks of memory attention, the manifest checks,
and the `surgsam2 export` command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import onnxruntime as ort

from onnx_graph_checks import assert_close, check_all_graphs, memory_case, run_image_encoder, sessions
from onnx_parity import random_model
from surgsam2 import __version__
from surgsam2.export.manifest import load_manifest
from surgsam2.export.onnx_export import ExportOptions, SlotCounts, export_onnx
from surgsam2.export.runtime import OnnxTracker
from surgsam2.memory.policy_table import DEFAULT_POLICY
from surgsam2.model.sam2 import SAM2Model


@pytest.fixture(scope="module")
def nano_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[SAM2Model, Path, dict[str, ort.InferenceSession]]:
    model = random_model("nano")
    folder = tmp_path_factory.mktemp("nano_onnx")
    export_onnx(model, folder, ExportOptions())
    assert not model.training, "the export left the model in training mode"
    return model, folder, sessions(folder)


def test_nano_graphs_equal_torch_parts(nano_export) -> None:
    model, folder, _ = nano_export
    check_all_graphs(model, folder, "nano 256")


def test_invalid_memory_slots_contribute_nothing(nano_export) -> None:
    """Changing what an invalid slot holds does not change the output at all."""
    model, _, parts = nano_export
    slots = SlotCounts.of(model, ExportOptions().conditioning_slots)
    features = run_image_encoder(model, parts["image_encoder"], seed=4)
    case = memory_case(model, slots, seed=5)
    base = {"image_embedding": features.embedding.numpy(), "image_position": features.position.numpy()}
    first = parts["memory_attention"].run(None, {**base, **{k: v.numpy() for k, v in case.items()}})[0]
    case["memory_tokens"][~case["memory_valid"]] = -7.0
    case["memory_keys"][~case["memory_valid"]] = 5.0
    case["pointers"][~case["pointer_valid"]] = 3.0
    case["pointer_offsets"][~case["pointer_valid"]] = 0
    second = parts["memory_attention"].run(None, {**base, **{k: v.numpy() for k, v in case.items()}})[0]
    assert np.array_equal(first, second)


def test_trailing_empty_slots_can_be_left_out(nano_export) -> None:
    """The slot axis is dynamic: memory attention over the slots some object fills equals memory
    attention over all the export's slots with the rest invalid (|delta| <= 1e-4 x max(1, |ref|))."""
    model, _, parts = nano_export
    slots = SlotCounts.of(model, ExportOptions().conditioning_slots)
    features = run_image_encoder(model, parts["image_encoder"], seed=6)
    case = memory_case(model, slots, seed=7)
    filled = 3
    case["memory_valid"][:, filled:] = False
    base = {"image_embedding": features.embedding.numpy(), "image_position": features.position.numpy()}
    full = parts["memory_attention"].run(None, {**base, **{k: v.numpy() for k, v in case.items()}})[0]
    trimmed_case = {k: (v[:, :filled] if k.startswith("memory_") else v) for k, v in case.items()}
    trimmed = parts["memory_attention"].run(None, {**base, **{k: v.numpy() for k, v in trimmed_case.items()}})[0]
    assert_close(f"memory_attention over {filled} of {slots.memory_slots} slots", trimmed, torch.from_numpy(full))


def test_manifest_records_the_export(nano_export) -> None:
    model, folder, _ = nano_export
    manifest = load_manifest(folder, model="nano", image_size=256)
    assert manifest["package_version"] == __version__
    assert manifest["memory"]["policy"] == DEFAULT_POLICY and manifest["memory"]["memory_slots"] == 4 + model.num_maskmem - 1
    assert manifest["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    attention = manifest["graphs"]["memory_attention"]
    assert [i["name"] for i in attention["inputs"]][2:6] == ["memory_tokens", "memory_keys", "memory_slots", "memory_valid"]
    assert manifest["memory"]["memory_slots"] == 4 + model.num_maskmem - 1  # the most the host may pass
    assert attention["inputs"][2]["shape"][1:] == ["slots", 256, model.mem_dim]
    layers = model.memory_attention.num_layers
    assert attention["inputs"][3]["shape"][1:] == ["slots", layers, 256, model.hidden_dim]
    keys = manifest["graphs"]["memory_keys"]
    assert [i["name"] for i in keys["inputs"]] == ["memory_tokens"] and [o["name"] for o in keys["outputs"]] == ["memory_keys"]
    assert len(keys["outputs"][0]["shape"]) == 4  # (objects, layers, tokens, d_model)
    assert all(graph["precision"] == "fp32" for graph in manifest["graphs"].values())


def copy_export(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_manifest_refuses_altered_missing_or_foreign_exports(nano_export, tmp_path: Path) -> None:
    """A changed or missing graph file, another package version (also when the runtime opens it),
    an older manifest format, another model, image size or config, no manifest: one-line errors."""
    _, folder, _ = nano_export
    altered = copy_export(folder, tmp_path / "altered")
    with open(altered / "mask_decoder.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="mask_decoder.*altered"):
        load_manifest(altered)
    missing = copy_export(folder, tmp_path / "missing")
    (missing / "memory_encoder.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="memory_encoder.*missing"):
        load_manifest(missing)
    other_version = copy_export(folder, tmp_path / "version")
    manifest = json.loads((other_version / "manifest.json").read_text())
    manifest["package_version"] = "0.0.1"
    (other_version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="exported by surgsam2 0.0.1"):
        load_manifest(other_version)
    with pytest.raises(ValueError, match="exported by surgsam2 0.0.1, this is"):
        OnnxTracker(other_version)  # the runtime opens only its own version's exports
    old_format = copy_export(folder, tmp_path / "format")
    manifest = json.loads((old_format / "manifest.json").read_text())
    manifest["format_version"] = 1  # memory attention recomputing every memory's keys
    (old_format / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest format 1, this surgsam2 reads format 2; export again"):
        OnnxTracker(old_format)
    config = dict(load_manifest(folder)["model"]["config"])
    config["num_maskmem"] += 1
    with pytest.raises(ValueError, match=r"another model config \(differs in num_maskmem\)"):
        load_manifest(folder, config=config)
    with pytest.raises(ValueError, match="expected 'sam2.1_hiera_t'"):
        load_manifest(folder, model="sam2.1_hiera_t")
    with pytest.raises(ValueError, match="image size 256, expected 512"):
        load_manifest(folder, image_size=512)
    with pytest.raises(FileNotFoundError, match="no ONNX export manifest"):
        load_manifest(tmp_path)
    for error_path in (altered, missing, other_version, old_format):
        with pytest.raises((ValueError, FileNotFoundError)) as caught:
            load_manifest(error_path)
        assert "\n" not in str(caught.value)


def test_export_command_writes_a_checked_folder_and_refuses_foreign_ones(tmp_path: Path, capsys) -> None:
    from surgsam2.cli import main

    out = tmp_path / "nano_onnx"
    code = main(["export", "--model", "nano", "--random-weights", "--format", "onnx", "--out", str(out), "--memory", "fifo"])
    assert code == 0, capsys.readouterr().err
    assert load_manifest(out, model="nano")["memory"]["policy"] == "fifo"
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    code = main(["export", "--model", "nano", "--random-weights", "--out", str(foreign), "--overwrite"])
    assert code == 2
    assert (foreign / "holiday.jpg").read_bytes() == b"x" and sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["export", "--model", "nano", "--random-weights", "--out", str(tmp_path / "x"), "--opset", "13"]) == 2
