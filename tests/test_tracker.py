"""The streaming tracker: batching, prompts on any frame, bounded state, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgsam2
from surgsam2 import Prompt, Tracker
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model

# Logits of an object tracked alone and in a batch differ only by float reordering.
BATCH_ATOL = 1e-3


def random_model(image_size: int = 128) -> SAM2Model:
    """The nano architecture with seeded random weights; the object-score head is biased so that
    objects count as visible (random weights would call every object absent)."""
    torch.manual_seed(0)
    model = SAM2Model(get_config("nano", image_size)).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    return random_model()


def moving_discs(num_frames: int, size: tuple[int, int] = (96, 120), seed: int = 0):
    """Frames with three discs moving over noise, and the discs' first-frame masks."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    frames, first_masks = [], {}
    for index in range(num_frames):
        image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
        for obj_id, (cx, cy, radius, colour) in enumerate(
            [(30 + index, 40, 14, (220, 220, 230)), (90 - index, 60, 12, (30, 30, 40)), (60, 20 + index, 9, (240, 200, 40))],
            start=1,
        ):
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
            image[disc] = colour
            if index == 0:
                first_masks[obj_id] = disc
        frames.append(image)
    return frames, first_masks


@pytest.mark.parametrize("memory", ["fifo", "efp"])
def test_batched_objects_equal_objects_tracked_alone(model: SAM2Model, memory: str) -> None:
    """All objects in one pass give the same masks as each object in its own tracker."""
    frames, masks = moving_discs(12)
    together = Tracker(model, memory=memory)
    alone = {obj_id: Tracker(model, memory=memory) for obj_id in masks}
    worst = 0.0
    for index, frame in enumerate(frames):
        prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in masks.items()} if index == 0 else None
        # Object 3 also gets a corrective click on frame 6 (a different memory layout from then on).
        if index == 6:
            prompts = {3: Prompt(points=[(60, 26)], labels=[1])}
        batched = together.step(frame, prompts)
        for obj_id, tracker in alone.items():
            own_prompts = None if prompts is None or obj_id not in prompts else {obj_id: prompts[obj_id]}
            single = tracker.step(frame, own_prompts)
            difference = np.abs(single.logits[obj_id] - batched.logits[obj_id])
            uncertain = np.abs(single.logits[obj_id]) < BATCH_ATOL
            worst = max(worst, float(difference.max()))
            assert difference.max() <= BATCH_ATOL, f"frame {index} object {obj_id}: {difference.max():.2e}"
            assert np.array_equal(single.masks[obj_id] | uncertain, batched.masks[obj_id] | uncertain)
    print(f"[batch] {memory}: max |logit(batched) - logit(alone)| = {worst:.2e} (allowed {BATCH_ATOL})")


def test_prompts_on_later_frames_add_and_correct_objects(model: SAM2Model) -> None:
    """A new object can start on any frame; clicks on a known object make a conditioning frame."""
    frames, masks = moving_discs(8)
    tracker = Tracker(model, memory="efp")
    first = tracker.step(frames[0], {1: Prompt(mask=masks[1])})
    assert first.object_ids == [1]
    tracker.step(frames[1])
    added = tracker.step(frames[2], {2: Prompt(box=(70, 40, 110, 80))})
    assert sorted(added.object_ids) == [1, 2]
    corrected = tracker.step(frames[3], {1: Prompt(points=[(33, 40), (5, 5)], labels=[1, 0])})
    assert sorted(corrected.object_ids) == [1, 2]
    assert sorted(tracker.bank.objects[1].conditioning) == [0, 3]
    assert sorted(tracker.bank.objects[2].conditioning) == [2]
    assert 3 not in tracker.bank.objects[1].recent
    result = tracker.step(frames[4])
    assert result.frame_index == 4
    for obj_id in (1, 2):
        assert result.masks[obj_id].shape == frames[4].shape[:2]
        assert result.masks[obj_id].dtype == np.bool_
        assert result.logits[obj_id].dtype == np.float32
        assert 0.0 <= result.scores[obj_id] <= 1.0


