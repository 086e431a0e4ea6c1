"""Position encodings: 2-D sine (neck, memory encoder), random Fourier (prompts), axial 2-D RoPE."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding of a feature map's grid, as in DETR.

    The output has ``num_pos_feats`` channels: the first half encodes y, the second x.
    Encodings are cached per (H, W, device) since they depend only on the grid size.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("a scale needs normalize=True")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _encode_axis(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions (..., ) -> (..., num_pos_feats), sin on even channels and cos on odd ones."""
        steps = torch.arange(self.num_pos_feats, dtype=torch.float32, device=positions.device)
        dim_t = self.temperature ** (2 * (steps // 2) / self.num_pos_feats)
        angles = positions[..., None] / dim_t
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    def grid(self, height: int, width: int, device: torch.device | str) -> torch.Tensor:
        """The (C, H, W) encoding of an H x W grid (a cached constant: do not modify in place)."""
        key = (height, width, str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        # Built outside inference mode so that a cache filled during inference still works
        # in a later training step.
        with torch.inference_mode(False), torch.no_grad():
            pos = self._build_grid(height, width, device)
        self._cache[key] = pos
        return pos

    def _build_grid(self, height: int, width: int, device: torch.device | str) -> torch.Tensor:
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        if self.normalize:
            eps = 1e-6
            y = y / (y[-1:] + eps) * self.scale
            x = x / (x[-1:] + eps) * self.scale
        pos_y = self._encode_axis(y)[:, None, :].expand(height, width, -1)
        pos_x = self._encode_axis(x)[None, :, :].expand(height, width, -1)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for a (B, C, H, W) feature map, as a float32 (B, 2*num_pos_feats, H, W)."""
        pos = self.grid(x.shape[-2], x.shape[-1], x.device)
        return pos[None].expand(x.shape[0], -1, -1, -1)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates (prompt encoder)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates in [0, 1], shape (..., 2) -> (..., 2*num_pos_feats).

        A model cast to bf16 holds a bf16 matrix: the angles are still computed in float32 (they
        need the precision) and the codes returned in the model's dtype. A float32 model (also
        under autocast) runs the original ops unchanged.
        """
        gaussian = self.positional_encoding_gaussian_matrix
        coords = 2 * coords - 1
        if gaussian.dtype == coords.dtype:
            coords = coords @ gaussian
            coords = 2 * math.pi * coords
            return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)
        coords = coords.to(torch.float32) @ gaussian.to(torch.float32)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).to(gaussian.dtype)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """The (C, H, W) encoding of the centres of an H x W grid."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid = torch.stack(
            [x[None, :].expand(height, width), y[:, None].expand(height, width)], dim=-1
        )
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode (B, N, 2) pixel coordinates (x, y) of an image of size (H, W)."""
        return self._encode(coords.to(torch.float32) / _size_xy(image_size[1], image_size[0], coords.device))


@lru_cache(maxsize=16)
def _size_xy(width: int, height: int, device: torch.device) -> torch.Tensor:
    """(2,) float32 (width, height) on ``device``, made once: a copy from the host each call would
    make the host wait for the GPU in the middle of a frame."""
    return torch.tensor([width, height], dtype=torch.float32).to(device)


# --------------------------------------------------------------------------------------------
# Axial 2-D rotary position encoding (RoPE), used by memory attention.
# The head dimension is split into pairs of channels; the first half of the pairs rotate with
# the token's x index, the second half with its y index. Real cos/sin tables run in any dtype on
# any device; where complex kernels exist (CPU, CUDA) the rotation is one complex multiply, as the
# official implementation does (5x faster on CPU than the real formula's separate passes).
# --------------------------------------------------------------------------------------------


def axial_rope_tables(
    head_dim: int, width: int, height: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (width*height, head_dim//2) for a row-major W x H grid."""
    if head_dim % 4:
        raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {head_dim}")
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    index = torch.arange(width * height, dtype=torch.float32)
    t_x = index % width
    t_y = torch.div(index, width, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    # cos/sin by torch.polar (built on the CPU), as the official tables are: torch.cos rounds a
    # few entries differently (6e-8).
    rotation = torch.polar(torch.ones_like(angles), angles)
    return rotation.real.contiguous(), rotation.imag.contiguous()


def rope_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """The complex table cos + i sin for `apply_rope`'s fast path; None on devices without
    complex kernels (the real formula is used there)."""
    if cos.device.type not in ("cpu", "cuda"):
        return None
    return torch.complex(cos, sin)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotation: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., L, D) by the angles of (L', D/2) tables.

    L must be a multiple of L' (keys of several memory frames share the grid's tables: the
    tables broadcast over the frames, no repeated copy). Computation is in float32, the result
    has x's dtype. ``rotation`` (`rope_rotation` of the tables): one complex multiply instead.
    """
    length, grid = x.shape[-2], cos.shape[0]
    repeats = length // grid
    if repeats * grid != length:
        raise ValueError(f"{length} tokens is not a multiple of the RoPE grid {grid}")
    if rotation is not None:
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-2], repeats, grid, -1, 2).contiguous())
        return torch.view_as_real(pairs * rotation).reshape(x.shape).to(x.dtype)
    pairs = x.float().reshape(*x.shape[:-2], repeats, grid, -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.reshape(x.shape).to(x.dtype)
