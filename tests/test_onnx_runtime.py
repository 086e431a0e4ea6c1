"""The torch-free ONNX runtime (issue 15, second step): `OnnxTracker` against our torch `Tracker`.

- its numpy rules against the torch originals: EFP's selection, the antialiased resize, bfloat16
  storage rounding;
- whole videos (nano at 256 px, 32 frames, 3 objects: mask, points, box added on frame 8, a
  corrective click on frame 16), fifo and efp: mask IoU >= 0.999 per object and frame;
- the shipped nano on the `make demo` clip: J&F of both engines equal within 0.1;
- importing and stepping the runtime where `torch` cannot be imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video, video_seed
from surgsam2.eval.metrics import jf
from surgsam2.export.onnx_export import ExportOptions, export_onnx
from surgsam2.export.runtime import OnnxTracker, efp_select, resize_antialiased, round_to_bfloat16
from surgsam2.memory.policies import EfpPolicy
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model, build_model
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.tracker import Tracker

IOU_BAR = 0.999
JF_BAR = 0.1
DEMO_SEED = 900_000  # pipelines/demo.py


def random_nano() -> SAM2Model:
    """Random weights with the object-score head biased to 'visible', as the parity tests do."""
    torch.manual_seed(0)
    model = build_model(get_config("nano")).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


@pytest.fixture(scope="module")
def nano_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[SAM2Model, Path]:
    model = random_nano()
    folder = tmp_path_factory.mktemp("nano_onnx")
    export_onnx(model, folder, ExportOptions())
    return model, folder


def test_efp_select_matches_policy() -> None:
    """numpy EFP picks the same memories as `EfpPolicy.select` (random tensors, ties included)."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        count = 3 + trial % 6
        protected = [bool(flag) for flag in torch.rand(count, generator=generator) < 0.3]
        protected[-1] = False
        features = torch.randn(count, 3, 5, 8, generator=generator).to(torch.bfloat16)
        if trial % 5 == 0:
            features[1] = features[0]  # a tie: the older goes first
        policy = EfpPolicy(num_frame_to_prune=trial % 3)
        expected = policy.select(features, protected, capacity=7).numpy()
        got = efp_select(features.float().numpy(), protected, 7, trial % 3)
        np.testing.assert_array_equal(got, expected)


