"""The ring bank (`memory.ring.RingBank`): memories in preallocated slots propose, select and
assemble exactly what the default bank (`memory.bank.MemoryBank`) does, and its storage is bounded
and stays at fixed addresses.

Hand-built tensors: both banks get the same random memories frame after frame (several objects,
prompts on later frames, a removed and an added object, streams long enough to wrap the rings);
every frame, the candidates, the policy's selection, the memory tokens and the cached keys of each
batch of objects are compared with torch.equal (no tolerance: the same values must come out).
"""

from __future__ import annotations

import pytest
import torch

from surgsam2.memory.assembly import (
    cached_rotated_keys,
    gather_candidates,
    kept_rotated_keys,
    memory_tokens,
    select_memories,
)
from surgsam2.memory.bank import BankConfig, MemoryBank
from surgsam2.memory.policies import EfpPolicy, FifoPolicy, MemoryPolicy, QualityEfpPolicy, ReliableEfpPolicy
from surgsam2.memory.ring import RingBank, feature_ring_size, pointer_ring_size
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model

NUM_TOKENS = 4
NUM_LAYERS = 2
KEY_DIM = 8


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    torch.manual_seed(0)
    return SAM2Model(get_config("nano", 64)).eval()


def scenario(num_frames: int) -> dict[int, dict[int, bool]]:
    """{frame: {object: conditioning}} of the objects written on each frame: object 1 from frame 0
    with conditioning frames 36, 38 and 40 (with max_cond_frames_in_attn = 2, frame 36 is not
    selected and fills a recent slot); object 2 from frame 5 until it is removed after frame 29;
    object 3 from frame 0 with a corrective click on frame 12; object 4 from frame 33."""
    plan: dict[int, dict[int, bool]] = {}
    for frame in range(num_frames):
        objects = {1: frame in (0, 36, 38, 40), 3: frame in (0, 12)}
        if 5 <= frame < 30:
            objects[2] = frame == 5
        if frame >= 33:
            objects[4] = frame == 33
        plan[frame] = dict(sorted(objects.items()))
    return plan


