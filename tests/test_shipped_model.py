"""The small model trained by our pipeline and shipped inside the package (the offline default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surgsam2
from surgsam2.app.options import ModelOptions
from surgsam2.memory.policy_table import DEFAULT_POLICY
from surgsam2.data.synthetic import (
    SyntheticVideoConfig,
    generate_synthetic_video,
    video_seed,
    write_synthetic_dataset,
)
from surgsam2.model.checkpoint import default_checkpoint, load_model, read_checkpoint
from surgsam2.pipelines.vos_inference import VOSInferenceConfig, run_vos_inference

MAX_PACKAGED_BYTES = 20 * 2**20
# J&F (surgsam2 protocol, the default memory policy) on the held-out clip below, measured when the checkpoint shipped:
# see SHIPPED_CLIP_JF_MEASURED; the test allows a margin for platform differences in float math.
SHIPPED_CLIP_JF_MEASURED = 0.985
SHIPPED_CLIP_JF_MARGIN = 0.03
HELD_OUT_SEED = 900_123  # dataset seeds >= 900000 are never used for training
# The bar for bf16 inference: each object's bf16 mask matches its float32 mask.
BF16_FRAME_IOU_MIN = 0.98


def test_packaged_checkpoint_is_small_official_and_loads_by_default() -> None:
    path = default_checkpoint("nano")
    assert path is not None and path.is_file(), "the nano checkpoint must ship inside the package"
    assert path.stat().st_size <= MAX_PACKAGED_BYTES
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert "model" in raw, "official layout: {'model': state_dict}"
    checkpoint = read_checkpoint(path)
    model = load_model("nano")
    assert model.image_size == 256
    for key, value in checkpoint.state_dict.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_shipped_model_segments_a_held_out_synthetic_clip(tmp_path) -> None:
    write_synthetic_dataset(tmp_path / "data", videos=1, frames=24, size=(320, 256), seed=HELD_OUT_SEED)
    config = VOSInferenceConfig(
        base_video_dir=tmp_path / "data" / "JPEGImages",
        input_mask_dir=tmp_path / "data" / "VOS" / "Annotations_vos_instrument",
        output_mask_dir=tmp_path / "masks",
        gt_root=tmp_path / "data" / "Annotations",
        model=ModelOptions(name="nano", device="cpu"),
        memory=DEFAULT_POLICY,
        progress=False,
    )
    report = run_vos_inference(config, info=lambda message: None)
    assert not report.failed and report.evaluation is not None
    measured = report.evaluation.summary.JF
    threshold = SHIPPED_CLIP_JF_MEASURED - SHIPPED_CLIP_JF_MARGIN
    print(f"[shipped] held-out clip J&F {100 * measured:.1f} (threshold {100 * threshold:.1f})")
    assert measured >= threshold


def _track_clip(precision: str, stability_fallback: bool) -> tuple[list[dict[int, np.ndarray]], np.ndarray]:
    """Masks of the J&F test's clip (video 0 of the dataset seeded HELD_OUT_SEED) and its id maps."""
    video = generate_synthetic_video(SyntheticVideoConfig(num_frames=24, seed=video_seed(HELD_OUT_SEED, 0)))
    first = video.id_maps[0]
    prompts = {int(obj_id): surgsam2.Prompt(mask=first == obj_id) for obj_id in np.unique(first) if obj_id}
    assert len(prompts) >= 2
    model = load_model("nano", dtype=precision)
    assert model.memory_attention.dtype == (torch.float32 if precision == "fp32" else torch.bfloat16)
    model.sam_mask_decoder.dynamic_multimask_via_stability = stability_fallback
    tracker = surgsam2.Tracker(model, memory=DEFAULT_POLICY)
    steps = [tracker.step(frame, prompts if index == 0 else None) for index, frame in enumerate(video.frames)]
    return [result.masks for result in steps], video.id_maps


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.logical_or(a, b).sum()
    return None if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("precision", ["bf16", "mixed"])
def test_shipped_model_bf16_masks_match_fp32_masks(precision: str) -> None:
    """The shipped model in bf16 (the fast CPU path: matmul attention, cached keys), or in fp32
    with bf16 memory attention ("mixed"), gives the float32 masks.

    1. The network's numbers: IoU >= 0.98 for every object on every frame of a held-out clip, with
       SAM 2.1's stability fallback off (see 2.).
    2. As shipped, with the fallback on: on a tracked frame SAM 2.1 keeps the single mask when its
       stability score is >= 0.98, else takes the best of the three candidates. Near that
       threshold bf16 rounding can flip the choice (seen with an earlier shipped model: 2 of 48
       masks, stability 0.9776 in fp32 vs 0.9813 in bf16, IoU 0.92 between them on that frame).
       So: the masks' mean IoU with the ground truth equal within 0.005 (seen: 0.0022 then, 0.0001
       now), and at most 10 % of the masks below IoU 0.98 (2 of 48 then, 0 now).
    """
    worst, worst_at, compared = 1.0, None, 0
    exact = {name: _track_clip(name, stability_fallback=False)[0] for name in ("fp32", precision)}
    for index, (reference, candidate) in enumerate(zip(exact["fp32"], exact[precision])):
        for obj_id, expected in reference.items():
            iou = _iou(expected, candidate[obj_id])
            if iou is None:
                continue
            compared += 1
            if iou < worst:
                worst, worst_at = iou, (index, obj_id)
    print(
        f"[shipped] {precision} vs fp32 (no stability fallback): worst IoU {worst:.4f} at (frame, object) "
        f"{worst_at} over {compared} masks (min {BF16_FRAME_IOU_MIN}, margin {worst - BF16_FRAME_IOU_MIN:+.4f})"
    )
    assert compared >= len(exact["fp32"]) * len(exact["fp32"][0]) // 2
    assert worst >= BF16_FRAME_IOU_MIN

    shipped = {}
    for name in ("fp32", precision):
        masks, id_maps = _track_clip(name, stability_fallback=True)
        shipped[name] = masks
    quality = {}
    for name, frames in shipped.items():
        ious = [_iou(masks[obj_id], id_maps[index] == obj_id) for index, masks in enumerate(frames) for obj_id in masks]
        quality[name] = float(np.mean([iou for iou in ious if iou is not None]))
    agreement = [
        _iou(reference[obj_id], candidate[obj_id])
        for reference, candidate in zip(shipped["fp32"], shipped[precision])
        for obj_id in reference
    ]
    agreement = [iou for iou in agreement if iou is not None]
    below = sum(iou < BF16_FRAME_IOU_MIN for iou in agreement)
    print(
        f"[shipped] as shipped: mean IoU with ground truth fp32 {quality['fp32']:.4f}, {precision} "
        f"{quality[precision]:.4f} (allowed difference 0.005); {below} of {len(agreement)} masks below IoU "
        f"{BF16_FRAME_IOU_MIN} with fp32 (allowed 10 %), worst {min(agreement):.4f}"
    )
    assert abs(quality["fp32"] - quality[precision]) <= 0.005
    assert below <= 0.1 * len(agreement)
