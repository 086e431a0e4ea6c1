"""`surgsam2.eval.evaluate` and `surgsam2 evaluate`: protocols, files, errors, class-based metrics."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgsam2.cli import main
from surgsam2.data.masks import read_mask as read_id_mask
from surgsam2.eval.evaluate import OBJECT_FIELDS, evaluate, load_class_meta, write_results
from surgsam2.eval.metrics import class_based_metrics_from_maps, frame_scores

HEIGHT, WIDTH = 24, 32


def write_mask(path: Path, ids: np.ndarray) -> None:
    """A palette PNG whose pixel values are the object ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0, 255, 0, 255] + [0] * 750)
    image.save(path)


def box(ids: np.ndarray, object_id: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    ids = ids.copy()
    ids[top : top + height, left : left + width] = object_id
    return ids


def blank() -> np.ndarray:
    return np.zeros((HEIGHT, WIDTH), np.uint8)


def make_dataset(root: Path) -> tuple[Path, Path]:
    """Two videos crafted so that davis and surgsam2 differ.

    Video ``a`` (5 frames): object 1 everywhere, predicted perfectly in frames 1..3 and wrongly in
    the unscored first and last frames; object 2 appears at frame 2 and is predicted perfectly
    from there, but is hallucinated at frame 1 (before its first appearance: not scored).
    Video ``b`` (4 frames): object 3 everywhere, perfect at frame 1, prediction file of frame 2
    missing (= empty), wrong in the unscored frames 0 and 3; object 5 appears only in the last
    frame, so it is never scored.
    """
    gt, pred = root / "gt", root / "pred"
    for t in range(5):
        frame = box(blank(), 1, 2, 2, 6, 8)
        if t >= 2:
            frame = box(frame, 2, 12, 14, 6, 10)
        write_mask(gt / "a" / f"{t:05d}.png", frame)
        predicted = frame.copy()
        if t in (0, 4):
            predicted = box(blank(), 1, 15, 20, 4, 4)
        if t == 1:
            predicted = box(predicted, 2, 12, 14, 6, 10)
        write_mask(pred / "a" / f"{t:05d}.png", predicted)
    for t in range(4):
        frame = box(blank(), 3, 4, 4, 10, 10)
        if t == 3:
            frame = box(frame, 5, 18, 20, 4, 6)
        write_mask(gt / "b" / f"{t:05d}.png", frame)
        if t == 2:
            continue  # missing prediction frame
        predicted = frame if t == 1 else box(blank(), 3, 16, 16, 4, 4)
        write_mask(pred / "b" / f"{t:05d}.png", predicted)
    return gt, pred


def rows_by_key(result) -> dict[tuple[str, int], dict]:
    return {(row["video"], row["object"]): row for row in result.to_json_dict()["per_object"]}


def test_palette_roundtrip(tmp_path):
    ids = box(blank(), 7, 1, 1, 3, 3)
    write_mask(tmp_path / "m.png", ids)
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_id_mask(tmp_path / "m.png"), ids)


def test_davis_and_surgsam2_protocols_differ(tmp_path):
    gt, pred = make_dataset(tmp_path)

    davis = evaluate(gt, pred, protocol="davis")
    rows = rows_by_key(davis)
    assert set(rows) == {("a", 1), ("b", 3)}  # object 2 is not in a's first frame
    assert rows[("a", 1)]["J"] == 1.0 and rows[("a", 1)]["frames"] == 3  # frames 1..3
    assert rows[("b", 3)]["frames"] == 2  # frames 1..2
    assert rows[("b", 3)]["J"] == pytest.approx(0.5)  # perfect, then missing (= empty)
    assert rows[("b", 3)]["Dice"] == pytest.approx(0.5)
    assert rows[("b", 3)]["F"] == pytest.approx(0.5)
    assert rows[("b", 3)]["J_recall"] == pytest.approx(0.5)
    assert rows[("b", 3)]["J_decay"] == pytest.approx(1.0)  # n=2: first bin 1.0, last bin 0.0
    assert davis.summary.J == pytest.approx(0.75)
    assert davis.summary.JF == pytest.approx((davis.summary.J + davis.summary.F) / 2)

    ours = evaluate(gt, pred, protocol="surgsam2")
    rows = rows_by_key(ours)
    assert set(rows) == {("a", 1), ("a", 2), ("b", 3)}
    assert rows[("a", 2)]["frames"] == 1  # after its first appearance (2, its prompt frame) to the frame before last
    assert rows[("a", 2)]["J"] == 1.0  # the hallucination at frame 1 is before its appearance
    assert rows[("a", 1)]["J"] == 1.0  # the wrong first/last frames are not scored
    assert ours.summary.J == pytest.approx((1 + 1 + 0.5) / 3)
    assert ours.summary.Dice == pytest.approx((1 + 1 + 0.5) / 3)
    assert ours.unscored == [("b", 5)]


