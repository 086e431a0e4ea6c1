"""Many streams per tracker: each stream tracks as its video alone would, None frames, bad input."""

from __future__ import annotations

import contextlib
from collections import Counter
from contextlib import AbstractContextManager

import numpy as np
import pytest
import torch

from surgsam2 import Prompt, Tracker
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.streams import MultiStreamTracker, StreamError

from test_tracker import moving_discs, random_model


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    return random_model()


def _videos() -> list[tuple[list[np.ndarray], dict[int, dict[int, Prompt]]]]:
    """Three videos of different lengths, sizes and object counts; prompts on different frames
    (per video: its frames and {frame index: {object id: prompt}})."""
    frames0, masks0 = moving_discs(10, size=(96, 120), seed=1)
    frames1, masks1 = moving_discs(5, size=(80, 100), seed=2)  # ends first; nothing to track before frame 2
    frames2, masks2 = moving_discs(12, size=(128, 128), seed=3)  # the model's input size: not resampled
    return [
        (frames0, {
            0: {1: Prompt(mask=masks0[1]), 2: Prompt(mask=masks0[2])},
            4: {3: Prompt(points=[(60, 24)], labels=[1])},
            7: {1: Prompt(points=[(37, 40), (10, 10)], labels=[1, 0])},
        }),
        (frames1, {2: {4: Prompt(box=(60, 40, 95, 75))}}),
        (frames2, {
            1: {5: Prompt(mask=masks2[1])},
            6: {5: Prompt(points=[(38, 40)], labels=[1]), 6: Prompt(mask=masks2[3])},
        }),
    ]  # fmt: skip


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# Batches of streams round differently from one stream at a time: convolutions (image and memory
# encoders, the decoder's upscaling) pick kernels by batch size, even with one thread (|d logit|
# ~1e-7 here). Masks are compared by IoU, logits and visibility scores within a float-reordering
# tolerance.
MIN_IOU = 0.999
LOGIT_ATOL = 1e-3


@pytest.mark.parametrize(("memory", "bank"), [("fifo", "dict"), ("efp", "dict"), ("efp", "ring")])
def test_each_stream_tracks_as_its_video_alone(model: SAM2Model, memory: str, bank: str) -> None:
    """Three videos tracked together (the network batched across the streams without prompts on
    a step, banks filled to different levels, stream 1 ending first, stream 2 missing a frame on
    call 3, prompts arriving mid-run) give each video's masks of a plain Tracker run on it alone:
    IoU >= 0.999 per object and frame, |logit| differences <= 1e-3."""
    videos = _videos()
    alone = []
    for frames, prompts in videos:
        tracker = Tracker(model, memory=memory, bank=bank)
        alone.append([tracker.step(frame, prompts.get(index)) for index, frame in enumerate(frames)])

    together = MultiStreamTracker(model, len(videos), memory=memory, bank=bank)
    positions = [0] * len(videos)
    dropped = {(3, 2)}  # (call, stream): the stream has no frame on that call
    compared = [0] * len(videos)
    worst_iou, worst_logit, identical = 1.0, 0.0, 0
    call = 0
    while any(position < len(frames) for position, (frames, _) in zip(positions, videos)):
        inputs, prompts = [], []
        for stream, ((frames, video_prompts), position) in enumerate(zip(videos, positions)):
            has_frame = position < len(frames) and (call, stream) not in dropped
            inputs.append(frames[position] if has_frame else None)
            prompts.append(video_prompts.get(position) if has_frame else None)
        results = together.step(inputs, prompts)
        for stream, result in enumerate(results):
            if inputs[stream] is None:
                assert result is None
                continue
            expected = alone[stream][positions[stream]]
            assert result.frame_index == expected.frame_index == positions[stream]
            assert result.object_ids == expected.object_ids
            for obj_id in expected.object_ids:
                where = f"stream {stream} frame {positions[stream]} object {obj_id}"
                iou = _iou(result.masks[obj_id], expected.masks[obj_id])
                logit = float(np.abs(result.logits[obj_id] - expected.logits[obj_id]).max())
                worst_iou, worst_logit = min(worst_iou, iou), max(worst_logit, logit)
                identical += int(np.array_equal(result.masks[obj_id], expected.masks[obj_id]))
                assert iou >= MIN_IOU and logit <= LOGIT_ATOL, f"{where}: IoU {iou:.5f}, |d logit| {logit:.2e}"
                assert result.scores[obj_id] == pytest.approx(expected.scores[obj_id], abs=1e-5), where
                compared[stream] += 1
            positions[stream] += 1
        call += 1
    assert call == 13  # the longest video (12 frames) plus its dropped call
    assert compared == [26, 3, 17]
    print(
        f"[streams] {memory}, {bank} bank, {torch.get_num_threads()} thread(s):"
        f" {identical}/{sum(compared)} masks identical;"
        f" worst IoU {worst_iou:.6f} (>= {MIN_IOU}), worst |d logit| {worst_logit:.2e} (<= {LOGIT_ATOL})"
    )


