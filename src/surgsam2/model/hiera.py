"""Hiera trunk of the SAM 2 image encoder (Ryali et al. 2023, "Hiera"; Bolya et al. 2023,
"Window Attention is Bugged" for the position embedding).

Tokens live in a channels-last (B, H, W, C) grid. Each stage runs windowed (or, at a few blocks,
global) multi-head attention; the first block of a stage pools its queries (and its residual) by
``q_stride``, halving the grid and widening the channels. The trunk returns every stage's output.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from surgsam2.model.attention import attend_packed
from surgsam2.model.configs import HieraConfig
from surgsam2.model.layers import MLP, DropPath, linear

# (grid, parameter identities and versions) -> cached channels-last position embedding.
_PosEmbedKey = tuple[object, ...]


def pool_tokens(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Max-pool a (B, H, W, C) token grid by a (sh, sw) stride (kernel = stride, ragged edges dropped).

    The NCHW view of a channels-last grid is in ``channels_last`` memory format, which the pooling
    kernels handle natively, so neither permute copies.
    """
    stride = tuple(stride)
    pooled = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return pooled.permute(0, 2, 3, 1)


def pad_grid(x: torch.Tensor, window: int, value: torch.Tensor | None = None) -> torch.Tensor:
    """Pad a (B, H, W, C) grid bottom/right to multiples of ``window`` with the (C,) vector
    ``value`` (zeros when None)."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if not (pad_h or pad_w):
        return x
    if value is None:
        return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded = x.new_empty(batch, height + pad_h, width + pad_w, channels)
    padded[:, :height, :width] = x
    padded[:, height:] = value
    padded[:, :height, width:] = value
    return padded


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a (B, H, W, C) grid into (B * nW, window, window, C) tiles, zero-padding bottom/right.

    Returns the tiles and the padded grid size, which :func:`window_unpartition` needs.
    """
    batch, height, width, channels = x.shape
    x = pad_grid(x, window)
    padded_h, padded_w = x.shape[1:3]
    tiles = x.reshape(batch, padded_h // window, window, padded_w // window, window, channels)
    tiles = tiles.transpose(2, 3).reshape(-1, window, window, channels)
    return tiles, (padded_h, padded_w)


def window_unpartition(
    tiles: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: reassemble tiles into (B, H, W, C), dropping padding."""
    padded_h, padded_w = padded_hw
    rows, cols = padded_h // window, padded_w // window
    batch = tiles.shape[0] // (rows * cols)
    grid = tiles.reshape(batch, rows, cols, window, window, tiles.shape[-1]).transpose(2, 3)
    grid = grid.reshape(batch, padded_h, padded_w, tiles.shape[-1])
    height, width = hw
    if padded_h > height or padded_w > width:
        grid = grid[:, :height, :width]
    return grid


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention on a (B, H, W, C) grid whose queries may be max-pooled.

    Pooling only the queries is what shrinks the grid at a stage transition: the output has the
    pooled grid's size while every query still attends to all (unpooled) keys of its window.
    """

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, q_stride: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim_out={dim_out}")
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_stride = tuple(q_stride) if q_stride else None
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor, window_size: int = 0) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out), H' = H // stride when queries are pooled.

        With ``window_size``, each query attends within its window_size² tile of the input grid,
        padded bottom/right. The padded outputs are dropped before ``proj``.
        """
        height, width = x.shape[1:3]
        out_hw = (height, width)
        if self.q_stride is not None:
            out_hw = (height // self.q_stride[0], width // self.q_stride[1])
        out = self._attend_grid(self._project_tiles(x, window_size))
        if window_size > 0:
            # Pooled queries shrink each tile by the stride: stitch on the output grid's windows.
            out_window = out.shape[1]
            padded_hw = (out_hw[0] + (-out_hw[0] % out_window), out_hw[1] + (-out_hw[1] % out_window))
            out = window_unpartition(out, out_window, padded_hw, out_hw)
        return linear(out, self.proj)

    def _project_tiles(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """qkv of the grid (B, H, W, 3 * dim_out), or of its window tiles (B * nW, w, w, 3 * dim_out).

        Where the grid needs padding, the projection runs on the unpadded grid and the padding
        is filled with the qkv bias: a padded token is zero after the block's norm, so it
        projects to the bias. Same function as projecting the padded tiles, without their share
        of the linear (42 % of the tokens of a 32x32 grid in 14x14 windows). Without padding the
        input is cut instead, the narrower tensor (dim against 3 * dim_out channels).
        """
        height, width = x.shape[1:3]
        if window_size == 0:
            return linear(x, self.qkv)
        if height % window_size or width % window_size:
            padded = pad_grid(linear(x, self.qkv), window_size, self.qkv.bias)
            return window_partition(padded, window_size)[0]
        return linear(window_partition(x, window_size)[0], self.qkv)

    def _attend_grid(self, qkv: torch.Tensor) -> torch.Tensor:
        """Projected (B, H, W, 3 * dim_out) grid -> attention output (B, H', W', dim_out)."""
        batch, height, width, _ = qkv.shape
        qkv = qkv.reshape(batch, height * width, 3, self.num_heads, -1)
        query = None
        if self.q_stride is not None:
            grid = qkv[:, :, 0].reshape(batch, height, width, self.dim_out)
            grid = pool_tokens(grid, self.q_stride)
            height, width = grid.shape[1:3]
            query = grid.reshape(batch, height * width, self.num_heads, -1)
        out = attend_packed(qkv, query, self.training)  # (B, H'W', dim_out)
        return out.reshape(batch, height, width, self.dim_out)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block: (windowed) attention then MLP, each with a residual.

    At a stage transition (``q_stride`` set) the residual is widened by ``proj`` and pooled so it
    matches the attention output's smaller grid.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: Sequence[int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        if q_stride and window_size and any(window_size % step for step in q_stride):
            raise ValueError(f"window_size={window_size} must be divisible by q_stride={q_stride}")
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = tuple(q_stride) if q_stride else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride=self.q_stride)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out)."""
        normed = self.norm1(x)
        shortcut = x
        if self.proj is not None:
            shortcut = linear(normed, self.proj)
        if self.q_stride is not None:
            shortcut = pool_tokens(shortcut, self.q_stride)
        x = shortcut + self.drop_path(self.attn(normed, self.window_size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Strided convolution from pixels to a channels-last token grid (stride 4 for SAM 2)."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (7, 7),
        stride: tuple[int, int] = (4, 4),
        padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image -> (B, H/4, W/4, embed_dim) tokens, contiguous channels-last.

        A channels-last image makes oneDNN write the convolution's output channels-last, so the
        permute is a view (an NCHW output would be transposed by the next op: 4.9 of 5.2 ms of
        the position-embedding add for Hiera-S at 512 px in bf16, one thread).
        """
        return self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The hierarchical ViT trunk: patch embedding, position embedding, stages of blocks.

    ``forward`` returns the output of every stage as NCHW tensors, finest (stride 4) first;
    ``channel_list`` gives their widths coarsest first (the order the FPN neck expects).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] = (12, 16, 20),
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {tuple(stages)} and window_spec {tuple(window_spec)} differ in length")
        if not 0 <= q_pool <= len(stages) - 1:
            raise ValueError(f"q_pool={q_pool} must be in [0, {len(stages) - 1}]")
        self.window_spec = tuple(window_spec)
        self.global_att_blocks = tuple(global_att_blocks)
        self.q_stride = tuple(q_stride)
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)

        depth = sum(stages)
        ends, total = [], 0
        for blocks_in_stage in stages:
            total += blocks_in_stage
            ends.append(total - 1)
        self.stage_ends: tuple[int, ...] = tuple(ends)
        # The first block of each of the first ``q_pool`` later stages halves the grid.
        self.q_pool_blocks: tuple[int, ...] = tuple(end + 1 for end in self.stage_ends[:-1])[:q_pool]

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        # A background embedding, resized to the token grid, plus one window's embedding tiled
        # over it: tokens at the same place in every window share part of their embedding.
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size))
        first_window = self.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, first_window, first_window))

        drop_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList()
        dim, heads, stage = embed_dim, num_heads, 0
        for index in range(depth):
            # A stage's first block still sees the previous stage's grid, so it keeps that
            # stage's window size; the new stage's width and head count start with its output.
            window = self.window_spec[stage]
            if index in self.global_att_blocks:
                window = 0
            dim_out = dim
            if index - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                heads = int(heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=heads,
                    drop_path=drop_rates[index],
                    q_stride=self.q_stride if index in self.q_pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out

        self.channel_list: list[int] = [self.blocks[end].dim_out for end in reversed(self.stage_ends)]
        self._pos_embed_cache: tuple[_PosEmbedKey, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, config: HieraConfig) -> "Hiera":
        """Build the trunk of one of our named configs."""
        return cls(
            embed_dim=config.embed_dim,
            num_heads=config.num_heads,
            drop_path_rate=config.drop_path_rate,
            q_pool=config.q_pool,
            q_stride=config.q_stride,
            stages=config.stages,
            dim_mul=config.dim_mul,
            head_mul=config.head_mul,
            window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg_spatial_size,
            window_spec=config.window_spec,
            global_att_blocks=config.global_att_blocks,
        )

    def _compute_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """The (1, H, W, C) position embedding of an H x W token grid (H, W multiples of the window)."""
        window = self.pos_embed_window
        if height % window.shape[-2] or width % window.shape[-1]:
            raise ValueError(
                f"token grid {height}x{width} is not a multiple of the {window.shape[-1]}-token window; "
                "use an input size that is a multiple of 32"
            )
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        tiled = window.tile(1, 1, height // window.shape[-2], width // window.shape[-1])
        return (background + tiled).permute(0, 2, 3, 1)

    def _get_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """Position embedding for the grid, cached while the parameters are not being trained.

        The cache key holds the parameters' storage and in-place version counters, so loading
        weights, an optimiser step or a ``.to()`` invalidates it.
        """
        if torch.is_grad_enabled() and (self.pos_embed.requires_grad or self.pos_embed_window.requires_grad):
            return self._compute_pos_embed(height, width)
        key: _PosEmbedKey = (
            height,
            width,
            self.pos_embed.data_ptr(),
            self.pos_embed._version,
            self.pos_embed_window.data_ptr(),
            self.pos_embed_window._version,
            self.pos_embed.device,
            self.pos_embed.dtype,
        )
        if self._pos_embed_cache is not None and self._pos_embed_cache[0] == key:
            return self._pos_embed_cache[1]
        # Built outside inference mode so the cached tensor stays usable in ordinary no-grad code.
        with torch.inference_mode(False), torch.no_grad():
            pos_embed = self._compute_pos_embed(height, width).contiguous()
        self._pos_embed_cache = (key, pos_embed)
        return pos_embed

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) image -> one (B, C_i, H / 2^(i+2), W / 2^(i+2)) map per stage, finest first."""
        x = self.patch_embed(x)
        # The embedding (contiguous) first: the sum then comes out as a contiguous (B, H, W, C)
        # grid whatever the convolution's memory order, so no LayerNorm or window partition
        # downstream copies it.
        x = self._get_pos_embed(x.shape[1], x.shape[2]) + x
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


__all__ = [
    "Hiera",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "PatchEmbed",
    "pad_grid",
    "pool_tokens",
    "window_partition",
    "window_unpartition",
]
