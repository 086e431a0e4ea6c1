"""The official `sam2` package (PyPI 1.1.0) as a test oracle, with shared random weights.

A missing oracle is a test failure, never a skip: `make test` installs it.
"""

from __future__ import annotations

import importlib

import pytest
import torch

# Every parity test states this tolerance: max |ours - official| <= PART_RTOL * max(1, |official|).
PART_RTOL = 1e-4


def require_official():
    """Import the official package or fail the test with the install command."""
    try:
        return importlib.import_module("sam2")
    except ImportError as error:  # pragma: no cover - only when the env is broken
        pytest.fail(
            "the official sam2 package (test oracle) is missing: run `make test`, or "
            "SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0 hydra-core iopath"
            f" ({error})"
        )


def official_config_file(name: str) -> str:
    """The official yaml for one of our official config names."""
    family = "sam2.1" if name.startswith("sam2.1") else "sam2"
    return f"configs/{family}/{name}.yaml"


@torch.no_grad()
def perturb_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Add N(0, std) noise to every parameter so no part is trivially zero or identity."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.add_(torch.randn(parameter.shape, generator=generator) * std)


def build_official_video_model(name: str, image_size: int, seed: int = 0, obj_score_bias: float = 10.0):
    """The official SAM2VideoPredictor with seeded random weights, on CPU, fp32, eval mode.

    Holes are not filled (``fill_hole_area=0``): the official code needs its CUDA extension for it.
    The object-score head's last bias is set to ``obj_score_bias`` so that random weights do not
    call every object absent (which would make all tracked logits the constant -1024).
    """
    require_official()
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(seed)
    model = build_sam2_video_predictor(
        official_config_file(name),
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={image_size}", "++model.fill_hole_area=0"],
    )
    model.fill_hole_area = 0  # the post-processing overrides of the builder set it to 8
    perturb_(model, seed)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(obj_score_bias)
    return model.eval()


def max_deviation(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |ours - reference|, allowed) under PART_RTOL."""
    assert ours.shape == reference.shape, f"shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    deviation = (ours.float() - reference.float()).abs().max().item()
    allowed = PART_RTOL * max(1.0, reference.float().abs().max().item())
    return deviation, allowed


def assert_close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    """Assert parity within PART_RTOL and print the margin seen."""
    deviation, allowed = max_deviation(ours, reference)
    print(f"[parity] {what}: max|d|={deviation:.3e} allowed={allowed:.3e}")
    assert deviation <= allowed, f"{what}: max|d|={deviation:.3e} > {allowed:.3e}"
