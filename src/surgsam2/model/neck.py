"""FPN neck and the full SAM 2 image encoder (Hiera trunk + neck).

The neck projects each trunk stage to ``d_model`` channels with a 1x1 convolution and adds the
upsampled coarser level only on ``fpn_top_down_levels``; every level gets a sine position encoding.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from surgsam2.model.configs import HieraConfig, NeckConfig
from surgsam2.model.hiera import Hiera
from surgsam2.model.position import PositionEmbeddingSine


class FpnNeck(nn.Module):
    """Feature pyramid without output convolutions, as SAM 2 uses it.

    ``convs`` are ordered like ``backbone_channel_list``: coarsest level first.
    """

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: Sequence[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for channels in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module(
                "conv", nn.Conv2d(channels, d_model, kernel_size, stride=stride, padding=padding)
            )
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk maps (finest first) -> (features, position encodings), both finest first."""
        num_levels = len(self.convs)
        if len(xs) != num_levels:
            raise ValueError(f"expected {num_levels} trunk levels, got {len(xs)}")
        features: list[torch.Tensor] = [None] * num_levels  # type: ignore[list-item]
        positions: list[torch.Tensor] = [None] * num_levels  # type: ignore[list-item]
        running: torch.Tensor | None = None
        for level in reversed(range(num_levels)):  # coarse to fine
            lateral = self.convs[num_levels - 1 - level](xs[level])
            if running is not None and level in self.fpn_top_down_levels:
                # The upsampling runs in float32 (as the official neck does), so a fused level
                # comes out in float32 even under reduced precision.
                top_down = F.interpolate(
                    running.float(),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                running = lateral + top_down
                if self.fuse_type == "avg":
                    running = running / 2
            else:
                running = lateral
            features[level] = running
            positions[level] = self.position_encoding(running).to(running.dtype)
        return features, positions


class ImageEncoder(nn.Module):
    """Trunk + neck; drops the ``scalp`` coarsest levels and names the outputs as SAM 2 does."""

    def __init__(self, trunk: nn.Module, neck: FpnNeck, scalp: int = 0) -> None:
        super().__init__()
        trunk_channels = list(getattr(trunk, "channel_list", []))
        if trunk_channels != neck.backbone_channel_list:
            raise ValueError(
                f"trunk channels {trunk_channels} do not match neck channels {neck.backbone_channel_list}"
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    @classmethod
    def from_config(cls, trunk: HieraConfig, neck: NeckConfig) -> "ImageEncoder":
        """Build the encoder of one of our named configs."""
        hiera = Hiera.from_config(trunk)
        fpn = FpnNeck(
            position_encoding=PositionEmbeddingSine(neck.d_model),
            d_model=neck.d_model,
            backbone_channel_list=hiera.channel_list,
            fpn_interp_model=neck.fpn_interp_model,
            fpn_top_down_levels=neck.fpn_top_down_levels,
        )
        return cls(hiera, fpn, scalp=neck.scalp)

    def forward(self, sample: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """(B, 3, H, W) normalised image -> ``vision_features`` (stride 16), and per level
        (finest first) ``backbone_fpn`` features and ``vision_pos_enc``."""
        features, positions = self.neck(self.trunk(sample))
        if self.scalp > 0:
            features, positions = features[: -self.scalp], positions[: -self.scalp]
        return {
            "vision_features": features[-1],
            "vision_pos_enc": positions,
            "backbone_fpn": features,
        }


__all__ = ["FpnNeck", "ImageEncoder"]
