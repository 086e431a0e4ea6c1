"""Specification of the memory policies (docs/architecture.md, "The memory rules"): fifo keeps every
candidate (SAM 2); efp is Surgical SAM 2's Efficient Frame Pruning, with every conditioning frame
protected and a per-object selection.

Candidate memories are (N, B, T, C) tensors in bank order [conditioning..., oldest ... newest]; a
policy returns the kept indices (K, B), ascending per object.
"""

from __future__ import annotations

import math
import random
import re

import pytest
import torch

from surgsam2.memory.policies import EfpPolicy, FifoPolicy, MemoryPolicy, make_policy

NUM_MASKMEM = 7  # the capacity of every SAM 2 / SAM 2.1 model
NUM_TOKENS = 4
NUM_CHANNELS = 8


def memories_with_cosines(cosines: list[float], scales: list[float] | None = None) -> torch.Tensor:
    """(N, 1, T, C) memories whose last entry (the newest) is e0 on every token and whose entry i
    has cosine ``cosines[i]`` with it on every token, so its redundancy is exactly T * cosines[i].

    The newest entry's own cosine is taken as 1. Entries are scaled (``scales``, default varied
    positive factors) so that only the direction matters.
    """
    count = len(cosines) + 1
    scales = scales if scales is not None else [0.5 + 0.37 * i for i in range(count)]
    memories = torch.zeros(count, 1, NUM_TOKENS, NUM_CHANNELS)
    for index, cosine in enumerate(list(cosines) + [1.0]):
        sine = math.sqrt(max(0.0, 1.0 - cosine * cosine))
        memories[index, 0, :, 0] = cosine * scales[index]
        memories[index, 0, :, 1] = sine * scales[index]
    return memories


def dropped_indices(kept: torch.Tensor, num_candidates: int, column: int = 0) -> set[int]:
    """The candidates of one object that the policy did not keep."""
    return set(range(num_candidates)) - set(kept[:, column].tolist())


def one_cond(num_candidates: int) -> list[bool]:
    """Protection flags of one conditioning frame followed by recent frames."""
    return [True] + [False] * (num_candidates - 1)


# --- fifo ------------------------------------------------------------------------------------
def test_fifo_keeps_every_candidate_of_every_object():
    """fifo (SAM 2) attends to every candidate, whatever the count, protection and capacity."""
    features = torch.randn(9, 3, NUM_TOKENS, NUM_CHANNELS)
    protected = [True, True, False, False, True, False, False, False, False]
    policy = FifoPolicy()
    kept = policy.select(features, protected, NUM_MASKMEM)
    assert kept.shape == (9, 3)
    assert torch.equal(kept, torch.arange(9)[:, None].expand(9, 3))
    assert policy.num_kept(protected, NUM_MASKMEM) == 9


# --- efp: which frames are dropped -------------------------------------------------------------
def test_efp_drops_the_memories_most_similar_to_the_newest():
    """1 conditioning + 6 recent memories, P=2: k = 7 + 2 - 7 = 2 memories are dropped, the two
    with the highest summed cosine to the newest (one identical to it, one at cosine 0.9); the
    conditioning frame, identical to the newest, is protected."""
    # index:            0(cond) 1     2    3    4     5     6 = newest
    cosines = [1.0, -1.0, 0.2, 1.0, 0.0, 0.9]
    features = memories_with_cosines(cosines)
    policy = EfpPolicy()
    kept = policy.select(features, one_cond(7), NUM_MASKMEM)
    assert kept.shape == (5, 1)
    assert kept[:, 0].tolist() == [0, 1, 2, 4, 6]
    assert dropped_indices(kept, 7) == {3, 5}


def test_efp_keeps_anti_correlated_and_orthogonal_memories():
    """Anti-correlated (cosine -1) and orthogonal (cosine 0) memories are the least redundant: with
    two mildly similar memories among them, those two are dropped."""
    cosines = [0.7, -1.0, 0.0, 0.3, 0.1, -0.5]  # entry 0 is the conditioning frame
    features = memories_with_cosines(cosines)
    kept = EfpPolicy().select(features, one_cond(7), NUM_MASKMEM)
    assert dropped_indices(kept, 7) == {3, 4}


