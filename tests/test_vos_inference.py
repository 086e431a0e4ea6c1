"""`surgsam2 vos-inference`: prompts derived from masks, outputs, evaluation, bad videos, sharding.

The model is `nano` at 64 px with random weights (no checkpoint), so scores are near zero: the
tests check structure, value ranges and determinism, not quality.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from surgsam2.cli import build_parser, main
from surgsam2.data.masks import read_mask, write_mask
from surgsam2.data.synthetic import write_synthetic_dataset
from surgsam2.data.mask_geometry import interior_point, mask_box
from surgsam2.memory.policy_table import DEFAULT_POLICY
from surgsam2.pipelines.prompts import prompt_from_mask, prompt_seed
from surgsam2.pipelines.vos_inference import combine_object_logits
from surgsam2.runtime.devices import resolve_device
from surgsam2.runtime.distributed import ProcessGroup, shard

VIDEOS = ["synth_000", "synth_001", "synth_002"]
FRAMES = 6
LATE_OBJECT = ("synth_001", 2, 2)  # video, object id, frame it first appears on (made so below)
OBJECT_FIELDS = {"video", "object", "J", "F", "JF", "Dice", "J_recall", "J_decay", "F_recall", "F_decay", "frames"}


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def _make_late_entry(root: Path, video: str, object_id: int, first: int) -> None:
    """Edit a synthetic video so that ``object_id`` enters on frame ``first`` (GT and prompts)."""
    for index in range(first):
        path = root / "Annotations" / video / f"{index:05d}.png"
        id_map = read_mask(path)
        write_mask(path, np.where(id_map == object_id, 0, id_map).astype(np.uint8))
    prompt_dir = root / "VOS" / "Annotations_vos_instrument" / video
    prompt0 = read_mask(prompt_dir / "00000.png")
    write_mask(prompt_dir / "00000.png", np.where(prompt0 == object_id, 0, prompt0).astype(np.uint8))
    gt = read_mask(root / "Annotations" / video / f"{first:05d}.png")
    write_mask(prompt_dir / f"{first:05d}.png", np.where(gt == object_id, object_id, 0).astype(np.uint8))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 synthetic videos x 6 frames at 96x80; object 2 of synth_001 enters on frame 2."""
    root = tmp_path_factory.mktemp("vos") / "data"
    write_synthetic_dataset(root, videos=len(VIDEOS), frames=FRAMES, size=(96, 80), seed=0)
    _make_late_entry(root, *LATE_OBJECT)
    return root


def _args(data: Path, out: Path, *extra: str, gt: bool = True) -> list[str]:
    """vos-inference arguments on a synthetic dataset (nano, 64 px, random weights)."""
    args = [
        "vos-inference",
        "--base_video_dir", str(data / "JPEGImages"),
        "--input_mask_dir", str(data / "VOS" / "Annotations_vos_instrument"),
        "--output_mask_dir", str(out),
        "--model", "nano", "--image-size", "64", "--quiet",
    ]  # fmt: skip
    if gt:
        args += ["--gt_root", str(data / "Annotations"), "--meta", str(data / "meta.json")]
    return args + list(extra)


def _run_in_process(argv: list[str]) -> int:
    """Run the CLI here with one torch thread (as each torchrun worker), restoring the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One single-process run with evaluation; its output folder."""
    out = tmp_path_factory.mktemp("single") / "out"
    assert _run_in_process(_args(dataset, out)) == 0
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes) but our hidden lock and marker files."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.relative_to(folder).parts[0].startswith(".surgsam2")
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# --------------------------------------------------------------------------------------------
# Prompts from masks
# --------------------------------------------------------------------------------------------