def test_json_schema_csv_and_rewrite_not_append(tmp_path):
    gt, pred = make_dataset(tmp_path)
    output = tmp_path / "out" / "results.json"

    json_path, csv_path = write_results(evaluate(gt, pred, protocol="surgsam2"), output)
    assert (json_path, csv_path) == (output, tmp_path / "out" / "results.csv")
    document = json.loads(output.read_text())
    assert set(document) == {"protocol", "per_object", "summary", "missing_predictions"}
    assert document["missing_predictions"] == {"total": 1, "per_video": {"b": 1}}  # b/00002
    assert document["protocol"] == "surgsam2"
    assert set(document["summary"]) == {"J", "F", "JF", "Dice"}
    assert all(0.0 <= value <= 1.0 for value in document["summary"].values())
    assert len(document["per_object"]) == 3
    for row in document["per_object"]:
        assert list(row) == list(OBJECT_FIELDS)
        for key in ("J", "F", "JF", "Dice", "J_recall", "F_recall"):
            assert 0.0 <= row[key] <= 1.0
        assert -1.0 <= row["J_decay"] <= 1.0 and -1.0 <= row["F_decay"] <= 1.0
        assert isinstance(row["frames"], int) and isinstance(row["object"], int)

    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(OBJECT_FIELDS) and len(table) == 3
    assert float(table[0]["J"]) == document["per_object"][0]["J"]

    # A second run replaces both files (one JSON document, fewer rows), leaving no temp files.
    write_results(evaluate(gt, pred, protocol="davis"), output)
    document = json.loads(output.read_text())
    assert document["protocol"] == "davis" and len(document["per_object"]) == 2
    assert output.read_text().count('"protocol"') == 1
    with open(csv_path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert sorted(p.name for p in output.parent.iterdir() if not p.name.startswith(".surgsam2")) == [
        "results.csv", "results.json"
    ]  # fmt: skip


def test_missing_prediction_video_is_an_error_unless_allowed(tmp_path):
    gt, pred = make_dataset(tmp_path)
    for path in (pred / "b").iterdir():
        path.unlink()
    (pred / "b").rmdir()
    with pytest.raises(FileNotFoundError, match=r"\bb\b"):
        evaluate(gt, pred)
    result = evaluate(gt, pred, allow_missing_videos=True)
    assert rows_by_key(result)[("b", 3)]["J"] == 0.0


def test_wrong_size_prediction_is_an_error_naming_the_file(tmp_path):
    gt, pred = make_dataset(tmp_path)
    write_mask(pred / "a" / "00002.png", np.zeros((HEIGHT + 1, WIDTH), np.uint8))
    with pytest.raises(ValueError, match=r"a[/\\]00002\.png.*32x25.*32x24"):
        evaluate(gt, pred)


def test_missing_folders_and_bad_protocol(tmp_path):
    gt, pred = make_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate(gt, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="protocol"):
        evaluate(gt, pred, protocol="mose")


def test_workers_give_the_same_result(tmp_path):
    gt, pred = make_dataset(tmp_path)
    assert evaluate(gt, pred, workers=2).to_json_dict() == evaluate(gt, pred, workers=1).to_json_dict()


META = {
    "videos": {
        "a": {"objects": {"1": {"class_id": 1}, "2": {"class_id": 2}}},
        "b": {"objects": {"3": {"class_id": 3}, "5": {"class_id": 1}}},
    },
    "classes": {
        "1": "Bipolar Forceps", "2": "Prograsp Forceps", "3": "Large Needle Driver",
        "4": "Monopolar Curved Scissors", "5": "Ultrasound Probe", "6": "Suction Instrument",
        "7": "Clip Applier",
    },
}  # fmt: skip


def test_class_based_metrics_through_meta_json(tmp_path):
    gt, pred = make_dataset(tmp_path)
    meta_path = tmp_path / "meta.json"
    meta_path.write_text(json.dumps(META))
    result = evaluate(gt, pred, protocol="surgsam2", meta=meta_path)
    document = result.to_json_dict()
    assert set(document) == {"protocol", "per_object", "summary", "missing_predictions", "class_based"}
    class_based = document["class_based"]

    # By hand over the scored frames: a/1 (class 1 exact; class 2 hallucinated, GT empty),
    # a/2 and a/3 (classes 1 and 2 exact), b/1 (class 3 exact), b/2 (empty prediction).
    # Challenge IoU = mean(1, 1, 1, 1, 0); IoU = mean(mean(1, 0), 1, 1, 1, 0);
    # class 1: [1, 1, 1], class 2: [0, 1, 1], class 3: [1, 0].
    assert class_based["images"] == 5
    assert class_based["challenge_IoU"] == pytest.approx(4 / 5)
    assert class_based["IoU"] == pytest.approx(3.5 / 5)
    per_class = {entry["class_id"]: entry for entry in class_based["per_class"]}
    assert per_class[1]["IoU"] == pytest.approx(1.0) and per_class[1]["name"] == "Bipolar Forceps"
    assert per_class[2]["IoU"] == pytest.approx(2 / 3)
    assert per_class[3]["IoU"] == pytest.approx(1 / 2)
    assert per_class[4]["IoU"] is None and per_class[4]["images"] == 0
    assert class_based["mc_IoU"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)

    # Same numbers from class maps built independently here.
    lookup = {"a": np.array([0, 1, 2, 0, 0, 0]), "b": np.array([0, 0, 0, 3, 0, 1])}
    pairs = []
    for video, frames in (("a", 5), ("b", 4)):
        for t in range(1, frames - 1):
            gt_ids = read_id_mask(gt / video / f"{t:05d}.png")
            pred_file = pred / video / f"{t:05d}.png"
            pred_ids = read_id_mask(pred_file) if pred_file.exists() else np.zeros_like(gt_ids)
            pairs.append((lookup[video][pred_ids], lookup[video][gt_ids]))
    independent = class_based_metrics_from_maps(pairs)
    assert class_based["challenge_IoU"] == pytest.approx(independent.challenge_iou)
    assert class_based["IoU"] == pytest.approx(independent.iou)
    assert class_based["mc_IoU"] == pytest.approx(independent.mc_iou)

    # The dict form gives the same; a ground-truth object without a class is an error.
    assert evaluate(gt, pred, meta=META).to_json_dict() == document
    incomplete = json.loads(json.dumps(META))
    del incomplete["videos"]["b"]["objects"]["3"]
    with pytest.raises(ValueError, match=r"\[3\].*'b'"):
        evaluate(gt, pred, meta=incomplete)


def test_meta_parsing():
    assert load_class_meta({"videos": {}}) is None
    meta = load_class_meta({"videos": {"v": {"objects": {"2": {"class_id": 4}, "3": 1}}}})
    assert meta.object_classes == {"v": {2: 4, 3: 1}} and meta.class_ids == (1, 2, 3, 4, 5, 6, 7)
    with pytest.raises(ValueError, match="class_id"):
        load_class_meta({"videos": {"v": {"objects": {"1": {"class_id": "x"}}}}})
    with pytest.raises(ValueError, match="not among the classes"):
        load_class_meta({"videos": {"v": {"objects": {"1": {"class_id": 9}}}}, "classes": {"1": "a"}})


def test_per_frame_values_agree_with_metrics(tmp_path):
    gt, pred = make_dataset(tmp_path)
    rows = rows_by_key(evaluate(gt, pred, protocol="davis"))
    f1 = frame_scores(read_id_mask(pred / "b" / "00001.png") == 3, read_id_mask(gt / "b" / "00001.png") == 3)
    f2 = frame_scores(np.zeros((HEIGHT, WIDTH), bool), read_id_mask(gt / "b" / "00002.png") == 3)
    assert rows[("b", 3)]["F"] == pytest.approx((f1.F + f2.F) / 2)


def test_cli_end_to_end(tmp_path, capsys):
    gt, pred = make_dataset(tmp_path)
    meta_path = tmp_path / "meta.json"
    meta_path.write_text(json.dumps(META))
    output = tmp_path / "results.json"
    code = main([
        "evaluate", "--gt-dir", str(gt), "--pred-dir", str(pred), "--protocol", "surgsam2",
        "--meta", str(meta_path), "--output", str(output), "--workers", "2",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "protocol: surgsam2" in printed and "Challenge IoU" in printed and "83.33" in printed
    document = json.loads(output.read_text())
    assert document["summary"]["J"] == pytest.approx(2.5 / 3)
    assert (tmp_path / "results.csv").exists()

    (tmp_path / "empty_pred").mkdir()
    code = main(["evaluate", "--gt-dir", str(gt), "--pred-dir", str(tmp_path / "empty_pred"), "--output", str(output)])
    assert code == 2
    assert "no video(s) a, b" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    gt, pred = make_dataset(tmp_path)
    script = Path(sys.executable).with_name("surgsam2")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "surgsam2.cli"]
    completed = subprocess.run(
        [*command, "evaluate", "--gt-dir", str(gt), "--pred-dir", str(pred), "--protocol", "davis",
         "--output", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "protocol: davis" in completed.stdout
    assert json.loads((tmp_path / "r.json").read_text())["protocol"] == "davis"
