"""Named model configs as typed dataclasses.

The official ones reproduce `sam2/configs/sam2/*.yaml` and `sam2/configs/sam2.1/*.yaml` of SAM 2
(as built by `build_sam2_video_predictor`, i.e. with the inference post-processing settings).
``image_size`` is a load-time choice: 1024 for the official models, 512 for Surgical SAM 2; every
config checks it with `check_image_size` (a multiple of `image_size_multiple`, within
`MIN_IMAGE_SIZE`..`MAX_IMAGE_SIZE`) before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

# Bounds on the square input side. At 64 px the coarsest trunk stage (stride 32) still has a
# 2 x 2 grid; 4096 px is four times the official 1024 and already needs tens of GiB of
# activations for the large trunk: larger values are typos, not experiments.
MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 4096
# The trunk's patch embedding turns 4 x 4 pixels into one token.
PATCH_STRIDE = 4


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk: stage sizes, heads, windows and global-attention blocks."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 11, 2)
    global_att_blocks: tuple[int, ...] = (7, 10, 13)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    drop_path_rate: float = 0.0

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of each stage, finest first."""
        return tuple(int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages)))


@dataclass(frozen=True)
class NeckConfig:
    """FPN neck: projects trunk stages to ``d_model`` channels, top-down fusion on some levels."""

    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: str = "nearest"
    scalp: int = 1  # drop the coarsest level(s) from the output


@dataclass(frozen=True)
class DecoderConfig:
    """Prompt encoder + two-way transformer + mask decoder sizes and multimask behaviour."""

    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    mask_in_chans: int = 16
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98


@dataclass(frozen=True)
class MemoryAttentionConfig:
    """Stack of self-attention (RoPE) + cross-attention to memory (RoPE on spatial tokens)."""

    num_layers: int = 4
    dim_feedforward: int = 2048
    num_heads: int = 1
    dropout: float = 0.1
    rope_theta: float = 10000.0
    activation: str = "relu"


@dataclass(frozen=True)
class MemoryEncoderConfig:
    """Mask downsampler + fuser of ConvNeXt blocks, output ``mem_dim`` channels."""

    mem_dim: int = 64
    downsampler_kernel_size: int = 3
    downsampler_stride: int = 2
    downsampler_padding: int = 1
    fuser_num_layers: int = 2
    fuser_kernel_size: int = 7
    fuser_padding: int = 3
    layer_scale_init_value: float = 1e-6


@dataclass(frozen=True)
class SAM2Config:
    """Everything needed to build a SAM 2 model, mirroring the official SAM2Base arguments."""

    name: str
    trunk: HieraConfig
    neck: NeckConfig = field(default_factory=NeckConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    memory_attention: MemoryAttentionConfig = field(default_factory=MemoryAttentionConfig)
    memory_encoder: MemoryEncoderConfig = field(default_factory=MemoryEncoderConfig)
    image_size: int = 1024
    backbone_stride: int = 16
    num_maskmem: int = 7
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = True
    use_mask_input_as_output_without_sam: bool = True
    max_cond_frames_in_attn: int = -1
    directly_add_no_mem_embed: bool = True
    use_high_res_features_in_sam: bool = True
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    iou_prediction_use_sigmoid: bool = True
    memory_temporal_stride_for_eval: int = 1
    non_overlap_masks_for_mem_enc: bool = False
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = True
    no_obj_embed_spatial: bool = True
    fill_hole_area: int = 8  # post-processing of low-res mask logits; 0 turns it off

    @property
    def hidden_dim(self) -> int:
        """Width of image embeddings, prompts, memory attention and object pointers."""
        return self.neck.d_model

    @property
    def embedding_size(self) -> int:
        """Side of the stride-16 image-embedding grid."""
        return self.image_size // self.backbone_stride

    def __post_init__(self) -> None:
        """Refuse an input side the network cannot take (before any module is built)."""
        check_image_size(self.image_size, self)

    def replace(self, **changes: object) -> "SAM2Config":
        """A copy with some top-level fields changed (e.g. ``image_size=512``)."""
        return dataclasses.replace(self, **changes)


def image_size_multiple(config: SAM2Config) -> int:
    """The step input sides of ``config`` must come in (32 for every named config).

    The first stage's window position embedding is tiled over the stride-4 token grid, so that
    grid must hold whole windows; the query pooling halves the grid ``q_pool`` times, and the
    stride-16 image embedding (and the memory encoder's 16x mask downsampling) must be whole.
    """
    trunk = config.trunk
    pooled = PATCH_STRIDE * max(trunk.q_stride) ** trunk.q_pool
    first_window = PATCH_STRIDE * trunk.window_spec[0]
    return math.lcm(pooled, first_window, config.backbone_stride)


def check_image_size(image_size: object, config: SAM2Config | None = None) -> int:
    """``image_size`` if it is an integer multiple of the network's step within the bounds.

    Raises a one-line `ValueError` otherwise; called before any model or tensor is built, so a
    size of 100000 fails at once instead of exhausting memory. Without ``config``, the step of
    every named config (32) applies.
    """
    multiple = image_size_multiple(config) if config is not None else _NAMED_MULTIPLE
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image_size must be an integer, got {image_size!r}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE or image_size % multiple:
        raise ValueError(
            f"image_size must be a multiple of {multiple} between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, "
            f"got {image_size}"
        )
    return image_size


# ------------------------------------------------------------------------------------------
# The official trunks.
# ------------------------------------------------------------------------------------------
_TINY = HieraConfig(stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9))
_SMALL = HieraConfig(stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13))
_BASE_PLUS = HieraConfig(
    embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
    window_pos_embed_bkg_spatial_size=(14, 14),
)
_LARGE = HieraConfig(
    embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
    window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7),
)

