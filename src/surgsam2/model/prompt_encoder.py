"""SAM prompt encoder: points, boxes and a low-resolution mask become decoder inputs.

Sparse prompts (points, box corners) become one token each; a mask prompt becomes a dense map
added to the image embedding (a learned "no mask" vector when none is given).
"""

from __future__ import annotations

import torch
from torch import nn

from surgsam2.model.layers import LayerNorm2d
from surgsam2.model.position import PositionEmbeddingRandom

# Point label meanings. PADDING marks a placeholder point that carries no position.
PADDING_LABEL = -1
NEGATIVE_LABEL = 0
POSITIVE_LABEL = 1
BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3


class PromptEncoder(nn.Module):
    """Embeds point, box and mask prompts for the SAM mask decoder.

    Points are encoded with random Fourier features of their (x, y) pixel position in the model's
    input frame plus a learned vector per label; masks go through a small strided conv stack.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # One learned vector per label 0..3 (negative, positive, box top-left, box bottom-right),
        # and one that replaces the position code of padding points (label -1).
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        # Mask prompts are given at 4x the embedding resolution and reduced by two stride-2 convs.
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        hidden = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden, kernel_size=2, stride=2),
            LayerNorm2d(hidden),
            activation(),
            nn.Conv2d(hidden, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional code of every image-embedding cell, (1, embed_dim, H, W), for the decoder."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _label_table(self) -> torch.Tensor:
        """Learned label vectors stacked so that row ``label + 1`` belongs to ``label`` (-1..3)."""
        rows = [self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings]
        return torch.cat(rows, dim=0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) pixel points and (B, N) labels -> (B, N [+1], embed_dim) tokens.

        With ``pad`` (no box follows), a padding point is appended, as SAM was trained that way.
        Padding points get only the not-a-point vector; others get position code + label vector.
        Labels outside -1..3 keep their position code with nothing added.
        """
        points = points + 0.5  # pixel centres
        if pad:
            batch = points.shape[0]
            points = torch.cat([points, points.new_zeros(batch, 1, 2)], dim=1)
            padding_label = labels.new_full((labels.shape[0], 1), PADDING_LABEL)
            labels = torch.cat([labels, padding_label], dim=1)
        position_code = self.pe_layer.forward_with_coords(points, self.input_image_size)

        table = self._label_table()
        row = labels.long() + 1
        known = ((row >= 0) & (row < table.shape[0])).unsqueeze(-1)
        label_vector = torch.where(known, table[row.clamp(0, table.shape[0] - 1)], 0.0)
        is_real_point = (labels != PADDING_LABEL).unsqueeze(-1)
        return torch.where(is_real_point, position_code, 0.0) + label_vector

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) or (B, 1, 4) boxes as x0, y0, x1, y1 pixels -> (B, 2, embed_dim) corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        corner_code = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_vectors = torch.cat(
            [
                self.point_embeddings[BOX_TOP_LEFT_LABEL].weight,
                self.point_embeddings[BOX_BOTTOM_RIGHT_LABEL].weight,
            ],
            dim=0,
        )
        # The sum keeps the position code's dtype, as SAM's in-place add does under autocast.
        return (corner_code + corner_vectors).to(corner_code.dtype)

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4H, 4W) mask logits -> (B, embed_dim, H, W) dense embedding."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        """Number of prompts in the batch, taken from the first prompt kind given (else 1)."""
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse tokens (B, N, embed_dim) for points then box corners, and dense (B, C, H, W).

        ``points`` is (coords (B, N, 2) in input-image pixels, labels (B, N)); label -1 pads.
        Without a mask the dense output is a broadcast view of the no-mask vector.
        """
        batch = self._batch_size(points, boxes, masks)
        tokens: list[torch.Tensor] = []
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        if tokens:
            sparse = tokens[0] if len(tokens) == 1 else torch.cat(tokens, dim=1)
        else:
            weight = self.no_mask_embed.weight
            sparse = weight.new_empty((batch, 0, self.embed_dim))

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            height, width = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        return sparse, dense


__all__ = ["PromptEncoder"]
