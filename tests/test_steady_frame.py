"""The steady-state frame (`memory.steady`, `tracking.steady_frame`, issue 17): a frame computed
from a device-side frame counter without the host gives exactly what the ordinary path gives.

1. The layout: on hand-built ring banks (several objects, prompts on later frames, several
   conditioning frames, stride 1 and 2, ``max_cond_frames_in_attn`` limited or not), whenever the
   host-side predicate says steady, the rows, slots, pointer rows and offsets computed on the
   device from the counter equal the host rules' (torch.equal), and a bank written by
   `write_steady` holds exactly what `RingBank.write_frame` writes. The predicate holds from
   `frames_to_steady` frames after the last prompt on.
2. Whole videos: `Tracker(bank="ring", steady_frames=True)` against `Tracker(bank="ring")`:
   masks, logits, scores and IoUs equal with no tolerance (CPU, fp32), and the number of frames
   that took the steady path is asserted.
3. The steady frame runs on the meta device: no host read, no data-dependent shape.
4. CUDA only (skipped without a GPU): the captured graph replays what eager computes, and no
   replayed steady frame synchronises with the host.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from surgsam2 import Prompt, Tracker
from surgsam2.memory.bank import BankConfig
from surgsam2.memory.ring import RingBank, feature_ring_size
from surgsam2.memory.steady import frames_to_steady, steady_indices, steady_plan, write_steady
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.steady_frame import SteadyFrame, SteadyInputs

NUM_TOKENS, CHANNELS, POINTER_DIM, NUM_LAYERS, KEY_DIM = 4, 8, 16, 2, 8


# --- 1. the layout from the device counter ------------------------------------------------------


def layout_events(num_frames: int) -> dict[int, dict[int, bool]]:
    """{frame: {object: conditioning}}: objects 1 and 3 from frame 0, object 2 from frame 5,
    a corrective click on object 3 on frame 12, conditioning frames 40, 42 and 44 of object 1
    (four in all: ``max_cond_frames_in_attn`` = 2 keeps two), object 4 from frame 70."""
    plan: dict[int, dict[int, bool]] = {}
    for frame in range(num_frames):
        objects = {1: frame in (0, 40, 42, 44), 3: frame in (0, 12)}
        if frame >= 5:
            objects[2] = frame == 5
        if frame >= 70:
            objects[4] = frame == 70
        plan[frame] = objects  # in the order the objects entered the bank, as the tracker writes them
    return plan


def random_memories(generator: torch.Generator, count: int) -> dict[str, torch.Tensor]:
    return {
        "features": torch.randn(count, NUM_TOKENS, CHANNELS, generator=generator),
        "obj_ptrs": torch.randn(count, POINTER_DIM, generator=generator),
        "keys": torch.randn(count, NUM_LAYERS, NUM_TOKENS, KEY_DIM, generator=generator),
        "object_scores": torch.randn(count, generator=generator),
        "ious": torch.rand(count, generator=generator),
    }


def assert_device_layout_is_the_hosts(host: RingBank, frame: int, counter: torch.Tensor) -> None:
    """Every batch of the steady plan of ``frame``: the device indices equal the rules'."""
    plan = steady_plan(host, frame)
    layouts = {obj_id: host.layout(obj_id, frame) for obj_id in host.objects}
    groups: dict[tuple, list[int]] = {}
    for obj_id, layout in layouts.items():
        groups.setdefault(layout.shape_key, []).append(host.columns[obj_id])
    assert [list(group.columns) for group in plan.groups] == list(groups.values()), f"frame {frame}"
    for group in plan.groups:
        obj_ids = [plan.obj_ids[column] for column in group.columns]
        expected = host.indices(obj_ids, [layouts[obj_id] for obj_id in obj_ids])
        columns = torch.tensor(group.columns, dtype=torch.long)
        seen = steady_indices(host.storage, counter, host.config, columns, group.conditioning, group.retained)
        for name in ("memories", "slots", "pointers", "pointer_offsets"):
            assert torch.equal(getattr(seen, name), getattr(expected, name)), f"frame {frame} {obj_ids}: {name}"
        assert seen.protected == expected.protected and seen.retained == expected.retained, f"frame {frame}"


STORAGE_FIELDS = ("features", "keys", "pointers", "object_scores", "ious", "frames", "pointer_frames")
FEATURE_ROW_FIELDS = ("features", "keys", "object_scores", "ious", "frames")


