"""Specification of the memory bank (docs/architecture.md, "The memory rules"): the candidate memories
and object pointers of a frame follow SAM 2's rules (`_prepare_memory_conditioned_features`), and
the bank forgets exactly what no later frame can select, so its size is flat over a stream.

Pure tensors, no model: tiny memories (T=4 tokens, C=8 channels) and pointers (D=16).
"""

from __future__ import annotations

import random
import re

import pytest
import torch
from oracle import require_official

from surgsam2.memory.bank import BankConfig, MemoryBank

NUM_TOKENS = 4
NUM_CHANNELS = 8
POINTER_DIM = 16


def write_frame(bank: MemoryBank, obj_id: int, frame_index: int, conditioning: bool = False) -> None:
    """Store a recognisable memory: every feature equals the frame index (exact in bfloat16 up to
    256), the pointer equals frame index + 1000 * object id."""
    features = torch.full((NUM_TOKENS, NUM_CHANNELS), float(frame_index))
    pointer = torch.full((POINTER_DIM,), float(frame_index + 1000 * obj_id))
    bank.write(obj_id, frame_index, features, pointer, conditioning=conditioning)


def make_bank(frames: list[int], cond_frames: list[int], obj_id: int = 1, **config) -> MemoryBank:
    """A bank with one object: the conditioning frames ``cond_frames`` written first, in the given
    order (prompts known before propagation, as in SAM 2's offline use), then the tracked
    ``frames`` in time order."""
    bank = MemoryBank(BankConfig(**config))
    bank.add_object(obj_id)
    for frame_index in cond_frames:
        write_frame(bank, obj_id, frame_index, conditioning=True)
    for frame_index in sorted(set(frames) - set(cond_frames)):
        write_frame(bank, obj_id, frame_index)
    return bank


def memory_frames(layout) -> list[int]:
    return [stored.frame_index for stored, _ in layout.memories]


def memory_slots(layout) -> list[int]:
    return [slot for _, slot in layout.memories]


def pointer_frames_and_offsets(layout) -> list[tuple[int, int]]:
    return [(stored.frame_index, offset) for stored, offset in layout.pointers]