# SAM 2 (July 2024) differs from SAM 2.1 only in the object-pointer temporal encoding and in
# having no spatial no-object embedding.
_SAM2_0_FLAGS = dict(
    add_tpos_enc_to_obj_ptrs=False,
    proj_tpos_enc_in_obj_ptrs=False,
    use_signed_tpos_enc_to_obj_ptrs=False,
    no_obj_embed_spatial=False,
)


def _official(name: str, trunk: HieraConfig, sam2_1: bool) -> SAM2Config:
    config = SAM2Config(name=name, trunk=trunk)
    return config if sam2_1 else config.replace(**_SAM2_0_FLAGS)


def _nano() -> SAM2Config:
    """A small SAM 2 (a few million parameters, 256 px) trained by our own pipeline."""
    return SAM2Config(
        name="nano",
        trunk=HieraConfig(
            embed_dim=32, num_heads=1, stages=(1, 2, 4, 1), global_att_blocks=(4, 6),
            window_spec=(8, 4, 8, 4), window_pos_embed_bkg_spatial_size=(4, 4),
        ),
        neck=NeckConfig(d_model=128),
        decoder=DecoderConfig(transformer_mlp_dim=512, transformer_num_heads=4, iou_head_hidden_dim=128),
        memory_attention=MemoryAttentionConfig(num_layers=2, dim_feedforward=512),
        memory_encoder=MemoryEncoderConfig(mem_dim=32),
        image_size=256,
        # One mask on tracked frames, not SAM 2's three candidates: trained from scratch with the
        # loss on the best candidate, the three slots learned to propose three different
        # instruments instead of using the memory to find the tracked one (see
        # configs/train/nano_synthetic_stage3.yaml). SAM 2.1's fallback to the best candidate
        # when that mask is unstable stays on (+2.3 J&F held-out).
        multimask_output_for_tracking=False,
    )


MODEL_CONFIGS: dict[str, SAM2Config] = {
    "sam2_hiera_t": _official("sam2_hiera_t", _TINY, sam2_1=False),
    "sam2_hiera_s": _official("sam2_hiera_s", _SMALL, sam2_1=False),
    "sam2_hiera_b+": _official("sam2_hiera_b+", _BASE_PLUS, sam2_1=False),
    "sam2_hiera_l": _official("sam2_hiera_l", _LARGE, sam2_1=False),
    "sam2.1_hiera_t": _official("sam2.1_hiera_t", _TINY, sam2_1=True),
    "sam2.1_hiera_s": _official("sam2.1_hiera_s", _SMALL, sam2_1=True),
    "sam2.1_hiera_b+": _official("sam2.1_hiera_b+", _BASE_PLUS, sam2_1=True),
    "sam2.1_hiera_l": _official("sam2.1_hiera_l", _LARGE, sam2_1=True),
    "nano": _nano(),
}
_NAMED_MULTIPLE = math.lcm(*(image_size_multiple(config) for config in MODEL_CONFIGS.values()))


def get_config(name: str, image_size: int | None = None) -> SAM2Config:
    """The named config, optionally at another input size (checked by `check_image_size`)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_CONFIGS)}")
    config = MODEL_CONFIGS[name]
    if image_size is not None:
        config = config.replace(image_size=check_image_size(image_size, config))
    return config