def visible_storage(bank: RingBank) -> list[torch.Tensor]:
    """The storage's tensors (`STORAGE_FIELDS`) without the retained scratch row, which holds
    whichever memory was last refused (the host offers only memories that left the window, the
    device also the ineligible rows of a steady frame)."""
    storage, config = bank.storage, bank.config
    scratch = feature_ring_size(config) + config.retained_memories if config.retained_memories else None
    rows = [row for row in range(storage.features.shape[0]) if row != scratch]
    return [getattr(storage, name)[rows] if name in FEATURE_ROW_FIELDS else getattr(storage, name)
            for name in STORAGE_FIELDS]  # fmt: skip


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("max_cond", [-1, 2])
@pytest.mark.parametrize("retained", [0, 2])
def test_device_layout_and_write_equal_the_host_rules_whenever_steady(stride: int, max_cond: int, retained: int) -> None:
    """100 frames: on every steady frame the device layout equals the host's, and a bank written
    on the device on those frames stays equal to one written from the host (with two retained
    memories: the device retires the memories leaving the window as the host rules do); the
    predicate is false on the frame after a prompt and true from `frames_to_steady` frames after it on."""
    config = BankConfig(num_maskmem=7, max_obj_ptrs_in_encoder=16, memory_temporal_stride=stride,
                        max_cond_frames_in_attn=max_cond, retained_memories=retained)  # fmt: skip
    host, device = RingBank(config), RingBank(config)
    generator = torch.Generator().manual_seed(stride * 10 + max_cond)
    counter = torch.zeros((), dtype=torch.long)
    last_event, steady = 0, 0
    for frame, objects in layout_events(100).items():
        plan = steady_plan(host, frame)
        assert plan == steady_plan(device, frame), f"frame {frame}: the two banks' rules differ"
        prompted = any(objects.values()) or any(obj_id not in host for obj_id in objects)
        if frame > 0 and not prompted:
            if frame >= last_event + frames_to_steady(config):
                assert plan is not None, f"frame {frame}: not steady {frame - last_event} frames after a prompt"
            if frame == last_event + 1:
                assert plan is None, f"frame {frame}: steady right after a prompt"
        counter.fill_(frame)
        if plan is not None and not prompted:
            steady += 1
            assert_device_layout_is_the_hosts(host, frame, counter)
        if prompted:
            last_event = frame
        memories = random_memories(generator, len(objects))
        for bank in (host, device):
            for obj_id in objects:
                if obj_id not in bank:
                    bank.add_object(obj_id)
        host.write_frame(list(objects), frame, conditioning=list(objects.values()), **memories)
        if plan is not None and not prompted:
            write_steady(device.storage, counter, config, **memories)
            device.record_tracked(list(objects), frame, with_quality=True)
        else:
            device.write_frame(list(objects), frame, conditioning=list(objects.values()), **memories)
        for name, a, b in zip(STORAGE_FIELDS, visible_storage(host), visible_storage(device)):
            assert torch.equal(a, b), f"frame {frame}: storage differs after the write ({name})"
        assert [len(host.objects[i].retained) for i in objects] == [len(device.objects[i].retained) for i in objects]
    if retained:  # each object's retained rows hold two reliable frames, some offered by the device
        start = feature_ring_size(config)
        held = device.storage.frames[start : start + retained]
        assert bool((held >= 0).all()), held
    print(f"[steady layout] stride {stride} max_cond {max_cond} retained {retained}: {steady} of 100 frames steady,"
          " all equal")  # fmt: skip
    # Prompts or new objects on frames 0, 5, 12, 40, 42, 44 and 70; frames_to_steady is 16 here
    # (the pointer window, 15 frames, is the longer one): steady on 28-39, 60-69 and 86-99.
    assert frames_to_steady(config) == 16
    assert steady == 12 + 10 + 14


# --- 2. whole videos ----------------------------------------------------------------------------


def steady_model(stride: int = 1, max_cond: int = -1) -> SAM2Model:
    """nano at 64 px with seeded random weights, objects visible (as test_tracker.random_model)."""
    torch.manual_seed(0)
    config = get_config("nano", 64).replace(memory_temporal_stride_for_eval=stride, max_cond_frames_in_attn=max_cond)
    model = SAM2Model(config).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


def video_prompts(scenario: str, masks: dict[int, np.ndarray]) -> dict[int, dict[int, Prompt]]:
    """"one": one object from frame 0. "three": objects 1 and 2 on frame 0, object 3 added on
    frame 4, on frame 26 a corrective click on object 1 and a new mask for object 3 (objects 1
    and 3 then have two conditioning frames, object 2 one: two batches, not in bank order);
    the test removes object 2 before frame `REMOVED_AT` (a new plan, the storage reallocated)."""
    if scenario == "one":
        return {0: {1: Prompt(mask=masks[1])}}
    return {
        0: {1: Prompt(mask=masks[1]), 2: Prompt(box=(70, 40, 110, 80))},
        4: {3: Prompt(points=[(60, 24)], labels=[1])},
        26: {1: Prompt(points=[(50, 40), (5, 5)], labels=[1, 0]), 3: Prompt(mask=masks[3])},
    }


