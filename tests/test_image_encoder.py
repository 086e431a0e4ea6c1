"""Image encoder (Hiera trunk + FPN neck) against the official sam2 modules on shared random weights."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import torch

from oracle import assert_close, official_config_file, perturb_, require_official
from surgsam2.model.configs import MODEL_CONFIGS
from surgsam2.model.hiera import Hiera
from surgsam2.model.neck import FpnNeck, ImageEncoder
from surgsam2.model.position import PositionEmbeddingSine

OFFICIAL_NAMES = [name for name in MODEL_CONFIGS if name != "nano"]


def _official_yaml_section(name: str):
    """The ``model.image_encoder`` section of the official yaml."""
    sam2 = require_official()
    from omegaconf import OmegaConf

    path = os.path.join(os.path.dirname(sam2.__file__), official_config_file(name))
    return OmegaConf.load(path).model.image_encoder


@pytest.fixture(scope="module")
def official_encoder() -> Iterator:
    """Seeded, perturbed official encoders built from their yaml, once per distinct encoder
    (SAM 2 and SAM 2.1 of one size share theirs) for this module."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    built: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        section = _official_yaml_section(name)
        key = OmegaConf.to_yaml(section)
        if key not in built:
            torch.manual_seed(0)
            encoder = instantiate(section, _convert_="all").eval()
            perturb_(encoder, seed=1)
            built[key] = encoder
        return built[key]

    yield get
    built.clear()


def _compare_outputs(ours: dict, reference: dict, label: str) -> None:
    """Every output of the encoder, level by level."""
    assert len(ours["backbone_fpn"]) == len(reference["backbone_fpn"])
    for level, (mine, theirs) in enumerate(zip(ours["backbone_fpn"], reference["backbone_fpn"])):
        assert_close(mine, theirs, f"{label} backbone_fpn[{level}]")
    assert len(ours["vision_pos_enc"]) == len(reference["vision_pos_enc"])
    for level, (mine, theirs) in enumerate(zip(ours["vision_pos_enc"], reference["vision_pos_enc"])):
        assert_close(mine, theirs, f"{label} vision_pos_enc[{level}]")
    assert_close(ours["vision_features"], reference["vision_features"], f"{label} vision_features")


def _check_parity(official_encoder, name: str, image_size: int, batch: int = 1, meta_build: bool = False) -> None:
    """Load the official weights into ours (strict) and compare all outputs on one random input.

    ``meta_build`` skips our random init for the big trunks (weights are assigned on load).
    """
    reference = official_encoder(name)
    config = MODEL_CONFIGS[name]
    if meta_build:
        with torch.device("meta"):
            ours = ImageEncoder.from_config(config.trunk, config.neck)
        ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    else:
        ours = ImageEncoder.from_config(config.trunk, config.neck)
        ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    image = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = reference(image)
        got = ours(image)
    _compare_outputs(got, expected, f"{name}@{image_size}x{batch}")


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_state_dict_matches_official(official_encoder, name: str) -> None:
    """Same keys, same shapes, no extra buffers: official checkpoints load 1:1."""
    config = MODEL_CONFIGS[name]
    with torch.device("meta"):
        ours = ImageEncoder.from_config(config.trunk, config.neck)
    theirs = official_encoder(name).state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(theirs)
    mismatched = [key for key in theirs if tuple(mine[key].shape) != tuple(theirs[key].shape)]
    assert not mismatched, f"shape mismatch: {mismatched}"
    assert ours.trunk.channel_list == official_encoder(name).trunk.channel_list


def test_tiny_512_batch2_eval(official_encoder) -> None:
    """Windows 8/4/14/7 on grids 128/64/32/16: the last two stages need window padding."""
    _check_parity(official_encoder, "sam2.1_hiera_t", 512, batch=2)


def test_small_512(official_encoder) -> None:
    """Surgical SAM 2's setting: Hiera-S at 512 px."""
    _check_parity(official_encoder, "sam2.1_hiera_s", 512)


@pytest.mark.slow
def test_tiny_1024(official_encoder) -> None:
    _check_parity(official_encoder, "sam2.1_hiera_t", 1024)


@pytest.mark.slow
def test_small_1024(official_encoder) -> None:
    _check_parity(official_encoder, "sam2.1_hiera_s", 1024)


def test_base_plus_256(official_encoder) -> None:
    """Hiera-B+ (14x14 background embedding) at 256 px: grids 64/32/16/8, windows 8/4/14/7."""
    _check_parity(official_encoder, "sam2.1_hiera_b+", 256, meta_build=True)


@pytest.mark.slow
def test_large_256(official_encoder) -> None:
    """Hiera-L (windows 8/4/16/8, 48 blocks) at 256 px."""
    _check_parity(official_encoder, "sam2.1_hiera_l", 256, meta_build=True)


