"""The Hiera models of issue 15, `sam2.1_hiera_t` and `sam2.1_hiera_s` at 512 px (random weights,
object-score head biased), exported once each: every graph against our torch part
(|onnx - torch| <= 1e-4 * max(1, |torch|), tests/onnx_graph_checks.py), and whole-video parity of
the ONNX runtime with our torch `Tracker`.

20 frames (480 x 384, resized to 512 by both engines), 3 objects: a mask and points on frame 0, a
box added on frame 8, a corrective click on frame 16; fifo and efp on one export per model and
one pass over the clip. Tolerance: mask IoU >= 0.999 per object and frame (the worst is printed).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from onnx_graph_checks import check_all_graphs
from onnx_parity import ParityRecord, assert_parity, compare_engines, random_model, synthetic_clip
from surgsam2.export.onnx_export import ExportOptions, export_onnx
from surgsam2.model.sam2 import SAM2Model

NUM_FRAMES = 20
FRAME_SIZE = (480, 384)  # width, height
IMAGE_SIZE = 512


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    frames, _ = synthetic_clip(NUM_FRAMES, FRAME_SIZE, seed=3)
    return frames


@pytest.fixture(scope="class")
def hiera_export(request: pytest.FixtureRequest, tmp_path_factory) -> tuple[str, SAM2Model, Path]:
    """The test class's model with random weights and its export (default options: efp recorded,
    fifo also run)."""
    name = request.cls.MODEL
    start = time.perf_counter()
    model = random_model(name, IMAGE_SIZE)
    folder = Path(tmp_path_factory.mktemp(name.replace(".", "_")))
    export_onnx(model, folder, ExportOptions())
    print(f"\n{name} {IMAGE_SIZE}: exported in {time.perf_counter() - start:.0f} s")
    return name, model, folder


@pytest.fixture(scope="class")
def parity_records(hiera_export: tuple[str, SAM2Model, Path], clip: np.ndarray) -> tuple[str, dict[str, ParityRecord]]:
    """fifo and efp compared over the clip in one pass."""
    name, model, folder = hiera_export
    start = time.perf_counter()
    records = compare_engines(model, folder, clip)
    print(f"\n{name} {IMAGE_SIZE}: {NUM_FRAMES} frames x (fifo, efp) x (torch, onnx) in {time.perf_counter() - start:.0f} s")
    return name, records


class HieraParity:
    """One model's graphs and whole-video parity, on one export. One class per model: under
    `--dist loadscope` each is a work unit of its own."""

    MODEL: str

    @pytest.mark.slow
    def test_hiera_graphs_equal_torch_parts(self, hiera_export: tuple[str, SAM2Model, Path]) -> None:
        name, model, folder = hiera_export
        check_all_graphs(model, folder, f"{name} {IMAGE_SIZE}")

    @pytest.mark.slow
    @pytest.mark.parametrize("memory", ["fifo", "efp"])
    def test_hiera_video_parity_with_torch_tracker(self, parity_records: tuple[str, dict[str, ParityRecord]], memory: str) -> None:
        """20 frames, 3 objects (mask, points, box mid-video, a corrective click): IoU >= 0.999."""
        name, records = parity_records
        assert_parity(records[memory], f"{name} {IMAGE_SIZE} {memory}")


class TestHieraTiny(HieraParity):
    MODEL = "sam2.1_hiera_t"


class TestHieraSmall(HieraParity):
    MODEL = "sam2.1_hiera_s"