class StageCounter:
    """A stage hook that counts how often each stage runs."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def stage(self, name: str) -> AbstractContextManager[object]:
        self.counts[name] += 1
        return contextlib.nullcontext()


def test_steady_streams_run_each_stage_once_for_all(model: SAM2Model) -> None:
    """Four streams started together (1, 2, 1 and 3 objects) and not prompted again: every later
    step runs the image encoder, memory attention, the decoder and the memory encoder once for all
    7 objects (the memories are still chosen and the outputs made per stream), and each stream's
    masks are those of its video tracked alone."""
    frames, masks = moving_discs(9)
    ids = [[1], [1, 2], [2], [1, 2, 3]]
    first = [{obj_id: Prompt(mask=masks[obj_id]) for obj_id in objects} for objects in ids]
    alone = []
    for prompts in first:
        tracker = Tracker(model)
        alone.append([tracker.step(frame, prompts if index == 0 else None) for index, frame in enumerate(frames)])
    counter = StageCounter()
    together = MultiStreamTracker(model, len(ids), stage_hook=counter)
    together.step([frames[0]] * len(ids), first)
    worst = 0.0
    for index, frame in enumerate(frames[1:], start=1):
        counter.counts.clear()
        results = together.step([frame] * len(ids))
        batched = ("encode_image", "memory_attention", "decoder", "memory_encoder")
        once = {name: counter.counts[name] for name in batched}
        assert once == dict.fromkeys(once, 1), f"step {index}: {dict(counter.counts)}"
        assert counter.counts["memory_assembly"] == counter.counts["output"] == len(ids)
        for stream, result in enumerate(results):
            assert result.object_ids == ids[stream]
            for obj_id in ids[stream]:
                expected = alone[stream][index]
                worst = max(worst, float(np.abs(result.logits[obj_id] - expected.logits[obj_id]).max()))
                assert _iou(result.masks[obj_id], expected.masks[obj_id]) >= MIN_IOU
    assert worst <= LOGIT_ATOL
    print(f"[streams] 4 steady streams, 7 objects: worst |d logit| {worst:.2e} (<= {LOGIT_ATOL})")


def test_streams_at_different_fill_levels_are_grouped_by_memory_shape(model: SAM2Model) -> None:
    """Stream 1 starts two frames after stream 0 (fifo; nano keeps 7 memories and 16 pointers):
    their memories differ in count until stream 1 has 6 recent memories too (call 9) and their
    pointers until it has 16 (call 18), so memory attention runs once per stream until then
    and once for both after; a call with a prompt takes that stream's own path."""
    frames, masks = moving_discs(22)
    counter = StageCounter()
    together = MultiStreamTracker(model, 2, memory="fifo", stage_hook=counter)
    calls = []
    for call, frame in enumerate(frames):
        counter.counts.clear()
        inputs = [frame, frame if call >= 2 else None]
        prompts = [
            {1: Prompt(mask=masks[1])} if call == 0 else None,
            {2: Prompt(mask=masks[2])} if call == 2 else None,
        ]
        together.step(inputs, prompts)
        calls.append(counter.counts["memory_attention"])
    assert calls[:3] == [0, 1, 1]  # nothing to attend to yet; stream 0 alone (stream 1 prompted on call 2)
    assert calls[3:18] == [2] * 15 and calls[18:] == [1] * 4, calls