@pytest.mark.parametrize("memory", ["fifo", "efp"])
def test_cached_memory_keys_give_the_recomputed_result(model: SAM2Model, memory: str) -> None:
    """The key cache (keys of stored memories projected and rotated once) tracks exactly as
    recomputing them every frame, through new objects and corrective clicks mid-stream
    (float32; float reordering only: max |d| logits <= 1e-5, seen ~2e-7)."""
    frames, masks = moving_discs(12)
    first = {obj_id: Prompt(mask=masks[obj_id]) for obj_id in (1, 2)}
    later = {
        4: {3: Prompt(points=[(60, 24)], labels=[1])},
        7: {1: Prompt(points=[(37, 40), (10, 10)], labels=[1, 0])},
    }
    cached = Tracker(model, memory=memory, cache_memory_keys=True)
    recomputed = Tracker(model, memory=memory, cache_memory_keys=False)
    worst = 0.0
    for index, frame in enumerate(frames):
        prompts = first if index == 0 else later.get(index)
        fast, slow = cached.step(frame, prompts), recomputed.step(frame, prompts)
        assert fast.masks.keys() == slow.masks.keys()
        for obj_id in slow.logits:
            worst = max(worst, float(np.abs(fast.logits[obj_id] - slow.logits[obj_id]).max()))
    print(f"[key cache] {memory}: max |d| logits cached vs recomputed {worst:.2e} (allowed 1e-5)")
    assert worst <= 1e-5
    stored = [m for o in cached.bank.objects.values() for m in [*o.conditioning.values(), *o.recent.values()]]
    assert all((m.keys is None) == (m.features is None) for m in stored)
    assert all(m.keys is None for o in recomputed.bank.objects.values() for m in o.recent.values())
    assert cached.state_bytes() > recomputed.state_bytes()


@pytest.mark.parametrize("memory", ["fifo", "efp"])
def test_cached_keys_assembled_on_the_device_equal_the_host_path(model: SAM2Model, memory: str) -> None:
    """GPUs assemble the cached keys by a device-side gather (no host sync); on CPU the kept
    indices are read on the host. Both give the same tensor (checked here on CPU, exactly)."""
    from surgsam2.memory.assembly import cached_rotated_keys, gather_candidates, select_memories

    frames, masks = moving_discs(10)
    tracker = Tracker(model, memory=memory)
    for index, frame in enumerate(frames):
        tracker.step(frame, {obj_id: Prompt(mask=mask) for obj_id, mask in masks.items()} if index == 0 else None)
    layouts = [tracker.bank.layout(obj_id, tracker.frame_index) for obj_id in tracker.object_ids]
    keep = select_memories(gather_candidates(layouts), tracker.policy, model.num_maskmem)
    assert (keep is not None) == (memory == "efp")  # efp prunes 7 candidates to 5
    temporal = tracker._rotated_temporal_keys()
    host = cached_rotated_keys(layouts, keep, temporal, 8, host_indices=True)
    device = cached_rotated_keys(layouts, keep, temporal, 8, host_indices=False)
    spatial = host.shape[2] - 8
    assert torch.equal(host[:, :, :spatial], device[:, :, :spatial])


def test_compiled_parts_track_as_the_eager_model() -> None:
    """`compile_parts` (torch.compile in place; dynamo with the eager backend here, to keep the
    test fast) tracks as the uncompiled model and keeps the state dict."""
    eager = random_model(image_size=64)
    compiled = random_model(image_size=64)
    state = {key: value.clone() for key, value in compiled.state_dict().items()}
    compiled.compile_parts(backend="eager")
    assert compiled.state_dict().keys() == state.keys()
    frames, masks = moving_discs(6)
    prompts = {1: Prompt(mask=masks[1]), 2: Prompt(mask=masks[2])}
    trackers = Tracker(eager, memory="efp"), Tracker(compiled, memory="efp")
    worst = 0.0
    for index, frame in enumerate(frames):
        expected, candidate = (tracker.step(frame, prompts if index == 0 else None) for tracker in trackers)
        for obj_id in expected.logits:
            worst = max(worst, float(np.abs(expected.logits[obj_id] - candidate.logits[obj_id]).max()))
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    print(f"[compile] {graphs} graphs; max |d| logits compiled (eager backend) vs eager {worst:.2e} (allowed 1e-5)")
    assert graphs > 0, "nothing was compiled"
    assert worst <= 1e-5


def test_cuda_graphs_on_cpu_tensors_run_eagerly_and_exactly() -> None:
    """`use_cuda_graphs` keeps CPU tracking exact: every call of a wrapped part runs eagerly (CUDA
    graphs only replay CUDA work; tests/test_cuda.py checks the replay on a GPU). Idempotent."""
    eager = random_model(image_size=64)
    graphed = random_model(image_size=64)
    parts = graphed.use_cuda_graphs()
    assert graphed.use_cuda_graphs() == parts  # a second call wraps nothing twice
    assert set(parts) == set(SAM2Model.COMPILED_PARTS)
    frames, masks = moving_discs(4)
    prompts = {1: Prompt(mask=masks[1])}
    trackers = Tracker(eager, memory="efp"), Tracker(graphed, memory="efp")
    for index, frame in enumerate(frames):
        expected, candidate = (tracker.step(frame, prompts if index == 0 else None) for tracker in trackers)
        assert np.array_equal(expected.logits[1], candidate.logits[1])
    for name, part in parts.items():
        assert part.stats.eager > 0 and part.stats.replayed == part.stats.captured == 0, name