def test_efp_uses_the_newest_memory_as_reference():
    """Redundancy is measured against the last candidate (frame t-1): four mutually identical
    memories orthogonal to the newest are not the first dropped; the one parallel to it is."""
    newest = torch.randn(NUM_TOKENS, NUM_CHANNELS)
    other = torch.randn(NUM_TOKENS, NUM_CHANNELS)
    other = other - (other * newest).sum(-1, keepdim=True) / (newest * newest).sum(-1, keepdim=True) * newest
    features = torch.stack([other, other, other, other, 0.5 * newest, other, newest])[:, None]
    kept = EfpPolicy().select(features, one_cond(7), NUM_MASKMEM)
    # Entry 4 (parallel to the newest) goes first, then the oldest of the equally orthogonal ones.
    assert dropped_indices(kept, 7) == {4, 1}


@pytest.mark.parametrize(
    ("num_candidates", "expected_dropped"),
    [(7, 2), (6, 1), (5, 0), (4, 0), (2, 0), (1, 0)],
)
def test_efp_number_dropped_is_n_plus_p_minus_capacity(num_candidates, expected_dropped):
    """k = N + P - capacity memories are dropped when N + P > capacity (P=2, capacity 7), none
    otherwise: N=7 -> 2, N=6 -> 1, N<=5 -> 0; the kept tensor has N - k rows."""
    features = torch.randn(num_candidates, 2, NUM_TOKENS, NUM_CHANNELS)
    policy = EfpPolicy()
    protected = one_cond(num_candidates)
    assert policy.num_dropped(protected, NUM_MASKMEM) == expected_dropped
    assert policy.num_kept(protected, NUM_MASKMEM) == num_candidates - expected_dropped
    kept = policy.select(features, protected, NUM_MASKMEM)
    assert kept.shape == (num_candidates - expected_dropped, 2)
    if expected_dropped == 0:
        assert torch.equal(kept, torch.arange(num_candidates)[:, None].expand(num_candidates, 2))


def test_efp_with_six_memories_drops_the_single_most_redundant():
    """N=6 (1 conditioning + 5 recent): exactly one memory, the most redundant, is dropped."""
    cosines = [0.95, 0.1, 0.6, 0.8, -0.2]
    features = memories_with_cosines(cosines)
    kept = EfpPolicy().select(features, one_cond(6), NUM_MASKMEM)
    assert dropped_indices(kept, 6) == {3}


def test_efp_protects_every_conditioning_frame():
    """With several conditioning frames, none is dropped even when they are the most similar to the
    newest: 3 conditioning + 4 recent -> k = 2 among the 3 prunable recent ones; 3 conditioning + 5
    recent -> k = 3 among 4."""
    cosines = [1.0, 1.0, 0.99, 0.2, 0.5, 0.4]  # entries 0-2 conditioning, 6 newest
    features = memories_with_cosines(cosines)
    protected = [True, True, True, False, False, False, False]
    kept = EfpPolicy().select(features, protected, NUM_MASKMEM)
    assert dropped_indices(kept, 7) == {4, 5}

    cosines = [1.0, 1.0, 1.0, 0.3, 0.9, -0.4, 0.8]  # entries 0-2 conditioning, 7 newest
    features = memories_with_cosines(cosines)
    protected = [True, True, True, False, False, False, False, False]
    kept = EfpPolicy().select(features, protected, NUM_MASKMEM)
    assert dropped_indices(kept, 8) == {3, 4, 6}


def test_efp_protected_entries_anywhere_in_the_list_are_kept():
    """A protected entry among the recent ones (an unselected conditioning frame filling its slot)
    is kept even when it is identical to the newest."""
    cosines = [0.0, 0.1, 0.5, 1.0, 0.3, 0.2]  # entry 3 is protected and identical to the newest
    features = memories_with_cosines(cosines)
    protected = [True, False, False, True, False, False, False]
    kept = EfpPolicy().select(features, protected, NUM_MASKMEM)
    assert dropped_indices(kept, 7) == {2, 4}