# Background regions of up to this many low-res pixels (of 16 x 16) are filled. The random-weight
# masks' background is one region of 175-189 pixels: at 181 it is filled on some frames and not on
# others, so the device's filling is compared with OpenCV's both ways (at 8 nothing is filled).
FILL_HOLE_AREA = 181
REMOVED_AT = 48
# (scenario, frames, steady frames: those >= 16 frames after the last prompt, without a prompt;
# removing an object does not stop the steady state)
SCENARIOS = {"one": (40, 40 - 16), "three": (56, (26 - 20) + (56 - 42))}


@pytest.fixture(scope="module")
def models() -> dict[tuple[int, int], SAM2Model]:
    return {(1, -1): steady_model(), (2, 1): steady_model(stride=2, max_cond=1)}


@pytest.mark.parametrize(
    "memory,scenario,rules",
    [("fifo", "one", (1, -1)), ("efp", "one", (1, -1)), ("xefp", "one", (1, -1)), ("fifo", "three", (1, -1)),
     ("efp", "three", (1, -1)), ("xefp", "three", (1, -1)), ("qefp", "three", (1, -1)), ("xefp", "three", (2, 1)),
     ("refp", "three", (1, -1)), ("refp", "three", (2, 1))],
)  # fmt: skip
def test_steady_frames_track_exactly_as_the_ring_bank(models, memory: str, scenario: str, rules) -> None:
    """Masks, logits (tolerance: none, CPU fp32), scores and IoUs equal on every frame; the
    steady path ran on exactly the frames the predicate promises."""
    import test_tracker

    model = models[rules]
    num_frames, expected_steady = SCENARIOS[scenario]
    frames, masks = test_tracker.moving_discs(num_frames)
    prompts = video_prompts(scenario, masks)
    ordinary = Tracker(model, memory=memory, bank="ring", fill_hole_area=FILL_HOLE_AREA)
    steady = Tracker(model, memory=memory, bank="ring", fill_hole_area=FILL_HOLE_AREA, steady_frames=True)
    worst = 0.0
    for index, frame in enumerate(frames):
        if scenario == "three" and index == REMOVED_AT:
            ordinary.remove_object(2)
            steady.remove_object(2)
        expected, seen = ordinary.step(frame, prompts.get(index)), steady.step(frame, prompts.get(index))
        assert seen.object_ids == expected.object_ids, f"frame {index}"
        for obj_id in expected.object_ids:
            where = f"frame {index} object {obj_id}"
            worst = max(worst, float(np.abs(seen.logits[obj_id] - expected.logits[obj_id]).max()))
            assert np.array_equal(seen.logits[obj_id], expected.logits[obj_id]), where
            assert np.array_equal(seen.masks[obj_id], expected.masks[obj_id]), where
            assert seen.scores[obj_id] == expected.scores[obj_id] and seen.ious[obj_id] == expected.ious[obj_id], where
    print(f"[steady tracker] {memory} {scenario} rules {rules}: {steady.steady.count} of {num_frames} frames steady,"
          f" largest logit difference {worst} (tolerance 0)")  # fmt: skip
    assert steady.steady.count == expected_steady
    if memory == "refp":  # the steady frames proposed retained memories, reliable ones among them
        assert all(len(memory_.retained) == 2 for memory_ in steady.bank.objects.values())
        start = feature_ring_size(steady.bank.config)
        assert bool((steady.bank.storage.frames[start : start + 2] >= 0).any())


def test_steady_frames_are_refused_without_the_ring_bank(models) -> None:
    model = models[(1, -1)]
    with pytest.raises(ValueError, match="steady_frames needs bank='ring'"):
        Tracker(model, steady_frames=True)


def test_bench_runs_ours_with_steady_frames() -> None:
    """`surgsam2 bench --steady-frames` on the CPU: ours tracks with the ring bank and its steady
    frames (the 16th frame after the prompt on: frames 16-21 of 22 here, the last one the FLOP
    count's), reported beside the parts' graphs; refused with --profile."""
    from surgsam2.bench import BenchConfig, run_bench

    config = BenchConfig(model="nano", image_size=64, frames=20, warmup=1, steady_frames=True, progress=False)
    result = run_bench(config)
    stats = result.cuda_graphs["steady_frame"]
    print(f"[steady bench] {stats}; ours {result.ours.frames_per_second:.1f} frames/s (no claim: CPU, tiny model)")
    assert (stats.eager, stats.replayed, stats.captured) == (22 - 16, 0, 0)
    assert result.ours.flops_per_frame > 0
    with pytest.raises(ValueError, match="no stages to --profile"):
        BenchConfig(model="nano", image_size=64, steady_frames=True, profile=True).validate()


