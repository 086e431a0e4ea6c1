"""Metrics: J, F, Dice, sequence statistics and EndoVis class-based IoUs.

Every per-frame case has a value worked out by hand and is also checked against a slow, plain-loop
reference written here from the DAVIS definitions (per-pixel boundary rule, explicit search of
the tolerance disk), independent of the vectorised code under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np
import pytest

from surgsam2.eval import metrics
from surgsam2.eval.metrics import (
    boundary_map,
    boundary_score,
    boundary_tolerance,
    class_based_metrics_from_maps,
    class_image_stats,
    decay,
    decay_bin_bounds,
    dice,
    frame_scores,
    jaccard,
    sequence_statistics,
)

# ------------------------------------------------------------------------------------------
# Slow references (plain Python loops)
# ------------------------------------------------------------------------------------------


def ref_boundary(mask: np.ndarray) -> list[tuple[int, int]]:
    """seg2bmap pixel by pixel: compare with the east, south and south-east neighbours, where a
    neighbour outside the image is background; then the last row keeps only the east test, the
    last column only the south test, and the bottom-right pixel is never a boundary."""
    height, width = mask.shape
    seg = [[bool(mask[y, x]) for x in range(width)] for y in range(height)]

    def at(y: int, x: int) -> bool:
        return seg[y][x] if y < height and x < width else False

    points = []
    for y in range(height):
        for x in range(width):
            here = seg[y][x]
            if y == height - 1 and x == width - 1:
                edge = False
            elif y == height - 1:
                edge = here != at(y, x + 1)
            elif x == width - 1:
                edge = here != at(y + 1, x)
            else:
                edge = here != at(y, x + 1) or here != at(y + 1, x) or here != at(y + 1, x + 1)
            if edge:
                points.append((y, x))
    return points


def ref_boundary_score(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> tuple[float, float, float]:
    """DAVIS boundary P, R, F with an explicit distance check against every boundary pixel."""
    height, width = gt.shape
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(height**2 + width**2))
    pred_points, gt_points = ref_boundary(pred), ref_boundary(gt)

    reach = int(radius)
    disk = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1) if dy * dy + dx * dx <= radius**2]

    def matched(sources, targets) -> int:
        target_set = set(targets)
        return sum(any((sy + dy, sx + dx) in target_set for dy, dx in disk) for sy, sx in sources)

    if not pred_points and not gt_points:
        precision, recall = 1.0, 1.0
    elif not pred_points:
        precision, recall = 1.0, 0.0
    elif not gt_points:
        precision, recall = 0.0, 1.0
    else:
        precision = matched(pred_points, gt_points) / len(pred_points)
        recall = matched(gt_points, pred_points) / len(gt_points)
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f


def ref_jaccard_dice(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """J and Dice by counting pixels in loops."""
    inter = union = n_pred = n_gt = 0
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        inter += bool(p) and bool(g)
        union += bool(p) or bool(g)
        n_pred += bool(p)
        n_gt += bool(g)
    j = 1.0 if union == 0 else inter / union
    d = 1.0 if n_pred + n_gt == 0 else 2 * inter / (n_pred + n_gt)
    return j, d


def check_against_reference(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008):
    """Assert the fast metrics equal the slow reference; return the fast FrameScores."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    assert sorted(map(tuple, np.argwhere(boundary_map(gt)).tolist())) == ref_boundary(gt)
    assert sorted(map(tuple, np.argwhere(boundary_map(pred)).tolist())) == ref_boundary(pred)
    ref_p, ref_r, ref_f = ref_boundary_score(pred, gt, bound_th)
    fast = boundary_score(pred, gt, bound_th)
    assert fast.precision == pytest.approx(ref_p, abs=1e-12)
    assert fast.recall == pytest.approx(ref_r, abs=1e-12)
    assert fast.f == pytest.approx(ref_f, abs=1e-12)
    ref_j, ref_d = ref_jaccard_dice(pred, gt)
    scores = frame_scores(pred, gt, bound_th)
    assert scores.J == pytest.approx(ref_j, abs=1e-12) and jaccard(pred, gt) == pytest.approx(ref_j, abs=1e-12)
    assert scores.Dice == pytest.approx(ref_d, abs=1e-12) and dice(pred, gt) == pytest.approx(ref_d, abs=1e-12)
    assert scores.F == pytest.approx(ref_f, abs=1e-12)
    return scores


def square(shape=(50, 50), top=20, left=20, size=10) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


# ------------------------------------------------------------------------------------------
# Per-frame values known by hand
# ------------------------------------------------------------------------------------------