def test_efp_never_drops_the_newest():
    """The newest memory (whose cosine with itself is maximal) is never dropped, not even when it
    is the only unprotected memory or when k exceeds the prunable count (k is then capped)."""
    policy = EfpPolicy()
    # Only the newest is unprotected: nothing can be dropped, whatever the capacity.
    features = torch.randn(3, 1, NUM_TOKENS, NUM_CHANNELS)
    protected = [True, True, False]
    assert policy.num_dropped(protected, 1) == 0
    assert policy.select(features, protected, 1)[:, 0].tolist() == [0, 1, 2]
    # A single memory (the newest) with a tiny capacity stays.
    single = torch.randn(1, 2, NUM_TOKENS, NUM_CHANNELS)
    assert policy.select(single, [False], 1).tolist() == [[0, 0]]
    # k = 4 + 2 - 1 = 5 but only entries 1 and 2 are prunable: both go, the newest stays.
    features = memories_with_cosines([1.0, -1.0, 0.0])
    kept = policy.select(features, one_cond(4), 1)
    assert kept[:, 0].tolist() == [0, 3]


def test_efp_ties_drop_the_older_memory_first():
    """Equal redundancy scores: the older memory (lower index) is dropped first, as the EfpPolicy
    docstring states. Tied memories are identical tensors so their scores are bitwise equal."""
    # All five recent candidates identical: the two oldest go.
    features = memories_with_cosines([0.3, 0.5, 0.5, 0.5, 0.5, 0.5], scales=[1.0] * 7)
    kept = EfpPolicy().select(features, one_cond(7), NUM_MASKMEM)
    assert dropped_indices(kept, 7) == {1, 2}
    # Entries 2, 4 and 5 tie for the highest score: 2 and 4 go, 5 stays.
    features = memories_with_cosines([0.3, 0.1, 0.8, 0.3, 0.8, 0.8], scales=[1.0] * 7)
    kept = EfpPolicy().select(features, one_cond(7), NUM_MASKMEM)
    assert dropped_indices(kept, 7) == {2, 4}
    assert "older" in (EfpPolicy.__doc__ or "")


def test_efp_selects_per_object_in_a_batch():
    """B=3 objects go through one call, each dropping its own most redundant frames; every column
    of the result is ascending."""
    per_object_cosines = [
        [0.0, 0.9, 0.8, 0.1, 0.2, 0.3],  # drops 1, 2
        [0.0, 0.1, 0.2, 0.9, 0.3, 0.95],  # drops 3, 5
        [0.0, 0.7, 0.1, 0.2, 0.8, -0.3],  # drops 1, 4
    ]
    features = torch.cat([memories_with_cosines(cosines) for cosines in per_object_cosines], dim=1)
    assert features.shape == (7, 3, NUM_TOKENS, NUM_CHANNELS)
    kept = EfpPolicy().select(features, one_cond(7), NUM_MASKMEM)
    assert kept.shape == (5, 3)
    assert kept[:, 0].tolist() == [0, 3, 4, 5, 6]
    assert kept[:, 1].tolist() == [0, 1, 2, 4, 6]
    assert kept[:, 2].tolist() == [0, 2, 3, 5, 6]


def test_efp_with_zero_frames_to_prune_keeps_the_sam2_memory():
    """P=0: 1 conditioning + 6 recent (N = capacity) -> nothing dropped, as in SAM 2; the rule
    N + P > capacity still applies beyond the capacity (2 conditioning + 6 recent -> 1 dropped)."""
    policy = EfpPolicy(num_frame_to_prune=0)
    features = torch.randn(7, 2, NUM_TOKENS, NUM_CHANNELS)
    kept = policy.select(features, one_cond(7), NUM_MASKMEM)
    assert torch.equal(kept, torch.arange(7)[:, None].expand(7, 2))
    protected = [True, True] + [False] * 6
    assert policy.num_dropped(protected, NUM_MASKMEM) == 1


@pytest.mark.parametrize("num_frame_to_prune", [-1, -3])
def test_efp_rejects_a_negative_number_of_frames_to_prune(num_frame_to_prune):
    """A negative P is a configuration error (ValueError), directly or through make_policy."""
    with pytest.raises(ValueError, match="num_frame_to_prune"):
        EfpPolicy(num_frame_to_prune=num_frame_to_prune)
    with pytest.raises(ValueError, match="num_frame_to_prune"):
        make_policy("efp", num_frame_to_prune=num_frame_to_prune)


