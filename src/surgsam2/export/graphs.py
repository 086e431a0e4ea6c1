"""The six exportable parts of the tracking step, as modules with tensor-only inputs and outputs.

Each wraps our model's own parts (`SAM2Model.encode_image`, the prompt encoder and mask decoder,
the memory attention layers and the keys they read of a stored memory, `SAM2Model.encode_memory`)
so that ``torch.onnx.export`` can trace it:
no Python objects, no complex numbers, static shapes except the object batch B, the number of
prompt points N and the number of memory slots S (bounded by the export). The tests check each against the torch part it stands for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgsam2.model.attention import RoPEAttention
from surgsam2.model.position import apply_rope
from surgsam2.model.sam2 import MASK_LOGIT_BIAS, MASK_LOGIT_SCALE, NO_OBJECT_SCORE, ImageFeatures, SAM2Model

# Added to the attention scores of invalid memory tokens: finite (an object without any valid
# token gets a uniform softmax instead of NaN), and far enough below any real score that exp()
# of it is exactly 0 in float32.
INVALID_SCORE = -1.0e30


class PartGraph(nn.Module):
    """One exported part of ``model``: ``input_names`` and ``output_names`` name its ONNX I/O."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.model = model


class ImageEncoderGraph(PartGraph):
    """Normalised images (1, 3, S, S) -> stride-16 embedding, its position encoding and the
    decoder's two projected skip levels (stride 4 and 8), as `SAM2Model.encode_image`."""

    input_names = ("images",)
    output_names = ("image_embedding", "image_position", "high_res_0", "high_res_1")

    def __init__(self, model: SAM2Model) -> None:
        if not model.config.use_high_res_features_in_sam:
            raise ValueError(f"model {model.config.name!r} has no high-res decoder features: not exportable")
        super().__init__(model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.encode_image(images)
        return features.embedding, features.position, features.high_res[0], features.high_res[1]


class MaskDecoderGraph(PartGraph):
    """Prompt encoder + mask decoder for B objects, `SAM2Model.decode` with a per-object mask input
    and multimask flag.

    Inputs: memory-conditioned features (B, C, h, w); the frame's skip levels (batch 1); points
    (B, N, 2) in model pixels with labels (B, N) int32 (1 positive, 0 negative, 2/3 box corners,
    -1 padding); a mask prompt (B, 1, 4h, 4w) logits used where ``has_mask`` (B,) is true;
    ``multimask`` (B,): three candidates and the best by predicted IoU (as the tracker asks for
    ambiguous prompts) instead of the single mask (with SAM 2.1's fallback to the best candidate
    when the single one is unstable).
    Outputs: the chosen low-res mask logits (B, 1, 4h, 4w) and its predicted IoU (B, 1), the object
    pointer (B, C), object-score logits (B, 1), the three candidates (B, 3, 4h, 4w) and their IoUs.
    Absent objects (score <= 0) get NO_OBJECT_SCORE masks, as in `decode`.
    """

    input_names = (
        "pix_feat", "high_res_0", "high_res_1", "point_coords", "point_labels", "mask_input", "has_mask", "multimask",
    )  # fmt: skip
    output_names = ("low_res_masks", "iou", "obj_ptr", "object_score_logits", "multimask_masks", "multimask_ious")

    def forward(
        self,
        pix_feat: torch.Tensor,
        high_res_0: torch.Tensor,
        high_res_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask: torch.Tensor,
        multimask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        prompt_encoder, decoder = model.sam_prompt_encoder, model.sam_mask_decoder
        sparse, no_mask_dense = prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
        dense = torch.where(has_mask[:, None, None, None], prompt_encoder.mask_downscaling(mask_input), no_mask_dense)
        all_masks, all_ious, tokens, scores = decoder.predict_masks(
            pix_feat, prompt_encoder.get_dense_pe(), sparse, dense, False, [high_res_0, high_res_1]
        )
        if decoder.dynamic_multimask_via_stability:
            single_masks, single_iou = decoder.select_stable_single_mask(all_masks, all_ious)
        else:
            single_masks, single_iou = all_masks[:, :1], all_ious[:, :1]
        visible = (scores > 0)[:, :, None, None]
        single_masks = torch.where(visible, single_masks, NO_OBJECT_SCORE)
        candidates = torch.where(visible, all_masks[:, 1:], NO_OBJECT_SCORE)
        candidate_ious = all_ious[:, 1:]
        best = torch.argmax(candidate_ious, dim=-1, keepdim=True)  # (B, 1)
        best_masks = torch.gather(candidates, 1, best[:, :, None, None].expand(-1, -1, *candidates.shape[-2:]))
        best_iou = torch.gather(candidate_ious, 1, best)
        single_token = tokens[:, 0]
        if model.config.use_multimask_token_for_obj_ptr:
            multi_token = torch.gather(tokens[:, 1:], 1, best[:, :, None].expand(-1, -1, tokens.shape[-1]))[:, 0]
        else:
            multi_token = single_token
        chosen = multimask[:, None]
        low_res_masks = torch.where(chosen[:, :, None, None], best_masks, single_masks)
        iou = torch.where(chosen, best_iou, single_iou)
        token = torch.where(chosen, multi_token, single_token)
        obj_ptr = model.gate_pointer(model.obj_ptr_proj(token), scores)
        return low_res_masks, iou, obj_ptr, scores, candidates, candidate_ious


def check_cached_keys(model: SAM2Model) -> None:
    """ValueError unless every memory-attention layer adds the memory's position encoding to its
    cross-attention keys: what lets a stored memory's keys be computed once (`MemoryKeysGraph`)."""
    if not all(layer.pos_enc_at_cross_attn_keys for layer in model.memory_attention.layers):
        raise ValueError(f"model {model.config.name!r}: memory keys without position encoding are not exportable")


class RopeGraph(PartGraph):
    """A part that rotates by the memory grid's RoPE tables (T tokens, real cos/sin buffers)."""

    def __init__(self, model: SAM2Model, spatial_pos: torch.Tensor) -> None:
        """``spatial_pos`` (T, mem_dim): the memory encoder's position encoding of one frame's tokens."""
        super().__init__(model)
        check_cached_keys(model)
        self.register_buffer("spatial_pos", spatial_pos.detach().clone(), persistent=False)
        first = model.memory_attention.layers[0].self_attn
        cos, sin, _ = first.rope_tables(spatial_pos.shape[0], spatial_pos.device)
        self.register_buffer("rope_cos", cos.clone(), persistent=False)
        self.register_buffer("rope_sin", sin.clone(), persistent=False)

    def rotated_keys(self, attention: RoPEAttention, keys_in: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """`RoPEAttention.rotated_keys` with the real rotation: (B, T, kv_in_dim) -> (B, T, d)."""
        projected = F.linear(keys_in, attention.k_proj.weight, attention.k_proj.bias if bias else None)
        rotated = apply_rope(attention.split_heads(projected), self.rope_cos, self.rope_sin)
        return attention.merge_heads(rotated)


class MemoryKeysGraph(RopeGraph):
    """Every memory-attention layer's keys of B memories, computed once when they are written, as
    the torch tracker caches them (`MemoryAttention.rotated_spatial_keys`): the key projection of
    the tokens plus their spatial encoding, rotated over the grid; the temporal-slot term is added
    by `MemoryAttentionGraph`. Input: memory tokens (B, T, mem_dim) as the bank stores them.
    Output: ``memory_keys`` (B, num_layers, T, d_model)."""

    input_names = ("memory_tokens",)
    output_names = ("memory_keys",)

    def forward(self, memory_tokens: torch.Tensor) -> torch.Tensor:
        keys_in = memory_tokens + self.spatial_pos
        layers = self.model.memory_attention.layers
        return torch.stack([self.rotated_keys(layer.cross_attn_image, keys_in) for layer in layers], dim=1)


class MemoryAttentionGraph(RopeGraph):
    """Memory attention over memory slots (at most the export's number) and a fixed number of pointer
    slots, with validity masks.

    Inputs: the frame's embedding and position (batch 1); per object B: ``memory_tokens``
    (B, S, T, mem_dim) memory-encoder tokens in S slots (the attention's values), ``memory_keys``
    (B, S, num_layers, T, d_model) their keys from `MemoryKeysGraph` (computed once per stored
    memory), ``memory_slots`` (B, S) int64 index of each slot's temporal encoding (num_maskmem - 1
    for conditioning frames, as `MemoryBank.layout` gives), ``memory_valid`` (B, S) bool;
    ``pointers`` (B, P, C) with signed frame offsets ``pointer_offsets`` (B, P) int64 and
    ``pointer_valid`` (B, P) bool. A slot's keys are its memory's keys plus its temporal slot's
    rotated key term (the key projection is linear: `MemoryAttention.rotated_temporal_keys`).
    Tokens of invalid slots get INVALID_SCORE on their attention scores, so they contribute
    nothing: the result equals memory attention over the valid memories only. An object with no
    valid slot gets the image embedding plus the 'no memory' embedding (`features_without_memory`,
    a new object's features). Output: ``pix_feat`` (B, C, h, w). RoPE uses the real cos/sin
    formula (no complex numbers).
    """

    input_names = (
        "image_embedding", "image_position", "memory_tokens", "memory_keys", "memory_slots", "memory_valid",
        "pointers", "pointer_offsets", "pointer_valid",
    )  # fmt: skip
    output_names = ("pix_feat",)

    def __init__(self, model: SAM2Model, spatial_pos: torch.Tensor, max_pointers: int) -> None:
        """``spatial_pos`` (T, mem_dim): the memory encoder's position encoding of one frame's
        tokens; ``max_pointers``: the pointer window scaling pointer offsets (streaming:
        max_obj_ptrs_in_encoder)."""
        super().__init__(model, spatial_pos)
        self.max_pointers = max_pointers
        # Each temporal slot's projected key term (num_layers, num_maskmem, d) and the same with the
        # channels of each rotation pair swapped; with the tables spread over d channels, the term
        # rotated at grid token t is term * cos_d[t] + swapped * sin_d[t] (`_temporal_keys`).
        temporal = model.maskmem_tpos_enc.view(model.num_maskmem, -1).detach()
        layers = model.memory_attention.layers
        terms = torch.stack([F.linear(temporal, layer.cross_attn_image.k_proj.weight) for layer in layers]).detach()
        self.register_buffer("temporal_terms", terms.clone(), persistent=False)
        swapped = terms.reshape(*terms.shape[:-1], -1, 2).flip(-1).reshape(terms.shape)
        self.register_buffer("temporal_terms_swapped", swapped.clone(), persistent=False)
        heads = layers[0].cross_attn_image.num_heads
        self.register_buffer("rope_cos_d", self.rope_cos.repeat_interleave(2, dim=-1).repeat(1, heads), persistent=False)
        signed_sin = torch.stack((-self.rope_sin, self.rope_sin), dim=-1).flatten(-2)
        self.register_buffer("rope_sin_d", signed_sin.repeat(1, heads), persistent=False)

    def _temporal_keys(self, layer_index: int, memory_slots: torch.Tensor) -> torch.Tensor:
        """The rotated key term of each slot's temporal encoding: (B, S) -> (B, S, T, d)."""
        term = self.temporal_terms[layer_index][memory_slots][:, :, None, :]
        swapped = self.temporal_terms_swapped[layer_index][memory_slots][:, :, None, :]
        return term * self.rope_cos_d + swapped * self.rope_sin_d

    def _attention(
        self, attention: RoPEAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        score_bias: torch.Tensor | None,
    ) -> torch.Tensor:  # fmt: skip
        """Heads of queries (rotated here), keys (already rotated) and values -> projected output,
        with an additive score bias (B, 1, 1, Nk)."""
        q = apply_rope(q, self.rope_cos, self.rope_sin)
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
        if score_bias is not None:
            scores = scores + score_bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return attention.out_proj(attention.merge_heads(out))

    def _self_attention(self, attention: RoPEAttention, q_and_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`RoPEAttention.forward` over the frame's own tokens."""
        k = apply_rope(attention.split_heads(attention.k_proj(q_and_k)), self.rope_cos, self.rope_sin)
        q, v = attention.split_heads(attention.q_proj(q_and_k)), attention.split_heads(attention.v_proj(v))
        return self._attention(attention, q, k, v, None)

    def _memory(
        self, memory_tokens: torch.Tensor, memory_valid: torch.Tensor, pointers: torch.Tensor,
        pointer_offsets: torch.Tensor, pointer_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Batch-first memory (B, L, mem_dim) (the values), the pointer tokens with their encoding
        (B, Lp, mem_dim) (the pointer rows' keys) and the score bias (B, 1, 1, L), laid out as
        `memory.assembly.memory_tokens` does."""
        model = self.model
        batch, slots, tokens, channels = memory_tokens.shape
        num_pointers = pointers.shape[1]
        pointer_pos = model.pointer_position_encoding(pointer_offsets.reshape(-1), self.max_pointers)
        pointer_pos = pointer_pos.reshape(batch, num_pointers, channels)
        pointer_tokens, pointer_token_pos = model.pointer_tokens(pointers.transpose(0, 1), pointer_pos.transpose(0, 1))
        pointer_tokens, pointer_token_pos = pointer_tokens.transpose(0, 1), pointer_token_pos.transpose(0, 1)
        splits = pointers.shape[-1] // channels
        valid = torch.cat(
            [memory_valid.repeat_interleave(tokens, dim=1), pointer_valid.repeat_interleave(splits, dim=1)], dim=1
        )
        bias = torch.where(valid, 0.0, INVALID_SCORE).to(memory_tokens.dtype)[:, None, None, :]
        memory = torch.cat([memory_tokens.reshape(batch, slots * tokens, channels), pointer_tokens], dim=1)
        return memory, pointer_tokens + pointer_token_pos, bias

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_position: torch.Tensor,
        memory_tokens: torch.Tensor,
        memory_keys: torch.Tensor,
        memory_slots: torch.Tensor,
        memory_valid: torch.Tensor,
        pointers: torch.Tensor,
        pointer_offsets: torch.Tensor,
        pointer_valid: torch.Tensor,
    ) -> torch.Tensor:
        model, stack = self.model, self.model.memory_attention
        batch, slots, tokens, _ = memory_tokens.shape
        _, channels, height, width = image_embedding.shape
        memory, pointer_keys_in, bias = self._memory(memory_tokens, memory_valid, pointers, pointer_offsets, pointer_valid)
        query_pos = image_position.flatten(2).transpose(1, 2)  # (1, HW, C)
        output = image_embedding.flatten(2).transpose(1, 2)
        if stack.pos_enc_at_input:
            output = output + 0.1 * query_pos
        for index, layer in enumerate(stack.layers):
            normed = layer.norm1(output)
            q_and_k = normed + query_pos if layer.pos_enc_at_attn else normed
            output = output + self._self_attention(layer.self_attn, q_and_k, normed)
            output = output.expand(batch, -1, -1)
            normed = layer.norm2(output)
            queries = normed + query_pos if layer.pos_enc_at_cross_attn_queries else normed
            attention = layer.cross_attn_image
            spatial_keys = (memory_keys[:, :, index] + self._temporal_keys(index, memory_slots)).reshape(
                batch, slots * tokens, -1
            )
            keys = torch.cat([spatial_keys, attention.k_proj(pointer_keys_in)], dim=1)
            output = output + self._attention(
                attention, attention.split_heads(attention.q_proj(queries)), attention.split_heads(keys),
                attention.split_heads(attention.v_proj(memory)), bias,
            )  # fmt: skip
            output = layer.feed_forward(output)
        fused = stack.norm(output).transpose(1, 2).reshape(batch, channels, height, width)
        without_memory = image_embedding + model.no_mem_embed.view(1, -1, 1, 1)
        has_memory = (memory_valid.any(dim=1) | pointer_valid.any(dim=1))[:, None, None, None]
        return torch.where(has_memory, fused, without_memory)


class MemoryEncoderGraph(PartGraph):
    """The memory of B objects on a frame, as the tracker stores it: `SAM2Model.upscale_masks`
    then `SAM2Model.encode_memory`. Inputs: the frame's embedding (batch 1), low-res mask logits
    (B, 1, 4h, 4w), object-score logits (B, 1), ``binarize`` (B,) bool (prompted frames).
    Output: memory tokens (B, T, mem_dim), T = h*w, in the layout memory attention reads."""

    input_names = ("image_embedding", "low_res_masks", "object_score_logits", "binarize")
    output_names = ("memory_tokens",)

    def forward(
        self,
        image_embedding: torch.Tensor,
        low_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        binarize: torch.Tensor,
    ) -> torch.Tensor:
        model = self.model
        features = ImageFeatures(embedding=image_embedding, position=image_embedding, high_res=[])
        high_res_masks = model.upscale_masks(low_res_masks).to(model.dtype)
        memory_features, _ = model.encode_memory(features, high_res_masks, object_score_logits, binarize)
        return memory_features.flatten(2).transpose(1, 2)


class MaskPromptGraph(PartGraph):
    """A mask prompt's object pointer and object score, as `SAM2Model.mask_as_output` makes them:
    the decoder on the raw image embedding with the downsampled mask as its mask input, the pointer
    gated by the mask's own score. Inputs: the frame's embedding and skip levels (batch 1), binary
    masks (B, 1, S, S). Outputs: ``obj_ptr`` (B, C), ``object_score_logits`` (B, 1). The mask
    logits themselves are the mask resized on the host (an antialiased resize has no opset-17 op)."""

    input_names = ("image_embedding", "high_res_0", "high_res_1", "masks")
    output_names = ("obj_ptr", "object_score_logits")

    def forward(
        self, image_embedding: torch.Tensor, high_res_0: torch.Tensor, high_res_1: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        pix_feat = image_embedding.expand(masks.shape[0], -1, -1, -1)
        decoded = model.decode(pix_feat, [high_res_0, high_res_1], mask_inputs=model.mask_downsample(masks))
        visible = torch.any(masks.flatten(1) > 0.0, dim=1, keepdim=True).to(masks.dtype)
        object_score_logits = MASK_LOGIT_SCALE * visible + MASK_LOGIT_BIAS
        return model.gate_pointer(decoded.obj_ptr, object_score_logits), object_score_logits


def memory_spatial_position(model: SAM2Model) -> torch.Tensor:
    """(T, mem_dim): the memory encoder's position encoding of one frame's tokens (a constant)."""
    size, grid = model.image_size, model.config.embedding_size
    features = ImageFeatures(
        embedding=torch.zeros(1, model.hidden_dim, grid, grid), position=torch.zeros(1), high_res=[]
    )
    with torch.no_grad():
        _, position = model.encode_memory(features, torch.zeros(1, 1, size, size), torch.ones(1, 1), False)
    return position.flatten(2)[0].T.contiguous()


__all__ = [
    "ImageEncoderGraph",
    "MaskDecoderGraph",
    "MemoryAttentionGraph",
    "MemoryEncoderGraph",
    "MemoryKeysGraph",
    "MaskPromptGraph",
    "memory_spatial_position",
    "INVALID_SCORE",
]
