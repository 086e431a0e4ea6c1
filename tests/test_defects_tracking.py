"""Defects of issue 13 in the tracker and the bench, one test each:

- object id 0 (the background) was accepted and tracked nothing;
- object id 70000 was accepted and wrapped around in `FrameResult.id_map()`;
- `bench --json <dir>` ended in a traceback instead of a one-line error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgsam2
from surgsam2 import Prompt, Tracker
from surgsam2.bench import BenchConfig, run_stream, write_json
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.results import FrameResult

FRAME_SIZE = (48, 64)


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    torch.manual_seed(0)
    return SAM2Model(get_config("nano", 64)).eval()


def _frame_and_mask() -> tuple[np.ndarray, np.ndarray]:
    frame = np.full((*FRAME_SIZE, 3), 90, np.uint8)
    mask = np.zeros(FRAME_SIZE, bool)
    mask[10:30, 20:40] = True
    frame[mask] = 220
    return frame, mask


def _assert_one_line_naming(error: pytest.ExceptionInfo, obj_id: int) -> None:
    message = str(error.value)
    assert "\n" not in message and f"object id {obj_id} " in message and "1..255" in message


def test_object_id_zero_is_refused(model: SAM2Model) -> None:
    """"Object id 0 (background) is accepted and tracks nothing" """
    frame, mask = _frame_and_mask()
    tracker = Tracker(model)
    with pytest.raises(ValueError) as error:
        tracker.step(frame, {0: Prompt(mask=mask)})
    _assert_one_line_naming(error, 0)
    assert tracker.frame_index == 0 and tracker.object_ids == []

    # Offline propagation refuses it before any frame is read, wherever the prompt sits.
    def frames():
        raise AssertionError("a frame was read before the prompts were checked")
        yield frame

    with pytest.raises(ValueError) as error:
        next(surgsam2.segment_video(model, frames(), {3: {0: Prompt(mask=mask)}}))
    _assert_one_line_naming(error, 0)


def test_object_id_70000_is_refused(model: SAM2Model) -> None:
    """"id 70000 wraps around in `id_map()`" """
    frame, mask = _frame_and_mask()
    tracker = Tracker(model)
    with pytest.raises(ValueError) as error:
        tracker.step(frame, {70000: Prompt(mask=mask)})
    _assert_one_line_naming(error, 70000)
    assert tracker.frame_index == 0 and tracker.object_ids == []
    # 255 is the largest id a palette PNG stores, and id_map keeps it exactly.
    result = tracker.step(frame, {255: Prompt(mask=mask)})
    id_map = result.id_map()
    assert id_map.dtype == np.uint8 and set(np.unique(id_map)) <= {0, 255} and (id_map == 255).any()
    # A result made by hand with such an id is refused, never wrapped.
    logits = np.where(mask, 5.0, -5.0).astype(np.float32)
    made = FrameResult(frame_index=0, masks={70000: mask}, logits={70000: logits})
    with pytest.raises(ValueError, match="object id 70000 is outside 1..255"):
        made.id_map()


def test_bench_json_to_a_folder_is_one_line(tmp_path) -> None:
    """"Tracebacks instead of one-line errors: ... `bench --json <dir>`" """
    folder = tmp_path / "results"
    folder.mkdir()
    kept = folder / "mine.txt"
    kept.write_text("the user's")
    result = run_stream(BenchConfig(model="nano", image_size=64, stream_frames=2, warmup=1, progress=False))
    for target in (folder, f"{tmp_path / 'not-yet'}/"):
        with pytest.raises(ValueError) as error:
            write_json(result, target)
        message = str(error.value)
        assert "\n" not in message and "is a folder" in message
    assert [p.name for p in folder.iterdir()] == ["mine.txt"] and kept.read_text() == "the user's"
    assert not (tmp_path / "not-yet").exists()
