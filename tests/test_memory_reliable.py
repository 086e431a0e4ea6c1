"""Specification of the reliable-memory policy ``refp`` (docs/architecture.md, "The memory rules").

The bank retains, per object, the newest R reliable memories (object-score logit > 0, predicted IoU
>= min_iou) that left the recent window, on the device, and proposes them after the conditioning
frames. refp drops EFP's count over all candidates; drop order per object: poor retained (or empty)
slots, poor recent memories (most redundant first), reliable retained ones (oldest first), reliable
recent ones (most redundant first); ties the older first; conditioning and newest never. Checked
against a plain-Python reference on hand-built tensors, in a bank over a long stream, and in the
tracker (equal to efp when every memory is reliable).
"""

from __future__ import annotations

import random

import pytest
import torch

from surgsam2 import Prompt, Tracker
from surgsam2.memory.assembly import gather_candidates, select_memories
from surgsam2.memory.bank import BankConfig, MemoryBank
from surgsam2.memory.policies import EfpPolicy, MemoryQuality, ReliableEfpPolicy, make_policy, policy_names
from test_tracker import moving_discs, random_model

NUM_MASKMEM = 7
NUM_TOKENS = 4
NUM_CHANNELS = 8


def reference_kept(features, protected, retained, scores, ious, frames, prune, min_iou, column) -> list[int]:
    """Independent reference of the refp rule for one object, in float64 Python loops."""
    count = features.shape[0]
    droppable = [i for i in range(count - 1) if not protected[i]]
    num_drop = min(max(count + prune - NUM_MASKMEM, 0), len(droppable))
    newest = features[-1, column].double()
    ranked = []
    for i in droppable:
        poor = scores[i, column].item() <= 0 or ious[i, column].item() < min_iou
        if retained[i]:
            tier, secondary = (3 if poor else 1), -frames[i, column].item()
        else:
            memory = features[i, column].double()
            secondary = sum(
                float((memory[t] @ newest[t]) / max(memory[t].norm() * newest[t].norm(), 1e-8))
                for t in range(memory.shape[0])
            )
            tier = 2 if poor else 0
        ranked.append((-tier, -secondary, i))
    ranked.sort()
    dropped = {i for _, _, i in ranked[:num_drop]}
    return [i for i in range(count) if i not in dropped]


def test_refp_is_registered_and_made_by_name():
    """refp is in the registry (CLI, API, training switch), reads P and retains 2 memories by default."""
    assert "refp" in policy_names()
    policy = make_policy("refp", num_frame_to_prune=3)
    assert isinstance(policy, ReliableEfpPolicy) and policy.uses_quality
    assert policy.num_frame_to_prune == 3 and policy.retained_memories == 2
    with pytest.raises(ValueError, match="retained_memories"):
        ReliableEfpPolicy(retained_memories=-1)


def test_refp_selects_per_object_and_equals_the_reference():
    """Random cases (conditioning 1-2, retained 0-3, recent 1-6, B 1-4, random quality, frames and
    P 0-3): every object's kept set equals the plain-Python reference, and the count is num_kept."""
    rng = random.Random(11)
    for case in range(300):
        num_cond, num_retained, num_recent = rng.randint(1, 2), rng.randint(0, 3), rng.randint(1, 6)
        count, batch = num_cond + num_retained + num_recent, rng.randint(1, 4)
        protected = [True] * num_cond + [False] * num_retained + [rng.random() < 0.15 for _ in range(num_recent)]
        retained = [False] * num_cond + [True] * num_retained + [False] * num_recent
        prune, min_iou = rng.randint(0, 3), rng.choice([0.0, 0.5, 0.8])
        torch.manual_seed(case)
        features = torch.randn(count, batch, NUM_TOKENS, NUM_CHANNELS)
        if case % 4 == 0:  # exact ties in redundancy
            features[: count - 1] = features[-1]
        scores, ious = torch.randn(count, batch) * 2, torch.rand(count, batch)
        frames = torch.tensor([rng.sample(range(100), count) for _ in range(batch)], dtype=torch.float32).T
        quality = MemoryQuality(scores, ious, frames=frames, retained=tuple(retained) if num_retained else ())
        policy = ReliableEfpPolicy(num_frame_to_prune=prune, min_iou=min_iou)
        kept = policy.select(features, protected, NUM_MASKMEM, quality=quality)
        assert kept.shape[0] == policy.num_kept(protected, NUM_MASKMEM)
        for column in range(batch):
            expected = reference_kept(features, protected, retained, scores, ious, frames, prune, min_iou, column)
            assert kept[:, column].tolist() == expected, (case, column)


