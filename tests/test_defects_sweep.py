"""Defects found by a second sweep of careless or hostile command lines after issue 13's fixes, one
test each (each failed on the code before its fix):

- convert-endovis accepted a --dst that is, lies inside or contains --src (or is the current folder)
  and wrote the converted splits into the raw data.
- demo checked its output folder only when writing results: `demo --out .` replaced ./data (an
  earlier synth dataset) and left ./masks behind before failing; a --checkpoint inside --out was accepted.
- A single output file in the current folder was refused ("output folder . is the current folder"):
  `evaluate --output r.json`, `segment --overlay o.mp4`, `vos-inference --output r.json` (the last
  only after every video had run).
- vos-inference checked --output against its inputs only after every video had run and published.
- evaluate wrote its results (and our marker) inside a prediction video's folder.
- A meta.json listing a video with no objects passed the before-run check; vos-inference ran every
  video and then failed in the evaluation.
- bench --threads 100000 crashed the process (segmentation fault).
- segment --max-frames 0 said "ended after 0 frames, before --prompt-frame 0" without naming the option.
- segment --overlay without a video extension named a hidden staging file in its error.
- segment --object-id with --prompt-mask was silently ignored.
- segment's overlap errors said "the input input <path>".
- A refused run left an empty lock file in a folder that holds nothing of ours (tests/test_outputs.py).
- A vos-inference prompt folder of JPEG masks failed with "no object", without a word about JPEG.
- (review) An interrupted vos-inference left published videos that --overwrite refused to replace.
- (review) `demo --frames 2` ran everything, then failed with a traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from surgsam2.bench.config import BenchConfig
from surgsam2.cli import main
from surgsam2.data.masks import write_mask
from surgsam2.data.synthetic import write_synthetic_dataset

SIZE = (96, 80)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic video x 4 frames (VOS layout)."""
    root = tmp_path_factory.mktemp("sweep") / "data"
    write_synthetic_dataset(root, videos=1, frames=4, size=SIZE, seed=7)
    return root


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def _segment(dataset: Path, out: Path, *extra: str) -> list[str]:
    frames = dataset / "JPEGImages" / "synth_000"
    return ["segment", str(frames), "--image-size", "64", "--out", str(out), "--quiet", *extra]


