"""The engines that run an ONNX export (issue 15): OpenVINO beside ONNX Runtime, one host loop.

- `OnnxTracker(engine="openvino", precision="fp32")` against our torch `Tracker`: mask IoU >= 0.999
  per object and frame (nano, 128 px, 8 frames, mask, points, a box added mid-clip, a click);
- bf16 on OpenVINO: the precision the runtime compiled is reported (bf16 where the CPU has bf16
  instructions), its masks near the fp32 ones;
- errors, one line each: an unknown engine or precision, a graph file not stored in fp32, the
  CLI's engine options;
- `surgsam2 bench --engine`: option parsing, errors, and a tiny run reporting every engine.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from surgsam2.app.options import ENGINES, add_engine_options, add_runtime_options, check_engine_options
from surgsam2.export.engines import ENGINE_PRECISIONS, RUNTIME_ENGINES, check_engine_precision
from surgsam2.export.onnx_export import ExportOptions, export_onnx
from surgsam2.export.runtime import OnnxTracker
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model, build_model
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.tracker import Tracker

SIZE = 128
IOU_BAR = 0.999  # fp32 engines against our fp32 torch tracker, per object and frame
BF16_IOU_BAR = 0.8  # bf16 against fp32 on random weights: near, not equal (the bench measures it)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.fixture(scope="module")
def nano_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[SAM2Model, Path]:
    """Random nano at 128 px, object-score head biased to 'visible' (as the parity tests), exported."""
    torch.manual_seed(0)
    model = build_model(get_config("nano", SIZE)).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    folder = tmp_path_factory.mktemp("nano_onnx")
    export_onnx(model, folder, ExportOptions())
    return model, folder


def _clip(frames: int) -> list[np.ndarray]:
    from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video

    return list(generate_synthetic_video(SyntheticVideoConfig(width=SIZE, height=SIZE, num_frames=frames, seed=5)).frames)


def _script() -> dict[int, dict[int, Prompt]]:
    """Object 1 a mask and object 2 points on frame 0, object 3 a box on frame 3, a click on 2 on frame 5."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[32:64, 32:64] = True
    return {
        0: {1: Prompt(mask=mask), 2: Prompt(points=[(90, 77), (25, 100)], labels=[1, 0])},
        3: {3: Prompt(box=(64, 12, 115, 51))},
        5: {2: Prompt(points=[(77, 90)], labels=[1])},
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _worst_iou(reference: object, tracker: object, frames: list[np.ndarray]) -> tuple[float, int]:
    """Worst per-object, per-frame mask IoU of ``tracker`` against ``reference``, and the pairs seen."""
    script, worst, pairs = _script(), 1.0, 0
    for index, frame in enumerate(frames):
        expected = reference.step(frame, script.get(index))  # type: ignore[attr-defined]
        got = tracker.step(frame, script.get(index))  # type: ignore[attr-defined]
        assert got.object_ids == expected.object_ids, f"frame {index}"
        for obj_id in expected.object_ids:
            worst, pairs = min(worst, _iou(got.masks[obj_id], expected.masks[obj_id])), pairs + 1
    return worst, pairs


def test_openvino_fp32_tracks_as_the_torch_tracker(nano_export: tuple[SAM2Model, Path]) -> None:
    model, folder = nano_export
    tracker = OnnxTracker(folder, engine="openvino", precision="fp32", threads=1)
    assert tracker.precision == "fp32" and tracker.describe().startswith("openvino (openvino ")
    assert tracker.manifest["engine_precisions"] == {"onnx": ["fp32"], "openvino": ["fp32", "bf16"]}
    worst, pairs = _worst_iou(Tracker(model, memory=tracker.policy), tracker, _clip(8))  # the export's policy
    print(f"openvino fp32 vs torch fp32: worst mask IoU {worst:.6f} over {pairs} object-frames (bar {IOU_BAR})")
    assert pairs == 21 and worst >= IOU_BAR


def test_openvino_bf16_reports_what_it_compiled(nano_export: tuple[SAM2Model, Path]) -> None:
    model, folder = nano_export
    tracker = OnnxTracker(folder, engine="openvino", precision="bf16", threads=1)
    # OpenVINO falls back to fp32 on a CPU without bf16 instructions: the tracker says which ran.
    assert tracker.precision == ("bf16" if _cpu_has_bf16() else "fp32")
    assert f"{tracker.precision} from fp32 graph files" in tracker.describe()
    worst, _ = _worst_iou(Tracker(model, memory=tracker.policy), tracker, _clip(4))
    print(f"openvino {tracker.precision} vs torch fp32: worst mask IoU {worst:.4f} over 4 frames (bar {BF16_IOU_BAR})")
    assert worst >= BF16_IOU_BAR


def test_unknown_engine_or_precision_is_one_line(nano_export: tuple[SAM2Model, Path]) -> None:
    _, folder = nano_export
    assert check_engine_precision("openvino", None) == "fp32" and check_engine_precision("onnx", None) == "fp32"
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'; the export runs on onnx, openvino"):
        OnnxTracker(folder, engine="tensorrt")
    with pytest.raises(ValueError, match="engine onnx runs fp32, not 'bf16'"):
        OnnxTracker(folder, engine="onnx", precision="bf16")
    with pytest.raises(ValueError, match="providers are ONNX Runtime's"):
        OnnxTracker(folder, engine="openvino", providers=["CPUExecutionProvider"])


def test_graph_file_not_in_fp32_is_refused(nano_export: tuple[SAM2Model, Path], tmp_path: Path) -> None:
    _, folder = nano_export
    copy = Path(shutil.copytree(folder, tmp_path / "export"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["memory_attention"]["precision"] = "fp16"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for engine in RUNTIME_ENGINES:
        with pytest.raises(ValueError, match=r"memory_attention.onnx: stored in 'fp16', this runtime reads fp32") as raised:
            OnnxTracker(copy, engine=engine)
        assert "\n" not in str(raised.value)


def _engine_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_runtime_options(parser)
    add_engine_options(parser)
    return parser.parse_args(list(argv))


def test_engine_options(tmp_path: Path) -> None:
    """The engine names are defined once; each inconsistent choice is one line naming the option."""
    assert ENGINES == ("torch", "onnx", "openvino") and set(ENGINE_PRECISIONS) == set(RUNTIME_ENGINES)
    check_engine_options(_engine_args("--engine", "openvino", "--onnx-dir", str(tmp_path), "--dtype", "bf16"))
    check_engine_options(_engine_args())
    cases = {
        ("--engine", "openvino"): "--engine openvino needs --onnx-dir DIR",
        ("--onnx-dir", str(tmp_path)): "--onnx-dir applies to --engine onnx or openvino",
        ("--engine", "onnx", "--onnx-dir", str(tmp_path), "--dtype", "bf16"): "--dtype bf16: --engine onnx runs fp32",
        ("--engine", "openvino", "--onnx-dir", str(tmp_path), "--dtype", "mixed"): "--dtype mixed: --engine openvino runs fp32, bf16",
        ("--engine", "onnx", "--onnx-dir", str(tmp_path), "--device", "cuda"): "--engine onnx runs on the CPU",
    }
    for argv, message in cases.items():
        with pytest.raises(ValueError, match=message):
            check_engine_options(_engine_args(*argv))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        check_engine_options(_engine_args("--engine", "openvino", "--onnx-dir", str(tmp_path / "none")))


def test_segment_command_openvino_engine(nano_export: tuple[SAM2Model, Path], tmp_path: Path, capsys) -> None:
    """`surgsam2 segment --engine openvino --onnx-dir DIR` writes the onnx engine's masks (fp32, IoU >= 0.999)."""
    from PIL import Image

    from surgsam2.cli import main
    from surgsam2.data.masks import read_mask, write_mask

    _, folder = nano_export
    (tmp_path / "clip").mkdir()
    for index, frame in enumerate(_clip(3)):
        Image.fromarray(frame).save(tmp_path / "clip" / f"{index:05d}.png")
    prompt = np.zeros((SIZE, SIZE), np.uint8)
    prompt[32:64, 32:64], prompt[80:100, 70:120] = 1, 2
    write_mask(tmp_path / "prompt.png", prompt)
    # efp: with random weights the objects' logits nearly tie everywhere, and xefp's exclusive
    # memory masks turn the engines' float differences into flipped pixels (its engine parity is
    # tested on nano in test_onnx_runtime.py).
    common = [str(tmp_path / "clip"), "--prompt-mask", str(tmp_path / "prompt.png"), "--quiet", "--onnx-dir", str(folder),
              "--memory", "efp"]  # fmt: skip
    for engine in RUNTIME_ENGINES:
        assert main(["segment", *common, "--out", str(tmp_path / engine), "--engine", engine]) == 0
        assert f"engine {engine} (" in capsys.readouterr().err  # the precision it ran is stated
    worst = min(
        _iou(read_mask(tmp_path / "openvino" / "clip" / f"{index:05d}.png") == obj_id,
             read_mask(tmp_path / "onnx" / "clip" / f"{index:05d}.png") == obj_id)
        for index in range(3) for obj_id in (1, 2)
    )  # fmt: skip
    print(f"segment --engine openvino vs onnx: worst IoU {worst:.6f} (bar {IOU_BAR})")
    assert worst >= IOU_BAR
    assert main(["segment", *common, "--out", str(tmp_path / "x"), "--engine", "onnx", "--dtype", "bf16"]) == 2


def test_bench_engine_option_parsing_and_errors() -> None:
    """`--engine` takes repeats and comma lists (each engine once, in order); what does not go with
    it is one line naming the option."""
    from surgsam2.bench import BenchConfig, parse_engines
    from surgsam2.bench.engines import check_engine_config

    assert parse_engines(["torch,onnx", "openvino", "onnx"]) == ("torch", "onnx", "openvino")
    assert parse_engines([" openvino , torch"]) == ("openvino", "torch")
    with pytest.raises(ValueError, match="--engine 'tensorrt': unknown engine; choose from torch, onnx, openvino"):
        parse_engines(["torch,tensorrt"])
    cases = {
        "drop --against-official": {"against_official": True},
        "drop --stream-frames": {"stream_frames": 10},
        "runs on the CPU": {"device": "cuda"},
        r"fastest precision \(torch bf16, onnx fp32\): drop --dtype": {"dtype": "bf16"},
        "--memory qefp: the exported engines run efp, fifo, refp, xefp": {"memory": "qefp"},
    }
    for message, fields in cases.items():
        config = BenchConfig(model="nano", image_size=SIZE, engines=("torch", "onnx"), **fields)
        with pytest.raises(ValueError, match=message) as raised:
            check_engine_config(config)
        assert "\n" not in str(raised.value)


def test_bench_engines_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`surgsam2 bench --engine torch,onnx,openvino` on nano: every engine, its precision, frames/s
    and IoU against the fp32 torch tracker, in the table and the JSON."""
    import surgsam2.bench.engines as bench_engines
    from surgsam2.cli import main

    measure = bench_engines.measure_matmul_peak  # a small matmul: the test checks the peak is reported
    monkeypatch.setattr(bench_engines, "measure_matmul_peak", lambda device: measure(size=256, repeats=2, device=device))

    out = tmp_path / "engines.json"
    argv = ["bench", "--model", "nano", "--image-size", str(SIZE), "--objects", "2", "--frames", "2",
            "--warmup", "1", "--threads", "1", "--engine", "torch,onnx", "--engine", "openvino", "--quiet",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert list(result["sides"]) == ["torch", "onnx", "openvino"]
    for name, side in result["sides"].items():
        assert len(side["frame_seconds"]) == 2 and side["frames_per_second"] > 0, name
        assert 0.0 <= side["iou_min"] <= side["iou_mean"] <= 1.0, name
        print(f"{name} {side['precision']}: IoU min {side['iou_min']:.4f} mean {side['iou_mean']:.4f}")
    assert result["sides"]["onnx"]["precision"] == "fp32" and result["sides"]["torch"]["precision"] == "bf16"
    assert result["sides"]["openvino"]["precision"] == ("bf16" if _cpu_has_bf16() else "fp32")
    assert result["sides"]["onnx"]["iou_min"] >= IOU_BAR  # fp32 against fp32
    assert result["sides"]["torch"]["speed_over_torch"] == 1.0 and result["peak"]["bf16_gflops"] > 0