def expected_layout(
    written: set[int],
    cond_frames: list[int],
    frame_index: int,
    config: BankConfig,
    num_frames: int | None = None,
) -> tuple[list[tuple[int, int]], list[bool], list[tuple[int, int]]]:
    """Independent reference of SAM 2's selection (forward tracking, evaluation), written from the
    official code: (frame, slot) memories, protection flags, (frame, offset) pointers.

    ``written``: every frame whose memory was ever written (nothing forgotten); conditioning frames
    are selected with the official ``select_closest_cond_frames``.
    """
    require_official()
    from sam2.modeling.sam2_utils import select_closest_cond_frames

    cond_outputs = {t: t for t in cond_frames}
    non_cond = {t for t in written if t not in cond_outputs}
    limit = config.max_cond_frames_in_attn
    selected, unselected = select_closest_cond_frames(frame_index, cond_outputs, limit)
    num_maskmem, stride = config.num_maskmem, config.memory_temporal_stride
    # Conditioning frames attended to, in bank (insertion) order; every one in temporal slot 0,
    # i.e. maskmem_tpos_enc[num_maskmem - 1].
    memories = [(t, num_maskmem - 1) for t in cond_frames if t in selected]
    protected = [True] * len(memories)
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos
        if t_rel == 1:
            previous = frame_index - 1
        else:
            previous = ((frame_index - 2) // stride) * stride - (t_rel - 2) * stride
        if previous in non_cond or previous in unselected:
            memories.append((previous, num_maskmem - t_pos - 1))
            protected.append(previous in unselected)
    pointers = []
    for t in cond_frames:
        if t not in selected or (config.only_obj_ptrs_in_the_past and t > frame_index):
            continue
        signed = config.use_signed_tpos_enc_to_obj_ptrs
        pointers.append((t, frame_index - t if signed else abs(frame_index - t)))
    max_pointers = config.max_obj_ptrs_in_encoder
    if num_frames is not None:
        max_pointers = min(num_frames, max_pointers)
    for t_diff in range(1, max_pointers):
        t = frame_index - t_diff
        if t < 0:
            break
        if t in non_cond or t in unselected:
            pointers.append((t, t_diff))
    return memories, protected, pointers


def assert_layout_matches(bank, obj_id, written, cond_frames, frame_index, num_frames=None):
    layout = bank.layout(obj_id, frame_index, num_frames=num_frames)
    memories, protected, pointers = expected_layout(
        written, cond_frames, frame_index, bank.config, num_frames
    )
    assert list(zip(memory_frames(layout), memory_slots(layout))) == memories, frame_index
    assert list(layout.protected) == protected, frame_index
    assert pointer_frames_and_offsets(layout) == pointers, frame_index
    assert all(stored.features is not None for stored, _ in layout.memories), frame_index
    return layout


# --- layout ------------------------------------------------------------------------------------
def test_layout_orders_conditioning_then_recent_oldest_to_newest():
    """Frame 10 with conditioning frame 0 and recent frames 1-9: memories [0, 4, 5, 6, 7, 8, 9],
    the conditioning frame in slot num_maskmem-1 = 6, recent frame t-k in slot k-1 (frame 9 -> 0),
    only the conditioning frame protected; pointers: frame 0 at signed offset 10, then frames 9..1
    at 1..9 frames back (frame 0 is not repeated among them)."""
    bank = make_bank(list(range(1, 10)), [0])
    layout = bank.layout(1, 10)
    assert memory_frames(layout) == [0, 4, 5, 6, 7, 8, 9]
    assert memory_slots(layout) == [6, 5, 4, 3, 2, 1, 0]
    assert layout.protected == (True, False, False, False, False, False, False)
    assert pointer_frames_and_offsets(layout) == [(0, 10)] + [(10 - back, back) for back in range(1, 10)]
    # The stored tensors are the ones written for these frames.
    for stored, _ in layout.memories:
        assert bool((stored.features == stored.frame_index).all())
        assert stored.features.dtype == torch.bfloat16  # BankConfig's default storage dtype
    for stored, _ in layout.pointers:
        assert bool((stored.obj_ptr == stored.frame_index + 1000).all())
    assert layout.shape_key == (7, layout.protected, 10)


def test_layout_slots_follow_the_sam2_formula_for_every_frame():
    """For frames 1 to 30 after conditioning frame 0 (partial windows at the start included), the
    layout equals the reference computed from SAM 2's rules."""
    config = BankConfig()
    for frame_index in range(1, 31):
        bank = make_bank(list(range(1, frame_index)), [0])
        assert_layout_matches(bank, 1, set(range(frame_index)), [0], frame_index)


def test_pointer_window_is_capped_by_max_obj_ptrs_and_by_num_frames():
    """At most max_obj_ptrs_in_encoder - 1 = 15 past frames give pointers (plus the conditioning
    frames); with the clip length known, min(num_frames, 16) - 1 past frames."""
    bank = make_bank(list(range(1, 30)), [0])
    layout = bank.layout(1, 30)
    assert pointer_frames_and_offsets(layout) == [(0, 30)] + [(30 - back, back) for back in range(1, 16)]
    assert len(layout.pointers) == 16

    bank = make_bank(list(range(1, 8)), [0])
    expected = [(0, 8)] + [(8 - back, back) for back in range(1, 8)]
    assert pointer_frames_and_offsets(bank.layout(1, 8)) == expected
    capped = bank.layout(1, 8, num_frames=5)
    assert pointer_frames_and_offsets(capped) == [(0, 8), (7, 1), (6, 2), (5, 3), (4, 4)]
    # The memories are not affected by the pointer cap.
    assert memory_frames(capped) == memory_frames(bank.layout(1, 8))
    # A large clip does not lift the cap of 16.
    long_bank = make_bank(list(range(1, 30)), [0])
    assert len(long_bank.layout(1, 30, num_frames=1000).pointers) == 16


def test_pointers_of_future_conditioning_frames():
    """A conditioning frame after the tracked one is attended to (memory in slot 6) but gives no
    pointer when only_obj_ptrs_in_the_past (the default); otherwise its pointer has a negative
    signed offset, or |offset| with unsigned temporal encodings."""
    frames = list(range(1, 10))
    bank = make_bank(frames, [0, 12])
    layout = bank.layout(1, 10)
    assert memory_frames(layout)[:2] == [0, 12] and memory_slots(layout)[:2] == [6, 6]
    assert layout.protected[:2] == (True, True)
    assert pointer_frames_and_offsets(layout)[0] == (0, 10)
    assert 12 not in [frame for frame, _ in pointer_frames_and_offsets(layout)]

    bank = make_bank(frames, [0, 12], only_obj_ptrs_in_the_past=False)
    assert pointer_frames_and_offsets(bank.layout(1, 10))[:2] == [(0, 10), (12, -2)]
    bank = make_bank(frames, [0, 12], only_obj_ptrs_in_the_past=False, use_signed_tpos_enc_to_obj_ptrs=False)
    assert pointer_frames_and_offsets(bank.layout(1, 10))[:2] == [(0, 10), (12, 2)]


def test_conditioning_frame_in_the_recent_window_is_not_duplicated():
    """Conditioning frames 0 and 8, tracking frame 9: frame 8 appears once, as a conditioning
    memory (slot 6, protected) and once among the pointers (offset 1, as a conditioning frame); the
    recent slot of t-1 stays empty."""
    bank = make_bank(list(range(1, 8)), [0, 8])
    layout = bank.layout(1, 9)
    assert memory_frames(layout) == [0, 8, 3, 4, 5, 6, 7]
    assert memory_slots(layout) == [6, 6, 5, 4, 3, 2, 1]
    assert layout.protected == (True, True, False, False, False, False, False)
    pointers = pointer_frames_and_offsets(layout)
    assert pointers == [(0, 9), (8, 1), (7, 2), (6, 3), (5, 4), (4, 5), (3, 6), (2, 7), (1, 8)]
    assert [frame for frame, _ in pointers].count(8) == 1


def test_conditioning_frame_rewritten_over_a_recent_one_is_not_duplicated():
    """A frame first tracked (recent) and then prompted (conditioning, e.g. a correction) is only
    a conditioning memory afterwards."""
    bank = make_bank(list(range(1, 9)), [0])
    write_frame(bank, 1, 8, conditioning=True)
    layout = bank.layout(1, 9)
    assert memory_frames(layout).count(8) == 1
    assert [frame for frame, _ in pointer_frames_and_offsets(layout)].count(8) == 1
    assert (8, 6) in list(zip(memory_frames(layout), memory_slots(layout)))


def test_missing_frames_are_skipped():
    """Frames never written (e.g. the object absent or skipped) leave their slots empty: the other
    memories keep their own slots and pointers their own offsets."""
    bank = make_bank([1, 2, 3, 4, 5, 7, 9], [0])
    layout = bank.layout(1, 10)
    assert memory_frames(layout) == [0, 4, 5, 7, 9]
    assert memory_slots(layout) == [6, 5, 4, 2, 0]
    assert pointer_frames_and_offsets(layout) == [
        (0, 10), (9, 1), (7, 3), (5, 5), (4, 6), (3, 7), (2, 8), (1, 9),
    ]


def test_temporal_stride_two_selects_every_other_frame():
    """With memory_temporal_stride r=2, frame t attends to t-1 and to the frames
    ((t-2)//r)*r - (t_rel-2)*r for t_rel = 2..num_maskmem-1 (computed here), e.g. frame 21 ->
    [10, 12, 14, 16, 18, 20] and frame 22 -> [12, 14, 16, 18, 20, 21]; pointers are not strided."""
    stride, num_maskmem = 2, 7
    for frame_index in range(16, 30):  # from 16 on, the 15 pointer frames are all recent ones
        bank = make_bank(list(range(1, frame_index)), [0], memory_temporal_stride=stride)
        layout = bank.layout(1, frame_index)
        expected = []
        for t_rel in range(num_maskmem - 1, 0, -1):
            if t_rel == 1:
                expected.append((frame_index - 1, 0))
            else:
                expected.append((((frame_index - 2) // stride) * stride - (t_rel - 2) * stride, t_rel - 1))
        assert list(zip(memory_frames(layout), memory_slots(layout)))[1:] == expected
        assert pointer_frames_and_offsets(layout)[1:] == [(frame_index - back, back) for back in range(1, 16)]
    assert memory_frames(make_bank(list(range(1, 21)), [0], memory_temporal_stride=2).layout(1, 21)) == [
        0, 10, 12, 14, 16, 18, 20,
    ]
    assert memory_frames(make_bank(list(range(1, 22)), [0], memory_temporal_stride=2).layout(1, 22)) == [
        0, 12, 14, 16, 18, 20, 21,
    ]


def test_max_cond_frames_in_attn_selects_the_closest_before_and_after():
    """max_cond_frames_in_attn=2 with conditioning frames 2, 16, 18, 25 and tracking frame 20: 18
    (closest before) and 25 (closest after) are attended to as conditioning frames; 16, unselected
    but in the recent window, fills its own slot (3 frames back -> slot 3) and is protected, and
    gives a pointer; 2 is neither a memory nor a pointer."""
    cond_frames = [2, 16, 18, 25]
    frames = [t for t in range(20) if t not in cond_frames]
    bank = make_bank(frames, cond_frames, max_cond_frames_in_attn=2)
    layout = bank.layout(1, 20)
    assert sorted(memory_frames(layout)[:2]) == [18, 25]
    assert memory_slots(layout)[:2] == [6, 6]
    assert memory_frames(layout)[2:] == [14, 15, 16, 17, 19]
    assert memory_slots(layout)[2:] == [5, 4, 3, 2, 0]
    assert layout.protected == (True, True, False, False, True, False, False)
    pointers = pointer_frames_and_offsets(layout)
    assert pointers[0] == (18, 2)
    assert [frame for frame, _ in pointers[1:]] == [19, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5]
    assert (16, 4) in pointers and all(frame not in (2, 25) for frame, _ in pointers)
    assert_layout_matches(bank, 1, set(frames) | set(cond_frames), cond_frames, 20)

    # With room for 3, the third is the temporally closest of the others (10, not 2).
    cond_frames = [2, 10, 16, 25]
    frames = [t for t in range(20) if t not in cond_frames]
    bank = make_bank(frames, cond_frames, max_cond_frames_in_attn=3)
    layout = bank.layout(1, 20)
    frames_and_slots = zip(memory_frames(layout), memory_slots(layout))
    assert sorted(frame for frame, slot in frames_and_slots if slot == 6) == [10, 16, 25]
    assert 2 not in memory_frames(layout)


def test_conditioning_selection_matches_the_official_function_on_random_cases():
    """On random sets of conditioning frames, tracked frames and limits (-1, 2, 3, 4), the layout
    equals the reference built on the official select_closest_cond_frames."""
    rng = random.Random(7)
    for _ in range(60):
        limit = rng.choice([-1, 2, 3, 4])
        frame_index = rng.randint(5, 40)
        cond_frames = sorted(rng.sample(range(0, 50), rng.randint(1, 6)))
        if not any(t < frame_index for t in cond_frames):
            cond_frames = [0] + cond_frames
        order = cond_frames[:]
        rng.shuffle(order)  # prompts may come in any order: the bank keeps insertion order
        written = {t for t in range(frame_index) if t not in cond_frames and rng.random() < 0.85}
        bank = MemoryBank(BankConfig(max_cond_frames_in_attn=limit))
        bank.add_object(3)
        for t in order:
            write_frame(bank, 3, t, conditioning=True)
        for t in sorted(written):
            write_frame(bank, 3, t)
        assert_layout_matches(bank, 3, written | set(cond_frames), order, frame_index)


# --- forgetting ---------------------------------------------------------------------------------
def test_bank_keeps_only_what_can_still_be_selected_after_a_long_stream():
    """After 100 frames of 2 objects, each holds its conditioning entries (frame 0; frame 40 too for
    object 2, with features and pointer), features for the last num_maskmem-1 = 6 frames only and
    pointers for the last 15 frames only."""
    config = BankConfig()
    bank = MemoryBank(config)
    cond_frames = {1: {0}, 2: {0, 40}}
    for obj_id in cond_frames:
        bank.add_object(obj_id)
    for frame_index in range(100):
        for obj_id, conds in cond_frames.items():
            write_frame(bank, obj_id, frame_index, conditioning=frame_index in conds)
    for obj_id, conds in cond_frames.items():
        memory = bank.objects[obj_id]
        assert set(memory.conditioning) == conds
        assert all(stored.features is not None for stored in memory.conditioning.values())
        assert set(memory.recent) == set(range(85, 100))  # pointers: last 15 frames
        with_features = {t for t, stored in memory.recent.items() if stored.features is not None}
        assert with_features == set(range(94, 100))  # features: last 6 frames
    feature_bytes = NUM_TOKENS * NUM_CHANNELS * 2  # bfloat16
    pointer_bytes = POINTER_DIM * 4  # float32, as written
    expected_bytes = sum(
        len(conds) * (feature_bytes + pointer_bytes) + 15 * pointer_bytes + 6 * feature_bytes
        for conds in cond_frames.values()
    )
    assert bank.stored_bytes() == expected_bytes
    assert len(bank.stored_tensors()) == sum(len(conds) * 2 + 15 + 6 for conds in cond_frames.values())
    # What remains still gives SAM 2's full layout for the next frame.
    for obj_id, conds in cond_frames.items():
        assert_layout_matches(bank, obj_id, set(range(100)), sorted(conds), 100)


def test_stored_bytes_are_flat_over_a_stream():
    """stored_bytes() does not grow with the stream: constant from frame 20 to frame 400."""
    bank = MemoryBank(BankConfig())
    for obj_id in (1, 2):
        bank.add_object(obj_id)
    sizes = []
    for frame_index in range(400):
        for obj_id in (1, 2):
            write_frame(bank, obj_id, frame_index, conditioning=frame_index == 0)
        sizes.append(bank.stored_bytes())
    assert len(set(sizes[20:])) == 1
    assert sizes[5] < sizes[20]  # it did grow while the windows filled up


@pytest.mark.parametrize(("stride", "num_maskmem"), [(1, 7), (2, 7), (3, 7), (2, 4), (1, 2)])
def test_forgetting_never_removes_what_a_later_layout_needs(stride, num_maskmem):
    """Writing 60 frames one by one (conditioning frames 0 and 33), the layout of every next frame
    equals the reference computed as if nothing had been forgotten: every memory it needs has its
    features, every pointer it needs is there."""
    config = dict(memory_temporal_stride=stride, num_maskmem=num_maskmem)
    bank = MemoryBank(BankConfig(**config))
    bank.add_object(5)
    cond_frames = [0, 33]
    for frame_index in range(60):
        write_frame(bank, 5, frame_index, conditioning=frame_index in cond_frames)
        next_frame = frame_index + 1
        cond_so_far = [t for t in cond_frames if t <= frame_index]
        assert_layout_matches(bank, 5, set(range(next_frame)), cond_so_far, next_frame)
    # And it did forget: far fewer entries than frames.
    memory = bank.objects[5]
    assert len(memory.recent) <= 15
    assert sum(stored.features is not None for stored in memory.recent.values()) < 20


def test_a_conditioning_frame_written_ahead_does_not_forget_recent_memories():
    """Tracking frames 1-19, then a prompt registered for the later frame 25 (a conditioning
    memory written ahead, as SAM 2 allows prompts on any frame): frame 20 still attends to frames
    14-19 and to conditioning frames 0 and 25, as SAM 2 would."""
    bank = MemoryBank(BankConfig())
    bank.add_object(1)
    write_frame(bank, 1, 0, conditioning=True)
    for frame_index in range(1, 20):
        write_frame(bank, 1, frame_index)
    write_frame(bank, 1, 25, conditioning=True)
    assert_layout_matches(bank, 1, set(range(20)) | {25}, [0, 25], 20)


# --- errors -------------------------------------------------------------------------------------
def test_adding_an_existing_object_id_is_an_error_naming_it():
    """add_object with an id already in the bank raises ValueError naming the id; the existing
    memories are untouched."""
    bank = make_bank([1, 2], [0], obj_id=17)
    before = bank.stored_bytes()
    with pytest.raises(ValueError, match=r"\b17\b"):
        bank.add_object(17)
    assert bank.stored_bytes() == before and bank.has_memory(17)


def test_removing_an_unknown_object_id_is_an_error_naming_it():
    """remove_object with an id not in the bank raises ValueError naming the id; removing a known
    one drops its memories."""
    bank = make_bank([1, 2], [0], obj_id=4)
    with pytest.raises(ValueError, match=r"\b23\b"):
        bank.remove_object(23)
    assert 4 in bank
    bank.remove_object(4)
    assert 4 not in bank and bank.stored_bytes() == 0
    with pytest.raises(ValueError, match=re.escape("4")):
        bank.remove_object(4)