def _vos(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "vos-inference", "--base_video_dir", str(dataset / "JPEGImages"),
        "--input_mask_dir", str(dataset / "VOS" / "Annotations_vos_instrument"), "--output_mask_dir", str(out),
        "--gt_root", str(dataset / "Annotations"), "--image-size", "64", "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def _raw17(root: Path) -> Path:
    """The smallest raw EndoVis 2017 layout the converter lists (datasets 1 and 2, one frame)."""
    for number in (1, 2):
        folder = root / "instrument_1_4_training" / f"instrument_dataset_{number}"
        image = np.zeros((1080, 1920), np.uint8)
        write_mask(folder / "left_frames" / "frame000.png", image)
        write_mask(folder / "ground_truth" / "Left_Prograsp_Forceps_labels" / "frame000.png", image)
    return root


@pytest.mark.parametrize("where", ["same", "inside", "cwd"])
def test_convert_endovis_into_its_source_is_refused(where: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """convert-endovis accepted a --dst that is, lies inside or contains --src (or the current folder)."""
    src = _raw17(tmp_path / "raw")
    monkeypatch.chdir(tmp_path)
    dst = {"same": src, "inside": src / "out", "cwd": Path(".")}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = _run(["convert-endovis", "--year", "2017", "--src", str(src), "--dst", str(dst),
                         "--workers", "1", "--quiet", "--overwrite"], capsys)  # fmt: skip
    _one_line_error(code, err, str(dst))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_demo_checks_its_output_folder_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    """demo checked its output folder only when writing results: `demo --out .` replaced ./data and
    left ./masks behind; a --checkpoint inside --out was accepted."""
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["demo", "--out", ".", "--frames", "4", "--quiet"], capsys)
    _one_line_error(code, err, "current folder")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "mine"
    out.mkdir()
    (out / "weights.pt").write_text("not a checkpoint")
    code, _, err = _run(["demo", "--out", str(out), "--checkpoint", str(out / "weights.pt"), "--frames", "4", "--quiet"], capsys)
    _one_line_error(code, err, "--checkpoint")
    assert sorted(p.name for p in out.iterdir()) == ["weights.pt"]


def test_results_and_overlay_files_may_go_to_the_current_folder(dataset: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """`evaluate --output r.json` and `segment --overlay o.mp4` were refused: "output folder . is the current folder"."""
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["evaluate", "--gt-dir", str(dataset / "Annotations"), "--pred-dir",
                         str(dataset / "Annotations"), "--output", "r.json"], capsys)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r.csv").is_file()
    code, _, err = _run(_segment(dataset, tmp_path / "masks", "--points", "40,40", "--overlay", "o.mp4"), capsys)
    assert code == 0, err
    assert (tmp_path / "o.mp4").stat().st_size > 0


def test_vos_inference_checks_its_results_path_before_any_video(dataset: Path, tmp_path: Path, capsys) -> None:
    """vos-inference checked --output against its inputs only after every video had run and published."""
    out = tmp_path / "out"
    code, _, err = _run(_vos(dataset, out, "--output", str(dataset / "Annotations" / "r.json")), capsys)
    _one_line_error(code, err, "--gt_root")
    assert not out.exists()
    assert not (dataset / "Annotations" / "r.json").exists()


def test_evaluate_refuses_results_inside_a_prediction_video(dataset: Path, tmp_path: Path, capsys) -> None:
    """evaluate wrote its results (and our marker) inside a prediction video's folder."""
    pred = tmp_path / "pred"
    shutil.copytree(dataset / "Annotations", pred)
    before = sorted(os.listdir(pred / "synth_000"))
    code, _, err = _run(["evaluate", "--gt-dir", str(dataset / "Annotations"), "--pred-dir", str(pred),
                         "--output", str(pred / "synth_000" / "r.json")], capsys)  # fmt: skip
    _one_line_error(code, err, "--pred-dir")
    assert sorted(os.listdir(pred / "synth_000")) == before
    code, _, err = _run(["evaluate", "--gt-dir", str(dataset / "Annotations"), "--pred-dir", str(pred),
                         "--output", str(pred / "r.json")], capsys)  # fmt: skip
    assert code == 0, err  # beside the video folders, as vos-inference writes its results


def test_meta_video_without_objects_is_refused_before_any_video(dataset: Path, tmp_path: Path, capsys) -> None:
    """A meta.json listing a video with no objects passed the before-run check; every video ran, then evaluation failed."""
    meta = tmp_path / "meta.json"
    meta.write_text('{"classes": {"1": "x"}, "videos": {"synth_000": {"objects": {}}}}')
    out = tmp_path / "out"
    code, _, err = _run(_vos(dataset, out, "--meta", str(meta)), capsys)
    _one_line_error(code, err, "synth_000", str(meta))
    assert not out.exists()


def test_bench_threads_beyond_the_cpus_are_refused() -> None:
    """bench --threads 100000 crashed the process (segmentation fault)."""
    with pytest.raises(ValueError, match="threads must be in 1.."):
        BenchConfig(model="nano", image_size=64, frames=1, warmup=1, threads=100_000, progress=False).validate()


def test_segment_max_frames_below_one_names_the_option(dataset: Path, tmp_path: Path, capsys) -> None:
    """segment --max-frames 0 said "ended after 0 frames, before --prompt-frame 0"."""
    code, _, err = _run(_segment(dataset, tmp_path / "out", "--points", "40,40", "--max-frames", "0"), capsys)
    _one_line_error(code, err, "--max-frames")


def test_segment_overlay_without_extension_names_the_users_path(dataset: Path, tmp_path: Path, capsys) -> None:
    """segment --overlay without a video extension named a hidden staging file in its error."""
    overlay = tmp_path / "out" / "overlay"
    code, _, err = _run(_segment(dataset, tmp_path / "out", "--points", "40,40", "--overlay", str(overlay)), capsys)
    _one_line_error(code, err, str(overlay), ".mp4")
    assert ".surgsam2-staging" not in err


def test_segment_object_id_with_prompt_mask_is_refused(dataset: Path, tmp_path: Path, capsys) -> None:
    """segment --object-id with --prompt-mask was silently ignored."""
    prompt = dataset / "Annotations" / "synth_000" / "00000.png"
    code, _, err = _run(_segment(dataset, tmp_path / "out", "--prompt-mask", str(prompt), "--object-id", "5"), capsys)
    _one_line_error(code, err, "--object-id")
    assert not (tmp_path / "out").exists()


def test_segment_overlap_error_names_the_input_once(dataset: Path, capsys) -> None:
    """segment's overlap errors said "the input input <path>"."""
    frames = dataset / "JPEGImages" / "synth_000"
    code, _, err = _run(_segment(dataset, frames, "--points", "40,40"), capsys)
    _one_line_error(code, err, str(frames))
    assert "input input" not in err


def test_a_prompt_folder_of_jpeg_masks_says_why_it_has_no_object(tmp_path, capsys) -> None:
    """A vos-inference prompt folder holding only .jpg masks failed the video with "no object in
    the prompt masks", without a word about the JPEGs."""
    from surgsam2.cli import main
    from surgsam2.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, videos=1, frames=3, size=(96, 80), seed=4)
    prompts = data / "VOS" / "Annotations_vos_instrument" / "synth_000"
    for png in prompts.glob("*.png"):
        png.rename(png.with_suffix(".jpg"))
    code = main(
        ["vos-inference", "--base_video_dir", str(data / "JPEGImages"), "--input_mask_dir", str(prompts.parent),
         "--output_mask_dir", str(tmp_path / "out"), "--image-size", "64", "--device", "cpu", "--quiet"]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1 and "synth_000: FAILED: no object in the prompt masks" in error
    assert "JPEG file(s) such as 00000.jpg are not read: masks must be lossless PNG" in error, error


def test_an_interrupted_vos_inference_leaves_replaceable_videos(tmp_path, monkeypatch, capsys) -> None:
    """Review: a vos-inference run interrupted after some videos were published listed them as
    ours only at the very end, so a rerun with --overwrite refused them as "not written by surgsam2"."""
    from surgsam2.cli import main
    from surgsam2.data.synthetic import write_synthetic_dataset
    from surgsam2.pipelines import vos_inference

    data = tmp_path / "data"
    write_synthetic_dataset(data, videos=2, frames=3, size=(96, 80), seed=6)
    argv = [
        "vos-inference", "--base_video_dir", str(data / "JPEGImages"),
        "--input_mask_dir", str(data / "VOS" / "Annotations_vos_instrument"),
        "--output_mask_dir", str(tmp_path / "out"), "--image-size", "64", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    real = vos_inference.infer_video

    def interrupted_on_the_second(model, name, *args, **kwargs):
        if name == "synth_001":
            raise KeyboardInterrupt
        return real(model, name, *args, **kwargs)

    monkeypatch.setattr(vos_inference, "infer_video", interrupted_on_the_second)
    assert main(argv) == 130
    assert (tmp_path / "out" / "synth_000").is_dir() and not (tmp_path / "out" / "synth_001").exists()
    monkeypatch.undo()
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err


def test_a_demo_too_short_to_score_is_one_line_before_any_work(tmp_path, capsys) -> None:
    """Review: `demo --frames 2` ran the whole inference, then failed with a traceback."""
    from surgsam2.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--frames", "2", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--frames must be at least 3" in error
    assert not (tmp_path / "demo").exists()