def test_remove_object_and_reset(model: SAM2Model) -> None:
    frames, masks = moving_discs(4)
    tracker = Tracker(model)
    tracker.step(frames[0], {obj_id: Prompt(mask=mask) for obj_id, mask in masks.items()})
    tracker.remove_object(2)
    result = tracker.step(frames[1])
    assert sorted(result.object_ids) == [1, 3]
    with pytest.raises(ValueError, match="unknown object id 2"):
        tracker.remove_object(2)
    tracker.reset()
    assert tracker.object_ids == [] and tracker.frame_index == 0 and tracker.state_bytes() == 0


def test_state_stays_flat_over_a_long_stream() -> None:
    """2,000 frames, 3 objects: the stored tensors stop growing after the first frames."""
    model = random_model(image_size=64)
    rng = np.random.default_rng(1)
    first = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    squares = {}
    for obj_id, (top, left) in enumerate([(4, 4), (30, 10), (20, 40)], start=1):
        squares[obj_id] = np.zeros((64, 64), bool)
        squares[obj_id][top : top + 16, left : left + 16] = True
    tracker = Tracker(model, memory="efp")
    tracker.step(first, {obj_id: Prompt(mask=mask) for obj_id, mask in squares.items()})
    counts, sizes = [], []
    for index in range(1, 2000):
        frame = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
        tracker.step(frame)
        if index >= 20:
            counts.append(len(tracker.bank.stored_tensors()))
            sizes.append(tracker.state_bytes())
    print(f"[state] tensors held: {counts[0]} at frame 20, {counts[-1]} at frame 1999; bytes {sizes[0]} -> {sizes[-1]}")
    assert max(counts) == min(counts)
    assert max(sizes) == min(sizes)
    # Per object: the conditioning frame (features + pointer), the last 15 frames' pointers and
    # the last 6 frames' features, and the cached attention keys of those 7 feature memories.
    assert len(tracker.object_ids) == 3
    assert counts[-1] == 3 * ((1 + 1) + 15 + 6 + 7)


@pytest.mark.parametrize(
    "frame, prompts, message",
    [
        (np.zeros((32, 40, 3), np.float32), None, "dtype uint8"),
        (np.zeros((32, 40), np.uint8), None, "HxWx3"),
        (np.zeros((32, 40, 3), np.uint8), {1: Prompt()}, "object 1: empty prompt"),
        (np.zeros((32, 40, 3), np.uint8), {1: Prompt(points=[(50, 10)])}, r"object 1: point \(50, 10\) is outside"),
        (np.zeros((32, 40, 3), np.uint8), {1: Prompt(points=[(5, 10)], labels=[1, 0])}, "1 points but 2 labels"),
        (np.zeros((32, 40, 3), np.uint8), {2: Prompt(mask=np.ones((10, 10), bool))}, "object 2: mask prompt is 10x10"),
        (np.zeros((32, 40, 3), np.uint8), {2: Prompt(mask=np.zeros((32, 40), bool))}, "object 2: mask prompt is empty"),
        (np.zeros((32, 40, 3), np.uint8), {3: Prompt(box=(10, 10, 5, 20))}, "x0 < x1"),
        (np.zeros((32, 40, 3), np.uint8), {-1: Prompt(points=[(5, 5)])}, r"object id -1 is not an integer in 1\.\.255"),
    ],
)
def test_bad_input_is_a_clear_error(model: SAM2Model, frame, prompts, message: str) -> None:
    tracker = Tracker(model)
    with pytest.raises(ValueError, match=message):
        tracker.step(frame, prompts)
    assert tracker.frame_index == 0 and tracker.object_ids == []


def test_bad_prompt_is_not_half_applied(model: SAM2Model) -> None:
    """One bad prompt among good ones: nothing is applied, the stream does not advance."""
    frames, masks = moving_discs(2)
    tracker = Tracker(model)
    tracker.step(frames[0], {1: Prompt(mask=masks[1])})
    with pytest.raises(ValueError, match="object 3"):
        tracker.step(frames[1], {2: Prompt(mask=masks[2]), 3: Prompt(points=[(999, 1)])})
    assert tracker.object_ids == [1] and tracker.frame_index == 1
    with pytest.raises(ValueError, match="differs from the stream"):
        tracker.step(np.zeros((10, 10, 3), np.uint8))


def test_unknown_memory_policy_is_rejected(model: SAM2Model) -> None:
    with pytest.raises(ValueError, match="unknown memory policy 'lru'"):
        Tracker(model, memory="lru")


