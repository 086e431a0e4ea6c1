"""Multi-head attention with optional down-projection (SAM decoder) and axial RoPE (memory)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from surgsam2.model.position import apply_rope, axial_rope_tables


class Attention(nn.Module):
    """Attention whose q/k/v are projected to ``embedding_dim // downsample_rate`` channels.

    ``kv_in_dim`` lets keys and values come from a space of another width (memory: 64).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    @staticmethod
    def _merge_heads(x: torch.Tensor) -> torch.Tensor:
        batch, heads, tokens, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self._merge_heads(out))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, C), k and v (B, Nk, kv_in_dim) -> (B, Nq, C)."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        return self._attend(q, k, v)


class RoPEAttention(Attention):
    """Attention with axial 2-D RoPE on queries and on the first keys.

    Queries are the tokens of a square feature grid. Keys are either the same grid
    (self-attention) or several frames of that grid followed by ``num_k_exclude_rope`` tokens
    (object pointers) that get no rotation. The cos/sin tables are built per grid size and cached.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate, dropout, kv_in_dim)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.feat_sizes = tuple(feat_sizes)
        self._tables: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def rope_tables(self, num_tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables for a square grid of ``num_tokens`` tokens, cached per device."""
        key = (num_tokens, str(device))
        tables = self._tables.get(key)
        if tables is None:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"RoPE attention needs a square token grid, got {num_tokens} tokens")
            # Built outside inference mode so a cache filled during inference still works in
            # a later training step.
            with torch.inference_mode(False), torch.no_grad():
                cos, sin = axial_rope_tables(
                    self.internal_dim // self.num_heads, side, side, self.rope_theta
                )
                tables = (cos.to(device), sin.to(device))
            self._tables[key] = tables
        return tables

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        cos, sin = self.rope_tables(q.shape[-2], q.device)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        if num_k_rope != q.shape[-2] and not self.rope_k_repeat:
            raise ValueError("keys differ in length from queries but rope_k_repeat is off")
        q = apply_rope(q, cos, sin)
        if num_k_rope > 0:
            k_rope = apply_rope(k[:, :, :num_k_rope], cos, sin)
            k = torch.cat([k_rope, k[:, :, num_k_rope:]], dim=2) if num_k_exclude_rope else k_rope
        return self._attend(q, k, v)