def test_tolerance_is_davis_ceil_of_diagonal_fraction():
    assert boundary_tolerance((1024, 1280)) == 14  # ceil(0.008 * 1639.2) = ceil(13.11)
    assert boundary_tolerance((480, 854)) == 8  # DAVIS 480p
    assert boundary_tolerance((50, 50)) == 1
    assert boundary_tolerance((50, 50), bound_th=3) == 3  # >= 1 means pixels


def test_empty_empty():
    empty = np.zeros((50, 50), bool)
    s = check_against_reference(empty, empty)
    assert (s.J, s.F, s.Dice, s.JF) == (1.0, 1.0, 1.0, 1.0)


def test_empty_prediction_full_ground_truth():
    # A full mask has no boundary (the image border is not one), so both boundaries are empty
    # and DAVIS gives F = 1 even though J = Dice = 0.
    empty, full = np.zeros((50, 50), bool), np.ones((50, 50), bool)
    s = check_against_reference(empty, full)
    assert (s.J, s.F, s.Dice) == (0.0, 1.0, 0.0)
    assert boundary_map(full).sum() == 0


def test_full_full():
    full = np.ones((50, 50), bool)
    s = check_against_reference(full, full)
    assert (s.J, s.F, s.Dice) == (1.0, 1.0, 1.0)


def test_square_boundary_pixels_by_hand():
    # 10x10 square at rows/cols 20..29: row 19 cols 19..29 (11), col 19 rows 20..29 (10),
    # row 29 cols 20..29 (10), col 29 rows 20..28 (9) -> 40 boundary pixels.
    bmap = boundary_map(square())
    assert bmap.sum() == 40
    assert bmap[19, 19:30].all() and bmap[20:30, 19].all() and bmap[29, 20:30].all() and bmap[20:29, 29].all()


def test_one_pixel_shift_of_a_square():
    gt = square()
    pred = square(left=21)
    s = check_against_reference(pred, gt)
    assert s.J == pytest.approx(90 / 110)
    assert s.Dice == pytest.approx(180 / 200)
    assert s.F == 1.0  # every boundary pixel moved by 1 px = the tolerance at 50x50


def test_shift_beyond_tolerance_lowers_f():
    gt = square()
    pred = square(left=23)
    s = check_against_reference(pred, gt)
    assert s.J == pytest.approx(70 / 130)
    assert 0.0 < s.F < 1.0


def test_thin_line_shifted_down_one_row():
    gt = np.zeros((50, 50), bool)
    gt[25, 10:40] = True
    pred = np.zeros_like(gt)
    pred[26, 10:40] = True
    assert boundary_map(gt).sum() == 62  # 31 above the line (with the corner) + 31 on it
    s = check_against_reference(pred, gt)
    assert (s.J, s.Dice, s.F) == (0.0, 0.0, 1.0)


def test_boundary_precision_recall_cases():
    gt = square()
    # Extra far-away one-pixel blob: 4 boundary pixels, none near the ground truth.
    pred = gt.copy()
    pred[42, 42] = True
    b = boundary_score(pred, gt)
    assert (b.precision, b.recall) == (pytest.approx(40 / 44), 1.0)
    assert b.f == pytest.approx(20 / 21)
    check_against_reference(pred, gt)
    # Missed object: the prediction is empty.
    b = boundary_score(np.zeros_like(gt), gt)
    assert (b.precision, b.recall, b.f) == (1.0, 0.0, 0.0)
    check_against_reference(np.zeros_like(gt), gt)
    # Hallucinated object: the ground truth is empty.
    b = boundary_score(gt, np.zeros_like(gt))
    assert (b.precision, b.recall, b.f) == (0.0, 1.0, 0.0)
    check_against_reference(gt, np.zeros_like(gt))
    # Two far-apart squares: both boundaries exist, nothing matches -> P = R = F = 0.
    b = boundary_score(square(top=2, left=2, size=5), square(top=40, left=40, size=5))
    assert (b.precision, b.recall, b.f) == (0.0, 0.0, 0.0)


