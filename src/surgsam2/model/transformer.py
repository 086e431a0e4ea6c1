"""SAM's two-way transformer: prompt tokens and image tokens update each other in turn."""

from __future__ import annotations

import torch
from torch import nn

from surgsam2.model.attention import Attention
from surgsam2.model.layers import MLP


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, then image->token attention.

    Each step is residual and post-normalised. The first block of a stack skips the positional
    code in its self-attention and replaces (rather than updates) the tokens with its output.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, N, C) and keys (B, HW, C); ``key_pe`` may have batch 1 (broadcast)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            with_pe = queries + query_pe
            queries = queries + self.self_attn(with_pe, with_pe, queries)
        queries = self.norm1(queries)

        keys_with_pe = keys + key_pe
        queries = queries + self.cross_attn_token_to_image(queries + query_pe, keys_with_pe, keys)
        queries = self.norm2(queries)

        queries = self.norm3(queries + self.mlp(queries))

        # The image tokens now read from the updated prompt tokens (keys_with_pe is still valid:
        # the image tokens have not changed since it was formed).
        attended = self.cross_attn_image_to_token(keys_with_pe, queries + query_pe, queries)
        keys = self.norm4(keys + attended)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """A stack of two-way blocks and a last tokens->image attention, as in the SAM mask decoder."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=index == 0,
            )
            for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (B, C, H, W), image_pe (B or 1, C, H, W), point_embedding (B, N, C).

        Returns the updated tokens (B, N, C) and image tokens (B, H*W, C). A batch-1 ``image_pe``
        is broadcast rather than copied per prompt.
        """
        image_tokens = image_embedding.flatten(2).transpose(1, 2)
        image_pe_tokens = image_pe.flatten(2).transpose(1, 2)

        queries, keys = point_embedding, image_tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=image_pe_tokens)

        attended = self.final_attn_token_to_image(
            queries + point_embedding, keys + image_pe_tokens, keys
        )
        queries = self.norm_final_attn(queries + attended)
        return queries, keys


__all__ = ["TwoWayTransformer", "TwoWayAttentionBlock"]
