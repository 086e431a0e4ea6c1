"""Multi-head attention with optional down-projection (SAM decoder) and axial RoPE (memory).

Two kernels: float32 and any GPU run use ``F.scaled_dot_product_attention``. bf16 on CPU uses
plain matmuls instead (`matmul_attention`): in inference the CPU flash-attention kernel runs bf16
at about its float32 rate, while matmuls reach the CPU's bf16 units (measured on the memory
attention's cross-attention, 1024 queries x 5184 keys x 256: 29 ms -> 11 ms); in training its
backward is slow on short sequences (see TRAINING_MATMUL_MAX_KEYS). When keys
and values come from a narrower space than a head (memory attention: 64 -> 256 channels), the
value projection is applied after the attention (see `Attention._attend_raw_values`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgsam2.model.layers import linear
from surgsam2.model.position import apply_rope, axial_rope_tables, rope_rotation

# Largest block of attention scores (bytes) formed at once by `matmul_attention`: beyond it the
# batch elements (objects) go one at a time and queries in chunks, so that the scores stay in
# cache between the two matmuls. Memory cross-attention at 512 px (1024 x 5184 scores per object),
# 2 Zen 4 cores: one object 18 -> 12 ms, three objects 54 -> 37 ms (best of 1, 2, 4, 8, 12 MiB).
SCORE_BLOCK_BYTES = 4 * 2**20
# Attentions with fewer queries or fewer keys than this stay on SDPA's fused kernel, faster for
# them: the mask decoder's ~8 prompt tokens against 256-4096 image tokens (nano's bf16 decoder at
# 256 px: 7.2 ms with SDPA, 8.0 ms with matmuls). Memory attention (>= 256 x 256 tokens) and
# Hiera's windows (16-196 tokens, many windows per batch) take the matmul path: one thread,
# Hiera-S at 512 px, SDPA vs matmuls per call: 8x8 windows 8.1 vs 5.1 ms, 14x14 windows 7.7 vs
# 5.0 ms, global 32x32 19.0 vs 13.6 ms.
MATMUL_ATTENTION_MIN_TOKENS = 16

# bf16 training on CPU (autocast) takes the matmul path for attentions without dropout of at most
# this many keys: SDPA's CPU backward is slow on many short sequences. Forward + backward, one
# thread, autocast bf16, SDPA vs matmuls: nano's Hiera windows (512 windows x 2 heads, 16 pooled
# queries x 64 keys) 141 vs 14 ms, 12 heads x 64 x 64 15.4 vs 2.6 ms, the decoder's 8 tokens x
# 256 image tokens 2.0 vs 0.8 ms, 256 x 1024 keys 54 vs 26 ms; but 8 heads x 256 x 1820 keys 97 vs
# 159 ms, hence the bound.
TRAINING_MATMUL_MAX_KEYS = 1024

def use_matmul_attention(q: torch.Tensor, key_length: int, training: bool) -> bool:
    """Whether `matmul_attention` replaces SDPA: inference of a bf16 model on CPU only, for
    attentions of at least MATMUL_ATTENTION_MIN_TOKENS queries and keys. float32 keeps the exact
    SDPA numerics the parity tests check, GPUs have fast bf16 SDPA kernels, and under autocast the
    computation follows the official mixed-precision run op for op."""
    return (
        not training
        and min(q.shape[-2], key_length) >= MATMUL_ATTENTION_MIN_TOKENS
        and q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
    )


def use_training_matmul_attention(q: torch.Tensor, key_length: int, dropout_p: float) -> bool:
    """Whether a training-mode attention takes `dense_attention` (matmuls, differentiable like
    SDPA): bf16 on CPU, no dropout, at most TRAINING_MATMUL_MAX_KEYS keys."""
    return (
        dropout_p == 0.0
        and key_length <= TRAINING_MATMUL_MAX_KEYS
        and q.dtype == torch.bfloat16
        and q.device.type == "cpu"
    )


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with all scores formed at once: `matmul_attention`'s form for
    small score blocks, and the training path's (one graph node per matmul, any size)."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with plain matmuls; q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv).

    Scores are rounded to q's dtype, the softmax accumulates in float32 inside the kernel.
    Batch dims broadcast (e.g. values shared by the heads). Beyond SCORE_BLOCK_BYTES of scores,
    one batch element and a block of queries at a time.
    """
    scale = q.shape[-1] ** -0.5
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    query_length, key_length = q.shape[-2], k.shape[-2]
    row_bytes = key_length * q.element_size()
    if math.prod(batch_shape) * query_length * row_bytes <= SCORE_BLOCK_BYTES:
        return dense_attention(q, k, v)
    rows_per_block = max(1, SCORE_BLOCK_BYTES // row_bytes)
    queries = q.expand(*batch_shape, *q.shape[-2:]).reshape(-1, *q.shape[-2:])
    keys = k.expand(*batch_shape, *k.shape[-2:]).reshape(-1, *k.shape[-2:])
    values = v.expand(*batch_shape, *v.shape[-2:]).reshape(-1, *v.shape[-2:])
    out = q.new_empty(queries.shape[0], query_length, v.shape[-1])
    for element in range(queries.shape[0]):
        key_t = keys[element].transpose(0, 1)
        for start in range(0, query_length, rows_per_block):
            rows = slice(start, start + rows_per_block)
            scores = torch.matmul(queries[element, rows] * scale, key_t)
            out[element, rows] = torch.matmul(torch.softmax(scores, dim=-1), values[element])
    return out.view(*batch_shape, query_length, v.shape[-1])


def heads_into(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v of contiguous heads-first q (H, B, Lq, d), k and v (H, B, Lk, d),
    written into ``out`` (B, Lq, H, dv), the heads-merged layout an output projection reads.

    The scale is the GEMM's alpha (applied to the float32 accumulator, no pass over q) and each
    head's score-by-value product writes its columns of ``out`` in place (oneDNN takes the row
    stride), so no transpose copy precedes the projection. Beyond SCORE_BLOCK_BYTES of scores,
    one (head, batch) pair and a block of queries at a time, as in `matmul_attention`.
    """
    heads, batch, query_length, head_dim = q.shape
    key_length = k.shape[-2]
    scale = head_dim**-0.5
    no_input = q.new_zeros(())  # baddbmm/addmm need an input; beta=0 never reads it
    if heads * batch * query_length * key_length * q.element_size() <= SCORE_BLOCK_BYTES:
        scores = torch.baddbmm(
            no_input, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), beta=0, alpha=scale
        )
        probs = torch.softmax(scores, dim=-1).view(heads, batch, query_length, key_length)
        for head in range(heads):
            torch.bmm(probs[head], v[head], out=out[:, :, head])
        return out
    rows_per_block = max(1, SCORE_BLOCK_BYTES // (key_length * q.element_size()))
    for head in range(heads):
        for element in range(batch):
            key_t = k[head, element].transpose(0, 1)
            for start in range(0, query_length, rows_per_block):
                rows = slice(start, start + rows_per_block)
                scores = torch.addmm(no_input, q[head, element, rows], key_t, beta=0, alpha=scale)
                torch.mm(torch.softmax(scores, dim=-1), v[head, element], out=out[element, rows, head])
    return out


def attend_packed(qkv: torch.Tensor, query: torch.Tensor | None = None, training: bool = False) -> torch.Tensor:
    """Self-attention from one projection's output: ``qkv`` (B, N, 3, heads, d) holds q, k, v;
    ``query`` (B, Nq, heads, d), when given, replaces q (pooled queries). Returns (B, Nq, heads * d).

    On the bf16 CPU matmul path (`use_matmul_attention`, judged on the keys) k and v (and q) are
    copied once into contiguous heads-first tensors and `heads_into` writes the heads-merged
    output (the matmuls would otherwise copy each of q, k, v and the output); elsewhere `attend`
    on transposed views.
    """
    batch, tokens, _, heads, head_dim = qkv.shape
    q = qkv[:, :, 0] if query is None else query
    # Decided on the keys' count: pooled window queries (Hiera-S at 512 px, 2x2 queries pooled
    # from 4x4 windows, 4 heads x 256 windows, one thread) run 4.1 ms on SDPA, 2.2 ms here.
    if not use_matmul_attention(qkv[:, :, 1].transpose(1, 2), tokens, training):
        _, k, v = qkv.unbind(2)
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), training)
        return out.transpose(1, 2).reshape(batch, q.shape[1], heads * head_dim)
    heads_first = qkv.permute(2, 3, 0, 1, 4)  # (3, heads, B, N, d)
    if query is None:
        q, k, v = heads_first.contiguous()
    else:
        k, v = heads_first[1:].contiguous()
        q = query.permute(2, 0, 1, 3).contiguous()
    out = q.new_empty(batch, q.shape[2], heads, head_dim)
    return heads_into(q, k, v, out).view(batch, q.shape[2], heads * head_dim)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, training: bool = False, dropout_p: float = 0.0
) -> torch.Tensor:
    """Scaled dot-product attention of heads (B, H, N, d): in training `dense_attention` where
    `use_training_matmul_attention` allows it, in inference `matmul_attention` where
    `use_matmul_attention` does, else SDPA (with dropout while training)."""
    if training:
        if use_training_matmul_attention(q, k.shape[-2], dropout_p):
            return dense_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if use_matmul_attention(q, k.shape[-2], training):
        return matmul_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


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

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C / heads)."""
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) -> (B, N, heads * d)."""
        batch, heads, tokens, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Heads of q, k, v (B, H, N, head_dim) -> output (B, Nq, C)."""
        out = attend(q, k, v, self.training, self.dropout_p)
        return linear(self.merge_heads(out), self.out_proj)

    def _values_after_attention(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        """Whether to mix the raw values and project after (bf16 CPU path, narrow values)."""
        narrow = self.kv_in_dim < self.internal_dim // self.num_heads
        return narrow and use_matmul_attention(q, k.shape[-2], self.training)

    def _attend_raw_values(self, q: torch.Tensor, k: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Attention on the unprojected values (B, Nk, kv_in_dim), projected afterwards.

        softmax(s) (V W^T + b) = (softmax(s) V) W^T + b, since every row of softmax(s) sums to 1:
        the score-by-value product then runs over kv_in_dim channels instead of head_dim (4x
        fewer FLOPs for the memory's 64-channel values and a 256-channel head).
        """
        mixed = matmul_attention(q, k, values.unsqueeze(1))  # (B, H, Nq, kv_in_dim)
        head_dim = self.internal_dim // self.num_heads
        weight = self.v_proj.weight.view(self.num_heads, head_dim, self.kv_in_dim).transpose(1, 2)
        out = torch.matmul(mixed, weight)  # (B, H, Nq, head_dim)
        if self.v_proj.bias is not None:
            out = out + self.v_proj.bias.view(self.num_heads, 1, head_dim)
        return linear(self.merge_heads(out), self.out_proj)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, C), k and v (B, Nk, kv_in_dim) -> (B, Nq, C)."""
        q = self.split_heads(linear(q, self.q_proj))
        k = self.split_heads(linear(k, self.k_proj))
        if self._values_after_attention(q, k):
            return self._attend_raw_values(q, k, v)
        v = self.split_heads(linear(v, self.v_proj))
        return self._attend(q, k, v)


class RoPEAttention(Attention):
    """Attention with axial 2-D RoPE on queries and on the first keys.

    Queries are the tokens of a square feature grid. Keys are either the same grid
    (self-attention) or several frames of that grid followed by ``num_k_exclude_rope`` tokens
    (object pointers) that get no rotation. The cos/sin tables are built per grid size and cached.
    """

    def __init__(
        self,
        *args: Any,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
        **kwargs: Any,
    ) -> None:
        """`Attention`'s arguments, plus the RoPE base, whether keys repeat the query grid's
        rotations per memory frame, and the default grid size."""
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.feat_sizes = tuple(feat_sizes)
        self._tables: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def rope_tables(
        self, num_tokens: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """cos/sin tables for a square grid of ``num_tokens`` tokens and their complex form
        (None where the device has no complex kernels), cached per device."""
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
                cos, sin = cos.to(device), sin.to(device)
                tables = (cos, sin, rope_rotation(cos, sin))
            self._tables[key] = tables
        return tables

    def rotated_keys(self, keys_in: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """Projected keys with the grid's rotations: (..., T, kv_in_dim) -> (..., T, internal_dim),
        T one grid of tokens. Without ``bias``, the projection is linear (for encodings added to
        keys: RoPE(W(a + b) + c) = RoPE(W a + c) + RoPE(W b), which lets stored memories keep
        their rotated keys while their temporal encoding changes frame to frame)."""
        projected = F.linear(keys_in, self.k_proj.weight, self.k_proj.bias if bias else None)
        *batch, tokens, channels = projected.shape
        heads = self.split_heads(projected.reshape(-1, tokens, channels))
        rotated = apply_rope(heads, *self.rope_tables(tokens, projected.device))
        return self.merge_heads(rotated).reshape(*batch, tokens, channels)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_k_exclude_rope: int = 0,
        rotated_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q (B, Nq, C), k and v (B, Nk, kv_in_dim) -> (B, Nq, C).

        ``rotated_keys`` (B, Nk, internal_dim): the keys already projected and rotated (cached
        for stored memories) except the last ``num_k_exclude_rope`` rows, which are projected
        here from the last rows of ``k`` (k may hold only those rows).
        """
        if rotated_keys is not None:
            return self._forward_rotated_keys(q, k, v, num_k_exclude_rope, rotated_keys)
        q = self.split_heads(linear(q, self.q_proj))
        k = self.split_heads(linear(k, self.k_proj))
        raw_values = self._values_after_attention(q, k)
        if not raw_values:
            v = self.split_heads(linear(v, self.v_proj))
        tables = self.rope_tables(q.shape[-2], q.device)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        if num_k_rope != q.shape[-2] and not self.rope_k_repeat:
            raise ValueError("keys differ in length from queries but rope_k_repeat is off")
        q = apply_rope(q, *tables)
        if num_k_rope > 0:
            k_rope = apply_rope(k[:, :, :num_k_rope], *tables)
            k = torch.cat([k_rope, k[:, :, num_k_rope:]], dim=2) if num_k_exclude_rope else k_rope
        if raw_values:
            return self._attend_raw_values(q, k, v)
        return self._attend(q, k, v)

    def _forward_rotated_keys(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_k_exclude_rope: int,
        rotated_keys: torch.Tensor,
    ) -> torch.Tensor:
        """`forward` with precomputed rotated keys; the excluded (pointer) rows are filled in place."""
        if num_k_exclude_rope:
            rotated_keys[:, -num_k_exclude_rope:] = linear(k[:, -num_k_exclude_rope:], self.k_proj)
        q = self.split_heads(linear(q, self.q_proj))
        q = apply_rope(q, *self.rope_tables(q.shape[-2], q.device))
        keys = self.split_heads(rotated_keys)
        if self._values_after_attention(q, keys):
            return self._attend_raw_values(q, keys, v)
        return self._attend(q, keys, self.split_heads(linear(v, self.v_proj)))
