"""The training pipeline: losses, prompt simulation, augmentation, data, configs, the clip forward
(overfit check), bit-exact resume, and DDP with two CPU processes.

Everything runs the `nano` model at 64 px on a tiny synthetic dataset, one CPU thread per process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from surgsam2.data.synthetic import write_synthetic_dataset
from surgsam2.memory.assembly import gather_candidates, memory_tokens, select_memories
from surgsam2.memory.bank import BankConfig, MemoryBank
from surgsam2.memory.policies import make_policy
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model
from surgsam2.train.augment import augment_clip
from surgsam2.train.config import (
    AugmentSection,
    ConfigError,
    LossSection,
    OptimSection,
    PromptSection,
    load_config,
)
from surgsam2.train.dataset import ClipDataset, ClipSpec, StepBatchSampler, collate_clips
from surgsam2.train.losses import LOSS_NAMES, prediction_losses, weighted_total
from surgsam2.train.model_forward import ClipForward
from surgsam2.train.optim import build_optimizer, lr_factor, parameter_rules
from surgsam2.train.prompts import (
    plan_prompts,
    sample_boxes,
    sample_correction_click,
    sample_points_in_masks,
)
from surgsam2.train.trainer import build_train_model, load_trainer_state, run_training, seed_everything

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: the machine is shared, and small ops run faster without thread hand-offs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data") / "synthetic"
    write_synthetic_dataset(root, videos=2, frames=10, size=(96, 80), seed=11)
    return root


def write_config(path: Path, root: Path, out_dir: Path, **sections: dict) -> Path:
    """A tiny training YAML: nano at 64 px, 3-frame clips, 2 clips per step, 4 steps."""
    values = {
        "model": {"name": "nano", "image_size": IMAGE_SIZE},
        "data": {"roots": [str(root)], "num_frames": 3, "max_objects": 2},
        "prompts": {"num_correction_points": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"batch_size": 2, "max_steps": 4, "checkpoint_every": 2, "amp": "off", "seed": 5,
                  "out_dir": str(out_dir), "progress": False, "num_threads": 1},
    }  # fmt: skip
    for name, overrides in sections.items():
        values.setdefault(name, {}).update(overrides)
    import yaml

    path.write_text(yaml.safe_dump(values))
    return path


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------
def _square_target(size: int = 32) -> torch.Tensor:
    target = torch.zeros(1, size, size, dtype=torch.bool)
    target[0, 8:24, 8:24] = True
    return target


def test_perfect_prediction_has_near_zero_mask_losses() -> None:
    target = _square_target()
    logits = torch.where(target, 30.0, -30.0)[:, None]  # (1, 1, H, W)
    losses = prediction_losses(logits, torch.ones(1, 1), torch.full((1, 1), 30.0), target, LossSection())
    assert losses.focal.item() < 1e-6
    assert losses.dice.item() < 1e-6
    assert losses.iou.item() < 1e-6
    assert losses.object.item() < 1e-6


def test_multimask_loss_is_taken_on_the_best_candidate_and_iou_on_all() -> None:
    target = _square_target()
    perfect = torch.where(target, 30.0, -30.0)
    empty = torch.full_like(perfect, -30.0)
    shifted = torch.roll(perfect, shifts=6, dims=-1)
    config = LossSection()
    ious = torch.tensor([[0.5, 1.0, 0.5]])
    multi = prediction_losses(torch.stack([empty, perfect, shifted], dim=1), ious, torch.ones(1, 1), target, config)
    single = prediction_losses(perfect[:, None], ious[:, 1:2], torch.ones(1, 1), target, config)
    assert multi.focal.item() == pytest.approx(single.focal.item(), abs=1e-7)
    assert multi.dice.item() == pytest.approx(single.dice.item(), abs=1e-7)
    # IoU loss over all three: |0.5 - 0| + |1 - 1| + |0.5 - IoU(shifted)|, averaged.
    shifted_iou = (16 * 10) / (16 * 16 + 16 * 6)
    assert multi.iou.item() == pytest.approx((0.5 + 0.0 + abs(0.5 - shifted_iou)) / 3, abs=1e-6)


def test_bce_iou_loss_is_minimal_at_the_actual_iou_and_keeps_its_gradient_when_saturated() -> None:
    target = _square_target()
    shifted = torch.roll(torch.where(target, 30.0, -30.0), shifts=6, dims=-1)[:, None]
    actual = (16 * 10) / (16 * 16 + 16 * 6)
    bce = LossSection(iou_loss="bce")
    candidates = torch.linspace(0.05, 0.95, 19)
    values = [prediction_losses(shifted, p.view(1, 1), torch.ones(1, 1), target, bce).iou.item() for p in candidates]
    best = candidates[int(np.argmin(values))].item()
    print(f"actual IoU {actual:.3f}, BCE minimum on the grid at {best:.2f}")
    assert abs(best - actual) <= 0.025  # the grid step is 0.05

    # A saturated IoU head (logit -9, predicts ~1e-4) on a mask whose IoU is 0.44: L1's gradient
    # on the logit is ~sigmoid'(-9) = 1e-4; BCE's is predicted - actual.
    gradients = {}
    for name in ("l1", "bce"):
        logit = torch.full((1, 1), -9.0, requires_grad=True)
        loss = prediction_losses(shifted, torch.sigmoid(logit), torch.ones(1, 1), target, LossSection(iou_loss=name))
        loss.iou.backward()
        gradients[name] = logit.grad.item()
    print(f"gradient on a saturated IoU logit: l1 {gradients['l1']:.2e}, bce {gradients['bce']:.3f}")
    assert abs(gradients["l1"]) < 2e-4
    assert gradients["bce"] == pytest.approx(torch.sigmoid(torch.tensor(-9.0)).item() - actual, abs=1e-5)


def test_iou_prediction_sigmoid_is_float32_under_bf16() -> None:
    from surgsam2.model.layers import MLP

    head = MLP(8, 16, 3, 3, sigmoid_output=True).to(torch.bfloat16)
    with torch.no_grad():
        head.layers[-1].bias.fill_(7.0)  # sigmoid(7) = 0.99909 rounds to 1.0 in bf16
    ious = head(torch.zeros(2, 8, dtype=torch.bfloat16))
    assert ious.dtype == torch.float32
    assert (ious < 1.0).all()


def test_absent_object_has_no_mask_loss_only_an_object_score_loss() -> None:
    target = torch.zeros(1, 32, 32, dtype=torch.bool)
    wrong_mask = torch.full((1, 3, 32, 32), 5.0)  # predicts the whole image
    losses = prediction_losses(wrong_mask, torch.ones(1, 3), torch.full((1, 1), 4.0), target, LossSection())
    assert losses.focal.item() == 0.0 and losses.dice.item() == 0.0 and losses.iou.item() == 0.0
    assert losses.object.item() > 3.9  # BCE of logit 4 against "absent"
    total = weighted_total(losses.as_dict(), LossSection())
    assert total.item() == pytest.approx(losses.object.item())


# ------------------------------------------------------------------------------------------
# Prompt simulation
# ------------------------------------------------------------------------------------------
def _error_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth: two squares; prediction: the first square plus a false-positive blob."""
    gt = torch.zeros(1, 48, 48, dtype=torch.bool)
    gt[0, 4:20, 4:20] = True
    gt[0, 30:44, 30:44] = True  # missed: false negative
    pred = torch.zeros_like(gt)
    pred[0, 4:20, 4:20] = True
    pred[0, 2:12, 30:40] = True  # false positive
    return gt, pred


