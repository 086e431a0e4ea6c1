"""Hole filling of low-res mask logits: the device version (no host) against OpenCV's.

Tolerance: none. `fill_holes_on_device` must give the same tensor, bit for bit, as `fill_holes`
(OpenCV 8-connected components) on every mask here; each test prints how many pixels differed (0)
and how many were filled, so that a corpus that fills nothing would be seen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surgsam2.tracking.postprocess import HOLE_FILL_SCORE, fill_holes, fill_holes_for_device, fill_holes_on_device

MAX_AREAS = (1, 2, 8, 50)


def _compare(logits: torch.Tensor, max_area: int) -> tuple[int, int]:
    """(pixels that differ, pixels filled) of the device version against OpenCV's on ``logits``."""
    expected = fill_holes(logits, max_area)
    got = fill_holes_on_device(logits, max_area)
    assert got.shape == logits.shape and got.dtype == logits.dtype and got.device == logits.device
    differ = int((got != expected).sum())
    filled = int(((expected == HOLE_FILL_SCORE) & (logits <= 0)).sum())
    return differ, filled


def _check_corpus(name: str, masks: list[torch.Tensor]) -> None:
    """Every mask at every max_area: equal to OpenCV; the corpus fills holes and leaves some."""
    for max_area in MAX_AREAS:
        differ = filled = background = 0
        for logits in masks:
            d, f = _compare(logits, max_area)
            differ, filled, background = differ + d, filled + f, background + int((logits <= 0).sum())
        print(f"[holes] {name} max_area={max_area}: {differ} pixels differ (allowed 0), "
              f"{filled} of {background} background pixels filled")
        assert differ == 0
        assert 0 < filled < background  # the corpus has small holes and larger background regions


def _from_background(background: np.ndarray, seed: int) -> torch.Tensor:
    """(B, 1, h, w) float32 logits, <= 0 exactly on ``background`` (B, h, w), random magnitudes
    (zero included: a logit of 0 is background)."""
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.0, 5.0, background.shape).astype(np.float32)
    magnitude[rng.random(background.shape) < 0.05] = 0.0
    logits = np.where(background, -magnitude, magnitude + 1e-3).astype(np.float32)
    return torch.from_numpy(logits)[:, None]


def test_random_blobs_match_opencv() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = []
    for size in ((16, 16), (33, 47), (64, 64), (7, 90)):
        for threshold in (-0.3, 0.0, 0.3):
            noise = torch.randn(3, 1, *size, generator=generator)
            smooth = F.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)
            masks.append(smooth * 4 - threshold)
    _check_corpus("blobs", masks)


def test_salt_and_pepper_background_matches_opencv() -> None:
    rng = np.random.default_rng(1)
    masks = [_from_background(rng.random((4, 40, 40)) < p, seed) for seed, p in enumerate((0.05, 0.15, 0.3, 0.45))]
    _check_corpus("salt and pepper", masks)


def test_holes_touching_the_border_match_opencv() -> None:
    background = np.zeros((3, 20, 20), dtype=bool)
    background[0, 0, :3] = True  # a 3-pixel hole on the top edge
    background[0, :, 19] = True  # a 20-pixel column on the right edge
    background[1, 0, 0] = background[1, 0, 19] = True  # corners
    background[1, 14:, :] = True  # 120 pixels along the bottom edge
    background[2, 5:8, 0:2] = True  # 6 pixels on the left edge
    background[2, 19, 4:15] = True  # 11 pixels on the bottom edge
    _check_corpus("border", [_from_background(background, 2)])


def _serpentine(height: int, width: int, step: int, diagonal: bool) -> np.ndarray:
    """(h, w) bool: one thin background path winding over the grid, rows ``step`` apart joined at
    alternate ends; with ``diagonal`` (step 2) each joint is one pixel in the outer column,
    touching the two rows by its corners only (8-connected, not 4-connected)."""
    path = np.zeros((height, width), dtype=bool)
    rows = list(range(1, height - 1, step))
    for index, row in enumerate(rows[:-1]):
        path[row, 1 : width - 1] = True
        if diagonal:
            path[row + 1, width - 1 if index % 2 == 0 else 0] = True
        else:
            path[row : rows[index + 1] + 1, width - 2 if index % 2 == 0 else 1] = True
    path[rows[-1], 1 : width - 1] = True
    return path


def test_thin_serpentine_paths_longer_than_max_area_match_opencv() -> None:
    paths = [_serpentine(24, 30, 3, diagonal=False), _serpentine(24, 30, 2, diagonal=True)]
    small = np.zeros((24, 30), dtype=bool)
    small[2, 2] = True  # holes of 1, 2 and 5 pixels and a 60-pixel line
    small[5, 5:7] = True
    small[8:10, 8:10] = small[10, 10] = True
    small[20, 0:30] = small[21, 0:30] = True
    background = np.stack([*paths, small])
    _check_corpus("serpentine", [_from_background(background, 3)])
    got = fill_holes_on_device(_from_background(background, 4), max(MAX_AREAS))
    for row, path in enumerate(paths):  # each path is one component of hundreds of pixels: kept
        assert int(path.sum()) > 4 * max(MAX_AREAS)
        assert bool((got[row, 0][torch.from_numpy(path)] <= 0).all())


