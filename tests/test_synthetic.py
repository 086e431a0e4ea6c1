"""The synthetic surgical-video generator and `surgsam2 synth`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from surgsam2.cli import main
from surgsam2.data import synthetic
from surgsam2.data.masks import object_ids
from surgsam2.data.synthetic import (
    SyntheticVideoConfig,
    generate_synthetic_video,
    iter_synthetic_video,
    synthetic_object_classes,
    write_synthetic_dataset,
)
from surgsam2.data.vos import VOSDataset, first_appearance, read_meta

SMALL = SyntheticVideoConfig(width=128, height=96, num_frames=16)


def _presence(video: synthetic.SyntheticVideo) -> dict[int, np.ndarray]:
    return {k: (video.id_maps == k).any(axis=(1, 2)) for k in video.object_classes}


def test_same_seed_same_bytes_different_seed_differs():
    config = replace(SMALL, seed=3, class_ids=(1, 4, 6))
    first = generate_synthetic_video(config)
    second = generate_synthetic_video(config)
    assert first.frames.tobytes() == second.frames.tobytes()
    assert first.id_maps.tobytes() == second.id_maps.tobytes()
    streamed = list(iter_synthetic_video(config))
    assert np.array_equal(np.stack([f for f, _ in streamed]), first.frames)
    assert np.array_equal(np.stack([m for _, m in streamed]), first.id_maps)
    other = generate_synthetic_video(replace(config, seed=4))
    assert other.frames.tobytes() != first.frames.tobytes()
    assert other.id_maps.tobytes() != first.id_maps.tobytes()
    assert first.frames.shape == (16, 96, 128, 3) and first.frames.dtype == np.uint8
    assert first.id_maps.shape == (16, 96, 128) and first.id_maps.dtype == np.uint8


def test_scene_does_not_depend_on_clip_length():
    steady = replace(SMALL, seed=2, num_frames=8, late_entry_probability=0.0, reentry_probability=0.0)
    short = generate_synthetic_video(steady)
    longer = generate_synthetic_video(replace(steady, num_frames=20))
    assert np.array_equal(short.frames, longer.frames[:8])
    assert np.array_equal(short.id_maps, longer.id_maps[:8])
    scheduled = replace(steady, late_entry_probability=0.5, reentry_probability=0.5)
    assert synthetic_object_classes(replace(scheduled, num_frames=3)) == short.object_classes


def test_masks_are_exactly_the_drawn_pixels_and_respect_depth():
    config = replace(SMALL, seed=0, num_frames=30, class_ids=(1, 2, 3, 4)).without_nuisances()
    video = generate_synthetic_video(config, keep_background=True, keep_layers=True)
    diff = np.abs(video.frames.astype(np.int16) - video.backgrounds.astype(np.int16)).max(axis=-1)
    # outside every mask the frame is the tissue alone; inside, an instrument was drawn
    assert (diff[video.id_maps == 0] == 0).all()
    for object_id in video.object_classes:
        inside = video.id_maps == object_id
        assert inside.any()
        assert (diff[inside] > 6).mean() > 0.97, object_id
    # occlusion: each pixel belongs to the front-most instrument covering it
    expected = np.zeros_like(video.id_maps)
    for object_id in video.depth_order:  # back to front
        expected[video.layers[:, object_id - 1]] = object_id
    assert np.array_equal(expected, video.id_maps)
    overlap = video.layers.sum(axis=1) > 1
    assert overlap.sum() > 50, "this clip should have instruments crossing"
    front = {i: video.depth_order.index(i) for i in video.object_classes}
    t, y, x = np.nonzero(overlap)
    for ti, yi, xi in zip(t[:200], y[:200], x[:200]):
        covering = [i for i in video.object_classes if video.layers[ti, i - 1, yi, xi]]
        assert video.id_maps[ti, yi, xi] == max(covering, key=front.get)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_requested_object_appears(seed):
    config = replace(SMALL, seed=seed, num_frames=40, class_ids=(2, 5, 7, 3), late_entry_probability=1.0)
    video = generate_synthetic_video(config)
    assert video.object_classes == {1: 2, 2: 5, 3: 7, 4: 3}
    assert synthetic_object_classes(config) == video.object_classes
    appear = first_appearance(video.id_maps)
    assert sorted(appear) == [1, 2, 3, 4]
    assert appear[1] == 0  # the first instrument is always in view from the start
    for object_id, t in appear.items():
        assert (video.id_maps[t] == object_id).sum() >= 100  # a usable prompt, not a sliver


def test_random_instrument_count_in_range():
    for seed in range(4):
        classes = synthetic_object_classes(replace(SMALL, seed=seed, min_instruments=2, max_instruments=3))
        assert 2 <= len(classes) <= 3 and set(classes.values()) <= set(range(1, 8))


def test_reentry_when_configured():
    base = replace(SMALL, num_frames=60, late_entry_probability=0.0, class_ids=(1, 6))

    def gaps(video):
        result = {}
        for object_id, present in _presence(video).items():
            seen = np.flatnonzero(present)
            result[object_id] = int((~present[seen[0] : seen[-1] + 1]).sum())
        return result

    leaving = generate_synthetic_video(replace(base, seed=5, reentry_probability=1.0))
    assert all(gap >= 4 for gap in gaps(leaving).values()), gaps(leaving)
    staying = generate_synthetic_video(replace(base, seed=5, reentry_probability=0.0))
    assert all(present.all() for present in _presence(staying).values())


def test_config_is_validated():
    with pytest.raises(ValueError, match="num_frames"):
        generate_synthetic_video(replace(SMALL, num_frames=0))
    with pytest.raises(ValueError, match="class_ids"):
        generate_synthetic_video(replace(SMALL, class_ids=(9,)))
    with pytest.raises(ValueError, match="smoke"):
        generate_synthetic_video(replace(SMALL, smoke=2.0))


def test_dataset_prompt_folder_holds_first_appearances(tmp_path):
    config = SyntheticVideoConfig(late_entry_probability=1.0, min_instruments=3, max_instruments=4)
    summary = write_synthetic_dataset(
        tmp_path / "ds", videos=2, frames=24, size=(96, 80), seed=7, config=config, image_format="png"
    )
    dataset = VOSDataset(tmp_path / "ds")
    assert dataset.videos == summary.videos == ["synth_000", "synth_001"]
    meta = read_meta(tmp_path / "ds" / "meta.json")
    late_entries = 0
    for video in dataset:
        assert len(video) == 24 and video.size == (80, 96) and video.has_annotations
        appear = video.first_appearance()
        assert sorted(appear) == sorted(meta.objects[video.name]) == video.object_ids()
        assert video.prompt_positions == sorted(set(appear.values()))
        late_entries += sum(t > 0 for t in appear.values())
        for position in video.prompt_positions:
            annotation = video.read_annotation(position)
            newcomers = [i for i, t in appear.items() if t == position]
            expected = np.where(np.isin(annotation, newcomers), annotation, 0)
            assert np.array_equal(video.read_prompt(position), expected)
            assert object_ids(video.read_prompt(position)) == sorted(newcomers)
    assert late_entries > 0
    assert meta.dataset == "synthetic" and meta.classes[1] == "Bipolar Forceps"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = synthetic.VOSWriter.write_frame

    def failing(self, video, index, rgb):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        return original(self, video, index, rgb)

    monkeypatch.setattr(synthetic.VOSWriter, "write_frame", failing)
    with pytest.raises(OSError):
        write_synthetic_dataset(tmp_path / "ds", videos=1, frames=8, size=(64, 48))
    assert list(tmp_path.iterdir()) == []


def test_synth_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "ds"
    result = subprocess.run(
        [sys.executable, "-m", "surgsam2.cli", "synth", "--out", str(out), "--videos", "2", "--frames", "6",
         "--size", "96x64", "--seed", "1", "--jpeg-quality", "80"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and "2 videos" in result.stdout
    dataset = VOSDataset(out)
    assert dataset.videos == ["synth_000", "synth_001"]
    for video in dataset:
        assert len(video) == 6 and video.image_paths[0].suffix == ".jpg" and video.size == (64, 96)
        assert video.object_ids() and video.prompt_positions
    assert sorted(read_meta(out / "meta.json").objects) == ["synth_000", "synth_001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    # a non-empty output folder is refused with one line, unless --overwrite
    args = ["synth", "--out", str(out), "--videos", "1", "--frames", "3", "--size", "64x48"]
    assert main(args) != 0
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "not empty" in error
    assert len(VOSDataset(out)) == 2
    assert main(args + ["--overwrite"]) == 0
    assert VOSDataset(out).videos == ["synth_000"] and len(VOSDataset(out).video("synth_000")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "x"), "--size", "320"])
    assert main(["synth", "--out", str(tmp_path / "y"), "--frames", "0"]) != 0
    assert "1 frame" in capsys.readouterr().err