def test_masks_touching_the_image_border():
    left_half = np.zeros((50, 50), bool)
    left_half[:, :25] = True
    assert boundary_map(left_half).sum() == 50  # only the inner vertical edge, column 24
    assert boundary_map(left_half)[:, 24].all()
    right_half = ~left_half
    assert boundary_map(right_half).sum() == 50 and boundary_map(right_half)[:, 24].all()
    wider = np.zeros_like(left_half)
    wider[:, :26] = True
    s = check_against_reference(wider, left_half)
    assert s.J == pytest.approx(25 / 26) and s.F == 1.0
    s = check_against_reference(np.ones_like(left_half), left_half)  # full: no boundary at all
    assert s.F == 0.0 and s.J == pytest.approx(0.5)
    corner = np.zeros((50, 50), bool)
    corner[40:, 40:] = True  # touches the bottom and right borders
    check_against_reference(corner, square(top=38, left=39, size=12))


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_against_reference(seed):
    rng = np.random.default_rng(seed)
    height, width = [(40, 60), (120, 160), (250, 250)][seed % 3]  # tolerance 1, 2, 3 px
    def blobs():
        low = rng.random((height // 8 + 1, width // 8 + 1)) > 0.6
        return cv2.resize(low.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    check_against_reference(blobs(), blobs())
    check_against_reference(blobs(), blobs(), bound_th=4)  # a wider disk


def test_noise_masks_take_the_dense_path_and_agree():
    rng = np.random.default_rng(7)
    pred, gt = rng.random((30, 40)) > 0.5, rng.random((30, 40)) > 0.5
    check_against_reference(pred, gt)
    check_against_reference(pred, gt, bound_th=3)


def test_sparse_matching_equals_dilation_on_a_full_size_frame():
    yy, xx = np.mgrid[:1024, :1280]
    gt = ((yy - 500) / 300.0) ** 2 + ((xx - 640) / 450.0) ** 2 < 1
    pred = ((yy - 515) / 290.0) ** 2 + ((xx - 655) / 470.0) ** 2 < 1
    pred[100:140, 1200:1280] = True  # a false positive touching the right border
    radius = boundary_tolerance(gt.shape)
    bp, bg = boundary_map(pred), boundary_map(gt)
    kernel = metrics.disk_kernel(radius)
    dilated = cv2.dilate(bg.view(np.uint8), kernel).view(bool)
    assert metrics._count_matched(bp, bg, int(bp.sum()), radius) == int((bp & dilated).sum())
    dilated = cv2.dilate(bp.view(np.uint8), kernel).view(bool)
    assert metrics._count_matched(bg, bp, int(bg.sum()), radius) == int((bg & dilated).sum())
    # The cropped computation equals the full-frame one.
    precision = int((bp & cv2.dilate(bg.view(np.uint8), kernel).view(bool)).sum()) / bp.sum()
    recall = int((bg & cv2.dilate(bp.view(np.uint8), kernel).view(bool)).sum()) / bg.sum()
    score = boundary_score(pred, gt)
    assert score.precision == pytest.approx(precision, abs=1e-12)
    assert score.recall == pytest.approx(recall, abs=1e-12)


def test_disk_kernel_matches_definition():
    kernel = metrics.disk_kernel(3)
    assert kernel.shape == (7, 7)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            assert kernel[dy + 3, dx + 3] == (dy * dy + dx * dx <= 9)


def test_shape_mismatch_and_bad_dims_are_errors():
    with pytest.raises(ValueError, match="differs"):
        frame_scores(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        jaccard(np.zeros((2, 4, 5), bool), np.zeros((2, 4, 5), bool))


# ------------------------------------------------------------------------------------------
# Sequence statistics
# ------------------------------------------------------------------------------------------


def ref_bins(n: int) -> list[tuple[int, int]]:
    """Quartile edges round-half-up(1 + i (n-1)/4) - 1 in exact arithmetic, bins inclusive."""
    edges = [math.floor(1 + Fraction(i * (n - 1), 4) + Fraction(1, 2)) - 1 for i in range(5)]
    return [(edges[i], edges[i + 1]) for i in range(4)]


def test_decay_bins_match_exact_arithmetic_for_all_lengths():
    for n in range(1, 700):
        assert decay_bin_bounds(n) == ref_bins(n), n


def test_decay_lengths_by_hand():
    assert decay([0.8]) == 0.0 and decay_bin_bounds(1) == [(0, 0)] * 4
    assert decay_bin_bounds(3) == [(0, 1), (1, 1), (1, 2), (2, 2)]
    assert decay([1.0, 0.5, 0.0]) == pytest.approx(0.75)  # mean(1, .5) - 0
    assert decay_bin_bounds(4) == [(0, 1), (1, 2), (2, 2), (2, 3)]
    assert decay([1.0, 0.8, 0.4, 0.2]) == pytest.approx(0.6)  # mean(1, .8) - mean(.4, .2)
    assert decay_bin_bounds(7) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert decay(np.arange(7)[::-1] / 6) == pytest.approx(5 / 6 - 1 / 12)


def test_decay_above_256_frames():
    # DAVIS's uint8 edges wrap at 256 (299 -> 43) and leave the last bin empty; ours do not.
    assert decay_bin_bounds(300) == [(0, 75), (75, 150), (150, 224), (224, 299)]
    values = 1.0 - np.arange(300) / 299
    assert decay(values) == pytest.approx((261.5 - 37.5) / 299)
    assert sequence_statistics(values).decay == pytest.approx(224 / 299)


def test_sequence_statistics_mean_recall():
    stats = sequence_statistics([0.5, 0.51, 1.0, 0.0])
    assert stats.mean == pytest.approx(0.5025)
    assert stats.recall == 0.5  # strictly above 0.5
    with pytest.raises(ValueError):
        sequence_statistics([])


# ------------------------------------------------------------------------------------------
# EndoVis class-based metrics
# ------------------------------------------------------------------------------------------


def test_class_based_metrics_by_hand():
    zeros = lambda: np.zeros((4, 4), np.int64)  # noqa: E731
    # Image A: class 1 overlaps 2 of 6 px (1/3), class 2 exact (1), class 3 false positive (0).
    gt_a, pred_a = zeros(), zeros()
    gt_a[0, :] = 1
    pred_a[0, 2:] = 1
    pred_a[1, :2] = 1
    gt_a[2, :2] = 2
    pred_a[2, :2] = 2
    pred_a[3, :2] = 3
    # Image B: missed everything (empty prediction, class 1 in the ground truth) -> 0.
    gt_b, pred_b = zeros(), zeros()
    gt_b[1, :] = 1
    # Image C: both empty -> skipped.
    # Image D: ground truth empty, class 2 predicted -> IoU 0, nothing for Challenge IoU.
    gt_d, pred_d = zeros(), zeros()
    pred_d[3, 2:] = 2
    # Image E: class 3 exact.
    gt_e, pred_e = zeros(), zeros()
    gt_e[:, 3] = 3
    pred_e[:, 3] = 3
    pairs = [(pred_a, gt_a), (pred_b, gt_b), (zeros(), zeros()), (pred_d, gt_d), (pred_e, gt_e)]
    result = class_based_metrics_from_maps(pairs)
    assert result.images == 4
    assert result.challenge_iou == pytest.approx((2 / 3 + 0 + 1) / 3)  # A: mean(1/3, 1)
    assert result.iou == pytest.approx((4 / 9 + 0 + 0 + 1) / 4)  # A: mean(1/3, 1, 0)
    assert result.per_class_iou[1] == pytest.approx((1 / 3 + 0) / 2)
    assert result.per_class_iou[2] == pytest.approx((1 + 0) / 2)
    assert result.per_class_iou[3] == pytest.approx((0 + 1) / 2)
    assert all(result.per_class_iou[c] is None for c in (4, 5, 6, 7))
    assert result.mc_iou == pytest.approx((1 / 6 + 1 / 2 + 1 / 2) / 3)
    assert result.per_class_images == {1: 2, 2: 2, 3: 2, 4: 0, 5: 0, 6: 0, 7: 0}
    # The uint8 fast path gives the same.
    as_uint8 = [(p.astype(np.uint8), g.astype(np.uint8)) for p, g in pairs]
    assert class_based_metrics_from_maps(as_uint8) == result


def test_count_uint8_values_matches_bincount():
    values = np.random.default_rng(3).integers(0, 256, (37, 53)).astype(np.uint8)
    np.testing.assert_array_equal(metrics.count_uint8_values(values), np.bincount(values.ravel(), minlength=256))
    np.testing.assert_array_equal(metrics.count_uint8_values(values[:, ::2]), np.bincount(values[:, ::2].ravel(), minlength=256))


def test_class_stats_ignore_unknown_ids_and_check_shapes():
    gt = np.array([[1, 9], [0, 0]])
    pred = np.array([[1, 0], [9, 0]])
    stats = class_image_stats(pred, gt)
    assert stats.in_gt.tolist() == [True] + [False] * 6
    assert stats.intersection[0] == 1 and stats.union[0] == 1
    with pytest.raises(ValueError):
        class_image_stats(pred, gt[:1])


def test_class_based_nothing_to_average():
    empty = np.zeros((3, 3), np.int64)
    result = class_based_metrics_from_maps([(empty, empty)])
    assert (result.challenge_iou, result.iou, result.mc_iou, result.images) == (None, None, None, 0)