# --- efp: the score ----------------------------------------------------------------------------
def test_efp_redundancy_is_the_per_token_cosine_summed_over_tokens():
    """redundancy[n, b] = sum over tokens t of cos(features[n, b, t, :], features[-1, b, t, :]),
    checked against a plain Python loop in float64; half precision input gives a float32 score."""
    features = torch.randn(5, 2, 6, NUM_CHANNELS) * torch.rand(5, 2, 6, 1).add(0.1)
    policy = EfpPolicy()
    reference = torch.zeros(5, 2, dtype=torch.float64)
    for n in range(5):
        for b in range(2):
            total = 0.0
            for t in range(6):
                a = features[n, b, t].double().tolist()
                z = features[-1, b, t].double().tolist()
                dot = sum(x * y for x, y in zip(a, z))
                norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in z))
                total += dot / norms
            reference[n, b] = total
    scores = policy.redundancy(features)
    assert scores.shape == (5, 2)
    torch.testing.assert_close(scores.double(), reference, atol=1e-5, rtol=1e-5)
    assert torch.allclose(scores[-1], torch.full((2,), 6.0))  # the newest with itself: T

    half = policy.redundancy(features.to(torch.bfloat16))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), reference, atol=0.1, rtol=0.02)


def test_efp_redundancy_is_not_a_cosine_of_flattened_memories():
    """The cosine is per spatial token, not of the flattened memory: two memories with the same
    flattened cosine but different per-token alignment get different scores."""
    newest = torch.zeros(2, 2)
    newest[0, 0] = 1.0
    newest[1, 0] = 1.0
    # Memory a: token 0 aligned (cos 1), token 1 anti-aligned (cos -1): per-token sum 0.
    memory_a = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    features = torch.stack([memory_a, newest])[:, None]
    scores = EfpPolicy().redundancy(features)
    assert scores[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    # Memory b: tiny token 0 along e0 and huge token 1 along e0: flattened cosine < 1, per-token 2.
    memory_b = torch.tensor([[1e-3, 0.0], [1e3, 0.0]])
    features = torch.stack([memory_b, newest])[:, None]
    assert EfpPolicy().redundancy(features)[0, 0].item() == pytest.approx(2.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_efp_select_stays_on_the_device_as_an_index_tensor(dtype):
    """select works on tensors and returns an int64 index tensor on the features' device (the
    device-side topk/sort path, no list of Python ints), of shape (K, B)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        features = torch.randn(7, 3, NUM_TOKENS, NUM_CHANNELS, device=device).to(dtype)
        kept = EfpPolicy().select(features, one_cond(7), NUM_MASKMEM)
        assert isinstance(kept, torch.Tensor)
        assert kept.device == features.device
        assert kept.dtype == torch.int64
        assert kept.shape == (5, 3)
        assert bool((kept[1:] > kept[:-1]).all())  # ascending, no duplicates
        assert bool((kept[0] == 0).all()) and bool((kept[-1] == 6).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are observable on CUDA only")
def test_efp_select_does_not_synchronise_with_the_host():
    """On CUDA, select raises no synchronising operation (torch's sync debug mode set to error)."""
    features = torch.randn(7, 3, NUM_TOKENS, NUM_CHANNELS, device="cuda")
    policy = EfpPolicy()
    policy.select(features, one_cond(7), NUM_MASKMEM)  # warm-up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kept = policy.select(features, one_cond(7), NUM_MASKMEM)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert kept.shape == (5, 3)


# --- efp: equals the published rule ---------------------------------------------------------------
def published_efp_kept(memories: list[torch.Tensor], num_maskmem: int, num_frame_to_prune: int) -> list[int]:
    """Independent reference of the published SurgSAM2 rule (one conditioning frame, one object),
    as docs/architecture.md states it: memories [cond, ..., newest], each (T, C); if len + P > num_maskmem,
    drop the k = len + P - num_maskmem entries among 1 .. n-2 with the highest summed cosine
    similarity to the last entry. Returns the kept positions."""
    count = len(memories)
    if count + num_frame_to_prune <= num_maskmem:
        return list(range(count))
    num_drop = count + num_frame_to_prune - num_maskmem
    newest = memories[-1].double()
    newest_unit = newest / newest.norm(dim=-1, keepdim=True)
    scores = []
    for position in range(1, count - 1):
        memory = memories[position].double()
        memory_unit = memory / memory.norm(dim=-1, keepdim=True)
        scores.append(((memory_unit * newest_unit).sum(dim=-1).sum().item(), position))
    scores.sort(key=lambda item: -item[0])
    dropped = {position for _, position in scores[:num_drop]}
    return [position for position in range(count) if position not in dropped]


def test_efp_with_one_conditioning_frame_and_one_object_equals_the_published_rule():
    """On many random cases (N from 1 to 7 memories, random features, P from 0 to 3), the kept set
    with one conditioning frame and one object equals the published rule's."""
    rng = random.Random(1234)
    checked_with_drops = 0
    for seed in range(300):
        generator = torch.Generator().manual_seed(seed)
        count = rng.randint(1, NUM_MASKMEM)
        num_frame_to_prune = rng.choice([0, 1, 2, 2, 2, 3])
        tokens = rng.choice([1, 4, 16])
        channels = rng.choice([8, 64])
        features = torch.randn(count, 1, tokens, channels, generator=generator)
        features = features + 0.7 * torch.randn(1, 1, tokens, channels, generator=generator)  # shared part
        expected = published_efp_kept(list(features[:, 0]), NUM_MASKMEM, num_frame_to_prune)
        policy = EfpPolicy(num_frame_to_prune=num_frame_to_prune)
        kept = policy.select(features, one_cond(count), NUM_MASKMEM)
        assert kept[:, 0].tolist() == expected, (seed, count, num_frame_to_prune)
        assert policy.num_kept(one_cond(count), NUM_MASKMEM) == len(expected)
        checked_with_drops += len(expected) < count
    assert checked_with_drops > 50  # the comparison exercised real pruning, not only no-ops


# --- make_policy ----------------------------------------------------------------------------------
def test_make_policy_builds_policies_by_name():
    """'fifo' gives a FifoPolicy, 'efp' an EfpPolicy with P = num_frame_to_prune (default 2)."""
    fifo = make_policy("fifo")
    assert isinstance(fifo, FifoPolicy) and fifo.name == "fifo"
    efp = make_policy("efp")
    assert isinstance(efp, EfpPolicy) and efp.name == "efp"
    assert efp.num_frame_to_prune == 2
    assert make_policy("efp", num_frame_to_prune=3).num_frame_to_prune == 3


def test_make_policy_passes_a_policy_object_through():
    """A MemoryPolicy instance (built-in or user-defined) is returned as is."""
    efp = EfpPolicy(num_frame_to_prune=1)
    assert make_policy(efp) is efp

    class KeepNewest(MemoryPolicy):
        name = "keep-newest"

        def num_kept(self, protected, capacity):
            return 1

        def select(self, features, protected, capacity):
            return torch.full((1, features.shape[1]), features.shape[0] - 1)

    custom = KeepNewest()
    assert make_policy(custom, num_frame_to_prune=5) is custom


@pytest.mark.parametrize("name", ["lru", "EFP ", "sam2"])
def test_make_policy_rejects_an_unknown_name(name):
    """An unknown policy name is a ValueError that names it."""
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        make_policy(name)


@pytest.mark.parametrize("name", ["efp", "qefp", "xefp"])
def test_a_policy_used_while_tracking_then_in_training_keeps_gradients(name: str) -> None:
    """Tensors a policy caches while tracking (under inference mode) must not be inference
    tensors: training later saves them for backward (e.g. the never-dropped mask)."""
    policy = make_policy(name, 2)
    protected = [True] + [False] * 6
    quality = None
    if getattr(policy, "uses_quality", False):
        from surgsam2.memory.policies import MemoryQuality

        quality = MemoryQuality(object_scores=torch.ones(7, 2), ious=torch.ones(7, 2))
    with torch.inference_mode():
        policy.select(torch.randn(7, 2, 16, 8), protected, 7, *([quality] if quality is not None else []))
    features = torch.randn(7, 2, 16, 8, requires_grad=True)
    keep = policy.select(features, protected, 7, *([quality] if quality is not None else []))
    assert keep.shape == (5, 2)
    kept = features.gather(0, keep[:, :, None, None].expand(-1, -1, 16, 8))
    kept.sum().backward()
    assert features.grad is not None and float(features.grad.abs().sum()) > 0