@pytest.mark.parametrize("method", ["uniform", "center"])
def test_corrective_clicks_lie_in_the_error_region_with_the_right_sign(method: str) -> None:
    gt, pred = _error_case()
    false_neg, false_pos = gt & ~pred, ~gt & pred
    labels_seen = set()
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        coords, labels = sample_correction_click(gt, pred, method, generator)
        x, y = (int(v) for v in coords[0, 0].tolist())
        label = int(labels[0, 0])
        labels_seen.add(label)
        region = false_neg if label == 1 else false_pos
        assert bool(region[0, y, x]), f"click ({x}, {y}) label {label} outside its error region"
    if method == "uniform":
        assert labels_seen == {0, 1}  # both kinds of error get clicks
    else:
        # The false-negative square (14 px) is deeper than the false-positive blob (10 px).
        assert labels_seen == {1}
        assert coords[0, 0].tolist() in ([36.0, 36.0], [37.0, 37.0], [36.0, 37.0], [37.0, 36.0])


def test_prompt_sampling_is_deterministic_per_seed_and_inside_the_object() -> None:
    gt, pred = _error_case()

    def draw(seed: int):
        generator = torch.Generator().manual_seed(seed)
        points = sample_points_in_masks(gt, 3, generator)
        boxes = sample_boxes(gt, generator=generator)
        click = sample_correction_click(gt, pred, "uniform", generator)
        plan = plan_prompts(PromptSection(prob_points=0.7, num_frames_to_correct=2), 6, np.random.default_rng(seed))
        return points, boxes, click, plan

    first, again, other = draw(3), draw(3), draw(4)
    for a, b in zip(first[:3], again[:3]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert first[3] == again[3]
    assert not all(torch.equal(x, y) for x, y in zip(first[0], other[0]))
    coords, labels = first[0]
    assert labels.tolist() == [[1, 1, 1]]
    assert len({tuple(c) for c in coords[0].tolist()}) == 3  # distinct clicks
    for x, y in coords[0].tolist():
        assert gt[0, int(y), int(x)]
    box, box_labels = first[1]
    assert box_labels.tolist() == [[2, 3]]
    assert 0 <= box.min() and box.max() <= 47


def test_prompt_plan_follows_sam2_rules() -> None:
    config = PromptSection(prob_points=0.5, num_frames_to_correct=2, num_correction_points=7)
    plans = [plan_prompts(config, 8, np.random.default_rng(seed)) for seed in range(200)]
    assert all(plan.init_cond_frames == (0,) for plan in plans)
    mask_plans = [plan for plan in plans if not plan.use_points]
    point_plans = [plan for plan in plans if plan.use_points]
    assert 60 < len(mask_plans) < 140
    assert all(plan.correction_frames == () for plan in mask_plans)  # no corrections on masks
    assert all(plan.correction_frames[0] == 0 for plan in point_plans)
    assert {len(plan.correction_frames) for plan in point_plans} == {1, 2}
    assert all(plan.num_correction_points == 7 for plan in point_plans)
    assert any(plan.use_box for plan in point_plans) and not all(plan.use_box for plan in point_plans)


# ------------------------------------------------------------------------------------------
# Augmentation and data
# ------------------------------------------------------------------------------------------
def test_affine_augmentation_keeps_frames_and_masks_aligned() -> None:
    size = 96
    frames = np.full((3, size, size, 3), 20, dtype=np.uint8)
    id_maps = np.zeros((3, size, size), dtype=np.uint8)
    frames[:, 30:60, 40:70] = 250
    id_maps[:, 30:60, 40:70] = 1
    config = AugmentSection(degrees=25, shear=20, scale=[0.8, 1.2], translate=0.1, brightness=0, contrast=0,
                            saturation=0, grayscale_prob=0, frame_brightness=0, frame_contrast=0,
                            frame_saturation=0, affine_tries=5)  # fmt: skip
    import cv2

    warped_any = False
    for seed in range(5):
        images, masks = augment_clip(frames, id_maps, [1], config, np.random.default_rng(seed))
        assert images.shape == (3, size, size, 3) and images.dtype == np.float32
        assert masks.shape == (3, size, size)
        warped_any |= not np.array_equal(masks, id_maps)
        for image, mask in zip(images, masks):
            inside = cv2.erode((mask == 1).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            outside = cv2.dilate((mask == 1).astype(np.uint8), np.ones((3, 3), np.uint8)) == 0
            assert inside.sum() > 200
            assert image[inside].mean() > 0.95  # the bright square is under its mask
            assert image[outside].max() < 0.2  # and nowhere else
    assert warped_any


def test_clip_dataset_is_deterministic_and_shaped(synthetic_root: Path) -> None:
    spec = ClipSpec(num_frames=3, image_size=IMAGE_SIZE, max_objects=2)
    dataset = ClipDataset([synthetic_root], spec, AugmentSection(), seed=1)
    assert len(dataset) == 20  # 2 videos x 10 frames (SAM 2's frames_sampling_mult)
    item = dataset[(0, 3)]
    again = dataset[(0, 3)]
    assert item["frames"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE) and item["frames"].dtype == torch.float32
    assert item["masks"].shape == (3, 2, IMAGE_SIZE, IMAGE_SIZE) and item["masks"].dtype == torch.bool
    assert torch.equal(item["frames"], again["frames"]) and torch.equal(item["masks"], again["masks"])
    count = int(item["valid"].sum())
    assert 1 <= count <= 2 and item["valid"][:count].all()
    assert all(item["masks"][0, slot].any() for slot in range(count))  # visible on the first frame
    assert not item["masks"][:, count:].any()
    other_epoch = dataset[(1, 3)]
    assert not torch.equal(item["frames"], other_epoch["frames"])
    batch = collate_clips([item, other_epoch])
    assert batch["frames"].shape == (2, 3, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_step_batches_shard_across_processes_without_overlap() -> None:
    samplers = [StepBatchSampler(10, 2, total_steps=5, seed=0, rank=r, world_size=2) for r in range(2)]
    per_rank = [list(s) for s in samplers]
    assert all(len(batches) == 5 for batches in per_rank)
    first_epoch = [key for batches in per_rank for batch in batches[:2] for key in batch] + [
        key for batch in per_rank[0][2:3] for key in batch
    ]
    assert sorted(index for epoch, index in first_epoch if epoch == 0) == list(range(10))
    resumed = StepBatchSampler(10, 2, total_steps=5, seed=0, start_step=3, rank=1, world_size=2)
    assert list(resumed) == per_rank[1][3:]


# ------------------------------------------------------------------------------------------
# Config, optimizer
# ------------------------------------------------------------------------------------------
def test_config_errors_name_the_key(tmp_path: Path, synthetic_root: Path) -> None:
    path = write_config(tmp_path / "bad.yaml", synthetic_root, tmp_path / "out", optim={"lr_decay": 0.8})
    with pytest.raises(ConfigError, match=r"optim\.lr_decay"):
        load_config(path)
    path = write_config(tmp_path / "bad2.yaml", synthetic_root, tmp_path / "out", train={"batch_size": "four"})
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(path)
    path = write_config(tmp_path / "good.yaml", synthetic_root, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"model\.train_memory_polcy"):
        load_config(path, ["model.train_memory_polcy=efp"])
    with pytest.raises(ConfigError, match=r"model\.train_memory_policy"):
        load_config(path, ["model.train_memory_policy=lru"])
    with pytest.raises(ConfigError, match=r"model\.high_res_dropout"):
        load_config(path, ["model.high_res_dropout=1.0"])
    with pytest.raises(ConfigError, match=r"loss\.iou_loss"):
        load_config(path, ["loss.iou_loss=mse"])
    config = load_config(path, ["model.train_memory_policy=efp", "optim.lr=2e-4"])
    assert config.model.train_memory_policy == "efp" and config.optim.lr == 2e-4
    names = ("endovis18_instrument_hiera_s.yaml", "nano_synthetic.yaml", "nano_synthetic_stage2.yaml",
             "nano_synthetic_stage3.yaml", "nano_synthetic_stage4.yaml", "nano_synthetic_stage5.yaml",
             "nano_synthetic_stage6.yaml", "nano_synthetic_stage7.yaml")  # fmt: skip
    for name in names:
        shipped = load_config(REPO_ROOT / "configs" / "train" / name)
        assert shipped.data.roots


def test_optimizer_rules_and_schedule() -> None:
    model = SAM2Model(get_config("nano", IMAGE_SIZE))
    rules = parameter_rules(model, OptimSection(lr=1e-4, layer_decay=0.9, weight_decay=0.1))
    num_blocks = len(model.image_encoder.trunk.blocks)
    last = f"image_encoder.trunk.blocks.{num_blocks - 1}.attn.qkv.weight"
    assert rules[last].lr_scale == pytest.approx(0.9)
    assert rules["image_encoder.trunk.blocks.0.attn.qkv.weight"].lr_scale == pytest.approx(0.9**num_blocks)
    assert rules["image_encoder.trunk.patch_embed.proj.weight"].lr_scale == pytest.approx(0.9 ** (num_blocks + 1))
    assert rules["sam_mask_decoder.iou_token.weight"].lr_scale == 1.0
    assert rules["image_encoder.trunk.blocks.0.attn.qkv.bias"].weight_decay == 0.0
    assert rules["image_encoder.trunk.blocks.0.norm1.weight"].weight_decay == 0.0
    assert rules["image_encoder.trunk.pos_embed"].weight_decay == 0.0
    assert rules["maskmem_tpos_enc"].weight_decay == 0.0
    assert rules[last].weight_decay == 0.1
    factor = lr_factor(total_steps=100, warmup_steps=10, final_ratio=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(100) == pytest.approx(0.1)
    assert factor(55) == pytest.approx(0.55)


# ------------------------------------------------------------------------------------------
# Memory assembly shared with the tracker
# ------------------------------------------------------------------------------------------
def test_batched_training_memory_equals_per_object_memory() -> None:
    """One layout holding a batch of objects gives the same tokens as one layout per object."""
    model = SAM2Model(get_config("nano", IMAGE_SIZE)).eval()
    config = BankConfig(num_maskmem=model.num_maskmem, storage_dtype=torch.float32)
    batched, separate = MemoryBank(config), MemoryBank(config)
    batched.add_object(0)
    for obj_id in range(3):
        separate.add_object(obj_id)
    tokens, channels = 16, model.mem_dim
    generator = torch.Generator().manual_seed(0)
    for frame in range(9):
        features = torch.randn(3, tokens, channels, generator=generator)
        pointers = torch.randn(3, model.hidden_dim, generator=generator)
        batched.write(0, frame, features, pointers, conditioning=frame == 0)
        for obj_id in range(3):
            separate.write(obj_id, frame, features[obj_id], pointers[obj_id], conditioning=frame == 0)
    spatial = torch.randn(tokens, channels, generator=generator)
    def tokens_of(layouts: list, policy: str) -> tuple:
        candidates = gather_candidates(layouts)
        keep = select_memories(candidates, make_policy(policy), model.num_maskmem)
        return memory_tokens(model, candidates, keep, spatial, 12)

    for policy in ("fifo", "efp"):
        together = tokens_of([batched.layout(0, 9, 12)], policy)
        apart = tokens_of([separate.layout(i, 9, 12) for i in range(3)], policy)
        assert together[2] == apart[2]
        assert torch.equal(together[0], apart[0]) and torch.equal(together[1], apart[1])


# ------------------------------------------------------------------------------------------
# Clip forward and training runs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_training_steps_overfit_a_fixed_batch(synthetic_root: Path, amp: str, monkeypatch) -> None:
    """The loss falls on a fixed batch, in float32 and under bf16 autocast (where the short
    attentions take the matmul kernel: its gradients train the model too)."""
    from surgsam2.model import attention

    matmul_calls = []
    original = attention.dense_attention
    monkeypatch.setattr(attention, "dense_attention", lambda *args: matmul_calls.append(1) or original(*args))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16")
    spec = ClipSpec(num_frames=3, image_size=IMAGE_SIZE, max_objects=2)
    dataset = ClipDataset([synthetic_root], spec, augment=None, seed=0)
    batch = collate_clips([dataset[(0, 0)], dataset[(0, 12)]])
    torch.manual_seed(0)
    model = SAM2Model(get_config("nano", IMAGE_SIZE)).train()
    loss_config = LossSection()
    forward = ClipForward(model, PromptSection(prob_points=0.0), loss_config, make_policy("fifo"))
    optimizer = build_optimizer(model, OptimSection(lr=3e-3, weight_decay=0.0, layer_decay=1.0))
    losses, dice = [], []
    for step in range(25):
        torch.manual_seed(step)
        with autocast:
            outputs = forward(batch["frames"], batch["masks"], batch["valid"], seed=0)
        per_object = {name: outputs[name].float() / outputs["num_objects"] for name in LOSS_NAMES}
        loss = weighted_total(per_object, loss_config)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        dice.append(per_object["dice"].item())
    assert bool(matmul_calls) == (amp == "bf16"), f"matmul attention calls: {len(matmul_calls)}"
    print(f"[train overfit, amp {amp}] loss step 1 {losses[1]:.3f} -> last 3 {np.mean(losses[-3:]):.3f},"
          f" dice {dice[0]:.3f} -> {np.mean(dice[-3:]):.3f}")
    # Step 0 is dominated by "object absent" logits (a gradient-free term until the object-score
    # head turns positive); compare with step 1 onwards.
    assert np.mean(losses[-3:]) < 0.7 * losses[1], losses
    assert np.mean(dice[-3:]) < 0.8 * dice[0], dice


def test_high_res_dropout_zeroes_whole_objects_in_training_only(synthetic_root: Path) -> None:
    model = SAM2Model(get_config("nano", IMAGE_SIZE)).train()
    forward = ClipForward(model, PromptSection(prob_points=0.0), LossSection(), make_policy("fifo"), high_res_dropout=0.5)
    torch.manual_seed(0)
    high_res = [torch.randn(200, 4, 8, 8) + 3.0, torch.randn(200, 6, 4, 4) + 3.0]

    def dropped(generator_seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(generator_seed)
        out = forward._drop_high_res(high_res, generator)
        zero = torch.stack([(level.flatten(1) == 0).all(dim=1) for level in out])
        same = torch.stack([(level == orig).flatten(1).all(dim=1) for level, orig in zip(out, high_res)])
        assert bool((zero | same).all()), "an object is partly dropped"
        assert bool((zero[0] == zero[1]).all()), "the two levels of an object are dropped together"
        return zero[0]

    first = dropped(1)
    print(f"dropped {int(first.sum())} of 200 objects at p=0.5")
    assert 70 <= int(first.sum()) <= 130
    assert torch.equal(first, dropped(1))  # seeded: resume reproduces it
    model.eval()
    assert forward._drop_high_res(high_res, torch.Generator().manual_seed(1)) is high_res
    model.train()
    forward.high_res_dropout = 0.0
    assert forward._drop_high_res(high_res, torch.Generator().manual_seed(1)) is high_res

    # The clip forward runs with it and still produces finite losses.
    forward.high_res_dropout = 0.5
    dataset = ClipDataset([synthetic_root], ClipSpec(num_frames=3, image_size=IMAGE_SIZE, max_objects=2), seed=0)
    batch = collate_clips([dataset[(0, 0)], dataset[(0, 12)]])
    outputs = forward(batch["frames"], batch["masks"], batch["valid"], seed=0)
    assert all(torch.isfinite(outputs[name]) for name in LOSS_NAMES)


class _CountingPolicy:
    """Wraps a policy and records how many candidates it kept."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.kept: list[tuple[int, int]] = []

    def num_kept(self, protected, capacity):
        return self.policy.num_kept(protected, capacity)

    def select(self, features, protected, capacity):
        keep = self.policy.select(features, protected, capacity)
        self.kept.append((features.shape[0], keep.shape[0]))
        return keep


def test_efp_memory_policy_prunes_during_training_and_keeps_gradients(synthetic_root: Path) -> None:
    spec = ClipSpec(num_frames=9, image_size=IMAGE_SIZE, max_objects=2)
    batch = collate_clips([ClipDataset([synthetic_root], spec, augment=None, seed=0)[(0, 0)]])
    torch.manual_seed(0)
    model = SAM2Model(get_config("nano", IMAGE_SIZE)).train()
    policy = _CountingPolicy(make_policy("efp", num_frame_to_prune=2))
    forward = ClipForward(model, PromptSection(prob_points=0.0), LossSection(), policy)  # type: ignore[arg-type]
    outputs = forward(batch["frames"], batch["masks"], batch["valid"], seed=0)
    loss = weighted_total({name: outputs[name] for name in LOSS_NAMES}, LossSection())
    loss.backward()
    # Frame 7: conditioning frame + 6 recent = 7 candidates, 7 + 2 > 7 slots: 2 dropped.
    assert (7, 5) in policy.kept and all(kept < total for total, kept in policy.kept)
    assert torch.isfinite(loss) and model.maskmem_tpos_enc.grad is not None
    assert model.maskmem_tpos_enc.grad.abs().sum() > 0


def test_resume_continues_bit_exactly(tmp_path: Path, synthetic_root: Path) -> None:
    straight_config = load_config(write_config(tmp_path / "a.yaml", synthetic_root, tmp_path / "straight"))
    straight = run_training(straight_config)
    assert sorted(straight.losses) == [1, 2, 3, 4]
    assert straight.final_checkpoint is not None and straight.final_checkpoint.is_file()

    config = load_config(write_config(tmp_path / "b.yaml", synthetic_root, tmp_path / "resumed"))
    first = run_training(config, stop_after=2)
    assert first.losses == {1: straight.losses[1], 2: straight.losses[2]}
    with pytest.raises(ValueError, match="--resume"):
        run_training(config)  # a fresh run must not overwrite checkpoints silently
    resumed = run_training(config, resume=True)
    assert resumed.start_step == 2
    assert resumed.losses[3] == straight.losses[3]  # bit-exact
    assert resumed.losses[4] == straight.losses[4]

    state = load_trainer_state(tmp_path / "resumed" / "checkpoints" / "trainer_step0000002.pt")
    assert state["step"] == 2 and isinstance(state["rng"]["torch"], torch.Tensor)
    import json

    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "resumed" / "loss.png").is_file()
    import surgsam2

    trained = surgsam2.load_model("nano", checkpoint=tmp_path / "resumed" / "checkpoints" / "model_final.pt")
    assert trained.image_size == IMAGE_SIZE


def test_run_entries_are_listed_as_ours_before_the_first_step(
    tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed without cleanup (SIGKILL) must leave a folder that `--resume` accepts: the
    marker lists the run's entries before any step runs, not only when the run exits."""
    import surgsam2.train.trainer as trainer_module
    from surgsam2.data.outputs import read_marker

    out = tmp_path / "run"
    listed_at_start: set[str] = set()
    original_run = trainer_module._Trainer.run

    def run_reading_marker(self: object, stop_after: int | None) -> object:
        listed_at_start.update(read_marker(out).get("entries", {}))
        return original_run(self, stop_after)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module._Trainer, "run", run_reading_marker)
    run_training(load_config(write_config(tmp_path / "a.yaml", synthetic_root, out)), stop_after=1)
    assert set(trainer_module.RUN_ENTRIES) <= listed_at_start, listed_at_start


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DDP_DRIVER = """
import os, sys, torch
import surgsam2.train.trainer as trainer
from surgsam2.train.config import load_config

captured = {}
original_run = trainer._Trainer.run

def run_and_capture(self, stop_after):
    summary = original_run(self, stop_after)
    captured["state"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
    return summary

trainer._Trainer.run = run_and_capture
trainer.run_training(load_config(sys.argv[1]))
torch.save(captured["state"], f"{sys.argv[2]}/params_rank{os.environ['RANK']}.pt")
"""


def test_ddp_two_cpu_processes_stay_in_sync(tmp_path: Path, synthetic_root: Path) -> None:
    config_path = write_config(tmp_path / "ddp.yaml", synthetic_root, tmp_path / "ddp", train={"max_steps": 3})
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DDP_DRIVER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(driver), str(config_path), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "params_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "params_rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    config = load_config(config_path)
    seed_everything(config.train.seed)
    initial = build_train_model(config).state_dict()  # the run's initial weights
    assert any(not torch.equal(rank0[key], initial[key]) for key in rank0)  # it did train
    records = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 3  # rank 0 logs alone
    assert (tmp_path / "ddp" / "checkpoints" / "model_final.pt").is_file()