def test_a_none_frame_leaves_its_stream_where_it_was(model: SAM2Model) -> None:
    frames, masks = moving_discs(3)
    tracker = MultiStreamTracker(model, 2)
    first = tracker.step([frames[0], frames[0]], [{1: Prompt(mask=masks[1])}, {2: Prompt(mask=masks[2])}])
    assert [r.object_ids for r in first] == [[1], [2]]
    state = tracker[1].state_bytes()
    results = tracker.step([frames[1], None])
    assert results[1] is None and results[0].frame_index == 1
    assert tracker[1].frame_index == 1 and tracker[0].frame_index == 2
    assert tracker[1].state_bytes() == state
    assert list(tracker[1].bank.objects[2].conditioning) == [0] and not tracker[1].bank.objects[2].recent
    assert list(tracker[0].bank.objects[1].recent) == [1]
    assert tracker.step([None, frames[1]])[1].frame_index == 1


def test_streams_are_reset_and_edited_one_by_one(model: SAM2Model) -> None:
    frames, masks = moving_discs(2)
    small, small_masks = moving_discs(2, size=(64, 80))
    tracker = MultiStreamTracker(model, 2, memory="fifo", num_frame_to_prune=3, fill_hole_area=0)
    assert len(tracker) == 2 and all(t.policy.name == "fifo" and t.fill_hole_area == 0 for t in tracker.streams)
    both = {1: Prompt(mask=masks[1]), 2: Prompt(mask=masks[2])}
    tracker.step([frames[0], frames[0]], [both, both])
    tracker.remove_object(0, 2)
    assert tracker[0].object_ids == [1] and tracker[1].object_ids == [1, 2]
    tracker.reset(1, num_frames=2)  # a new, smaller video on stream 1
    assert tracker[1].object_ids == [] and tracker[1].frame_index == 0 and tracker[1].num_frames == 2
    results = tracker.step([frames[1], small[0]], [None, {7: Prompt(mask=small_masks[1])}])
    assert results[0].frame_index == 1 and results[0].object_ids == [1]
    assert results[1].frame_index == 0 and results[1].masks[7].shape == (64, 80)


def test_bad_input_names_the_stream_and_advances_nothing(model: SAM2Model) -> None:
    """Each bad input is one line naming its stream, and no stream advances."""
    frames, _ = moving_discs(1)
    good, bad = frames[0], frames[0].astype(np.float32)
    point = {1: Prompt(points=[(5, 5)], labels=[1])}
    outside = {1: Prompt(points=[(500, 5)], labels=[1])}
    cases = [
        ([good, bad, good], None, r"^stream 1: frame 0: expected dtype uint8, got float32$"),
        ([good, good, good], [None, outside, None], r"^stream 1: .*outside"),
        ([good, good, None], [None, None, point], r"^stream 2: prompts given without a frame$"),
        ([good, good], None, r"^expected a sequence of 3 frames \(one per stream, None for none\), got 2$"),
        ([good, good, good], [None, point],
         r"^expected a sequence of 3 prompt mappings \(one per stream, None for none\), got 2$"),
    ]  # fmt: skip
    tracker = MultiStreamTracker(model, 3)
    for inputs, prompts, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            tracker.step(inputs, prompts)
        assert "\n" not in str(raised.value)
        assert [t.frame_index for t in tracker.streams] == [0, 0, 0]
        if isinstance(raised.value, StreamError):
            assert str(raised.value) == f"stream {raised.value.stream}: {raised.value.reason}"


def test_size_change_and_unknown_objects_name_the_stream(model: SAM2Model) -> None:
    frames, masks = moving_discs(2)
    other, _ = moving_discs(1, size=(64, 80))
    tracker = MultiStreamTracker(model, 2)
    tracker.step([frames[0], frames[0]], [{1: Prompt(mask=masks[1])}, None])
    with pytest.raises(StreamError, match=r"^stream 0: frame 1: size 80x64 differs from the stream's 120x96"):
        tracker.step([other[0], frames[1]])
    with pytest.raises(StreamError, match=r"^stream 1: unknown object id 3; tracked: \[\]$"):
        tracker.remove_object(1, 3)
    with pytest.raises(ValueError, match=r"^stream index must be an integer in 0\.\.1, got 2$"):
        tracker[2]
    with pytest.raises(ValueError, match=r"^num_streams must be a positive integer, got 0$"):
        MultiStreamTracker(model, 0)
