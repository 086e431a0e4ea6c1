"""The hard-benchmark options of the synthetic generator (data/synthetic_occluders.py): occluders
(blood, dense smoke, glare) that hide one instrument's head for a stretch of frames, and per-frame
difficulty labels. With the options off every seed's clip is unchanged (tests/test_synthetic.py
holds the hashes); here: the options do what they claim.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video, write_synthetic_dataset
from surgsam2.data.synthetic_occluders import (
    MASK_ALPHA,
    OCCLUDER_RAMP,
    frame_difficulty,
    occluder_alpha,
)
from surgsam2.data.synthetic import _ClipRenderer

BASE = SyntheticVideoConfig(width=96, height=80, num_frames=60, class_ids=(1, 3), reentry_probability=0.0,
                            late_entry_probability=0.0, seed=5)


@pytest.fixture(scope="module")
def clips():
    """The same clip without and with three occluders."""
    plain = generate_synthetic_video(BASE)
    hard = generate_synthetic_video(replace(BASE, occluders=3))
    return plain, hard


def test_occluders_zero_is_the_default_and_changes_nothing(clips):
    """occluders defaults to 0; with it on, frames outside every event are byte-identical."""
    plain, hard = clips
    assert SyntheticVideoConfig().occluders == 0 and plain.occluders == []
    assert len(hard.occluders) == 3
    inside = set()
    for event in hard.occluders:
        assert event.end - event.start <= 40 and 0 <= event.start < event.end <= BASE.num_frames
        assert event.end - event.start >= 15 or event.end == BASE.num_frames
        inside.update(range(event.start, event.end))
    outside = [t for t in range(BASE.num_frames) if t not in inside]
    assert outside, "the test clip needs frames without occluders"
    assert np.array_equal(plain.frames[outside], hard.frames[outside])
    assert np.array_equal(plain.id_maps[outside], hard.id_maps[outside])
    assert not np.array_equal(plain.frames[sorted(inside)], hard.frames[sorted(inside)])


def test_an_occluded_stretch_hides_the_instrument_in_the_masks(clips):
    """Inside an event the mask is the plain one minus exactly the pixels the occluder makes at
    least MASK_ALPHA opaque; at full strength the instrument loses pixels it had, none are added,
    and the image under the opaque core is the occluder's colour."""
    plain, hard = clips
    renderer = _ClipRenderer(replace(BASE, occluders=3))
    lost_total = 0
    for event in hard.occluders:
        instrument = renderer.instruments[event.object_id - 1]
        for t in range(event.start, event.end):
            opaque = np.zeros(plain.id_maps[t].shape, bool)
            for other in hard.occluders:
                alpha = occluder_alpha(other, renderer.instruments[other.object_id - 1], t, renderer._xs, renderer._ys)
                if alpha is not None:
                    opaque |= alpha >= MASK_ALPHA
            expected = np.where(opaque, 0, plain.id_maps[t])
            assert np.array_equal(hard.id_maps[t], expected), t
            if event.start + OCCLUDER_RAMP <= t < event.end - OCCLUDER_RAMP:
                alpha = occluder_alpha(event, instrument, t, renderer._xs, renderer._ys)
                core = alpha >= 0.999
                assert core.any()
                assert not (hard.id_maps[t][core] == event.object_id).any()
                lost_total += int(((plain.id_maps[t] == event.object_id) & core).sum())
    assert lost_total > 0, "the occluders never covered their instrument"


def test_validation_of_occluders():
    """A bad occluder count is a one-line ValueError naming the field."""
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(ValueError, match="occluders"):
            replace(BASE, occluders=bad).validate()