class Writer:
    """Random memories of a frame, written to both banks."""

    def __init__(self, model: SAM2Model, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.channels, self.pointer_dim = model.mem_dim, model.hidden_dim

    def random(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator)

    def write(self, banks: tuple[MemoryBank, RingBank], frame: int, objects: dict[int, bool]) -> None:
        default, ring = banks
        count = len(objects)
        features = self.random(count, NUM_TOKENS, self.channels)
        pointers = self.random(count, self.pointer_dim)
        keys = self.random(count, NUM_LAYERS, NUM_TOKENS, KEY_DIM)
        scores, ious = self.random(count), torch.rand(count, generator=self.generator)
        for obj_id in objects:
            for bank in banks:
                if obj_id not in bank:
                    bank.add_object(obj_id)
        for row, (obj_id, conditioning) in enumerate(objects.items()):
            default.write(obj_id, frame, features[row], pointers[row], conditioning, keys=keys[row],
                          object_score=scores[row], iou=ious[row])  # fmt: skip
        ring.write_frame(list(objects), frame, features, pointers, list(objects.values()), keys, scores, ious)


def compare_frame(
    model: SAM2Model,
    banks: tuple[MemoryBank, RingBank],
    frame: int,
    policy: MemoryPolicy,
    temporal_keys: torch.Tensor,
) -> int:
    """Assert both banks give the same batches, candidates, selection, tokens and keys for
    ``frame``; returns how many memories were dropped by the policy."""
    default, ring = banks
    obj_ids = list(default.objects)
    assert list(ring.objects) == obj_ids
    layouts = {obj_id: default.layout(obj_id, frame) for obj_id in obj_ids}
    ring_layouts = {obj_id: ring.layout(obj_id, frame) for obj_id in obj_ids}
    groups: dict[tuple, list[int]] = {}
    for obj_id in obj_ids:
        assert ring_layouts[obj_id].shape_key == layouts[obj_id].shape_key, f"frame {frame} object {obj_id}"
        groups.setdefault(layouts[obj_id].shape_key, []).append(obj_id)
    spatial_pos = torch.linspace(-1, 1, NUM_TOKENS * model.mem_dim).view(NUM_TOKENS, model.mem_dim)
    dropped = 0
    for group in groups.values():
        expected = gather_candidates([layouts[i] for i in group], with_quality=True)
        seen, seen_keys = ring.candidates(group, [ring_layouts[i] for i in group], with_quality=True)
        where = f"frame {frame} objects {group}"
        for name in ("features", "slots", "pointers", "pointer_offsets"):
            assert torch.equal(getattr(seen, name), getattr(expected, name)), f"{where}: {name}"
        assert seen.protected == expected.protected
        assert torch.equal(seen.quality.object_scores, expected.quality.object_scores), where
        assert torch.equal(seen.quality.ious, expected.quality.ious), where
        assert seen.quality.retained == expected.quality.retained, where
        frames = (seen.quality.frames, expected.quality.frames)
        assert (frames[0] is None) == (frames[1] is None) and (frames[0] is None or torch.equal(*frames)), where
        keep = select_memories(expected, policy, model.num_maskmem)
        ring_keep = select_memories(seen, policy, model.num_maskmem)
        assert (keep is None) == (ring_keep is None) and (keep is None or torch.equal(keep, ring_keep)), where
        dropped += 0 if keep is None else expected.features.shape[0] - keep.shape[0]
        tokens = memory_tokens(model, expected, keep, spatial_pos, 16)
        ring_tokens = memory_tokens(model, seen, ring_keep, spatial_pos, 16)
        assert all(torch.equal(a, b) for a, b in zip(tokens[:2], ring_tokens[:2])) and tokens[2] == ring_tokens[2]
        num_ptr = tokens[2]
        keys = cached_rotated_keys([layouts[i] for i in group], keep, temporal_keys, num_ptr)
        spatial = keys.shape[2] - num_ptr
        for host_indices in (True, False):  # kept rows read on the host (CPU) or gathered on the device
            ring_keys = kept_rotated_keys(seen_keys, seen.slots, ring_keep, temporal_keys, num_ptr, host_indices)
            assert torch.equal(keys[:, :, :spatial], ring_keys[:, :, :spatial]), f"{where}: keys ({host_indices=})"
    return dropped


POLICIES = {
    "fifo": FifoPolicy(),
    "efp1": EfpPolicy(num_frame_to_prune=1),
    "efp2": EfpPolicy(num_frame_to_prune=2),
    "efp3": EfpPolicy(num_frame_to_prune=3),
    "qefp": QualityEfpPolicy(num_frame_to_prune=2),
    "refp": ReliableEfpPolicy(num_frame_to_prune=2),
}


def retained_frames(banks: tuple[MemoryBank, RingBank]) -> dict[int, tuple[list[float], list[float]]]:
    """Per object, the frames of its retained memories in slot order: (default bank, ring bank)."""
    default, ring = banks
    frames = {}
    for obj_id, memory in default.objects.items():
        ring_rows = [stored.features for stored in ring.objects[obj_id].retained]
        column = ring.storage.frames[:, ring.columns[obj_id]]
        frames[obj_id] = ([float(stored.frame_stamp) for stored in memory.retained],
                          [float(column[row]) if column[row] >= 0 else float("-inf") for row in ring_rows])  # fmt: skip
    return frames


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("max_cond", [-1, 2])
def test_ring_bank_proposes_selects_and_assembles_as_the_default_bank(
    model: SAM2Model, policy: str, stride: int, max_cond: int
) -> None:
    """80 frames (the feature ring wraps 13 times at stride 1), objects added, prompted again and
    removed mid-stream: every frame's batches are bit-identical between the two banks; with refp
    (two retained memories, about half the random memories reliable) both banks retain the same
    frames in the same slots."""
    retained = getattr(POLICIES[policy], "retained_memories", 0)
    config = BankConfig(num_maskmem=model.num_maskmem, max_obj_ptrs_in_encoder=16, memory_temporal_stride=stride,
                        max_cond_frames_in_attn=max_cond, retained_memories=retained)  # fmt: skip
    banks = (MemoryBank(config), RingBank(config))
    writer = Writer(model, seed=stride * 10 + max_cond)
    temporal_keys = writer.random(NUM_LAYERS, model.num_maskmem, NUM_TOKENS, KEY_DIM)
    dropped = 0
    for frame, objects in scenario(80).items():
        if frame == 30:
            for bank in banks:
                bank.remove_object(2)
        if frame > 0:
            dropped += compare_frame(model, banks, frame, POLICIES[policy], temporal_keys)
        writer.write(banks, frame, objects)
        for obj_id, (expected, seen) in retained_frames(banks).items():
            assert seen == expected, f"frame {frame} object {obj_id}: retained frames"
    kept = retained_frames(banks)
    print(f"[ring] {policy} stride {stride} max_cond {max_cond}: 79 frames equal, {dropped} memories dropped"
          + (f", retained frames at the end {kept}" if retained else ""))  # fmt: skip
    assert (dropped > 0) == (policy != "fifo")  # the pruning policies were exercised
    if retained:  # every object retained two reliable memories
        assert all(len(pair[0]) == 2 and min(pair[0]) >= 0 for pair in kept.values()), kept


@pytest.mark.parametrize("retained", [0, 2])
def test_ring_storage_is_bounded_and_stays_at_fixed_addresses(model: SAM2Model, retained: int) -> None:
    """After the prompts, 400 tracked frames neither grow nor move any tensor of the ring bank,
    and its size is the sum of the rings, retained rows (R + 1 scratch with refp) and conditioning
    rows (computed independently here)."""
    config = BankConfig(num_maskmem=7, max_obj_ptrs_in_encoder=16, memory_temporal_stride=2, retained_memories=retained)
    banks = (MemoryBank(config), RingBank(config))
    writer = Writer(model, seed=5)
    objects = {1: True, 2: True, 3: True}
    writer.write(banks, 0, objects)
    writer.write(banks, 1, {1: False, 2: True, 3: False})  # object 2: a second conditioning frame
    ring = banks[1]
    addresses = [tensor.data_ptr() for tensor in ring.stored_tensors()]
    sizes = set()
    for frame in range(2, 402):
        writer.write(banks, frame, dict.fromkeys(objects, False))
        assert [tensor.data_ptr() for tensor in ring.stored_tensors()] == addresses, f"frame {frame}"
        sizes.add(ring.stored_bytes())
    # S = (7-2)*2+1, R + 1 retained rows, 2 conditioning rows; Q = 15 pointer rows
    feature_rows, pointer_rows = 5 * 2 + 1 + (retained + 1 if retained else 0) + 2, 15 + 2
    assert (feature_ring_size(config), pointer_ring_size(config)) == (11, 15)
    per_object = feature_rows * (NUM_TOKENS * model.mem_dim * 2 + NUM_LAYERS * NUM_TOKENS * KEY_DIM * 4 + 4 + 4 + 8)
    per_object += pointer_rows * (model.hidden_dim * 4 + 8)
    print(f"[ring] stored bytes over 400 frames: {sorted(sizes)} (expected {3 * per_object})")
    assert sizes == {3 * per_object}
    # The device-side frame index of every feature row is the frame the rules expect there.
    frames = ring.storage.frames
    for column in range(3):
        recent = sorted(frames[:11, column].tolist())
        assert recent == list(range(391, 402)), f"object {column + 1}: {recent}"


def test_ring_bank_refuses_out_of_order_frames(model: SAM2Model) -> None:
    ring = RingBank(BankConfig())
    ring.add_object(1)
    features, pointer = torch.zeros(1, NUM_TOKENS, 8), torch.zeros(1, 16)
    ring.write_frame([1], 3, features, pointer, [False])
    with pytest.raises(ValueError, match="object 1: frame 2 written after frame 3"):
        ring.write_frame([1], 2, features, pointer, [False])


# --- the tracker with either bank ------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker_model() -> SAM2Model:
    import test_tracker

    return test_tracker.random_model()


@pytest.mark.parametrize("memory", ["fifo", "efp", "qefp", "refp"])
def test_tracker_with_the_ring_bank_equals_the_default_bank(tracker_model: SAM2Model, memory: str) -> None:
    """40 frames, 3 objects prompted on frames 0, 5 and 12, corrective clicks on frames 12 and 20,
    an object removed on frame 30: masks and logits are bit-identical with either bank."""
    import test_tracker
    from surgsam2 import Prompt, Tracker

    frames, masks = test_tracker.moving_discs(40)
    prompts = {
        0: {1: Prompt(mask=masks[1])},
        5: {2: Prompt(box=(70, 40, 110, 80))},
        12: {3: Prompt(points=[(60, 32)], labels=[1]), 1: Prompt(points=[(42, 40), (5, 5)], labels=[1, 0])},
        20: {2: Prompt(points=[(70, 60)], labels=[1])},
    }
    default = Tracker(tracker_model, memory=memory)
    ring = Tracker(tracker_model, memory=memory, bank="ring")
    for index, frame in enumerate(frames):
        if index == 30:
            default.remove_object(3)
            ring.remove_object(3)
        expected, seen = default.step(frame, prompts.get(index)), ring.step(frame, prompts.get(index))
        assert seen.object_ids == expected.object_ids, f"frame {index}"
        for obj_id in expected.object_ids:
            assert torch.equal(torch.from_numpy(seen.logits[obj_id]), torch.from_numpy(expected.logits[obj_id])), (
                f"frame {index} object {obj_id}"
            )
            assert (seen.masks[obj_id] == expected.masks[obj_id]).all()
            assert seen.scores[obj_id] == expected.scores[obj_id] and seen.ious[obj_id] == expected.ious[obj_id]
    assert sorted(ring.bank.objects[1].conditioning) == [0, 12]
    print(f"[ring tracker] {memory}: 40 frames bit-identical; state {ring.state_bytes()} B (default {default.state_bytes()} B)")


def test_tracker_rejects_an_unknown_bank(tracker_model: SAM2Model) -> None:
    from surgsam2 import Tracker

    with pytest.raises(ValueError, match="unknown memory bank 'rings'; choose one of dict, ring"):
        Tracker(tracker_model, bank="rings")