# --- 3. on the meta device ----------------------------------------------------------------------


def steady_tracker_after(model: SAM2Model, memory: str, num_frames: int) -> tuple[Tracker, list[np.ndarray]]:
    """A tracker of three objects after ``num_frames`` frames (steady by then), and the frames."""
    import test_tracker

    frames, masks = test_tracker.moving_discs(num_frames + 1)
    tracker = Tracker(model, memory=memory, bank="ring", steady_frames=True)
    for index in range(num_frames):
        tracker.step(frames[index], {obj_id: Prompt(mask=mask) for obj_id, mask in masks.items()} if index == 0 else None)
    return tracker, frames


@pytest.mark.parametrize("memory", ["xefp", "refp"])
def test_the_steady_frame_runs_on_the_meta_device(models, memory: str) -> None:
    """Model, ring storage and buffers moved to the meta device (tensors with shapes and no data):
    any host read (.item(), .tolist(), .cpu(), a branch on a value) or data-dependent shape
    (boolean indexing, nonzero) raises there, so a step that completes has neither. Every op of
    the frame has a meta kernel (OpenCV's hole filling would not; the device one has). With refp
    the frame also proposes and retires retained memories."""
    tracker, _ = steady_tracker_after(models[(1, -1)], memory, 20)
    plan = steady_plan(tracker.bank, tracker.frame_index)
    assert plan is not None and len(plan.obj_ids) == 3
    assert {group.retained for group in plan.groups} == ({2} if memory == "refp" else {0})
    meta = torch.device("meta")
    model = copy.deepcopy(tracker.model).to(meta)
    bank = copy.deepcopy(tracker.bank)
    for field in ("features", "keys", "pointers", "object_scores", "ious", "frames", "pointer_frames"):
        setattr(bank.storage, field, getattr(bank.storage, field).to(meta))
    inputs = SteadyInputs(
        pixels=torch.empty((64, 64, 3), dtype=torch.uint8, device=meta),
        counter=torch.empty((), dtype=torch.long, device=meta),
        memory_pos=tracker._memory_pos.to(meta),
        temporal_keys=tracker._rotated_temporal_keys().to(meta),
    )
    frame = SteadyFrame(model, tracker.policy, bank, plan, inputs, tracker.frame_size, fill_hole_area=FILL_HOLE_AREA)
    frame.step()
    assert frame.output.device == meta and frame.output.shape == (3 * (96 * 120 + 2),)
    print(f"[steady meta] {memory}, 3 objects: one steady frame ran on the meta device; output {tuple(frame.output.shape)}")


# --- 4. CUDA only -------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the only skip allowed)")


@cuda
@pytest.mark.parametrize("objects,memory", [(1, "efp"), (3, "efp"), (3, "refp")])
def test_cuda_steady_graph_replays_as_eager_without_host_syncs(objects: int, memory: str) -> None:
    """On the GPU: the captured steady frame's masks equal the eager steady frames' (the same
    function, so logits within 1e-5: kernels may differ between eager and replay) and the masks
    of the ordinary ring-bank path within 1e-4; replayed frames raise nothing under
    torch.cuda.set_sync_debug_mode("error") (the frame's one wait, on the event of the output's
    copy to pinned memory, is not a sync that mode reports)."""
    import test_tracker

    model = copy.deepcopy(steady_model()).cuda()
    frames, masks = test_tracker.moving_discs(40)
    prompts = {obj_id: Prompt(mask=masks[obj_id]) for obj_id in range(1, objects + 1)}
    trackers = {
        "ordinary": Tracker(model, memory=memory, bank="ring"),
        "eager": Tracker(model, memory=memory, bank="ring", steady_frames=True),
        "graph": Tracker(model, memory=memory, bank="ring", steady_frames=True),
    }
    trackers["eager"].steady.enabled = False
    worst = {"eager": 0.0, "ordinary": 0.0}
    for index, frame in enumerate(frames):
        replaying = trackers["graph"].steady.stats.captured > 0
        if replaying:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            graphed = trackers["graph"].step(frame, prompts if index == 0 else None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for name in worst:
            other = trackers[name].step(frame, prompts if index == 0 else None)
            for obj_id in graphed.object_ids:
                worst[name] = max(worst[name], float(np.abs(graphed.logits[obj_id] - other.logits[obj_id]).max()))
    stats = trackers["graph"].steady.stats
    print(f"[steady cuda] {memory}, {objects} object(s): {stats}; largest logit difference {worst}")
    # Steady from frame 16: that one runs eagerly (the warm-up), frame 17 is captured and replayed.
    assert stats.captured == 1 and stats.replayed == 40 - 17 and stats.failed == 0
    assert worst["eager"] <= 1e-5 and worst["ordinary"] <= 1e-4