def test_refp_keeps_efps_memories_when_every_memory_is_reliable():
    """1 cond + 2 reliable retained + 6 reliable recent: the retained ones are dropped and among the
    recent ones exactly efp's choice (on the candidates without the retained) is kept."""
    torch.manual_seed(3)
    recent_only = torch.randn(7, 2, NUM_TOKENS, NUM_CHANNELS)
    features = torch.cat([recent_only[:1], torch.randn(2, 2, NUM_TOKENS, NUM_CHANNELS), recent_only[1:]])
    quality = MemoryQuality(torch.full((9, 2), 4.0), torch.full((9, 2), 0.9),
                            frames=torch.tensor([0, 3, 2, 10, 11, 12, 13, 14, 15.0])[:, None].expand(9, 2),
                            retained=(False, True, True) + (False,) * 6)  # fmt: skip
    kept = ReliableEfpPolicy().select(features, [True] + [False] * 8, NUM_MASKMEM, quality=quality)
    efp = EfpPolicy().select(recent_only, [True] + [False] * 6, NUM_MASKMEM)
    as_efp_index = torch.where(kept > 2, kept - 2, kept)
    assert torch.equal(as_efp_index, efp)


def test_refp_replaces_poor_recent_memories_with_retained_ones_newest_first():
    """1 cond, 2 reliable retained (frames 30, 40), 6 recent of which 3 absent; P=2, so k + R = 4
    are dropped: the 3 absent ones, then the older retained one (30), keeping the newer (40)."""
    torch.manual_seed(4)
    features = torch.randn(9, 1, NUM_TOKENS, NUM_CHANNELS)
    scores = torch.tensor([5.0, 5.0, 5.0, 5.0, -1.0, -1.0, -1.0, 5.0, 5.0])[:, None]
    frames = torch.tensor([0, 30, 40, 50, 51, 52, 53, 54, 55.0])[:, None]
    quality = MemoryQuality(scores, torch.full((9, 1), 0.9), frames=frames, retained=(False, True, True) + (False,) * 6)
    kept = ReliableEfpPolicy().select(features, [True] + [False] * 8, NUM_MASKMEM, quality=quality)
    assert kept[:, 0].tolist() == [0, 2, 3, 7, 8]
    # An empty retained slot (logit -inf) goes before a poor recent memory: P=0 drops 2, the empty
    # slot and one absent recent memory; the reliable retained one (40) is kept.
    scores[1] = float("-inf")
    quality = MemoryQuality(scores, torch.full((9, 1), 0.9), frames=frames, retained=(False, True, True) + (False,) * 6)
    kept = ReliableEfpPolicy(num_frame_to_prune=0).select(features, [True] + [False] * 8, NUM_MASKMEM, quality=quality)
    dropped = set(range(9)) - set(kept[:, 0].tolist())
    assert 1 in dropped and len(dropped) == 2 and len(dropped & {4, 5, 6}) == 1


def stream_bank(num_frames: int, reliable, count: int = 2) -> MemoryBank:
    """One object: a conditioning frame 0, then tracked frames whose reliability ``reliable(t)`` says."""
    bank = MemoryBank(BankConfig(retained_memories=count, retained_min_iou=0.5))
    bank.add_object(1)
    for frame in range(num_frames):
        good = reliable(frame)
        bank.write(1, frame, torch.full((NUM_TOKENS, NUM_CHANNELS), float(frame)), torch.full((16,), float(frame)),
                   conditioning=frame == 0, keys=torch.full((2, NUM_TOKENS, NUM_CHANNELS), float(frame)),
                   object_score=torch.tensor(3.0 if good else -2.0),
                   iou=torch.tensor(0.9 if frame % 7 else 0.4))  # fmt: skip
    return bank


def test_bank_retains_the_newest_reliable_memories_and_stays_bounded():
    """Over a 400-frame stream the bank's bytes stop growing once the window is full; it retains the
    newest 2 reliable frames that left the window (logit > 0 and IoU >= 0.5: frames that are
    multiples of 7 have IoU 0.4), with their features, keys and pointer; absent frames are skipped."""
    absent = set(range(200, 400))  # the object leaves at frame 200 for good
    bank = stream_bank(400, lambda t: t not in absent)
    memory = bank.objects[1]
    stamps = sorted(float(stored.frame_stamp) for stored in memory.retained)
    assert stamps == [198.0, 199.0]
    for stored in memory.retained:
        frame = float(stored.frame_stamp)
        assert bool((stored.features == frame).all()) and bool((stored.keys == frame).all())
        assert bool((stored.obj_ptr == frame).all()) and float(stored.object_score) == 3.0
    sizes = [stream_bank(n, lambda t: True).stored_bytes() for n in (20, 60, 300)]
    assert sizes[0] == sizes[1] == sizes[2], sizes
    bank = stream_bank(20, lambda t: True)
    assert sorted(float(s.frame_stamp) for s in bank.objects[1].retained) == [12.0, 13.0]  # 14 has IoU 0.4
    layout = bank.layout(1, 20)
    assert layout.retained == (False, True, True) + (False,) * 6 and len(layout.memories) == 9
    assert [slot for _, slot in layout.memories[1:3]] == [NUM_MASKMEM - 2] * 2