def test_dataset_records_occluders_in_meta(tmp_path):
    """write_synthetic_dataset stores each video's events in meta.json (for the difficulty labels);
    without occluders the key is absent."""
    root = tmp_path / "hard"
    write_synthetic_dataset(root, videos=1, frames=30, size=(64, 48), seed=3,
                            config=SyntheticVideoConfig(occluders=2, class_ids=(2,)))
    meta = json.loads((root / "meta.json").read_text())
    text = json.dumps(meta)
    assert '"occluders"' in text and '"kind"' in text
    plain = tmp_path / "plain"
    write_synthetic_dataset(plain, videos=1, frames=10, size=(64, 48), seed=3)
    assert '"occluders"' not in (plain / "meta.json").read_text()


def test_frame_difficulty_labels_each_kind():
    """Hand-built masks of two objects over 24 frames: every kind where it applies."""
    masks = {1: np.zeros((24, 16, 16), bool), 2: np.zeros((24, 16, 16), bool)}
    masks[1][2:8, 2:5, 2:5] = True  # object 1: appears at 2, away 8-9, back from 10
    masks[1][10:24, 2:5, 2:5] = True
    masks[2][:, 12:15, 12:15] = True  # object 2: far from 1 ...
    masks[2][20:24, 5:8, 5:8] = True  # ... except frames 20-23, touching object 1
    occluders = [{"object_id": 1, "kind": "blood", "start": 4, "end": 6, "radius": 3.0}]
    labels = frame_difficulty(masks, occluders)
    one = labels[1]
    assert one[:2] == ["before_prompt"] * 2
    assert one[2:4] == ["normal"] * 2
    assert one[4:6] == ["occluded"] * 2
    assert one[6:8] == ["normal"] * 2
    assert one[8:10] == ["absent"] * 2
    assert one[10:20] == ["reentry"] * 10  # the first 10 frames back
    assert one[20:24] == ["crossing"] * 4
    assert labels[2][:20] == ["normal"] * 20 and labels[2][20:] == ["crossing"] * 4


def test_synth_preset_hard_is_the_benchmark_config_and_options_override_it(tmp_path):
    """`synth --preset hard` is the memory benchmark's hard set; each option overrides one field;
    without options the default preset is the generator's default (so default output is unchanged)."""
    import argparse

    from surgsam2.commands import synth
    from surgsam2.data.synthetic import SYNTHETIC_PRESETS

    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    out = ["--out", str(tmp_path / "ds")]
    assert synth.synth_config(parser.parse_args(out)) == SyntheticVideoConfig()
    hard = synth.synth_config(parser.parse_args(out + ["--preset", "hard"]))
    assert hard == SYNTHETIC_PRESETS["hard"] and hard.occluders == 4 and hard.reentry_probability == 0.9
    custom = synth.synth_config(parser.parse_args(out + [
        "--preset", "hard", "--occluders", "2", "--camera-motion", "0.5", "--smoke", "0.25",
        "--late-entry", "0.1", "--reentry", "0.2", "--instruments", "1-2"]))  # fmt: skip
    assert custom == replace(SYNTHETIC_PRESETS["hard"], occluders=2, camera_motion=0.5, smoke=0.25,
                             late_entry_probability=0.1, reentry_probability=0.2,
                             min_instruments=1, max_instruments=2)  # fmt: skip
    with pytest.raises(ValueError, match="smoke must be in"):
        synth.synth_config(parser.parse_args(out + ["--smoke", "2"]))
    with pytest.raises(SystemExit):
        parser.parse_args(out + ["--instruments", "a-b"])


def test_synth_command_writes_the_hard_preset(tmp_path):
    """The CLI with --preset hard writes occluder events into meta.json (as the benchmark's set)."""
    from surgsam2.cli import main

    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--videos", "1", "--frames", "40", "--size", "96x80",
                 "--seed", "7", "--preset", "hard"]) == 0  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    (entry,) = meta["videos"].values()
    assert len(entry["occluders"]) == 4 and 2 <= len(entry["objects"]) <= 3
    assert main(["synth", "--out", str(tmp_path / "bad"), "--occluders", "65"]) == 2
