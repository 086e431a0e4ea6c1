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

import pytest
import torch

from surgsam2.memory.bank import BankConfig
from surgsam2.memory.ring import RingBank
from surgsam2.memory.steady import frames_to_steady, steady_indices, steady_plan, write_steady

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
        seen = steady_indices(host.storage, counter, host.config, columns, group.conditioning)
        for name in ("memories", "slots", "pointers", "pointer_offsets"):
            assert torch.equal(getattr(seen, name), getattr(expected, name)), f"frame {frame} {obj_ids}: {name}"
        assert seen.protected == expected.protected, f"frame {frame}"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("max_cond", [-1, 2])
def test_device_layout_and_write_equal_the_host_rules_whenever_steady(stride: int, max_cond: int) -> None:
    """100 frames: on every steady frame the device layout equals the host's, and a bank written
    on the device on those frames stays equal to one written from the host; the predicate is
    false on the frame after a prompt and true from `frames_to_steady` frames after it on."""
    config = BankConfig(num_maskmem=7, max_obj_ptrs_in_encoder=16, memory_temporal_stride=stride,
                        max_cond_frames_in_attn=max_cond)  # fmt: skip
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
            device.record_tracked(list(objects), frame)
        else:
            device.write_frame(list(objects), frame, conditioning=list(objects.values()), **memories)
        for a, b in zip(host.stored_tensors(), device.stored_tensors()):
            assert torch.equal(a, b), f"frame {frame}: storage differs after the write"
    print(f"[steady layout] stride {stride} max_cond {max_cond}: {steady} of 100 frames steady, all equal")
    # Prompts or new objects on frames 0, 5, 12, 40, 42, 44 and 70; frames_to_steady is 16 here
    # (the pointer window, 15 frames, is the longer one): steady on 28-39, 60-69 and 86-99.
    assert frames_to_steady(config) == 16
    assert steady == 12 + 10 + 14
