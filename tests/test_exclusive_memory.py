"""Specification of exclusive memories and the ``xefp`` policy (docs/architecture.md, "The memory
rules").

Before a frame's memories are encoded, each pixel of the objects' mask logits is kept only by the
object(s) of the same video with the highest logit; prompted objects keep their whole mask and win
wherever it is positive (elsewhere their logits compete as the others'); a lost pixel's logit is
clamped to <= -10. Checked against a per-pixel
Python reference, then in the tracker, across streams and in the training forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgsam2 import Prompt, Tracker
from surgsam2.memory.exclusive import LOST_PIXEL_LOGIT, exclusive_masks
from surgsam2.memory.policies import EfpPolicy, ExclusiveEfpPolicy, make_policy, policy_names
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.streams import MultiStreamTracker

from test_tracker import moving_discs, random_model


def reference(logits: np.ndarray, fixed: list[bool], groups: list[int]) -> np.ndarray:
    """Per-pixel Python loops: the rule as the docstring states it."""
    out = logits.copy()
    count = logits.shape[0]
    for y in range(logits.shape[2]):
        for x in range(logits.shape[3]):
            for b in range(count):
                if fixed[b]:
                    continue
                rivals = [c for c in range(count) if groups[c] == groups[b] and c != b]
                # A prompted rival wins where its mask is; elsewhere every logit competes as is.
                beaten = any(
                    (fixed[c] and logits[c, 0, y, x] > 0) or logits[c, 0, y, x] > logits[b, 0, y, x]
                    for c in rivals
                )
                if beaten:
                    out[b, 0, y, x] = min(logits[b, 0, y, x], LOST_PIXEL_LOGIT)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exclusive_masks_match_the_per_pixel_reference(seed: int) -> None:
    """Random logits with ties (integers), two videos, prompted and tracked objects."""
    rng = np.random.default_rng(seed)
    logits = rng.integers(-4, 5, size=(5, 1, 6, 7)).astype(np.float32) * 3.0
    fixed = [bool(v) for v in rng.integers(0, 2, size=5)]
    groups = [0, 1, 0, 1, 0]
    got = exclusive_masks(torch.from_numpy(logits), torch.tensor(fixed), torch.tensor(groups), num_groups=2)
    expected = reference(logits, fixed, groups)
    print(f"seed {seed}: {int((expected != logits).sum())} pixel logits clamped of {logits.size}")
    assert np.array_equal(got.numpy(), expected)
    one_group = exclusive_masks(torch.from_numpy(logits), torch.tensor(fixed))
    assert np.array_equal(one_group.numpy(), reference(logits, fixed, [0] * 5))


def test_exclusive_masks_leave_no_pixel_claimed_twice_among_tracked_objects() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 32, 32) * 5
    out = exclusive_masks(logits, torch.zeros(4, dtype=torch.bool))
    claims = (out > 0).sum(dim=0)
    assert int(claims.max()) <= 1  # ties of random floats do not happen
    assert torch.equal(out.amax(dim=0), logits.amax(dim=0))  # each pixel's winner keeps its logit
    assert torch.equal(exclusive_masks(logits[:1], torch.zeros(1, dtype=torch.bool)), logits[:1])


def test_exclusive_masks_keep_bf16_and_gradients() -> None:
    logits = torch.randn(3, 1, 8, 8, requires_grad=True)
    out = exclusive_masks(logits, torch.zeros(3, dtype=torch.bool))
    out.sum().backward()
    kept = out.detach() == logits.detach()
    assert torch.equal(logits.grad[kept], torch.ones(int(kept.sum())))  # kept pixels pass the gradient
    half = exclusive_masks(logits.detach().bfloat16(), torch.zeros(3, dtype=torch.bool))
    assert half.dtype == torch.bfloat16


def test_xefp_is_registered_and_selects_as_efp() -> None:
    assert "xefp" in policy_names()
    policy = make_policy("xefp", num_frame_to_prune=3)
    assert isinstance(policy, ExclusiveEfpPolicy) and policy.num_frame_to_prune == 3
    assert policy.exclusive_memories and not EfpPolicy.exclusive_memories
    torch.manual_seed(0)
    features = torch.randn(7, 2, 4, 8)
    protected = [True] + [False] * 6
    assert torch.equal(policy.select(features, protected, 7), EfpPolicy(3).select(features, protected, 7))


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    return random_model()


class EncoderInputs:
    """Records the mask logits every memory-encoder call receives."""

    def __init__(self, model: SAM2Model) -> None:
        self.masks: list[torch.Tensor] = []
        self.model = model
        self.original = model.encode_memory

    def __enter__(self) -> EncoderInputs:
        def recording(features, masks, *args, **kwargs):
            self.masks.append(masks.detach().clone())
            return self.original(features, masks, *args, **kwargs)

        self.model.encode_memory = recording
        return self

    def __exit__(self, *exc) -> None:
        del self.model.encode_memory


def _overlapping_prompts(masks: dict[int, np.ndarray]) -> dict[int, Prompt]:
    """Objects 1 and 2 prompted with masks that share pixels (object 2 grown over object 1)."""
    grown = masks[2].copy()
    grown[:, : grown.shape[1] // 2] |= masks[1][:, : grown.shape[1] // 2]
    return {1: Prompt(mask=masks[1]), 2: Prompt(mask=grown | masks[1])}


def test_tracker_encodes_exclusive_memories_with_xefp_only(model: SAM2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two objects whose prompts overlap. With efp the tracked masks the memories are encoded from
    overlap; with xefp the decoder's low-res masks are made exclusive on every tracked frame (no
    pixel positive for both), and those, upscaled, are what the memory encoder receives. On the
    prompted frame both drawn masks are kept whole."""
    import surgsam2.tracking.phases as phases

    frames, masks = moving_discs(6, seed=4)
    prompts = _overlapping_prompts(masks)
    made: list[torch.Tensor] = []

    def recording(logits, fixed, groups=None, num_groups=1):
        made.append(exclusive_masks(logits, fixed, groups, num_groups))
        return made[-1]

    monkeypatch.setattr(phases, "exclusive_masks", recording)
    seen = {}
    for memory in ("efp", "xefp"):
        made.clear()
        tracker = Tracker(model, memory=memory)
        with EncoderInputs(model) as inputs:
            for t, frame in enumerate(frames):
                tracker.step(frame, prompts if t == 0 else None)
        seen[memory] = inputs.masks
    assert len(made) == len(frames)
    overlaps = [int(((m > 0).sum(dim=0) > 1).sum()) for m in seen["efp"][1:]]
    print(f"efp: pixels claimed twice per tracked frame {overlaps}")
    assert max(overlaps) > 0  # the test is not vacuous: efp's tracked masks overlap
    assert int(((seen["xefp"][0] > 0).sum(dim=0) > 1).sum()) > 0  # prompted: kept as drawn
    for low_res, encoded in zip(made[1:], seen["xefp"][1:]):
        assert int(((low_res > 0).sum(dim=0) > 1).sum()) == 0
        assert torch.equal(encoded, model.upscale_masks(low_res).to(encoded.dtype))


