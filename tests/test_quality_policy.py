"""Specification of the quality-aware policy ``qefp`` (docs/architecture.md, "The memory rules").

qefp drops EFP's number of memories, k = min(max(N + P - capacity, 0), prunable); among the
prunable memories (not conditioning, not the newest) it drops the poor ones first (object-score
logit <= 0 or predicted IoU < min_iou), then the good ones, each group most redundant with the
newest first (EFP's summed per-token cosine), ties the older first. Checked against a plain-Python
reference on hand-built tensors; fifo and efp never see the quality and are unchanged.
"""

from __future__ import annotations

import random

import pytest
import torch

from surgsam2 import Prompt, Tracker
from test_tracker import moving_discs, random_model
from surgsam2.memory.assembly import gather_candidates, select_memories
from surgsam2.memory.bank import BankConfig, MemoryBank
from surgsam2.memory.policies import (
    EfpPolicy,
    FifoPolicy,
    MemoryQuality,
    QualityEfpPolicy,
    make_policy,
    policy_names,
)

NUM_MASKMEM = 7
NUM_TOKENS = 4
NUM_CHANNELS = 8


def quality(scores: list[list[float]], ious: list[list[float]]) -> MemoryQuality:
    """(N, B) quality from nested lists indexed [memory][object]."""
    return MemoryQuality(object_scores=torch.tensor(scores), ious=torch.tensor(ious))


def reference_kept(
    features: torch.Tensor, protected: list[bool], scores: torch.Tensor, ious: torch.Tensor,
    num_frame_to_prune: int, min_iou: float, column: int,
) -> list[int]:
    """Independent reference of the qefp rule for one object, in float64 Python loops."""
    count = features.shape[0]
    prunable = [i for i in range(count - 1) if not protected[i]]
    num_drop = min(max(count + num_frame_to_prune - NUM_MASKMEM, 0), len(prunable))
    newest = features[-1, column].double()
    ranked = []
    for i in prunable:
        memory = features[i, column].double()
        redundancy = 0.0
        for token in range(memory.shape[0]):
            a, b = memory[token], newest[token]
            redundancy += float((a @ b) / max(a.norm() * b.norm(), 1e-8))
        poor = scores[i, column].item() <= 0 or ious[i, column].item() < min_iou
        ranked.append((0 if poor else 1, -redundancy, i))
    ranked.sort()
    dropped = {i for _, _, i in ranked[:num_drop]}
    return [i for i in range(count) if i not in dropped]


def one_cond(count: int) -> list[bool]:
    return [True] + [False] * (count - 1)


def test_qefp_is_registered_and_made_by_name():
    """qefp is in the registry (CLI, API and training switch read it) and reads num_frame_to_prune."""
    assert "qefp" in policy_names()
    policy = make_policy("qefp", num_frame_to_prune=3)
    assert isinstance(policy, QualityEfpPolicy)
    assert policy.num_frame_to_prune == 3 and policy.uses_quality
    assert not FifoPolicy.uses_quality and not EfpPolicy().uses_quality


def test_qefp_drops_absent_frames_before_redundant_ones():
    """1 cond + 6 recent, P=2 so k=2: memories 2 and 4 (logit <= 0, object absent) are dropped
    although efp would drop 3 and 5 (the most similar to the newest)."""
    torch.manual_seed(0)
    features = torch.randn(7, 1, NUM_TOKENS, NUM_CHANNELS)
    features[3] = features[6]  # identical to the newest
    features[5] = features[6] + 0.01
    scores = [[5.0], [5.0], [-1.0], [5.0], [0.0], [5.0], [5.0]]
    ious = [[0.9]] * 7
    assert EfpPolicy().select(features, one_cond(7), NUM_MASKMEM)[:, 0].tolist() == [0, 1, 2, 4, 6]
    kept = QualityEfpPolicy().select(features, one_cond(7), NUM_MASKMEM, quality=quality(scores, ious))
    assert kept[:, 0].tolist() == [0, 1, 3, 5, 6]


def test_qefp_low_predicted_iou_counts_as_poor():
    """A present object (logit > 0) segmented with predicted IoU below min_iou is dropped first;
    exactly at min_iou it is good."""
    torch.manual_seed(1)
    features = torch.randn(7, 1, NUM_TOKENS, NUM_CHANNELS)
    scores = [[5.0]] * 7
    ious = [[0.9], [0.9], [0.9], [0.49], [0.5], [0.9], [0.9]]
    policy = QualityEfpPolicy(num_frame_to_prune=1, min_iou=0.5)  # k = 1
    kept = policy.select(features, one_cond(7), NUM_MASKMEM, quality=quality(scores, ious))
    assert kept[:, 0].tolist() == [0, 1, 2, 4, 5, 6]