def _nano_official_modules():
    """The official modules built with our nano config's arguments (nano has no official yaml)."""
    require_official()
    from sam2.modeling.backbones.hieradet import Hiera as OfficialHiera
    from sam2.modeling.backbones.image_encoder import FpnNeck as OfficialNeck
    from sam2.modeling.backbones.image_encoder import ImageEncoder as OfficialEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine as OfficialSine

    trunk, neck = MODEL_CONFIGS["nano"].trunk, MODEL_CONFIGS["nano"].neck
    official_trunk = OfficialHiera(
        embed_dim=trunk.embed_dim, num_heads=trunk.num_heads, stages=trunk.stages,
        global_att_blocks=trunk.global_att_blocks, window_spec=trunk.window_spec,
        window_pos_embed_bkg_spatial_size=trunk.window_pos_embed_bkg_spatial_size,
    )
    official_neck = OfficialNeck(
        position_encoding=OfficialSine(neck.d_model), d_model=neck.d_model,
        backbone_channel_list=official_trunk.channel_list,
        fpn_top_down_levels=list(neck.fpn_top_down_levels), fpn_interp_model=neck.fpn_interp_model,
    )
    return OfficialEncoder(official_trunk, official_neck, scalp=neck.scalp)


def test_nano_shapes_and_training_parity() -> None:
    """nano: output shapes, and (train mode, with gradients) the official modules' numbers."""
    config = MODEL_CONFIGS["nano"]
    ours = ImageEncoder.from_config(config.trunk, config.neck)
    image = torch.randn(2, 3, config.image_size, config.image_size)
    out = ours(image)
    width = config.neck.d_model
    grids = [config.image_size // stride for stride in (4, 8, 16)]
    assert [tuple(f.shape) for f in out["backbone_fpn"]] == [(2, width, g, g) for g in grids]
    assert [tuple(p.shape) for p in out["vision_pos_enc"]] == [(2, width, g, g) for g in grids]
    assert tuple(out["vision_features"].shape) == (2, width, grids[-1], grids[-1])
    assert ours.trunk.channel_list == list(reversed(config.trunk.stage_channels))

    reference = _nano_official_modules()
    perturb_(reference, seed=3)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.train()
    reference.train()
    expected, got = reference(image), ours(image)
    _compare_outputs(got, expected, "nano(train)@256")
    expected["vision_features"].square().mean().backward()
    got["vision_features"].square().mean().backward()
    for key in ("pos_embed", "pos_embed_window", "patch_embed.proj.weight"):
        theirs = reference.trunk.get_parameter(key).grad
        mine = ours.trunk.get_parameter(key).grad
        assert mine is not None, f"no gradient reached {key}"
        assert_close(mine, theirs, f"nano grad {key}")


def test_position_embedding_cache_follows_parameters() -> None:
    """The cached position embedding is reused in eval, and rebuilt when weights change."""
    trunk = Hiera.from_config(MODEL_CONFIGS["nano"].trunk).eval()
    with torch.no_grad():
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
        first = trunk._get_pos_embed(32, 32)
        assert trunk._get_pos_embed(32, 32) is first
        assert trunk._get_pos_embed(16, 16).shape == (1, 16, 16, trunk.pos_embed.shape[1])
        trunk.pos_embed.add_(1.0)  # an optimiser step or a checkpoint load
        updated = trunk._get_pos_embed(32, 32)
        torch.testing.assert_close(updated, trunk._compute_pos_embed(32, 32), rtol=0, atol=0)
        torch.testing.assert_close(updated, first + 1.0)
    with torch.inference_mode():
        trunk.pos_embed_window.add_(1.0)
        in_inference = trunk._get_pos_embed(32, 32)
    with torch.no_grad():  # the entry built under inference mode is an ordinary tensor
        assert not in_inference.is_inference()
        assert trunk._get_pos_embed(32, 32) is in_inference
    # With gradients on, nothing is cached and the parameters receive gradients.
    trunk.train()
    trunk._get_pos_embed(32, 32).sum().backward()
    assert trunk.pos_embed.grad is not None and trunk.pos_embed_window.grad is not None


def test_neck_and_encoder_validate_arguments() -> None:
    config = MODEL_CONFIGS["nano"]
    trunk = Hiera.from_config(config.trunk)
    wrong = FpnNeck(PositionEmbeddingSine(64), 64, backbone_channel_list=[8, 4, 2, 1])
    with pytest.raises(ValueError, match="do not match"):
        ImageEncoder(trunk, wrong)
    with pytest.raises(ValueError, match="fuse_type"):
        FpnNeck(PositionEmbeddingSine(64), 64, backbone_channel_list=[1], fuse_type="max")
    with pytest.raises(ValueError, match="multiple of 32"):
        trunk(torch.zeros(1, 3, 80, 80))