def _brute_force_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the nearest non-mask pixel, outside the frame included."""
    padded = np.pad(mask, 1)
    bg = np.argwhere(~padded)
    distance = np.zeros(mask.shape)
    for y, x in np.argwhere(mask):
        distance[y, x] = np.sqrt(((bg - (y + 1, x + 1)) ** 2).sum(axis=1)).min()
    return distance


def test_mask_prompt_is_the_mask() -> None:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:9, 3:17] = 1
    prompt = prompt_from_mask(mask, "mask")
    assert prompt.points is None and prompt.box is None
    assert prompt.mask.dtype == np.bool_ and np.array_equal(prompt.mask, mask.astype(bool))


def test_one_point_is_the_interior_point_farthest_from_the_boundary() -> None:
    rectangle = np.zeros((40, 40), dtype=bool)
    rectangle[10:21, 5:26] = True  # 11 x 21: a plateau of ties along the middle row, centre (15, 15)
    assert interior_point(rectangle) == (15, 15)

    shape = np.zeros((48, 64), dtype=bool)  # an L with a thick foot, touching the frame's bottom edge
    shape[5:40, 8:16] = True
    shape[28:48, 8:50] = True
    prompt = prompt_from_mask(shape, "1-point")
    assert prompt.labels == [1] and len(prompt.points) == 1
    x, y = prompt.points[0]
    distance = _brute_force_distance(shape)
    assert shape[y, x]
    assert distance[y, x] == pytest.approx(distance.max())
    assert prompt_from_mask(shape, "1-point", seed=7).points == prompt.points  # no randomness


def test_five_points_are_inside_distinct_and_repeatable() -> None:
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:30, 12:40] = True
    mask[30:45, 30:38] = True
    seed = prompt_seed("seq_2", 3)
    prompt = prompt_from_mask(mask, "5-point", seed)
    points = prompt.points
    assert len(points) == 5 and prompt.labels == [1] * 5
    assert points[0] == interior_point(mask)
    assert len(set(points)) == 5
    assert all(mask[y, x] for x, y in points)
    assert prompt_from_mask(mask, "5-point", seed).points == points
    assert prompt_from_mask(mask, "5-point", prompt_seed("seq_2", 4)).points != points

    tiny = np.zeros((8, 8), dtype=bool)
    tiny[3, 3:6] = True  # only 3 pixels: all of them, once
    assert sorted(prompt_from_mask(tiny, "5-point", seed).points) == [(3, 3), (4, 3), (5, 3)]


def test_prompt_seed_is_stable() -> None:
    # sha256-based: the same on every machine and Python run (unlike hash()).
    assert prompt_seed("synth_000", 1) == prompt_seed("synth_000", 1)
    assert prompt_seed("synth_000", 1) == 3427243448288479394
    assert len({prompt_seed(v, o, s) for v in ("a", "b") for o in (1, 2) for s in (0, 1)}) == 8


def test_box_is_tight() -> None:
    mask = np.zeros((30, 40), dtype=bool)
    mask[7:19, 11:26] = True
    mask[19, 30] = True
    assert mask_box(mask) == (11, 7, 30, 19)  # inclusive pixel indices, as SAM 2's mask_to_box
    assert prompt_from_mask(mask, "box").box == (11, 7, 30, 19)
    single = np.zeros((10, 10), dtype=bool)
    single[4, 6] = True
    assert mask_box(single) == (6, 4, 7, 5)  # widened: a box needs x0 < x1, y0 < y1


def test_prompt_from_mask_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty mask"):
        prompt_from_mask(np.zeros((5, 5), dtype=bool), "1-point")
    with pytest.raises(ValueError, match="unknown prompt type"):
        prompt_from_mask(np.ones((5, 5), dtype=bool), "scribble")
    with pytest.raises(ValueError, match="2-D"):
        prompt_from_mask(np.ones((5, 5, 3), dtype=bool), "mask")


def test_combine_object_logits_highest_logit_wins() -> None:
    one = np.array([[2.0, 1.0, -1.0, 0.5]], dtype=np.float32)
    two = np.array([[1.0, 3.0, -2.0, 0.5]], dtype=np.float32)
    assert combine_object_logits({2: two, 1: one}, (1, 4)).tolist() == [[1, 2, 0, 1]]  # tie: lower id
    assert combine_object_logits({1: one, 2: two}, (1, 4), threshold=1.5).tolist() == [[1, 2, 0, 0]]
    assert combine_object_logits({}, (2, 3)).tolist() == [[0, 0, 0]] * 2


# --------------------------------------------------------------------------------------------
# Sharding helpers and the command line
# --------------------------------------------------------------------------------------------


def test_shard_and_process_group_from_env() -> None:
    videos = [f"v{i}" for i in range(7)]
    shards = [shard(videos, rank, 3) for rank in range(3)]
    assert shards[1] == ["v1", "v4"]
    assert sorted(v for s in shards for v in s) == videos
    assert ProcessGroup.from_env({}) == ProcessGroup(0, 1, 0)
    assert ProcessGroup.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).is_distributed
    with pytest.raises(ValueError, match="RANK"):
        ProcessGroup.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_resolve_device_gives_cuda_an_index(monkeypatch) -> None:
    """torch.cuda.set_device refuses a plain "cuda" (seen on an H200, torch 2.11): every cuda
    device resolved here carries its index (one process: the current GPU; under torchrun: the
    rank's). Checked with a stand-in for torch.cuda, since CI has no GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device(None) == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)  # local rank 3 on 2 GPUs
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'cuda:5': this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:5")


def test_dashed_and_underscored_flags_are_the_same() -> None:
    parser = build_parser()
    underscored = parser.parse_args(
        ["vos-inference", "--base_video_dir", "a", "--input_mask_dir", "b", "--output_mask_dir", "c",
         "--gt_root", "d", "--video_list_file", "e", "--score_thresh", "0.5", "--prompt_type", "box"]
    )  # fmt: skip
    dashed = parser.parse_args(
        ["vos-inference", "--base-video-dir", "a", "--input-mask-dir", "b", "--output-mask-dir", "c",
         "--gt-root", "d", "--video-list-file", "e", "--score-thresh", "0.5", "--prompt-type", "box"]
    )  # fmt: skip
    assert vars(underscored) == vars(dashed)
    assert dashed.memory == DEFAULT_POLICY and dashed.num_frame_to_prune == 2 and dashed.dtype == "fp32"


def test_cuda_graphs_on_a_cpu_device_is_one_clear_line(dataset: Path, tmp_path: Path, capsys) -> None:
    code = main(
        ["vos-inference", "--base_video_dir", str(dataset / "JPEGImages"), "--input_mask_dir",
         str(dataset / "VOS" / "Annotations_vos_instrument"), "--output_mask_dir", str(tmp_path / "out"),
         "--device", "cpu", "--cuda-graphs", "--quiet"]
    )  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and "--cuda-graphs needs a CUDA device (--device cuda), got device 'cpu'" in error, error
    assert "\n" not in error and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Round trip: synth -> vos-inference -> evaluate
# --------------------------------------------------------------------------------------------


def test_round_trip_writes_complete_folders_and_results(dataset: Path, single_run: Path) -> None:
    out = single_run
    late_video, late_object, late_frame = LATE_OBJECT
    assert not [p for p in out.iterdir() if p.name.startswith(".surgsam2-staging")]  # no staging left
    for video in VIDEOS:
        frame_names = sorted(p.stem for p in (dataset / "JPEGImages" / video).iterdir())
        prompt_dir = dataset / "VOS" / "Annotations_vos_instrument" / video
        objects = sorted({i for p in prompt_dir.iterdir() for i in np.unique(read_mask(p)) if i})
        assert sorted(p.name for p in (out / video).iterdir()) == [f"{i:03d}" for i in objects] + ["all"]
        for folder in (out / video).iterdir():
            assert sorted(p.stem for p in folder.iterdir()) == frame_names
        first_seen = {}
        for prompt in sorted(prompt_dir.iterdir()):
            for i in np.unique(read_mask(prompt)):
                first_seen.setdefault(int(i), (int(prompt.stem), read_mask(prompt) == i))
        for name in frame_names:
            combined = read_mask(out / video / "all" / f"{name}.png")
            assert set(np.unique(combined)) <= {0, *objects}
            for i in objects:
                alone = read_mask(out / video / f"{i:03d}" / f"{name}.png")
                assert set(np.unique(alone)) <= {0, i}
                assert not np.any((combined == i) & (alone == 0))  # all/ only keeps an object's own pixels
                start, prompt_mask = first_seen[i]
                if int(name) < start:
                    assert not alone.any()  # nothing before the first appearance
                elif int(name) == start:
                    assert _iou(alone > 0, prompt_mask) > 0.8  # a mask prompt is reproduced
    assert not read_mask(out / late_video / f"{late_object:03d}" / f"{late_frame - 1:05d}.png").any()

    results = json.loads((out / "results.json").read_text())
    assert (out / "results.csv").is_file()
    assert results["protocol"] == "surgsam2"
    assert set(results["summary"]) == {"J", "F", "JF", "Dice"}
    rows = results["per_object"]
    assert {(r["video"], r["object"]) for r in rows} == {
        ("synth_000", 1), ("synth_001", 1), ("synth_001", 2), ("synth_002", 1)
    }  # fmt: skip
    for row in rows:
        assert set(row) == OBJECT_FIELDS
        for key in ("J", "F", "JF", "Dice", "J_recall", "F_recall"):
            assert 0.0 <= row[key] <= 1.0
        assert -1.0 <= row["J_decay"] <= 1.0 and -1.0 <= row["F_decay"] <= 1.0
    # Frames 1..4 are scored (first and last skipped); the late object after its prompt frame.
    frames = {(r["video"], r["object"]): r["frames"] for r in rows}
    assert frames[("synth_000", 1)] == FRAMES - 2
    assert frames[LATE_OBJECT[:2]] == FRAMES - 2 - late_frame
    for key in ("J", "F", "Dice"):
        assert results["summary"][key] == pytest.approx(np.mean([r[key] for r in rows]))
    assert "challenge_IoU" in results["class_based"]


def test_point_and_box_prompts_run_and_are_repeatable(dataset: Path, tmp_path: Path) -> None:
    video_list = tmp_path / "videos.txt"
    video_list.write_text("# the late-entry video only\nsynth_001\n\n")
    for prompt_type in ("1-point", "5-point", "box"):
        first, second = tmp_path / f"{prompt_type}-a", tmp_path / f"{prompt_type}-b"
        for out in (first, second):
            argv = _args(dataset, out, "--prompt-type", prompt_type, "--video_list_file", str(video_list), gt=False)
            assert _run_in_process(argv) == 0
        assert sorted(p.name for p in first.iterdir() if not p.name.startswith(".")) == ["synth_001"]
        assert _tree(first) == _tree(second)


# --------------------------------------------------------------------------------------------
# Bad videos
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("streams", ["1", "3"])
def test_bad_videos_are_reported_and_skipped(
    dataset: Path, single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], streams: str
) -> None:
    """An undecodable frame, a prompt mask of the wrong size and a missing prompt folder each fail
    their video only; with 3 streams the failed videos' streams are dropped and the others go on."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    frame = data / "JPEGImages" / "synth_000" / "00003.jpg"
    frame.write_bytes(frame.read_bytes()[:40])  # truncated JPEG
    write_mask(data / "VOS" / "Annotations_vos_instrument" / "synth_001" / "00000.png", np.ones((40, 48), np.uint8))
    for sub in ("JPEGImages", "Annotations"):  # synth_003: no prompt folder at all
        shutil.copytree(data / sub / "synth_002", data / sub / "synth_003")
    meta = json.loads((data / "meta.json").read_text())
    meta["videos"]["synth_003"] = meta["videos"]["synth_002"]
    (data / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    shutil.copytree(single_run, out)  # an earlier run's outputs: those of failed videos must not survive

    code = _run_in_process(_args(data, out, "--overwrite", "--streams", streams))
    captured = capsys.readouterr()
    assert code == 1
    assert re.search(r"synth_000: FAILED: .*00003\.jpg", captured.err)
    assert re.search(r"synth_001: FAILED: .*00000\.png is 48x40 but frame .* is 96x80", captured.err)
    assert re.search(r"synth_003: FAILED: no prompt mask folder", captured.err)
    assert "3 video(s) failed" in captured.err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["synth_002"]
    assert not [p for p in out.iterdir() if p.name.startswith(".surgsam2-staging")]
    results = json.loads((out / "results.json").read_text())
    assert {row["video"] for row in results["per_object"]} == {"synth_002"}
    assert "1/4 videos written" in captured.out
    assert _tree(out / "synth_002") == _tree(single_run / "synth_002")


@pytest.mark.parametrize("streams", ["1", "3"])
def test_a_frame_of_another_size_fails_its_video_only(
    dataset: Path, single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], streams: str
) -> None:
    """A frame whose size differs from its video's is refused by the tracker (with 3 streams,
    before any stream advanced): that video fails, the other streams' videos are as alone."""
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    frame = data / "JPEGImages" / "synth_001" / "00003.jpg"
    Image.open(frame).resize((48, 40)).save(frame)
    out = tmp_path / "out"
    assert _run_in_process(_args(data, out, "--streams", streams, gt=False)) == 1
    error = capsys.readouterr().err
    assert re.search(r"synth_001: FAILED: frame 3: size 48x40 differs from the stream's 96x80", error), error
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["synth_000", "synth_002"]
    for video in ("synth_000", "synth_002"):
        assert _tree(out / video) == _tree(single_run / video)