def test_retained_slot_is_configurable_and_checked():
    """refp's ``retained_slot`` reaches the bank through the tracker; a slot outside the table is
    refused with one line."""
    bank = MemoryBank(BankConfig(retained_memories=1, retained_slot=NUM_MASKMEM - 1))
    bank.add_object(1)
    for frame in range(12):
        bank.write(1, frame, torch.zeros(NUM_TOKENS, NUM_CHANNELS), torch.zeros(16), conditioning=frame == 0,
                   object_score=torch.tensor(3.0), iou=torch.tensor(0.9))  # fmt: skip
    assert [slot for (_, slot), flag in zip(bank.layout(1, 12).memories, bank.layout(1, 12).retained) if flag] == [6]
    with pytest.raises(ValueError, match="retained_slot must be in 0..6"):
        BankConfig(retained_memories=1, retained_slot=7)
    tracker = Tracker(random_model(), memory=ReliableEfpPolicy(retained_memories=3, min_iou=0.7, retained_slot=6))
    config = tracker.bank.config
    assert (config.retained_memories, config.retained_min_iou, config.retained_slot) == (3, 0.7, 6)
    assert Tracker(random_model(), memory="efp").bank.config.retained_memories == 0


def test_bank_retains_nothing_for_fifo_efp_qefp_and_before_the_window_is_full():
    """Without retention (the default) the layout is SAM 2's; with it, no slot exists until a memory
    leaves the recent window, so early frames propose exactly SAM 2's candidates."""
    bank = MemoryBank(BankConfig())
    bank.add_object(1)
    for frame in range(30):
        bank.write(1, frame, torch.zeros(NUM_TOKENS, NUM_CHANNELS), torch.zeros(16), conditioning=frame == 0,
                   object_score=torch.tensor(3.0), iou=torch.tensor(0.9))  # fmt: skip
    assert bank.objects[1].retained == [] and bank.layout(1, 30).retained == ()
    early = stream_bank(7, lambda t: True)
    assert early.objects[1].retained == [] and len(early.layout(1, 7).memories) == 7
    candidates = gather_candidates([stream_bank(20, lambda t: True).layout(1, 20)], with_quality=True)
    assert sorted(candidates.quality.frames[1:3, 0].tolist()) == [12.0, 13.0]  # the retained frames
    kept = select_memories(candidates, ReliableEfpPolicy(), NUM_MASKMEM)
    assert kept.shape == (5, 1) and not ({1, 2} & set(kept[:, 0].tolist()))  # all reliable: efp's choice


def test_tracker_with_refp_equals_efp_when_every_memory_is_reliable():
    """With min_iou 0 every memory of a visible object is reliable: refp retains memories but tracks
    exactly as efp (same masks, logits bit-equal) over frames where retained memories exist."""
    model = random_model()
    frames, masks = moving_discs(12)
    results = {}
    for name, memory in (("efp", "efp"), ("refp", ReliableEfpPolicy(min_iou=0.0))):
        tracker = Tracker(model, memory=memory)
        results[name] = [tracker.step(frame, {i: Prompt(mask=m) for i, m in masks.items()} if t == 0 else None)
                         for t, frame in enumerate(frames)]  # fmt: skip
        if name == "refp":
            assert all(len(tracker.bank.objects[i].retained) == 2 for i in masks)
    for a, b in zip(results["efp"], results["refp"]):
        for obj_id in masks:
            assert (a.logits[obj_id] == b.logits[obj_id]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are observable on CUDA only")
def test_refp_select_and_retention_do_not_synchronise_with_the_host():
    """On CUDA, retaining a memory and selecting with quality raise no synchronising operation."""
    bank = MemoryBank(BankConfig(retained_memories=2))
    bank.add_object(1)

    def write(frame: int) -> None:
        bank.write(1, frame, torch.randn(NUM_TOKENS, NUM_CHANNELS, device="cuda"), torch.randn(16, device="cuda"),
                   conditioning=frame == 0, object_score=torch.tensor(3.0, device="cuda"),
                   iou=torch.tensor(0.9, device="cuda"))  # fmt: skip

    for frame in range(10):
        write(frame)
    candidates = gather_candidates([bank.layout(1, 10)], with_quality=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        write(10)
        kept = ReliableEfpPolicy().select(candidates.features, candidates.protected, NUM_MASKMEM,
                                          quality=candidates.quality)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert kept.shape == (5, 1)