@pytest.mark.parametrize("max_area", MAX_AREAS)
def test_lines_of_max_area_pixels_are_filled_and_one_more_is_not(max_area: int) -> None:
    """The longest small holes (straight lines, diameter max_area - 1) need every round."""
    background = np.zeros((4, 5, max_area + 5), dtype=bool)
    background[0, 2, 2 : 2 + max_area] = True
    background[1, 2, 2 : 3 + max_area] = True
    for k in range(max_area):  # diagonal staircases: 8-connected only
        background[2, 2 + k % 2, 2 + k] = True
    for k in range(max_area + 1):
        background[3, 2 + k % 2, 2 + k] = True
    logits = _from_background(background, 5)
    got = fill_holes_on_device(logits, max_area)
    filled = (got[:, 0] == HOLE_FILL_SCORE) & (logits[:, 0] <= 0)
    assert filled.flatten(1).sum(1).tolist() == [max_area, 0, max_area, 0]
    assert torch.equal(got, fill_holes(logits, max_area))


def test_objects_in_a_batch_do_not_share_labels() -> None:
    """The same pixel positions in different rows: a large region in one row does not make a small
    hole at the same place in another row large (labels are per row)."""
    background = np.zeros((3, 10, 10), dtype=bool)
    background[0, 2:4, 2:4] = True  # 4 pixels: a hole at max_area 8
    background[1, 1:9, 1:9] = True  # 64 pixels over the same place: not a hole
    background[2, 2:4, 2:4] = True
    logits = _from_background(background, 6)
    got = fill_holes_on_device(logits, 8)
    assert torch.equal(got, fill_holes(logits, 8))
    assert (got[:, 0] == HOLE_FILL_SCORE).flatten(1).sum(1).tolist() == [4, 0, 4]


def test_low_res_size_with_many_objects_matches_opencv() -> None:
    """256x256 low-res masks (1024 px frames), 6 objects: flat indices up to 65535 stay exact."""
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(6, 1, 256, 256, generator=generator)
    logits = F.avg_pool2d(noise, 3, stride=1, padding=1) * 3 - 0.2
    differ, filled = _compare(logits, 8)
    print(f"[holes] 6x256x256 max_area=8: {differ} pixels differ (allowed 0), {filled} filled")
    assert differ == 0 and filled > 0


def test_bf16_logits_match_opencv() -> None:
    generator = torch.Generator().manual_seed(8)
    logits = (torch.randn(3, 1, 32, 32, generator=generator) + 0.8).bfloat16()
    for max_area in MAX_AREAS:
        assert _compare(logits, max_area)[0] == 0


def test_non_contiguous_logits_match_opencv() -> None:
    """The decoder's chosen mask may be a slice of its multimask output, or another layout."""
    generator = torch.Generator().manual_seed(11)
    multimasks = torch.randn(3, 3, 24, 24, generator=generator)
    for logits in (multimasks[:, 1:2], multimasks[:, :1].transpose(2, 3)):
        assert not logits.is_contiguous()
        assert _compare(logits, 8)[0] == 0


@pytest.mark.parametrize("max_area", (0, -1))
def test_max_area_zero_or_less_is_the_identity(max_area: int) -> None:
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    assert fill_holes_on_device(logits, max_area) is logits


def test_runs_on_the_meta_device_so_it_never_reads_values_on_the_host() -> None:
    """Meta tensors have shapes but no data: `.item()`, `.cpu()`, `.tolist()`, `bool(tensor)`,
    `nonzero`, boolean indexing and `bincount` all raise on them. So the function running here
    proves it has no host sync and no data-dependent shape (the OpenCV version raises)."""
    logits = torch.empty(3, 1, 64, 64, device="meta")
    out = fill_holes_on_device(logits, 8)
    assert out.device.type == "meta" and out.shape == logits.shape
    with pytest.raises(NotImplementedError):
        fill_holes(logits, 8)


def test_masks_too_large_for_exact_float32_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="4096x4096"):
        fill_holes_on_device(torch.empty(1, 1, 4096, 4096, device="meta"), 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu/run.sh)")
def test_cuda_has_no_host_sync_and_matches_opencv() -> None:
    """torch's sync debug mode set to "error" raises on any synchronising call in the function
    the tracker calls on a GPU."""
    generator = torch.Generator().manual_seed(10)
    noise = torch.randn(3, 1, 128, 128, generator=generator)
    logits = (F.avg_pool2d(noise, 3, stride=1, padding=1) * 3).cuda()
    fill_holes_for_device(logits, 8)  # warm-up: first calls may load kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = fill_holes_for_device(logits, 8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got.cpu(), fill_holes(logits.cpu(), 8))