def test_qefp_fills_the_budget_with_the_most_redundant_good_memories():
    """One poor memory and k=2: the poor one and then the good memory most similar to the newest."""
    torch.manual_seed(2)
    features = torch.randn(7, 1, NUM_TOKENS, NUM_CHANNELS)
    features[2] = features[6] * 3.0  # redundancy T: the most redundant good memory
    scores = [[5.0], [5.0], [5.0], [5.0], [5.0], [-3.0], [5.0]]
    ious = [[0.9]] * 7
    kept = QualityEfpPolicy().select(features, one_cond(7), NUM_MASKMEM, quality=quality(scores, ious))
    assert kept[:, 0].tolist() == [0, 1, 3, 4, 6]


def test_qefp_never_drops_conditioning_or_newest_memories_even_when_poor():
    """Conditioning memories and the newest one are kept whatever their quality."""
    torch.manual_seed(3)
    features = torch.randn(7, 1, NUM_TOKENS, NUM_CHANNELS)
    protected = [True, True, False, False, False, False, False]
    scores = [[-5.0], [-5.0], [5.0], [5.0], [5.0], [5.0], [-5.0]]
    ious = [[0.0], [0.0], [0.9], [0.9], [0.9], [0.9], [0.0]]
    kept = QualityEfpPolicy().select(features, protected, NUM_MASKMEM, quality=quality(scores, ious))
    assert {0, 1, 6} <= set(kept[:, 0].tolist())
    assert kept.shape == (5, 1)


def test_qefp_keeps_excess_poor_memories_when_the_budget_is_spent():
    """More poor memories than k: the most redundant poor ones go, the rest stay (the kept count
    is host-side, so the bank stays bounded and no host sync is needed)."""
    cosines = [1.0, 0.1, 0.9, 0.5, 0.2, 0.7]  # entries 0..5 vs the newest (index 6) on every token
    features = torch.zeros(7, 1, NUM_TOKENS, NUM_CHANNELS)
    for index, cosine in enumerate(cosines + [1.0]):
        features[index, 0, :, 0] = cosine
        features[index, 0, :, 1] = (1 - cosine**2) ** 0.5
    scores = [[5.0], [-1.0], [-1.0], [-1.0], [-1.0], [5.0], [5.0]]
    ious = [[0.9]] * 7
    kept = QualityEfpPolicy().select(features, one_cond(7), NUM_MASKMEM, quality=quality(scores, ious))
    assert kept[:, 0].tolist() == [0, 1, 4, 5, 6]  # poor 2 (cos .9) and 3 (cos .5) dropped


def test_qefp_selects_per_object_and_equals_the_reference():
    """On many random cases (N 2..7, B 1..4, random protection, quality and P 0..3) the kept set of
    every object equals the plain-Python reference."""
    rng = random.Random(7)
    for case in range(300):
        count = rng.randint(2, 7)
        batch = rng.randint(1, 4)
        protected = [rng.random() < 0.25 for _ in range(count)]
        prune = rng.randint(0, 3)
        min_iou = rng.choice([0.0, 0.5, 0.8])
        torch.manual_seed(case)
        features = torch.randn(count, batch, NUM_TOKENS, NUM_CHANNELS)
        if case % 3 == 0:  # exact ties in redundancy
            features[: count - 1] = features[-1]
        scores = torch.randn(count, batch) * 2
        ious = torch.rand(count, batch)
        policy = QualityEfpPolicy(num_frame_to_prune=prune, min_iou=min_iou)
        kept = policy.select(features, protected, NUM_MASKMEM, quality=MemoryQuality(scores, ious))
        assert kept.shape[0] == policy.num_kept(protected, NUM_MASKMEM)
        for column in range(batch):
            expected = reference_kept(features, protected, scores, ious, prune, min_iou, column)
            assert kept[:, column].tolist() == expected, (case, column)


def test_qefp_without_quality_is_efp():
    """Without quality (a writer that gives none) qefp selects exactly as efp."""
    torch.manual_seed(4)
    features = torch.randn(7, 3, NUM_TOKENS, NUM_CHANNELS)
    assert torch.equal(
        QualityEfpPolicy().select(features, one_cond(7), NUM_MASKMEM),
        EfpPolicy().select(features, one_cond(7), NUM_MASKMEM),
    )


