"""What the ONNX parity tests share: random parity models, a synthetic clip, the 3-object prompt
script of issue 15, and one pass over a clip that steps the torch `Tracker` and the `OnnxTracker`
side by side for several memory policies and records the worst mask IoU.

The image encoder runs once per frame and engine: the trackers of one engine get the same
features for every policy (the graphs themselves are checked in tests/test_export_onnx.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video
from surgsam2.export.runtime import OnnxTracker
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model, build_model
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.tracker import Tracker

# The torch-free venv `make install-onnx` (and so `make test`) builds.
ONNX_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-onnx" / "bin" / "python"


def require_onnx_venv() -> Path:
    """The torch-free venv's python. Missing: a failure in CI (where `make test` builds it), a
    skip elsewhere (a developer's plain pytest run)."""
    if not ONNX_VENV_PYTHON.is_file():
        message = f"{ONNX_VENV_PYTHON} is missing: `make install-onnx` builds the torch-free venv"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return ONNX_VENV_PYTHON


# ONNX Runtime's threads in these tests: one under pytest-xdist, whose workers share the cores (as
# torch's one thread there, tests/conftest.py); the runtime's default otherwise.
ORT_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else None

IOU_BAR = 0.999  # mask IoU per object and frame, ONNX runtime vs torch tracker (issue 15)
ADD_OBJECT_FRAME = 8
CORRECTION_FRAME = 16


def random_model(name: str, image_size: int | None = None) -> SAM2Model:
    """Random weights with the object-score head biased to 'visible', as the parity tests do."""
    torch.manual_seed(0)
    model = build_model(get_config(name, image_size)).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


def synthetic_clip(frames: int, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames, id maps) of a synthetic clip of ``size`` = (width, height)."""
    config = SyntheticVideoConfig(width=size[0], height=size[1], num_frames=frames, seed=seed)
    video = generate_synthetic_video(config)
    return video.frames, video.id_maps


def prompt_script(frames: np.ndarray) -> dict[int, dict[int, Prompt]]:
    """Object 1 a mask and object 2 points on frame 0, object 3 a box added on frame 8, a
    corrective click on object 2 on frame 16."""
    height, width = frames.shape[1:3]
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 4 : width // 2] = True
    return {
        0: {1: Prompt(mask=mask), 2: Prompt(points=[(width * 0.7, height * 0.6), (width * 0.2, height * 0.8)], labels=[1, 0])},
        ADD_OBJECT_FRAME: {3: Prompt(box=(width * 0.5, height * 0.1, width * 0.9, height * 0.4))},
        CORRECTION_FRAME: {2: Prompt(points=[(width * 0.6, height * 0.7)], labels=[1])},
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass
class ParityRecord:
    """One policy's comparison: the worst IoU with its frame and object, and how many object-frames
    were compared (and how many of them had a non-empty torch mask)."""

    worst: float = 1.0
    worst_frame: int = -1
    worst_object: int = -1
    pairs: int = 0
    nonempty: int = 0
    id_mismatch: str = ""

    def add(self, frame: int, obj_id: int, got: np.ndarray, expected: np.ndarray) -> None:
        value = iou(got, expected)
        if value < self.worst:
            self.worst, self.worst_frame, self.worst_object = value, frame, obj_id
        self.pairs += 1
        self.nonempty += int(expected.any())

    def summary(self, label: str) -> str:
        where = f"frame {self.worst_frame}, object {self.worst_object}" if self.worst_frame >= 0 else "every mask equal"
        return f"{label}: worst mask IoU {self.worst:.6f} ({where}) over {self.pairs} object-frames ({self.nonempty} non-empty)"


def _step_onnx(tracker: OnnxTracker, frame: np.ndarray, prompts, features: dict[str, np.ndarray]):
    """`OnnxTracker.step` with this frame's image-encoder outputs already computed."""
    tracker.encode_frame = lambda _frame: features  # type: ignore[method-assign]
    try:
        return tracker.step(frame, prompts)
    finally:
        del tracker.encode_frame


def compare_engines(
    model: SAM2Model, folder: Path, frames: np.ndarray, policies: tuple[str, ...] = ("fifo", "efp")
) -> dict[str, ParityRecord]:
    """Step a torch `Tracker` and an `OnnxTracker` per policy over ``frames`` with `prompt_script`;
    per policy the IoU record of every object and frame (object ids must match on every frame)."""
    script = prompt_script(frames)
    torch_trackers = {memory: Tracker(model, memory=memory) for memory in policies}
    onnx_trackers = {memory: OnnxTracker(folder, memory=memory, threads=ORT_THREADS) for memory in policies}
    records = {memory: ParityRecord() for memory in policies}
    any_torch, any_onnx = torch_trackers[policies[0]], onnx_trackers[policies[0]]
    for index, frame in enumerate(frames):
        prompts = script.get(index)
        torch_features = any_torch.encode_frame(frame)
        onnx_features = any_onnx.encode_frame(frame)
        for memory in policies:
            expected = torch_trackers[memory].step(frame, prompts, features=torch_features)
            got = _step_onnx(onnx_trackers[memory], frame, prompts, onnx_features)
            record = records[memory]
            if got.object_ids != expected.object_ids and not record.id_mismatch:
                record.id_mismatch = f"frame {index}: onnx {got.object_ids}, torch {expected.object_ids}"
            for obj_id in set(expected.object_ids) & set(got.object_ids):
                record.add(index, obj_id, got.masks[obj_id], expected.masks[obj_id])
    return records


def assert_parity(record: ParityRecord, label: str) -> None:
    """IoU >= IOU_BAR everywhere, same objects on every frame, and enough non-empty masks."""
    print(record.summary(label) + f"; bar {IOU_BAR}, margin {record.worst - IOU_BAR:+.6f}")
    assert not record.id_mismatch, f"{label}: object ids differ on {record.id_mismatch}"
    assert record.worst >= IOU_BAR, record.summary(label)
    assert record.nonempty >= record.pairs // 2, f"{label}: too few non-empty masks for the comparison to mean anything"
