"""The SAM 2 network assembled from its parts: encode an image, decode masks, encode memory.

This module is the network only. Which memories a frame attends to (the memory bank and its
policies) and the frame loop live in `surgsam2.memory` and `surgsam2.tracking`.
Parameter names follow the official SAM 2 checkpoints so they load 1:1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from surgsam2.model.configs import SAM2Config
from surgsam2.model.cuda_graphs import CudaGraphed
from surgsam2.model.layers import MLP
from surgsam2.model.mask_decoder import MaskDecoder
from surgsam2.model.memory_attention import MemoryAttention
from surgsam2.model.memory_encoder import MemoryEncoder
from surgsam2.model.neck import ImageEncoder
from surgsam2.model.precisions import PRECISIONS
from surgsam2.model.prompt_encoder import PromptEncoder
from surgsam2.model.transformer import TwoWayTransformer

# Mask logit given to objects judged absent (as SAM 2 does).
NO_OBJECT_SCORE = -1024.0
# Logits that stand for a binary mask used directly as output: sigmoid(+-10) ~ 1 / 0.
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0


@dataclass
class ImageFeatures:
    """Features of one frame, computed once and shared by every object tracked on it."""

    embedding: torch.Tensor  # (1, C, h, w) stride-16 features
    position: torch.Tensor  # (1, C, h, w) sine position encoding of the stride-16 grid
    high_res: list[torch.Tensor]  # stride-4 and stride-8 features projected for the decoder

    def row(self, index: int) -> ImageFeatures:
        """Image ``index`` of features encoded as a batch of images (batch dimension kept, views
        only): how a batch encoded once for several streams is handed to each stream's tracker."""
        pick = slice(index, index + 1)
        return ImageFeatures(self.embedding[pick], self.position[pick], [level[pick] for level in self.high_res])


@dataclass
class DecoderOutput:
    """Masks and tokens for a batch of B objects on one frame."""

    low_res_masks: torch.Tensor  # (B, 1, S/4, S/4) logits of the chosen mask
    low_res_multimasks: torch.Tensor  # (B, M, S/4, S/4) all candidate masks
    ious: torch.Tensor  # (B, M) predicted IoU of each candidate
    obj_ptr: torch.Tensor  # (B, C) object pointer for later frames
    object_score_logits: torch.Tensor  # (B, 1) > 0 means the object is visible