@pytest.mark.parametrize("streams", ["2", "4"])
def test_streams_write_what_one_stream_writes(dataset: Path, single_run: Path, tmp_path: Path, streams: str) -> None:
    """--streams N (2: a stream takes the third video when its first ends; 4: more streams than
    videos) writes byte-identical masks and results to one video at a time (one torch thread)."""
    out = tmp_path / "out"
    assert _run_in_process(_args(dataset, out, "--streams", streams)) == 0
    assert _tree(out) == _tree(single_run)
    assert not [p for p in out.iterdir() if p.name.startswith(".surgsam2-staging")]


def test_streams_interrupted_keep_published_videos_and_remove_open_ones(
    dataset: Path, single_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a multi-stream step (2 streams: synth_000 and synth_001 published after 6 steps,
    synth_002 on its third frame): exit 130, the published videos stay, the open one is removed."""
    from surgsam2.tracking.streams import MultiStreamTracker

    real_step = MultiStreamTracker.step
    calls = []

    def interrupted_on_the_ninth(self, frames, prompts=None):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real_step(self, frames, prompts)

    monkeypatch.setattr(MultiStreamTracker, "step", interrupted_on_the_ninth)
    out = tmp_path / "out"
    assert _run_in_process(_args(dataset, out, "--streams", "2", gt=False)) == 130
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".surgsam2")) == VIDEOS[:2]
    assert not [p for p in out.iterdir() if p.name.startswith(".surgsam2-staging")]
    for video in VIDEOS[:2]:
        assert _tree(out / video) == _tree(single_run / video)


def test_streams_must_be_positive(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_in_process(_args(dataset, tmp_path / "out", "--streams", "0")) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "streams must be at least 1, got 0" in error


def test_a_folder_not_written_by_us_is_never_replaced(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    mine = out / "synth_000" / "notes.txt"  # the user's own folder, named like a video
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    for extra in ((), ("--overwrite",)):
        assert _run_in_process(_args(dataset, out, *extra)) == 2
        assert "not written by surgsam2" in capsys.readouterr().err
    assert mine.read_text() == "keep me" and sorted(p.name for p in out.iterdir() if p.is_dir()) == ["synth_000"]


def test_no_object_in_prompts_fails_the_video(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    write_mask(data / "VOS" / "Annotations_vos_instrument" / "synth_002" / "00000.png", np.zeros((80, 96), np.uint8))
    assert _run_in_process(_args(data, tmp_path / "out", gt=False)) == 1
    assert re.search(r"synth_002: FAILED: no object in the prompt masks", capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# Sharding over processes
# --------------------------------------------------------------------------------------------


def test_two_process_run_writes_each_video_once_and_matches_single_process(
    dataset: Path, single_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "surgsam2.cli", *_args(dataset, out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr

    written = re.findall(r"^\[rank (\d)/2\] (synth_\d+): \d+ frames", done.stdout, flags=re.MULTILINE)
    assert sorted(video for _, video in written) == VIDEOS  # every video exactly once
    assert {video: int(rank) for rank, video in written} == {v: i % 2 for i, v in enumerate(VIDEOS)}
    assert done.stdout.count("protocol: surgsam2") == 1  # rank 0 evaluates once

    sharded = json.loads((out / "results.json").read_text())
    assert sharded == json.loads((single_run / "results.json").read_text())
    for video in VIDEOS:
        assert _tree(out / video) == _tree(single_run / video)


def test_two_process_run_with_a_bad_video_fails_and_evaluates_the_rest(dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    frame = data / "JPEGImages" / "synth_001" / "00002.jpg"  # synth_001 goes to rank 1
    frame.write_bytes(frame.read_bytes()[:40])
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "surgsam2.cli", *_args(data, out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode != 0
    assert re.search(r"\[rank 1/2\] synth_001: FAILED: .*00002\.jpg", done.stderr)
    assert "1 video(s) failed: synth_001" in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert {row["video"] for row in results["per_object"]} == {"synth_000", "synth_002"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["synth_000", "synth_002"]


# --------------------------------------------------------------------------------------------
# Which folders the evaluation reads
# --------------------------------------------------------------------------------------------


def test_evaluation_scores_objects_alone_and_classes_on_all(tmp_path: Path) -> None:
    """Per-object folders may overlap (each object tracked alone): J comes from them, not all/."""
    gt, out = tmp_path / "gt" / "v", tmp_path / "out" / "v"
    gt_map = np.zeros((10, 20), np.uint8)
    gt_map[:, :10], gt_map[:, 10:] = 1, 2
    one = np.where(gt_map == 1, 1, 0).astype(np.uint8)  # perfect
    two = np.zeros_like(gt_map)
    two[:, 5:] = 2  # spills over object 1; in all/ object 2 wins there
    combined = np.where(two > 0, 2, one).astype(np.uint8)
    for index in range(4):
        write_mask(gt / f"{index:05d}.png", gt_map)
        write_mask(out / "001" / f"{index:05d}.png", one)
        write_mask(out / "002" / f"{index:05d}.png", two)
        write_mask(out / "all" / f"{index:05d}.png", combined)
    meta = {"classes": {"1": "a", "2": "b"}, "videos": {"v": {"objects": {"1": {"class_id": 1}, "2": {"class_id": 2}}}}}

    from surgsam2.eval.vos_output import evaluate_vos_output

    result = evaluate_vos_output(tmp_path / "gt", tmp_path / "out", ["v"], meta=meta)
    j_values = {row.object_id: row.J for row in result.per_object}
    assert j_values == {1: pytest.approx(1.0), 2: pytest.approx(10 / 15)}
    assert result.class_based is not None
    assert result.class_based.per_class_iou[1] == pytest.approx(0.5)  # from all/: object 1 lost half