def test_resize_and_bfloat16_match_torch() -> None:
    """The antialiased resize equals torch's within 1e-5; bfloat16 rounding is torch's exactly."""
    plane = torch.rand(256, 320)
    for size in ((64, 64), (256, 256), (80, 100)):
        ref = F.interpolate(plane[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
        np.testing.assert_allclose(resize_antialiased(plane.numpy(), *size), ref.numpy(), atol=1e-5)
    values = torch.randn(10_000) * 100
    np.testing.assert_array_equal(round_to_bfloat16(values.numpy()), values.to(torch.bfloat16).float().numpy())


def _video(frames: int, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    config = SyntheticVideoConfig(width=size[0], height=size[1], num_frames=frames, seed=seed)
    video = generate_synthetic_video(config)
    return video.frames, video.id_maps


def _prompt_script(frames: np.ndarray) -> dict[int, dict[int, Prompt]]:
    """Object 1 a mask on frame 0, object 2 points on frame 0, object 3 a box on frame 8, a
    corrective click on object 2 on frame 16."""
    height, width = frames.shape[1:3]
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 4 : width // 2] = True
    return {
        0: {1: Prompt(mask=mask), 2: Prompt(points=[(width * 0.7, height * 0.6), (width * 0.2, height * 0.8)], labels=[1, 0])},
        8: {3: Prompt(box=(width * 0.5, height * 0.1, width * 0.9, height * 0.4))},
        16: {2: Prompt(points=[(width * 0.6, height * 0.7)], labels=[1])},
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("memory", ["fifo", "efp"])
def test_video_parity_with_torch_tracker(nano_export: tuple[SAM2Model, Path], memory: str) -> None:
    """32 frames, 3 objects (mask, points, box mid-video, a corrective click): IoU >= 0.999."""
    model, folder = nano_export
    frames, _ = _video(32, (256, 256), seed=3)
    script = _prompt_script(frames)
    torch_tracker = Tracker(model, memory=memory)
    onnx_tracker = OnnxTracker(folder, memory=memory)
    worst, pairs, nonempty = (1.0, -1, -1), 0, 0
    for index, frame in enumerate(frames):
        expected = torch_tracker.step(frame, script.get(index))
        got = onnx_tracker.step(frame, script.get(index))
        assert got.object_ids == expected.object_ids, f"frame {index}"
        for obj_id in expected.object_ids:
            iou = _iou(got.masks[obj_id], expected.masks[obj_id])
            worst = min(worst, (iou, index, obj_id))
            pairs, nonempty = pairs + 1, nonempty + int(expected.masks[obj_id].any())
    print(f"{memory}: worst mask IoU {worst[0]:.6f} over {pairs} object-frames ({nonempty} non-empty)")
    assert worst[0] >= IOU_BAR
    assert nonempty >= pairs // 2, "too few non-empty masks for the comparison to mean anything"


def test_shipped_nano_demo_clip_jf(tmp_path: Path) -> None:
    """The shipped nano on the `make demo` clip: J&F of the torch and ONNX engines within 0.1."""
    from surgsam2.model.checkpoint import load_model

    model = load_model("nano", device="cpu")
    export_onnx(model, tmp_path, ExportOptions())
    frames, id_maps = _video(60, (320, 256), seed=video_seed(DEMO_SEED, 0))
    ids = [int(i) for i in np.unique(id_maps[0]) if i != 0]
    prompts = {obj_id: Prompt(mask=id_maps[0] == obj_id) for obj_id in ids}
    scores = {}
    for engine, tracker in (("torch", Tracker(model, num_frames=60)), ("onnx", OnnxTracker(tmp_path, num_frames=60))):
        values = []
        for index, frame in enumerate(frames):
            result = tracker.step(frame, prompts if index == 0 else None)
            if 0 < index < len(frames) - 1:
                values += [jf(result.masks[obj_id], id_maps[index] == obj_id) for obj_id in ids]
        scores[engine] = 100 * float(np.mean(values))
    print(f"demo clip J&F: torch {scores['torch']:.2f}, onnx {scores['onnx']:.2f} ({len(ids)} objects)")
    assert abs(scores["torch"] - scores["onnx"]) <= JF_BAR


def test_runtime_without_torch(nano_export: tuple[SAM2Model, Path]) -> None:
    """The runtime imports and steps in a Python where `import torch` fails."""
    _, folder = nano_export
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import numpy as np
from surgsam2.export.runtime import OnnxTracker
from surgsam2.tracking.prompts import Prompt
tracker = OnnxTracker({str(folder)!r})
frame = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
mask = np.zeros((200, 240), bool); mask[50:120, 60:150] = True
first = tracker.step(frame, {{1: Prompt(mask=mask), 2: Prompt(box=(10, 10, 80, 90))}})
second = tracker.step(frame)
assert sorted(second.masks) == [1, 2] and second.masks[1].shape == (200, 240)
assert not any(name == "torch" or name.startswith("torch.") for name, m in sys.modules.items() if m is not None)
print("torch-free ok", tracker.object_ids)
"""
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": src, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch-free ok [1, 2]" in done.stdout


def test_segment_command_onnx_engine(tmp_path: Path) -> None:
    """`surgsam2 segment --engine onnx --onnx-dir DIR` writes the torch engine's masks (IoU >= 0.999)."""
    from PIL import Image

    from surgsam2.cli import main
    from surgsam2.data.masks import read_mask, write_mask
    from surgsam2.model.checkpoint import load_model

    frames, id_maps = _video(12, (320, 256), seed=video_seed(DEMO_SEED, 0))
    (tmp_path / "clip").mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "clip" / f"{index:05d}.png")
    write_mask(tmp_path / "prompt.png", id_maps[0])
    (tmp_path / "onnx").mkdir()
    export_onnx(load_model("nano", device="cpu"), tmp_path / "onnx", ExportOptions())
    common = [str(tmp_path / "clip"), "--prompt-mask", str(tmp_path / "prompt.png"), "--quiet"]
    assert main(["segment", *common, "--out", str(tmp_path / "torch")]) == 0
    assert main(["segment", *common, "--out", str(tmp_path / "onnx_out"), "--engine", "onnx", "--onnx-dir", str(tmp_path / "onnx")]) == 0
    worst = 1.0
    for index in range(len(frames)):
        expected = read_mask(tmp_path / "torch" / "clip" / f"{index:05d}.png")
        got = read_mask(tmp_path / "onnx_out" / "clip" / f"{index:05d}.png")
        for obj_id in (int(i) for i in np.unique(id_maps[0]) if i != 0):
            worst = min(worst, _iou(got == obj_id, expected == obj_id))
    print(f"segment --engine onnx: worst IoU {worst:.6f}")
    assert worst >= IOU_BAR
    assert main(["segment", *common, "--out", str(tmp_path / "x"), "--engine", "onnx"]) == 2  # one-line error
