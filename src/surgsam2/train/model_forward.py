"""The differentiable clip forward of SAM 2 training (SAM2Train.forward_tracking), batched.

1. Every frame of every clip goes through the image encoder in one batch.
2. Frame by frame, all objects of the batch at once (B clips x up to O objects = N objects):
   - an initial conditioning frame is prompted without memory: its ground-truth mask used as the
     output (as at inference), or clicks / a box decoded from the image features plus the
     "no memory" embedding (multimask with <= 1 click);
   - any other frame attends to the memory of earlier frames, assembled exactly as the tracker
     does (`MemoryBank.layout` + `surgsam2.memory.assembly`: conditioning frames, the last
     num_maskmem-1 frames, object pointers with temporal encodings, the training memory policy),
     then is decoded (three candidates, or one where the model config tracks with one mask);
   - with ``high_res_dropout`` p, each object of a tracked frame has its decoder's high-resolution
     skip features zeroed with probability p (a training-only option, not SAM 2's), so that the
     mask has to come from the memory-conditioned embedding;
   - on correction frames, ``num_correction_points`` corrective clicks are sampled one by one
     from the error of the current prediction and decoded again with all clicks so far and the
     previous mask logits as mask input; the frame then becomes a conditioning frame (SAM 2's
     add_all_frames_to_correct_as_cond);
   - the memory of the frame is encoded from the final prediction (sigmoid of the logits, not
     binarised, as in SAM 2 training), except on the last frame, which no later frame reads; with a
     policy that asks for exclusive memories (``xefp``) the masks are first made exclusive among
     the objects of each clip (`surgsam2.memory.exclusive`), as the tracker does.
3. Losses (`surgsam2.train.losses`) are summed over every prediction step of every frame. Frames
   whose output is the given mask are not scored: their "prediction" is the input (a constant,
   gradient-free term in SAM 2's sum).

All clips of a step share one prompt plan, so every object has the same memory layout and goes
through memory attention and the decoder in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from surgsam2.memory.assembly import gather_candidates, memory_tokens, select_memories
from surgsam2.memory.bank import BankConfig, MemoryBank
from surgsam2.memory.exclusive import exclusive_masks
from surgsam2.memory.policies import MemoryPolicy
from surgsam2.model.sam2 import MASK_LOGIT_BIAS, MASK_LOGIT_SCALE, DecoderOutput, ImageFeatures, SAM2Model
from surgsam2.train.config import LossSection, PromptSection
from surgsam2.train.losses import LOSS_NAMES, prediction_losses
from surgsam2.train.prompts import PromptPlan, initial_prompt, plan_prompts, sample_correction_click

# Previous mask logits fed back with corrective clicks are clamped, as the tracker does.
PREVIOUS_LOGITS_CLAMP = 32.0
# Every object of a training batch shares one memory layout: one bank entry holds them all.
_BANK_ID = 0


@dataclass
class FramePrediction:
    """One frame's outputs for all objects."""

    scored: list[DecoderOutput]  # each prediction step that the loss scores (empty: mask prompt)
    final: DecoderOutput  # the last step: its pointer and object score go to memory
    high_res_masks: torch.Tensor  # (N, 1, S, S) logits the frame's memory is encoded from


def training_bank(model: SAM2Model) -> MemoryBank:
    """A memory bank with the model's memory rules as SAM 2 applies them in training (stride 1),
    keeping memories in full precision (the tracker stores bf16, as SAM 2's video predictor)."""
    config = model.config
    return MemoryBank(
        BankConfig(
            num_maskmem=config.num_maskmem,
            max_obj_ptrs_in_encoder=config.max_obj_ptrs_in_encoder,
            memory_temporal_stride=1,
            max_cond_frames_in_attn=config.max_cond_frames_in_attn,
            only_obj_ptrs_in_the_past=True,
            use_signed_tpos_enc_to_obj_ptrs=config.use_signed_tpos_enc_to_obj_ptrs,
            storage_dtype=torch.float32,
        )
    )


