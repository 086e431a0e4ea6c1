"""Whole-video parity of our streaming tracker (fifo policy) with the official SAM 2 video predictor.

Same random weights on both sides (official model built, perturbed, saved in the official file
layout, loaded by ours), same decoded pixels, frames already at image_size. The scenario covers
mask prompts for two objects on frame 0, a third object added by a point mid-video, and a
corrective click on a tracked object later (a conditioning frame, as the official predictor makes
it with add_all_frames_to_correct_as_cond=True). Holes are not filled on either side.

Tolerance: the visibility pattern (NO_OBJECT_SCORE logits) must match exactly; the other logits
within 1e-3 x max(1, max|reference|) per frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oracle import build_official_video_model

import surgsam2
from surgsam2 import Prompt
from surgsam2.model.sam2 import NO_OBJECT_SCORE

VIDEO_RTOL = 1e-3
NUM_FRAMES = 12
ADD_OBJECT_FRAME = 5
CORRECTION_FRAME = 8


def make_clip(directory, size: int, num_frames: int) -> list[np.ndarray]:
    """Smooth moving shapes on a textured background, written as JPEG and decoded back with PIL
    (exactly what the official loader will read)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([0.6 + 0.3 * np.sin(6 * xx + 2 * yy), 0.3 + 0.2 * np.cos(5 * yy), 0.3 + 0.1 * xx], -1)
    frames = []
    for index in range(num_frames):
        image = base + 0.03 * rng.standard_normal(base.shape).astype(np.float32)
        for cx, cy, radius, colour in (
            (0.3 + 0.02 * index, 0.4, 0.12, (0.8, 0.8, 0.85)),
            (0.7 - 0.015 * index, 0.6 + 0.01 * index, 0.09, (0.2, 0.2, 0.25)),
            (0.5, 0.2 + 0.02 * index, 0.07, (0.9, 0.9, 0.2)),
        ):
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
            image[inside] = colour
        path = directory / f"{index:05d}.jpg"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path, quality=95)
        frames.append(np.array(Image.open(path).convert("RGB")))
    return frames


def initial_masks(size: int) -> dict[int, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return {
        1: (xx - 0.3) ** 2 + (yy - 0.4) ** 2 < 0.12**2,
        2: (xx - 0.7) ** 2 + (yy - 0.6) ** 2 < 0.09**2,
    }


def run_official(official, video_dir, size: int, masks, new_point, correction_point) -> dict[int, dict[int, torch.Tensor]]:
    """Per frame {object id: (H, W) logits} from the official predictor, driven frame by frame."""
    official.add_all_frames_to_correct_as_cond = True
    state = official.init_state(str(video_dir))
    outputs: dict[int, dict[int, torch.Tensor]] = {}

    def collect(start: int, count: int | None) -> None:
        for frame_index, obj_ids, video_logits in official.propagate_in_video(
            state, start_frame_idx=start, max_frame_num_to_track=count
        ):
            outputs[frame_index] = {obj_id: video_logits[row, 0].clone() for row, obj_id in enumerate(obj_ids)}

    with torch.inference_mode():
        for obj_id, mask in masks.items():
            official.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=mask)
        collect(0, ADD_OBJECT_FRAME - 1)
        official.add_new_points_or_box(state, frame_idx=ADD_OBJECT_FRAME, obj_id=3, points=[new_point], labels=[1])
        collect(ADD_OBJECT_FRAME, CORRECTION_FRAME - ADD_OBJECT_FRAME)
        official.add_new_points_or_box(
            state, frame_idx=CORRECTION_FRAME, obj_id=1, points=[correction_point], labels=[0], clear_old_points=True
        )
        collect(CORRECTION_FRAME, None)
    return outputs


@pytest.mark.parametrize(
    "name, size",
    [
        ("sam2.1_hiera_t", 512),
        pytest.param("sam2_hiera_t", 256, id="sam2_hiera_t-256"),
        pytest.param("sam2.1_hiera_s", 512, marks=pytest.mark.slow, id="sam2.1_hiera_s-512"),
    ],
)
def test_fifo_tracker_matches_official_video_predictor(tmp_path, name: str, size: int) -> None:
    torch.manual_seed(0)
    official = build_official_video_model(name, size)
    checkpoint = tmp_path / "shared.pt"
    torch.save({"model": official.state_dict()}, checkpoint)
    ours = surgsam2.load_model(name, checkpoint=checkpoint, image_size=size)

    video_dir = tmp_path / "frames"
    video_dir.mkdir()
    frames = make_clip(video_dir, size, NUM_FRAMES)
    masks = initial_masks(size)
    new_point = (0.5 * size, 0.2 * size + 0.02 * size * ADD_OBJECT_FRAME)
    correction_point = ((0.3 + 0.02 * CORRECTION_FRAME) * size, 0.4 * size)

    reference = run_official(official, video_dir, size, masks, new_point, correction_point)

    tracker = surgsam2.Tracker(ours, memory="fifo", fill_hole_area=0, num_frames=NUM_FRAMES)
    worst = 0.0
    nontrivial_frames = 0
    for frame_index, frame in enumerate(frames):
        prompts = None
        if frame_index == 0:
            prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in masks.items()}
        elif frame_index == ADD_OBJECT_FRAME:
            prompts = {3: Prompt(points=[new_point], labels=[1])}
        elif frame_index == CORRECTION_FRAME:
            prompts = {1: Prompt(points=[correction_point], labels=[0])}
        result = tracker.step(frame, prompts)
        expected = reference[frame_index]
        assert sorted(result.logits) == sorted(expected), f"frame {frame_index}: objects differ"
        for obj_id, ref in expected.items():
            ours_logits = torch.from_numpy(result.logits[obj_id])
            absent_ref = ref <= NO_OBJECT_SCORE / 2
            absent_ours = ours_logits <= NO_OBJECT_SCORE / 2
            assert torch.equal(absent_ref, absent_ours), f"frame {frame_index} object {obj_id}: visibility differs"
            present = ~absent_ref
            if not present.any():
                continue
            scale = max(1.0, ref[present].abs().max().item())
            deviation = (ours_logits[present] - ref[present]).abs().max().item() / scale
            worst = max(worst, deviation)
            assert deviation <= VIDEO_RTOL, f"frame {frame_index} object {obj_id}: rel deviation {deviation:.2e}"
            ref_mask = ref > 0
            if 0 < ref_mask.float().mean() < 1:
                nontrivial_frames += 1
    print(f"[parity] {name}@{size} whole video ({NUM_FRAMES} frames, 3 objects): max rel |d| = {worst:.3e} (allowed {VIDEO_RTOL:.0e})")
    # The comparison must not be vacuous: most (frame, object) masks are neither empty nor full.
    assert nontrivial_frames >= NUM_FRAMES, f"only {nontrivial_frames} non-trivial reference masks"