def test_segment_video_yields_every_frame_and_tracks_from_prompts(model: SAM2Model) -> None:
    """Forward from the prompt; with backward=False, frames before it are empty."""
    frames, masks = moving_discs(6)
    prompts = {2: {1: Prompt(mask=masks[1])}}
    results = list(surgsam2.segment_video(model, frames, prompts=prompts, backward=False))
    assert [r.frame_index for r in results] == list(range(6))
    assert results[0].object_ids == [] and results[1].object_ids == []
    assert all(r.object_ids == [1] for r in results[2:])
    with pytest.raises(ValueError, match="prompts on frames \\[9\\]"):
        list(surgsam2.segment_video(model, frames, prompts={9: {1: Prompt(mask=masks[1])}}))


def test_segment_video_propagates_backward_from_a_later_prompt(model: SAM2Model) -> None:
    """An object first prompted on frame 3 is also tracked on frames 2..0, exactly as a forward
    run over the reversed frames (SAM 2's reverse propagation); frame 0's object is unaffected."""
    frames, masks = moving_discs(6)
    prompts = {0: {1: Prompt(mask=masks[1])}, 3: {2: Prompt(points=[(87, 60)], labels=[1])}}
    results = list(surgsam2.segment_video(model, frames, prompts=prompts, memory="efp"))
    assert all(sorted(r.object_ids) == [1, 2] for r in results)

    reverse = Tracker(model, memory="efp", num_frames=len(frames))
    expected = {3 - step: reverse.step(frames[3 - step], prompts[3] if step == 0 else None) for step in range(4)}
    forward_only = list(surgsam2.segment_video(model, frames, prompts=prompts, memory="efp", backward=False))
    for frame_index in range(3):
        np.testing.assert_allclose(results[frame_index].logits[2], expected[frame_index].logits[2], atol=1e-5)
        np.testing.assert_allclose(results[frame_index].logits[1], forward_only[frame_index].logits[1], atol=1e-5)
    for frame_index in range(3, 6):
        np.testing.assert_allclose(results[frame_index].logits[2], forward_only[frame_index].logits[2], atol=1e-5)


class _RecordingHook:
    """A stage hook that records the order in which stages start and end."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def stage(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def recorded():
            self.events.append(f"+{name}")
            yield
            self.events.append(f"-{name}")

        return recorded()


def test_stage_hook_sees_every_stage_and_changes_no_mask(model: SAM2Model) -> None:
    """The hook gets each named stage of a frame, unnested and in pipeline order, and the masks
    and logits are bit-identical to a tracker without one."""
    from surgsam2.tracking.stages import STAGES

    frames, masks = moving_discs(3)
    hook = _RecordingHook()
    hooked, plain = Tracker(model, stage_hook=hook), Tracker(model)
    prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in masks.items()}
    for index, frame in enumerate(frames):
        hook.events.clear()
        seen = hooked.step(frame, prompts if index == 0 else None)
        expected = plain.step(frame, prompts if index == 0 else None)
        for obj_id in masks:
            assert np.array_equal(seen.logits[obj_id], expected.logits[obj_id])
        starts = [event[1:] for event in hook.events[::2]]
        assert hook.events[1::2] == [f"-{name}" for name in starts]  # each ends before the next starts
        if index == 0:  # prompted frame: no memory yet
            assert starts == ["encode_image", "decoder", "decoder", "decoder", "memory_encoder", "output"]
        else:
            assert starts == list(STAGES)


def test_advance_then_result_is_step(model: SAM2Model) -> None:
    """The public halves of `step`: outputs on the device, then the frame's result."""
    frames, masks = moving_discs(2)
    split, whole = Tracker(model), Tracker(model)
    prompts = {1: Prompt(mask=masks[1])}
    for index, frame in enumerate(frames):
        outputs = split.advance(frame, prompts if index == 0 else None)
        assert list(outputs) == [1] and outputs[1].low_res_masks.shape[:2] == (1, 1)
        got = split.result(outputs, index)
        expected = whole.step(frame, prompts if index == 0 else None)
        assert got.frame_index == expected.frame_index == index
        assert np.array_equal(got.logits[1], expected.logits[1])


def test_a_step_with_the_frames_features_equals_a_step_without(model: SAM2Model) -> None:
    """`encode_frame` gives what `step` computes itself: passing it (a frame clicked several times)
    changes nothing but the cost."""
    frames, masks = moving_discs(3)
    given, computed = Tracker(model), Tracker(model)
    prompts = {1: Prompt(mask=masks[1]), 2: Prompt(points=[(20, 20)], labels=[1])}
    for index, frame in enumerate(frames):
        frame_prompts = prompts if index == 0 else None
        got = given.step(frame, frame_prompts, features=given.encode_frame(frame))
        expected = computed.step(frame, frame_prompts)
        for obj_id in expected.object_ids:
            assert np.array_equal(got.logits[obj_id], expected.logits[obj_id])
