"""SAM 2 mask decoder: output tokens + prompt tokens attend to the image and become masks.

Besides the SAM 1 outputs (one single-mask and several multimask candidates, each with a
predicted IoU), SAM 2 adds an object-score token (is the object visible at all), skip features
from the stride-4/8 backbone levels, and a stability-based fallback for single-mask output.
"""

from __future__ import annotations

import torch
from torch import nn

from surgsam2.model.layers import MLP, LayerNorm2d


def stability_scores(mask_logits: torch.Tensor, delta: float) -> torch.Tensor:
    """IoU of the masks thresholded at +delta and -delta, per mask: (..., H, W) -> (...).

    A mask with no pixel above -delta counts as perfectly stable (score 1).
    """
    flat = mask_logits.flatten(-2)
    inner_area = (flat > delta).sum(dim=-1).float()
    outer_area = (flat > -delta).sum(dim=-1).float()
    return torch.where(outer_area > 0, inner_area / outer_area, 1.0)


class MaskDecoder(nn.Module):
    """Predicts mask logits, IoU estimates, object-pointer tokens and object-score logits.

    ``transformer`` is a :class:`~surgsam2.model.transformer.TwoWayTransformer` of width
    ``transformer_dim``. Mask logits come out at 4x the image-embedding resolution.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        # Token 0 is the single-mask output, tokens 1.. the multimask candidates.
        self.num_mask_tokens = num_multimask_outputs + 1

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        quarter, eighth = transformer_dim // 4, transformer_dim // 8
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, quarter, kernel_size=2, stride=2),
            LayerNorm2d(quarter),
            activation(),
            nn.ConvTranspose2d(quarter, eighth, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            # Project the stride-4 and stride-8 backbone levels to the widths of the two
            # upscaling stages. SAM 2 applies these once per image (see project_high_res_features).
            self.conv_s0 = nn.Conv2d(transformer_dim, eighth, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, quarter, kernel_size=1, stride=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, eighth, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head: nn.Module = (
                MLP(transformer_dim, transformer_dim, 1, 3)
                if pred_obj_scores_mlp
                else nn.Linear(transformer_dim, 1)
            )

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def project_high_res_features(
        self, feat_s0: torch.Tensor, feat_s1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map the stride-4 and stride-8 neck outputs (C channels) to C/8 and C/4 channels.

        SAM 2 does this once per image, right after the image encoder, and passes the result to
        :meth:`forward` as ``high_res_features``.
        """
        if not self.use_high_res_features:
            raise ValueError("this decoder was built with use_high_res_features=False")
        return self.conv_s0(feat_s0), self.conv_s1(feat_s1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode B prompts against their image embeddings.

        image_embeddings (B or 1, C, H, W); with ``repeat_image`` each image serves all B prompts
        (the SAM image-predictor layout), and a batch of 1 is broadcast without a copy either way.
        image_pe (1, C, H, W); sparse (B, N, C); dense (B, C, H, W); high_res_features the
        projected stride-4 (C/8) and stride-8 (C/4) maps, batch B or 1.

        Returns masks (B, M, 4H, 4W) and IoU predictions (B, M) with M = num_multimask_outputs
        for ``multimask_output`` else 1; the output tokens used for the object pointer (B, T, C)
        with T = num_multimask_outputs when ``multimask_output`` and
        ``use_multimask_token_for_obj_ptr``, else 1 (the single-mask token); and object-score
        logits (B, 1).
        """
        all_masks, all_iou, mask_token_out, object_score_logits = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            repeat_image,
            high_res_features,
        )

        if multimask_output:
            masks, iou_pred = all_masks[:, 1:], all_iou[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self.select_stable_single_mask(all_masks, all_iou)
        else:
            masks, iou_pred = all_masks[:, :1], all_iou[:, :1]

        # The object pointer comes from the single-mask token unless the multimask candidates
        # are returned and the model was trained to point from them.
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_token_out[:, 1:]
        else:
            sam_tokens_out = mask_token_out[:, :1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Outputs of all T mask tokens: masks (B, T, 4H, 4W), IoU (B, T), tokens (B, T, C),
        and object-score logits (B, 1)."""
        batch = sparse_prompt_embeddings.shape[0]
        learned = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            learned.insert(0, self.obj_score_token.weight)
        first_mask_token = len(learned) - 1  # index of mask token 0 among the output tokens
        output_tokens = torch.cat(learned, dim=0).unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        src = self._image_per_prompt(image_embeddings, batch, repeat_image)
        src = src + dense_prompt_embeddings
        if image_pe.shape[0] != 1:
            raise ValueError(f"image_pe must have batch 1 (get_dense_pe), got {image_pe.shape[0]}")
        _, channels, height, width = src.shape

        hs, image_tokens = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, first_mask_token - 1]
        mask_token_out = hs[:, first_mask_token : first_mask_token + self.num_mask_tokens]

        upscaled = self._upscale(
            image_tokens.transpose(1, 2).reshape(-1, channels, height, width), high_res_features
        )

        # Each mask token gets its own hypernetwork MLP, giving per-pixel mixing weights.
        hyper_in = torch.stack(
            [mlp(mask_token_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        up_batch, up_channels, up_height, up_width = upscaled.shape
        masks = hyper_in @ upscaled.reshape(up_batch, up_channels, up_height * up_width)
        masks = masks.reshape(up_batch, -1, up_height, up_width)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            # Without a score head every object counts as present: sigmoid(10) ~ 1.
            object_score_logits = iou_pred.new_full((iou_pred.shape[0], 1), 10.0)
        return masks, iou_pred, mask_token_out, object_score_logits

    @staticmethod
    def _image_per_prompt(
        image_embeddings: torch.Tensor, batch: int, repeat_image: bool
    ) -> torch.Tensor:
        """Image embeddings lined up with the B prompts (a batch of 1 stays a broadcast)."""
        images = image_embeddings.shape[0]
        if images == 1 or (images == batch and not repeat_image):
            return image_embeddings
        if repeat_image:
            return torch.repeat_interleave(image_embeddings, batch, dim=0)
        raise ValueError(
            f"image embeddings have batch {images} but there are {batch} prompts "
            "(pass one per prompt, a single shared one, or repeat_image=True)"
        )

    def _upscale(
        self,
        image: torch.Tensor,
        high_res_features: list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Two transposed convs to 4x resolution; skip features join before each activation."""
        if not self.use_high_res_features:
            return self.output_upscaling(image)
        if high_res_features is None:
            raise ValueError("this decoder needs high_res_features (stride-4 and stride-8 maps)")
        up1, norm1, act1, up2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        image = act1(norm1(up1(image) + feat_s1))
        return act2(up2(image) + feat_s0)

    def _stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """Stability of each mask under this decoder's delta."""
        return stability_scores(mask_logits, self.dynamic_multimask_stability_delta)

    def select_stable_single_mask(
        self, all_masks: torch.Tensor, all_iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-mask output, or the best-IoU multimask candidate where it is unstable.

        Keeps single-mask tracking from emitting fragile masks; decided per prompt on the device.
        """
        candidate_iou = all_iou[:, 1:]
        best = torch.argmax(candidate_iou, dim=-1, keepdim=True)  # (B, 1)
        best_iou = torch.gather(candidate_iou, 1, best)
        best_masks = torch.gather(
            all_masks[:, 1:], 1, best[:, :, None, None].expand(-1, -1, *all_masks.shape[-2:])
        )

        single_masks, single_iou = all_masks[:, :1], all_iou[:, :1]
        stable = self._stability_scores(single_masks) >= self.dynamic_multimask_stability_thresh
        masks = torch.where(stable[:, :, None, None], single_masks, best_masks)
        iou_pred = torch.where(stable, single_iou, best_iou)
        return masks, iou_pred


__all__ = ["MaskDecoder", "stability_scores"]
