"""Memory encoder: turns a frame's features and its predicted mask into a 64-channel memory.

The mask is brought down to the feature grid by a stack of strided convolutions, added to a
1x1 projection of the frame features, refined by ConvNeXt-style blocks and projected to
``out_dim`` channels. Parameter names and shapes follow the official SAM 2 module, so official
checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from surgsam2.model.configs import MemoryEncoderConfig
from surgsam2.model.layers import DropPath, LayerNorm2d, linear
from surgsam2.model.position import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Reduce a 1-channel mask by ``total_stride`` with repeated strided convs, then map to ``embed_dim``.

    Each step divides the resolution by ``stride`` and multiplies the channels by ``stride**2``
    (conv, channel LayerNorm, activation); a final 1x1 conv gives ``embed_dim`` channels.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        num_steps = round(math.log(total_stride) / math.log(stride)) if stride >= 2 else 0
        if num_steps < 1 or stride**num_steps != total_stride:
            raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
        # A flat Sequential (conv, norm, act) * num_steps + conv: its indices are the official keys.
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(num_steps):
            widened = channels * stride * stride
            self.encoder.append(
                nn.Conv2d(channels, widened, kernel_size=kernel_size, stride=stride, padding=padding)
            )
            self.encoder.append(LayerNorm2d(widened))
            self.encoder.append(activation())
            channels = widened
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, embed_dim, H / total_stride, W / total_stride)."""
        return self.encoder(masks)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, channel LayerNorm, pointwise MLP (x4), layer scale, residual.

    The pointwise layers are ``nn.Linear`` applied channels-last (as the official block does).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # Layer scale: a learned per-channel gain on the residual branch (absent when init <= 0).
        self.gamma: nn.Parameter | None = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
            if layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        branch = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # channels-last for the MLP
        branch = linear(linear(branch, self.pwconv1, self.act), self.pwconv2)
        if self.gamma is not None:
            branch = branch * self.gamma
        return x + self.drop_path(branch.permute(0, 3, 1, 2))


class Fuser(nn.Module):
    """A chain of ``num_layers`` CX blocks, optionally preceded by a 1x1 conv projection."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
        input_projection: bool = False,
    ) -> None:
        super().__init__()
        self.proj: nn.Module = (
            nn.Conv2d(dim, dim, kernel_size=1) if input_projection else nn.Identity()
        )
        self.layers = nn.ModuleList(
            CXBlock(dim, kernel_size, padding, drop_path, layer_scale_init_value, use_dwconv)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = self.proj(x)
        for block in self.layers:
            x = block(x)
        return x


class MemoryEncoder(nn.Module):
    """Fuse frame features (B, in_dim, H, W) with a mask (B, 1, 16H, 16W) into a memory (B, out_dim, H, W).

    Returns ``{"vision_features": memory, "vision_pos_enc": [sine encoding]}`` like the official module.
    """

    def __init__(
        self,
        out_dim: int = 64,
        in_dim: int = 256,
        downsampler_kernel_size: int = 3,
        downsampler_stride: int = 2,
        downsampler_padding: int = 1,
        downsampler_total_stride: int = 16,
        fuser_num_layers: int = 2,
        fuser_kernel_size: int = 7,
        fuser_padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(
            embed_dim=in_dim,
            kernel_size=downsampler_kernel_size,
            stride=downsampler_stride,
            padding=downsampler_padding,
            total_stride=downsampler_total_stride,
        )
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(
            in_dim,
            fuser_num_layers,
            kernel_size=fuser_kernel_size,
            padding=fuser_padding,
            drop_path=drop_path,
            layer_scale_init_value=layer_scale_init_value,
        )
        self.position_encoding = PositionEmbeddingSine(out_dim, temperature=10000, normalize=True)
        self.out_proj: nn.Module = (
            nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()
        )

    @classmethod
    def from_config(cls, config: MemoryEncoderConfig, *, in_dim: int) -> "MemoryEncoder":
        """Build from our config; ``in_dim`` is the model's hidden dim (the neck's d_model)."""
        return cls(
            out_dim=config.mem_dim,
            in_dim=in_dim,
            downsampler_kernel_size=config.downsampler_kernel_size,
            downsampler_stride=config.downsampler_stride,
            downsampler_padding=config.downsampler_padding,
            fuser_num_layers=config.fuser_num_layers,
            fuser_kernel_size=config.fuser_kernel_size,
            fuser_padding=config.fuser_padding,
            layer_scale_init_value=config.layer_scale_init_value,
        )

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Encode one memory per batch item.

        ``masks`` are logits unless ``skip_mask_sigmoid`` (SAM 2 passes already scaled
        probabilities and skips it). The position encoding is a cached, batch-expanded view:
        do not modify it in place.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        mask_features = self.mask_downsampler(masks)
        if mask_features.shape[-2:] != pix_feat.shape[-2:]:
            raise ValueError(
                f"mask of size {tuple(masks.shape[-2:])} downsamples to "
                f"{tuple(mask_features.shape[-2:])}, not the feature grid {tuple(pix_feat.shape[-2:])}"
            )
        x = self.pix_feat_proj(pix_feat) + mask_features
        x = self.out_proj(self.fuser(x))
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}


__all__ = ["MaskDownSampler", "CXBlock", "Fuser", "MemoryEncoder"]