def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer-style sine/cosine encoding of scalar positions: (N,) -> (N, dim)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (steps // 2) / half)
    angles = positions.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SAM2Model(nn.Module):
    """SAM 2 / 2.1: image encoder, prompt encoder, mask decoder, memory attention and encoder."""

    def __init__(self, config: SAM2Config) -> None:
        super().__init__()
        self.config = config
        hidden_dim = config.hidden_dim
        mem_dim = config.memory_encoder.mem_dim
        self.hidden_dim = hidden_dim
        self.mem_dim = mem_dim
        self.image_size = config.image_size
        self.num_maskmem = config.num_maskmem

        self.image_encoder = ImageEncoder.from_config(config.trunk, config.neck)
        self.memory_attention = MemoryAttention.from_config(
            config.memory_attention, d_model=hidden_dim, kv_in_dim=mem_dim
        )
        self.memory_encoder = MemoryEncoder.from_config(config.memory_encoder, in_dim=hidden_dim)

        # Temporal encodings of the memory slots, learned "no memory" embeddings.
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        for parameter in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc):
            nn.init.trunc_normal_(parameter, std=0.02)

        embedding_size = config.embedding_size
        decoder = config.decoder
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=hidden_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=decoder.mask_in_chans,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=decoder.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=decoder.transformer_depth,
                embedding_dim=hidden_dim,
                mlp_dim=decoder.transformer_mlp_dim,
                num_heads=decoder.transformer_num_heads,
            ),
            transformer_dim=hidden_dim,
            iou_head_depth=decoder.iou_head_depth,
            iou_head_hidden_dim=decoder.iou_head_hidden_dim,
            use_high_res_features=config.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=config.iou_prediction_use_sigmoid,
            pred_obj_scores=config.pred_obj_scores,
            pred_obj_scores_mlp=config.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=config.use_multimask_token_for_obj_ptr,
            dynamic_multimask_via_stability=decoder.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=decoder.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=decoder.dynamic_multimask_stability_thresh,
        )

        if not (config.use_obj_ptrs_in_encoder and config.pred_obj_scores):
            raise ValueError("surgsam2 supports SAM 2 configs with object pointers and object scores")
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        if config.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj: nn.Module = MLP(hidden_dim, hidden_dim, hidden_dim, 3)
        else:
            self.obj_ptr_proj = nn.Linear(hidden_dim, hidden_dim)
        if config.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj: nn.Module = nn.Linear(hidden_dim, mem_dim)
        else:
            self.obj_ptr_tpos_proj = nn.Identity()
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden_dim))
        nn.init.trunc_normal_(self.no_obj_ptr, std=0.02)
        self.no_obj_embed_spatial: nn.Parameter | None = None
        if config.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
            nn.init.trunc_normal_(self.no_obj_embed_spatial, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.no_mem_embed.dtype

    PRECISIONS = PRECISIONS

    def to_precision(self, precision: str) -> SAM2Model:
        """Cast in place: ``fp32``; ``bf16`` (every module); ``mixed`` = fp32 with memory attention
        in bf16, for CPUs whose bf16 convolutions are slow (bf16 pays most on memory attention's
        large matmuls; on the benchmark machine plain bf16 was faster, see benchmarks/README.md)."""
        if precision not in self.PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(self.PRECISIONS)}")
        self.to(torch.bfloat16 if precision == "bf16" else torch.float32)
        if precision == "mixed":
            self.memory_attention.to(torch.bfloat16)
        return self

    # Parts compiled by `compile_parts`: the image encoder (fixed shapes), memory attention (one
    # shape per number of memories), and the prompt decoder and memory encoder.
    COMPILED_PARTS = ("image_encoder", "memory_attention", "sam_mask_decoder", "memory_encoder")

    def compile_parts(self, **compile_options: object) -> SAM2Model:
        """`torch.compile` the network's parts in place (options as torch.compile's, e.g.
        ``mode="max-autotune"``, ``backend="eager"``); weights and state dict are unchanged.
        Not measured on a GPU yet; on the benchmark CPU it did not pay (see benchmarks/README.md)."""
        for name in self.COMPILED_PARTS:
            getattr(self, name).compile(**compile_options)
        return self

    def use_cuda_graphs(self, warmup_calls: int = 1, max_graphs: int = 8) -> dict[str, CudaGraphed]:
        """Run the parts of `COMPILED_PARTS` through CUDA graphs at inference on a GPU (one graph
        per input shape, see `surgsam2.model.cuda_graphs`); a no-op for CPU tensors and training.
        Returns the wrappers by part name (their ``stats`` say what was replayed). Idempotent."""
        graphed: dict[str, CudaGraphed] = {}
        for name in self.COMPILED_PARTS:
            module = getattr(self, name)
            if not isinstance(module.forward, CudaGraphed):
                module.forward = CudaGraphed(module.forward, name, warmup_calls, max_graphs)
            graphed[name] = module.forward
        return graphed

    # ------------------------------------------------------------------------------------
    # Image
    # ------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Normalised (B, 3, S, S) images -> features for the decoder and memory attention (B > 1:
        one image per stream, split with `ImageFeatures.row`)."""
        backbone = self.image_encoder(images)
        # The neck fuses levels in float32 (as the official one does); a reduced-precision model
        # continues in its own dtype (a no-op in float32).
        levels = [level.to(self.dtype) for level in backbone["backbone_fpn"]]
        high_res: list[torch.Tensor] = []
        if self.config.use_high_res_features_in_sam:
            # Projected once per frame, not once per object or click.
            high_res = [
                self.sam_mask_decoder.conv_s0(levels[0]),
                self.sam_mask_decoder.conv_s1(levels[1]),
            ]
        return ImageFeatures(
            embedding=levels[-1], position=backbone["vision_pos_enc"][-1].to(self.dtype), high_res=high_res
        )

    # ------------------------------------------------------------------------------------
    # Memory attention
    # ------------------------------------------------------------------------------------
    def features_without_memory(self, features: ImageFeatures, batch_size: int) -> torch.Tensor:
        """Features of an initial conditioning frame: the image embedding plus 'no memory'."""
        embedding = features.embedding + self.no_mem_embed.view(1, -1, 1, 1)
        return embedding.expand(batch_size, -1, -1, -1)

    def attend_to_memory(
        self,
        features: ImageFeatures,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
        rotated_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Condition the frame on memory tokens (L, B, mem_dim) -> (B, C, h, w) features.

        Features of batch 1 are shared by the B objects (memory attention's first self-attention
        runs once for them). ``rotated_keys``: the memory's keys precomputed per layer (see
        `MemoryAttention.forward`).
        """
        batch_size = memory.shape[1]
        _, channels, height, width = features.embedding.shape
        dtype = self.memory_attention.dtype  # may differ from the model's (precision "mixed")
        current = features.embedding.flatten(2).permute(2, 0, 1).to(dtype)
        current_pos = features.position.flatten(2).permute(2, 0, 1).to(dtype)
        fused = self.memory_attention(
            curr=current,
            curr_pos=current_pos,
            memory=memory.to(dtype),
            memory_pos=memory_pos.to(dtype),
            num_obj_ptr_tokens=num_obj_ptr_tokens,
            rotated_keys=rotated_keys,
        ).to(self.dtype)
        return fused.permute(1, 2, 0).reshape(batch_size, channels, height, width)

    def pointer_position_encoding(self, relative_positions: torch.Tensor, max_pointers: int) -> torch.Tensor:
        """Temporal encodings (P, mem_dim) of object pointers ``relative_positions`` frames away."""
        if not self.config.add_tpos_enc_to_obj_ptrs:
            return relative_positions.new_zeros(relative_positions.shape[0], self.mem_dim, dtype=self.dtype)
        encoding_dim = self.hidden_dim if self.config.proj_tpos_enc_in_obj_ptrs else self.mem_dim
        normalised = relative_positions.to(torch.float32) / max(max_pointers - 1, 1)
        return self.obj_ptr_tpos_proj(sine_encoding_1d(normalised, encoding_dim).to(self.dtype))

    def pointer_tokens(self, pointers: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split (P, B, C) pointers with (P, B, mem_dim) encodings into (P*C/mem_dim, B, mem_dim)
        tokens, each token of a pointer sharing the pointer's encoding."""
        num_pointers, batch_size, channels = pointers.shape
        splits = channels // self.mem_dim
        tokens = pointers.reshape(num_pointers, batch_size, splits, self.mem_dim)
        tokens = tokens.permute(0, 2, 1, 3).flatten(0, 1)
        return tokens, positions.repeat_interleave(splits, dim=0)

    # ------------------------------------------------------------------------------------
    # Decoding
    # ------------------------------------------------------------------------------------
    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        """Whether the decoder outputs 3 candidates (ambiguous prompts) rather than 1."""
        config = self.config
        return (
            config.multimask_output_in_sam
            and (is_init_cond_frame or config.multimask_output_for_tracking)
            and config.multimask_min_pt_num <= num_points <= config.multimask_max_pt_num
        )

    def decode(
        self,
        pix_feat: torch.Tensor,
        high_res: list[torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> DecoderOutput:
        """Run the prompt encoder and mask decoder for B objects.

        pix_feat (B, C, h, w): memory-conditioned features; high_res: the frame's skip features
        (batch 1 or B); points in model pixel coordinates (B, P, 2) with labels (B, P) (1 positive,
        0 negative, 2/3 box corners, -1 padding); mask_inputs (B, 1, *, *) logits or a mask.
        """
        batch_size = pix_feat.shape[0]
        if point_coords is None:
            point_coords = pix_feat.new_zeros(batch_size, 1, 2)
            point_labels = -torch.ones(batch_size, 1, dtype=torch.int32, device=pix_feat.device)
        dense_mask = None
        if mask_inputs is not None:
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                dense_mask = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                ).to(self.dtype)
            else:
                dense_mask = mask_inputs.to(self.dtype)
        sparse, dense = self.sam_prompt_encoder(
            points=(point_coords, point_labels), boxes=None, masks=dense_mask
        )
        high_res = [level.expand(batch_size, -1, -1, -1) for level in high_res]
        multimasks, ious, output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=pix_feat,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res or None,
        )
        is_visible = object_score_logits > 0
        # Masks of absent objects are a hard "nothing here", as the memory will see them.
        multimasks = torch.where(is_visible[:, None, None], multimasks, NO_OBJECT_SCORE).float()

        output_token = output_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch_size, device=pix_feat.device)
            low_res_masks = multimasks[rows, best].unsqueeze(1)
            if output_tokens.shape[1] > 1:
                output_token = output_tokens[rows, best]
        else:
            low_res_masks = multimasks
        obj_ptr = self.gate_pointer(self.obj_ptr_proj(output_token), object_score_logits)
        return DecoderOutput(low_res_masks, multimasks, ious, obj_ptr, object_score_logits)

    def gate_pointer(self, obj_ptr: torch.Tensor, object_score_logits: torch.Tensor) -> torch.Tensor:
        """Replace the pointer of an absent object by the learned 'no object' pointer."""
        if self.config.soft_no_obj_ptr:
            visible = object_score_logits.sigmoid()
        else:
            visible = (object_score_logits > 0).to(obj_ptr.dtype)
        if self.config.fixed_no_obj_ptr:
            obj_ptr = visible * obj_ptr
        return obj_ptr + (1 - visible) * self.no_obj_ptr

    def mask_as_output(
        self, pix_feat: torch.Tensor, high_res: list[torch.Tensor], masks: torch.Tensor
    ) -> DecoderOutput:
        """Use binary (B, 1, S, S) prompt masks directly as the output (no decoding of the mask).

        The decoder still runs on the downsampled mask to produce the object pointer.
        """
        masks = masks.float()
        high_res_logits = masks * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        low_res_masks = F.interpolate(
            high_res_logits,
            size=(high_res_logits.shape[-2] // 4, high_res_logits.shape[-1] // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        ious = masks.new_ones(masks.shape[0], 1)
        decoded = self.decode(pix_feat, high_res, mask_inputs=self.mask_downsample(masks.to(self.dtype)))
        visible = torch.any(masks.flatten(1) > 0.0, dim=1, keepdim=True).to(masks.dtype)
        object_score_logits = MASK_LOGIT_SCALE * visible + MASK_LOGIT_BIAS
        obj_ptr = self.gate_pointer(decoded.obj_ptr, object_score_logits)
        return DecoderOutput(low_res_masks, low_res_masks, ious, obj_ptr, object_score_logits)

    def upscale_masks(self, low_res_masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, S/4, S/4) logits -> (B, 1, S, S) logits at the model's input size."""
        return F.interpolate(
            low_res_masks.float(), size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )

    # ------------------------------------------------------------------------------------
    # Memory encoding
    # ------------------------------------------------------------------------------------
    def encode_memory(
        self,
        features: ImageFeatures,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: torch.Tensor | bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of B objects on a frame: features (B, mem_dim, h, w) and position (1, mem_dim, h, w).

        ``binarize`` (per object or for all) thresholds the masks of prompted frames at inference,
        so the memory holds what the user saw; otherwise the sigmoid of the logits is used.
        """
        batch_size = high_res_masks.shape[0]
        pix_feat = features.embedding.expand(batch_size, -1, -1, -1)
        probabilities = torch.sigmoid(high_res_masks)
        if self.config.binarize_mask_from_pts_for_mem_enc and not self.training:
            binarize = torch.as_tensor(binarize, device=high_res_masks.device).reshape(-1, 1, 1, 1)
            hard = (high_res_masks > 0).to(high_res_masks.dtype)
            mask_for_memory = torch.where(binarize, hard, probabilities)
        else:
            mask_for_memory = probabilities
        if self.config.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_memory = mask_for_memory * self.config.sigmoid_scale_for_mem_enc
        if self.config.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_memory = mask_for_memory + self.config.sigmoid_bias_for_mem_enc
        encoded = self.memory_encoder(pix_feat, mask_for_memory, skip_mask_sigmoid=True)
        memory_features = encoded["vision_features"]
        if self.no_obj_embed_spatial is not None:
            absent = (object_score_logits <= 0).to(memory_features.dtype)
            memory_features = memory_features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return memory_features, encoded["vision_pos_enc"][-1][:1]


def build_model(config: SAM2Config) -> SAM2Model:
    """A SAM 2 model with freshly initialised weights for ``config``."""
    return SAM2Model(config)