class ClipForward(nn.Module):
    """SAM 2 on a batch of clips with simulated prompts; returns the summed losses.

    A module (holding the model) so that DDP can wrap it: ``forward`` is the whole clip forward.
    """

    def __init__(
        self,
        model: SAM2Model,
        prompts: PromptSection,
        loss: LossSection,
        policy: MemoryPolicy,
        high_res_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.prompt_config = prompts
        self.loss_config = loss
        self.policy = policy
        self.high_res_dropout = high_res_dropout

    def forward(
        self, frames: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, seed: int
    ) -> dict[str, torch.Tensor]:
        """frames (B, T, 3, S, S) normalised; masks (B, T, O, S, S) bool; valid (B, O) bool.

        ``seed`` draws the prompt plan and the clicks. Returns the loss sums over objects,
        prediction steps and frames (``focal``, ``dice``, ``iou``, ``object``), ``num_objects``
        and ``num_predictions`` (decoder calls that were scored).
        """
        model = self.model
        num_frames = frames.shape[1]
        device = frames.device
        plan = plan_prompts(self.prompt_config, num_frames, np.random.default_rng([seed, 0]))
        generator = torch.Generator(device=device)
        generator.manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))

        features = model.encode_image(frames.flatten(0, 1).to(model.dtype))
        clip_of_object, slot_of_object = valid.nonzero(as_tuple=True)
        targets = masks[clip_of_object, :, slot_of_object]  # (N, T, S, S)
        num_objects = int(clip_of_object.shape[0])

        if num_objects == 0:
            raise ValueError("a training batch needs at least one object (valid is all false)")
        totals = {name: frames.new_zeros((), dtype=torch.float32) for name in LOSS_NAMES}
        num_predictions = 0

        bank = training_bank(model)
        bank.add_object(_BANK_ID)
        spatial_pos: torch.Tensor | None = None
        max_pointers = min(num_frames, model.config.max_obj_ptrs_in_encoder)

        for t in range(num_frames):
            frame_features = self._frame_features(features, clip_of_object * num_frames + t)
            target = targets[:, t]
            prediction = self._predict_frame(
                t, frame_features, target, plan, bank, spatial_pos, max_pointers, num_frames, generator
            )
            for output in prediction.scored:
                step_losses = prediction_losses(
                    model.upscale_masks(output.low_res_multimasks),
                    output.ious,
                    output.object_score_logits,
                    target,
                    self.loss_config,
                ).as_dict()
                for name in LOSS_NAMES:
                    totals[name] = totals[name] + step_losses[name]
                num_predictions += 1
            if t == num_frames - 1:
                break  # no later frame reads this frame's memory
            memory_masks = prediction.high_res_masks
            if getattr(self.policy, "exclusive_memories", False) and t not in plan.conditioning_frames:
                # Among the objects of each clip (one video each), at the decoder's resolution as
                # the tracker applies it (a prompted frame's masks are kept whole).
                prompted = torch.zeros(num_objects, dtype=torch.bool, device=device)
                low_res = exclusive_masks(prediction.final.low_res_masks, prompted, clip_of_object, frames.shape[0])
                memory_masks = model.upscale_masks(low_res)
            memory_features, memory_pos = model.encode_memory(
                frame_features, memory_masks, prediction.final.object_score_logits, binarize=False
            )
            if spatial_pos is None:
                spatial_pos = memory_pos.flatten(2)[0].T.contiguous()  # (tokens, C)
            final_quality = None
            if getattr(self.policy, "uses_quality", False):  # (N,) logits and IoUs, detached: only ranked
                final = prediction.final
                final_quality = (final.object_score_logits.detach().reshape(-1),
                                 final.ious.detach().max(dim=-1).values.reshape(-1))
            bank.write(
                _BANK_ID,
                t,
                memory_features.flatten(2).transpose(1, 2),  # (N, tokens, C)
                prediction.final.obj_ptr,
                conditioning=t in plan.conditioning_frames,
                object_score=final_quality[0] if final_quality else None,
                iou=final_quality[1] if final_quality else None,
            )
        summary = {
            "num_objects": torch.tensor(float(num_objects), device=device),
            "num_predictions": torch.tensor(float(num_predictions), device=device),
        }
        return {**totals, **summary}

    # ------------------------------------------------------------------------------------
    @staticmethod
    def _frame_features(features: ImageFeatures, image_index: torch.Tensor) -> ImageFeatures:
        """The features of one frame for every object (rows of the batched encoder output)."""
        return ImageFeatures(
            embedding=features.embedding[image_index],
            position=features.position[:1],
            high_res=[level[image_index] for level in features.high_res],
        )

    def _drop_high_res(self, high_res: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """The high-resolution features with each object's zeroed with probability high_res_dropout."""
        if self.high_res_dropout <= 0.0 or not self.model.training:
            return high_res
        num_objects = high_res[0].shape[0]
        draw = torch.rand(num_objects, generator=generator, device=high_res[0].device)
        keep = (draw >= self.high_res_dropout).to(high_res[0].dtype).view(num_objects, 1, 1, 1)
        return [level * keep for level in high_res]

    def _predict_frame(
        self,
        t: int,
        frame_features: ImageFeatures,
        target: torch.Tensor,
        plan: PromptPlan,
        bank: MemoryBank,
        spatial_pos: torch.Tensor | None,
        max_pointers: int,
        num_frames: int,
        generator: torch.Generator,
    ) -> FramePrediction:
        """Frame ``t``'s prediction steps and what its memory is encoded from."""
        model = self.model
        num_objects = target.shape[0]
        is_init = t in plan.init_cond_frames
        if is_init and not plan.use_points:
            given = target[:, None].to(model.dtype)
            output = model.mask_as_output(frame_features.embedding, frame_features.high_res, given)
            # The memory sees the given mask at full resolution, as SAM 2 training encodes it.
            high_res = target[:, None].to(torch.float32) * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
            return FramePrediction(scored=[], final=output, high_res_masks=high_res)

        point_coords = point_labels = None
        high_res = frame_features.high_res
        if is_init:
            pix_feat = model.features_without_memory(frame_features, num_objects)
            point_coords, point_labels = initial_prompt(plan, target, self.prompt_config, generator)
            output = model.decode(
                pix_feat,
                frame_features.high_res,
                point_coords=point_coords,
                point_labels=point_labels,
                multimask_output=model.use_multimask(True, point_coords.shape[1]),
            )
        else:
            if spatial_pos is None:
                raise RuntimeError(f"frame {t} has no earlier memory to attend to")
            layout = bank.layout(_BANK_ID, t, num_frames)
            candidates = gather_candidates([layout], with_quality=getattr(self.policy, "uses_quality", False))
            keep = select_memories(candidates, self.policy, model.num_maskmem)
            memory, memory_pos, num_pointer_tokens = memory_tokens(
                model, candidates, keep, spatial_pos.to(model.dtype), max_pointers
            )
            pix_feat = model.attend_to_memory(frame_features, memory, memory_pos, num_pointer_tokens)
            high_res = self._drop_high_res(frame_features.high_res, generator)
            output = model.decode(pix_feat, high_res, multimask_output=model.use_multimask(False, 0))
        outputs = [output]

        if t in plan.correction_frames:
            from_gt = plan.sample_from_gt[plan.correction_frames.index(t)]
            for click in range(plan.num_correction_points):
                with torch.no_grad():
                    predicted = None if from_gt[click] else model.upscale_masks(output.low_res_masks)[:, 0] > 0
                new_coords, new_labels = sample_correction_click(
                    target, predicted, self.prompt_config.click_method, generator
                )
                if point_coords is None:
                    point_coords, point_labels = new_coords, new_labels
                else:
                    point_coords = torch.cat([point_coords, new_coords], dim=1)
                    point_labels = torch.cat([point_labels, new_labels], dim=1)
                output = model.decode(
                    pix_feat,
                    high_res,
                    point_coords=point_coords,
                    point_labels=point_labels,
                    mask_inputs=output.low_res_masks.clamp(-PREVIOUS_LOGITS_CLAMP, PREVIOUS_LOGITS_CLAMP),
                    multimask_output=model.use_multimask(is_init, point_coords.shape[1]),
                )
                outputs.append(output)
        return FramePrediction(scored=outputs, final=output, high_res_masks=model.upscale_masks(output.low_res_masks))


__all__ = ["ClipForward", "FramePrediction", "training_bank"]
