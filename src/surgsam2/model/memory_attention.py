"""Memory attention: conditions the current frame's features on the memory bank.

Each layer is pre-norm: self-attention over the frame's tokens (2-D RoPE), cross-attention
from those tokens to the memory (RoPE on the spatial memory tokens, none on the trailing
object-pointer tokens), then a feed-forward block. Parameter names and shapes follow the
official SAM 2 modules, so official checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from surgsam2.model.attention import RoPEAttention
from surgsam2.model.configs import MemoryAttentionConfig
from surgsam2.model.layers import get_activation, linear


class MemoryAttentionLayer(nn.Module):
    """One pre-norm block: RoPE self-attention, RoPE cross-attention to memory, MLP.

    Works batch-first: ``tgt`` (B, L, d_model), ``memory`` (B, M, kv_in_dim), where the last
    ``num_k_exclude_rope`` memory tokens are object pointers that get no rotary encoding.
    """

    def __init__(
        self,
        d_model: int = 256,
        dim_feedforward: int = 2048,
        num_heads: int = 1,
        dropout: float = 0.1,
        kv_in_dim: int = 64,
        rope_theta: float = 10000.0,
        activation: str = "relu",
        pos_enc_at_attn: bool = False,
        pos_enc_at_cross_attn_keys: bool = True,
        pos_enc_at_cross_attn_queries: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.dropout_p = dropout
        self.self_attn = RoPEAttention(d_model, num_heads, dropout=dropout, rope_theta=rope_theta)
        # Keys repeat the grid's rotations once per memory frame (rope_k_repeat).
        self.cross_attn_image = RoPEAttention(
            d_model,
            num_heads,
            dropout=dropout,
            kv_in_dim=kv_in_dim,
            rope_theta=rope_theta,
            rope_k_repeat=True,
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = get_activation(activation)()
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Residual-branch dropout; the identity (no copy) in eval mode."""
        if self.training and self.dropout_p > 0.0:
            return F.dropout(x, self.dropout_p, training=True)
        return x

    def _self_attention(self, tgt: torch.Tensor, query_pos: torch.Tensor | None) -> torch.Tensor:
        """tgt + SelfAttn(norm1(tgt)); the position encoding joins q and k only if configured."""
        normed = self.norm1(tgt)
        q_and_k = normed + query_pos if self.pos_enc_at_attn and query_pos is not None else normed
        return tgt + self._dropout(self.self_attn(q_and_k, q_and_k, normed))

    def _cross_attention(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_with_pos: torch.Tensor,
        query_pos: torch.Tensor | None,
        num_k_exclude_rope: int,
        rotated_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tgt + CrossAttn(norm2(tgt) -> memory); keys carry the memory position encoding
        (``rotated_keys``: the keys precomputed, see `RoPEAttention.forward`)."""
        normed = self.norm2(tgt)
        queries = (
            normed + query_pos
            if self.pos_enc_at_cross_attn_queries and query_pos is not None
            else normed
        )
        keys = memory_with_pos if self.pos_enc_at_cross_attn_keys else memory
        attended = self.cross_attn_image(
            queries, keys, memory, num_k_exclude_rope=num_k_exclude_rope, rotated_keys=rotated_keys
        )
        return tgt + self._dropout(attended)

    def feed_forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """tgt + MLP(norm3(tgt))."""
        hidden = self._dropout(linear(self.norm3(tgt), self.linear1, self.activation))
        return tgt + self._dropout(linear(hidden, self.linear2))

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        num_k_exclude_rope: int = 0,
        memory_with_pos: torch.Tensor | None = None,
        rotated_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batch-first block. ``memory_with_pos`` (= memory + pos) may be precomputed by a stack
        that shares it across layers; otherwise it is formed here from ``pos`` (None: no encoding).
        ``tgt`` may have batch 1 for a memory batch of B objects that share the frame: the
        self-attention then runs once and its result is broadcast to the B objects.
        ``rotated_keys``: cross-attention keys precomputed (see `RoPEAttention.forward`).
        """
        if memory_with_pos is None:
            memory_with_pos = memory + pos if pos is not None else memory
        tgt = self._self_attention(tgt, query_pos)
        if tgt.shape[0] != memory.shape[0]:
            tgt = tgt.expand(memory.shape[0], -1, -1)
        tgt = self._cross_attention(tgt, memory, memory_with_pos, query_pos, num_k_exclude_rope, rotated_keys)
        return self.feed_forward(tgt)


class MemoryAttention(nn.Module):
    """A stack of :class:`MemoryAttentionLayer` and a final LayerNorm, sequence-first in and out.

    ``curr`` (L, B, d_model) are the frame's tokens on a square grid, ``memory`` (M, B, kv_in_dim)
    the concatenated memories: spatial tokens of whole frames, then ``num_obj_ptr_tokens``
    object-pointer tokens. Returns (L, B, d_model).
    """

    def __init__(self, layers: Sequence[MemoryAttentionLayer], pos_enc_at_input: bool = True) -> None:
        super().__init__()
        if not layers:
            raise ValueError("memory attention needs at least one layer")
        self.d_model = layers[0].d_model
        self.num_layers = len(layers)
        self.pos_enc_at_input = pos_enc_at_input
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(self.d_model)

    @classmethod
    def from_config(
        cls, config: MemoryAttentionConfig, *, d_model: int, kv_in_dim: int
    ) -> "MemoryAttention":
        """Build from our config; ``d_model`` is the hidden dim, ``kv_in_dim`` the memory dim."""
        layers = [
            MemoryAttentionLayer(
                d_model=d_model,
                dim_feedforward=config.dim_feedforward,
                num_heads=config.num_heads,
                dropout=config.dropout,
                kv_in_dim=kv_in_dim,
                rope_theta=config.rope_theta,
                activation=config.activation,
            )
            for _ in range(config.num_layers)
        ]
        return cls(layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def rotated_spatial_keys(self, features: torch.Tensor, spatial_pos: torch.Tensor) -> torch.Tensor:
        """Every layer's cross-attention keys of stored memories, without their temporal
        encoding: (B, T, kv_in_dim) features of one frame's grid, (T, kv_in_dim) spatial
        encoding -> (B, num_layers, T, d_model). Cached per stored memory by the tracker."""
        keys_in = features.to(self.dtype) + spatial_pos.to(self.dtype)
        return torch.stack([layer.cross_attn_image.rotated_keys(keys_in) for layer in self.layers], dim=1)

    def rotated_temporal_keys(self, temporal: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """The key term of each temporal encoding (S, kv_in_dim), rotated over a grid of
        ``num_tokens``: (num_layers, S, num_tokens, d_model). A memory's keys in slot s are its
        `rotated_spatial_keys` plus this table's entry s (the key projection is linear)."""
        grid = temporal.to(self.dtype)[:, None, :].expand(-1, num_tokens, -1)
        return torch.stack([layer.cross_attn_image.rotated_keys(grid, bias=False) for layer in self.layers])

    def forward(
        self,
        curr: torch.Tensor | list[torch.Tensor],
        memory: torch.Tensor,
        curr_pos: torch.Tensor | list[torch.Tensor] | None = None,
        memory_pos: torch.Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
        rotated_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend the current tokens to the memory; all tensors are sequence-first (L, B, C).

        ``curr``/``curr_pos`` may also be one-element lists, as SAM 2's feature lists are; they
        may have batch 1 when B objects track on the same frame (the first self-attention then
        runs once). ``rotated_keys`` (num_layers, B, L_memory, d_model): the spatial memory
        tokens' keys precomputed (`rotated_spatial_keys` + `rotated_temporal_keys`); the
        pointer rows at the end are filled here.
        """
        if isinstance(curr, (list, tuple)):
            if len(curr) != 1:
                raise ValueError(f"expected one feature level, got {len(curr)}")
            curr = curr[0]
        if isinstance(curr_pos, (list, tuple)):
            if len(curr_pos) != 1:
                raise ValueError(f"expected one position encoding, got {len(curr_pos)}")
            curr_pos = curr_pos[0]
        if curr.shape[1] not in (1, memory.shape[1]):
            raise ValueError(
                f"batch of curr ({curr.shape[1]}) and memory ({memory.shape[1]}) differ"
            )
        if rotated_keys is not None and rotated_keys.shape[:3] != (self.num_layers, memory.shape[1], memory.shape[0]):
            raise ValueError(
                f"rotated_keys {tuple(rotated_keys.shape)} do not match {self.num_layers} layers and"
                f" memory {tuple(memory.shape[:2])}"
            )
        if not 0 <= num_obj_ptr_tokens <= memory.shape[0]:
            raise ValueError(
                f"num_obj_ptr_tokens={num_obj_ptr_tokens} outside [0, {memory.shape[0]}] memory tokens"
            )

        output = curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * curr_pos
        # Batch-first and contiguous once here (free for B == 1), so no layer copies again.
        output = output.transpose(0, 1).contiguous()
        query_pos = curr_pos.transpose(0, 1) if curr_pos is not None else None
        memory_bf = memory.transpose(0, 1).contiguous()
        # memory + pos is the same for every layer: form it once (first operand sets the layout);
        # with precomputed keys only the pointer rows need it.
        keys_from = memory_bf[:, memory_bf.shape[1] - num_obj_ptr_tokens :] if rotated_keys is not None else memory_bf
        if memory_pos is not None:
            pos_bf = memory_pos.transpose(0, 1)
            memory_with_pos = keys_from + pos_bf[:, pos_bf.shape[1] - keys_from.shape[1] :]
        else:
            memory_with_pos = keys_from

        for index, layer in enumerate(self.layers):
            output = layer(
                output,
                memory_bf,
                query_pos=query_pos,
                num_k_exclude_rope=num_obj_ptr_tokens,
                memory_with_pos=memory_with_pos,
                rotated_keys=None if rotated_keys is None else rotated_keys[index],
            )
        return self.norm(output).transpose(0, 1)


__all__ = ["MemoryAttentionLayer", "MemoryAttention"]