def test_qefp_select_returns_a_device_index_tensor():
    """The choice is an int64 (K, B) tensor on the features' device, ascending per object."""
    features = torch.randn(7, 3, NUM_TOKENS, NUM_CHANNELS).to(torch.bfloat16)
    q = MemoryQuality(torch.randn(7, 3), torch.rand(7, 3))
    kept = QualityEfpPolicy().select(features, one_cond(7), NUM_MASKMEM, quality=q)
    assert kept.dtype == torch.int64 and kept.shape == (5, 3) and kept.device == features.device
    assert bool((kept[1:] > kept[:-1]).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are observable on CUDA only")
def test_qefp_select_does_not_synchronise_with_the_host():
    """On CUDA, select with quality raises no synchronising operation."""
    features = torch.randn(7, 3, NUM_TOKENS, NUM_CHANNELS, device="cuda")
    q = MemoryQuality(torch.randn(7, 3, device="cuda"), torch.rand(7, 3, device="cuda"))
    policy = QualityEfpPolicy()
    policy.select(features, one_cond(7), NUM_MASKMEM, quality=q)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kept = policy.select(features, one_cond(7), NUM_MASKMEM, quality=q)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert kept.shape == (5, 3)


def filled_bank(with_quality: bool) -> MemoryBank:
    """One object: a conditioning frame and six tracked frames; frames 2 and 4 absent."""
    torch.manual_seed(5)
    bank = MemoryBank(BankConfig())
    bank.add_object(1)
    for frame in range(7):
        extra = {}
        if with_quality:
            extra = {"object_score": torch.tensor(-2.0 if frame in (2, 4) else 3.0), "iou": torch.tensor(0.8)}
        bank.write(1, frame, torch.randn(NUM_TOKENS, NUM_CHANNELS), torch.randn(16), conditioning=frame == 0, **extra)
    return bank


def test_bank_quality_reaches_the_policy_and_fifo_efp_ignore_it():
    """The quality written with each memory is gathered as (N, B) tensors for qefp; fifo and efp
    choose the same with or without it."""
    layout = filled_bank(True).layout(1, 7)
    plain = gather_candidates([layout])
    rich = gather_candidates([layout], with_quality=True)
    assert plain.quality is None
    assert rich.quality.object_scores[:, 0].tolist() == [3.0, 3.0, -2.0, 3.0, -2.0, 3.0, 3.0]
    assert torch.equal(rich.quality.ious, torch.full((7, 1), 0.8))
    for policy in (FifoPolicy(), EfpPolicy(), EfpPolicy(num_frame_to_prune=3)):
        a, b = select_memories(plain, policy, NUM_MASKMEM), select_memories(rich, policy, NUM_MASKMEM)
        assert (a is None and b is None) or torch.equal(a, b)
    kept = select_memories(rich, QualityEfpPolicy(), NUM_MASKMEM)
    assert kept[:, 0].tolist() == [0, 1, 3, 5, 6]  # the absent frames 2 and 4 are not attended


def test_memories_written_without_quality_count_as_good():
    """A bank written without quality gives qefp logits +inf and IoU 1: it behaves as efp."""
    layout = filled_bank(False).layout(1, 7)
    rich = gather_candidates([layout], with_quality=True)
    assert bool(torch.isinf(rich.quality.object_scores).all()) and bool((rich.quality.ious == 1).all())
    assert torch.equal(
        select_memories(rich, QualityEfpPolicy(), NUM_MASKMEM), select_memories(rich, EfpPolicy(), NUM_MASKMEM)
    )


def test_tracker_with_qefp_stores_quality_and_tracks():
    """The tracker writes each memory's logit and IoU (device tensors) for qefp, none for efp."""
    model = random_model()
    frames, masks = moving_discs(9)
    for memory, expect in (("qefp", True), ("efp", False)):
        tracker = Tracker(model, memory=memory)
        for index, frame in enumerate(frames):
            prompts = {i: Prompt(mask=m) for i, m in masks.items()} if index == 0 else None
            result = tracker.step(frame, prompts)
            assert set(result.masks) == set(masks)
        stored = list(tracker.bank.objects[1].recent.values())[-1]
        assert (stored.object_score is not None) == expect and (stored.iou is not None) == expect
        if expect:
            assert stored.object_score.shape == () and 0.0 <= float(stored.iou) <= 1.5


def test_training_clip_forward_with_qefp_passes_quality_and_keeps_gradients(tmp_path):
    """Training reads the same assembly: with qefp each memory's (N,) logits and IoUs reach the
    policy (N objects of the clip batch), pruning happens, and the loss still backpropagates."""
    from surgsam2.data.synthetic import write_synthetic_dataset
    from surgsam2.model.configs import get_config
    from surgsam2.model.sam2 import SAM2Model
    from surgsam2.train.config import LossSection, PromptSection
    from surgsam2.train.dataset import ClipDataset, ClipSpec, collate_clips
    from surgsam2.train.losses import LOSS_NAMES, weighted_total
    from surgsam2.train.model_forward import ClipForward

    root = tmp_path / "synthetic"
    write_synthetic_dataset(root, videos=1, frames=10, size=(96, 80), seed=11)
    batch = collate_clips([ClipDataset([root], ClipSpec(num_frames=9, image_size=64, max_objects=2), seed=0)[(0, 0)]])
    seen: list[tuple[int, int, int]] = []

    class Recording(QualityEfpPolicy):
        def select(self, features, protected, capacity, quality=None):
            assert quality is not None and quality.object_scores.shape == features.shape[:2]
            keep = super().select(features, protected, capacity, quality=quality)
            seen.append((features.shape[0], keep.shape[0], features.shape[1]))
            return keep

    torch.manual_seed(0)
    model = SAM2Model(get_config("nano", 64)).train()
    forward = ClipForward(model, PromptSection(prob_points=0.0), LossSection(), Recording())
    outputs = forward(batch["frames"], batch["masks"], batch["valid"], seed=0)
    loss = weighted_total({name: outputs[name] for name in LOSS_NAMES}, LossSection())
    loss.backward()
    assert (7, 5) in [(n, k) for n, k, _ in seen]
    assert torch.isfinite(loss) and model.maskmem_tpos_enc.grad.abs().sum() > 0