def test_xefp_with_one_object_is_efp(model: SAM2Model) -> None:
    frames, masks = moving_discs(8, seed=5)
    results = {}
    for memory in ("efp", "xefp"):
        tracker = Tracker(model, memory=memory)
        results[memory] = [tracker.step(f, {1: Prompt(mask=masks[1])} if t == 0 else None) for t, f in enumerate(frames)]
    for a, b in zip(results["efp"], results["xefp"]):
        assert np.array_equal(a.logits[1], b.logits[1])


def test_streams_with_xefp_track_each_video_as_alone(model: SAM2Model) -> None:
    """Two streams of two overlapping objects each, the discs at the same places in both videos:
    the objects of one stream never compete with the other stream's, so each video is tracked as
    alone. Exclusivity is a hard per-pixel decision, so the batched convolutions' rounding (~1e-7)
    can flip a pixel whose two objects' logits are nearly equal and the memory built on it: masks
    are compared by IoU (>= 0.99), where competing across streams would move whole discs."""
    videos = [moving_discs(6, seed=6), moving_discs(6, seed=7)]
    alone = []
    for frames, masks in videos:
        tracker = Tracker(model, memory="xefp")
        alone.append([tracker.step(f, _overlapping_prompts(masks) if t == 0 else None) for t, f in enumerate(frames)])
    multi = MultiStreamTracker(model, 2, memory="xefp")
    worst_iou, worst_logit = 1.0, 0.0
    for t in range(6):
        prompts = [_overlapping_prompts(masks) if t == 0 else {} for _, masks in videos]
        results = multi.step([frames[t] for frames, _ in videos], prompts)
        for stream, result in enumerate(results):
            expected = alone[stream][t]
            for obj_id in (1, 2):
                a, b = result.masks[obj_id], expected.masks[obj_id]
                union = np.logical_or(a, b).sum()
                worst_iou = min(worst_iou, float(np.logical_and(a, b).sum() / union) if union else 1.0)
                worst_logit = max(worst_logit, float(np.abs(result.logits[obj_id] - expected.logits[obj_id]).max()))
    print(f"streams vs alone: worst IoU {worst_iou:.5f} (bar 0.99), worst |d logit| {worst_logit:.2e}")
    assert worst_iou >= 0.99


