"""The small model trained by our pipeline and shipped inside the package (the offline default)."""

from __future__ import annotations

import torch

from surgsam2.data.synthetic import write_synthetic_dataset
from surgsam2.eval.vos_inference import VOSInferenceConfig, run_vos_inference
from surgsam2.model.checkpoint import default_checkpoint, load_model, read_checkpoint

MAX_PACKAGED_BYTES = 20 * 2**20
# J&F (surgsam2 protocol, efp) on the held-out clip below, measured when the checkpoint shipped:
# see SHIPPED_CLIP_JF_MEASURED; the test allows a margin for platform differences in float math.
SHIPPED_CLIP_JF_MEASURED = 0.452
SHIPPED_CLIP_JF_MARGIN = 0.03
HELD_OUT_SEED = 900_123  # dataset seeds >= 900000 are never used for training


def test_packaged_checkpoint_is_small_official_and_loads_by_default() -> None:
    path = default_checkpoint("nano")
    assert path is not None and path.is_file(), "the nano checkpoint must ship inside the package"
    assert path.stat().st_size <= MAX_PACKAGED_BYTES
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert "model" in raw, "official layout: {'model': state_dict}"
    checkpoint = read_checkpoint(path)
    model = load_model("nano")
    assert model.image_size == 256
    for key, value in checkpoint.state_dict.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_shipped_model_segments_a_held_out_synthetic_clip(tmp_path) -> None:
    write_synthetic_dataset(tmp_path / "data", videos=1, frames=24, size=(320, 256), seed=HELD_OUT_SEED)
    config = VOSInferenceConfig(
        base_video_dir=tmp_path / "data" / "JPEGImages",
        input_mask_dir=tmp_path / "data" / "VOS" / "Annotations_vos_instrument",
        output_mask_dir=tmp_path / "masks",
        gt_root=tmp_path / "data" / "Annotations",
        model="nano",
        memory="efp",
        progress=False,
    )
    report = run_vos_inference(config, info=lambda message: None)
    assert not report.failed and report.evaluation is not None
    measured = report.evaluation.summary.JF
    threshold = SHIPPED_CLIP_JF_MEASURED - SHIPPED_CLIP_JF_MARGIN
    print(f"[shipped] held-out clip J&F {100 * measured:.1f} (threshold {100 * threshold:.1f})")
    assert measured >= threshold