def test_training_forward_makes_memories_exclusive_within_each_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training with xefp: two clips of two objects. On every non-conditioning frame the memory
    encoder receives the predicted low-res masks made exclusive among the objects of each clip (not
    across clips, not untouched), then upscaled; with efp it receives them as predicted."""
    import surgsam2.train.model_forward as model_forward
    from surgsam2.model.configs import get_config
    from surgsam2.train.config import LossSection, PromptSection
    from surgsam2.train.model_forward import ClipForward
    from surgsam2.train.prompts import plan_prompts

    torch.manual_seed(0)
    size, num_frames = 64, 4
    model = SAM2Model(get_config("nano", size)).train()
    frames = torch.randn(2, num_frames, 3, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blobs = torch.stack([((xx - cx) ** 2 + (yy - 32) ** 2 < 15**2) for cx in (26, 38)])
    masks = blobs[None, None].expand(2, num_frames, -1, -1, -1).contiguous()
    valid = torch.ones(2, 2, dtype=torch.bool)
    prompts = PromptSection(prob_points=0.0)
    conditioning = plan_prompts(prompts, num_frames, np.random.default_rng([0, 0])).conditioning_frames
    raw: list[torch.Tensor] = []

    def recording(logits, fixed, groups=None, num_groups=1):
        # Random weights predict nearly the same far-negative logits for every object, where
        # exclusivity changes nothing: seeded noise around zero is added, so that masks compete.
        noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(len(raw)))
        logits = logits - logits.flatten(1).median(dim=1).values.view(-1, 1, 1, 1) + 20 * noise
        raw.append(logits.detach().clone())
        return exclusive_masks(logits, fixed, groups, num_groups)

    monkeypatch.setattr(model_forward, "exclusive_masks", recording)
    for policy in ("efp", "xefp"):
        raw.clear()
        forward = ClipForward(model, prompts, LossSection(), make_policy(policy))
        with torch.no_grad(), EncoderInputs(model) as inputs:
            forward(frames, masks, valid, seed=0)
        tracked = [t for t in range(len(inputs.masks)) if t not in conditioning]
        assert tracked and len(raw) == (0 if policy == "efp" else len(tracked))
    none, per_clip = torch.zeros(4, dtype=torch.bool), torch.tensor([0, 0, 1, 1])
    for low_res, t in zip(raw, tracked):
        encoded = inputs.masks[t].float()
        with torch.no_grad():
            assert torch.equal(encoded, model.upscale_masks(exclusive_masks(low_res, none, per_clip, 2)).float())
            changed = int((encoded != model.upscale_masks(low_res).float()).sum())
            across = int((encoded != model.upscale_masks(exclusive_masks(low_res, none)).float()).sum())
        print(f"frame {t}: {changed} pixel logits changed within clips; one group would differ at {across}")
        assert changed > 0 and across > 0
