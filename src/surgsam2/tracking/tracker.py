"""The streaming tracker: frame in, masks out, with a bounded memory bank.

Per frame the image is encoded once; every tracked object then goes through memory attention,
the mask decoder and the memory encoder as one batch (objects whose memories have different
shapes, e.g. after prompts on different frames, form a few batches). Prompts may come on any
frame: a new object starts from its prompt; a mask on a known object replaces its mask; clicks or
a box on a known object correct the tracked mask (SAM 2's corrective clicks). Prompted frames
become conditioning frames, always remembered.

`Tracker.step` is `advance` (the network, outputs kept on the device) followed by `result`
(masks at frame size, on the host); offline propagation calls the two apart to merge passes. The
stages of a frame are reported to an optional hook (`surgsam2.tracking.stages`), e.g. a profiler.
Memory attention with the decoder and the memory encoder run as the batch phases of
`surgsam2.tracking.phases`; `memory_batches` (choosing memories) and `store_memories` are the
per-stream steps around them, which `MultiStreamTracker` calls to batch those phases across streams.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from surgsam2.memory.assembly import (
    cached_rotated_keys,
    gather_candidates,
    kept_rotated_keys,
    memory_tokens,
    select_memories,
)
from surgsam2.memory.bank import BankConfig, MemoryBank, MemoryLayout
from surgsam2.memory.policies import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY, MemoryPolicy, make_policy
from surgsam2.memory.ring import BANK_KINDS, DEFAULT_BANK, RingBank
from surgsam2.memory.steady import steady_plan
from surgsam2.model.sam2 import DecoderOutput, ImageFeatures, SAM2Model
from surgsam2.tracking.frames import check_stream_frame, preprocess_frame, validate_frame
from surgsam2.tracking.phases import (
    EncodedMemories,
    MemoryBatch,
    TrackedObject,
    attend_and_decode,
    encode_memories,
    memory_encoder_inputs,
    own_row,
    tracked_output,
)
from surgsam2.tracking.postprocess import fill_holes_for_device
from surgsam2.tracking.prompts import ModelPrompt, Prompt, to_model_prompt, validate_prompts
from surgsam2.tracking.results import FrameResult, ObjectOutput
from surgsam2.tracking.stages import NO_STAGES, StageHook
from surgsam2.tracking.steady_frame import SteadyFrames
from surgsam2.tracking.stream import StreamTracker

# Previous mask logits fed back with corrective clicks are clamped, as SAM 2 does.
PREVIOUS_LOGITS_CLAMP = 32.0


class Tracker(StreamTracker):
    """Streaming promptable tracker over a SAM 2 model.

    ``memory``: a policy name (`surgsam2.memory.policy_table`: ``"refp"`` default, ``"efp"``
    Surgical SAM 2, ``"fifo"`` SAM 2, ...) or a MemoryPolicy.
    ``num_frames``: the clip length when known; SAM 2 scales object-pointer temporal encodings by
    it on clips shorter than 16 frames, so pass it to reproduce the official predictor there.
    ``fill_hole_area``: small background holes filled in the low-res masks (None: model config).
    ``cache_memory_keys``: keep each stored memory's projected, rotated memory-attention keys
    (num_layers x d_model per token, in the model's dtype) instead of recomputing them every
    frame it is attended to: less compute per frame for more state (Hiera-S at 512 px in bf16:
    2 MB per memory and object, plus 14 MB for the temporal slots' key terms). Same result up to
    rounding.
    ``stage_hook``: receives the named stages of every frame (`surgsam2.tracking.stages`; also
    settable later as the ``stage_hook`` attribute); default: none, at no cost.
    ``bank``: how memories are stored (`surgsam2.memory.ring.BANK_KINDS`): ``"dict"`` (default,
    `MemoryBank`: tensors per object and frame) or ``"ring"`` (`RingBank`: preallocated slots at
    fixed addresses, the same candidates and results).
    ``steady_frames``: with ``bank="ring"``, `step` runs every frame in a steady state (no prompt,
    the same objects, every conditioning frame older than the memory windows: `memory.steady`)
    as one function without the host (`tracking.steady_frame`): on a GPU one CUDA graph per set
    of objects, replayed, with one host sync per frame (the masks' copy); on the CPU the same
    function eagerly. The same masks and logits, bit for bit; other frames take the ordinary
    path. Steady frames report no stages to ``stage_hook``.
    """

    def __init__(
        self,
        model: SAM2Model,
        memory: str | MemoryPolicy = DEFAULT_POLICY,
        num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE,
        fill_hole_area: int | None = None,
        num_frames: int | None = None,
        output_logits: bool = True,
        cache_memory_keys: bool = True,
        stage_hook: StageHook | None = None,
        bank: str = DEFAULT_BANK,
        steady_frames: bool = False,
    ) -> None:
        if not isinstance(model, SAM2Model):
            raise ValueError(f"model must be a surgsam2 SAM2Model, got {type(model).__name__}")
        if bank not in BANK_KINDS:
            raise ValueError(f"unknown memory bank {bank!r}; choose one of {', '.join(BANK_KINDS)}")
        if steady_frames and bank != "ring":
            raise ValueError(f"steady_frames needs bank='ring' (memories at fixed addresses), got bank={bank!r}")
        self.model = model.eval()
        self.policy = make_policy(memory, num_frame_to_prune)
        config = model.config
        self.fill_hole_area = config.fill_hole_area if fill_hole_area is None else fill_hole_area
        self.num_frames = num_frames
        self.output_logits = output_logits
        self.cache_memory_keys = cache_memory_keys
        self.stage_hook: StageHook = NO_STAGES if stage_hook is None else stage_hook
        bank_config = BankConfig(
            num_maskmem=config.num_maskmem,
            max_obj_ptrs_in_encoder=config.max_obj_ptrs_in_encoder,
            memory_temporal_stride=config.memory_temporal_stride_for_eval,
            max_cond_frames_in_attn=config.max_cond_frames_in_attn,
            only_obj_ptrs_in_the_past=config.only_obj_ptrs_in_the_past_for_eval,
            use_signed_tpos_enc_to_obj_ptrs=config.use_signed_tpos_enc_to_obj_ptrs,
            # A policy that attends to retained reliable memories says how many and how reliable.
            retained_memories=getattr(self.policy, "retained_memories", 0),
            retained_min_iou=getattr(self.policy, "min_iou", 0.5),
            retained_slot=getattr(self.policy, "retained_slot", None),
        )
        self.bank: MemoryBank | RingBank = RingBank(bank_config) if bank == "ring" else MemoryBank(bank_config)
        self.steady: SteadyFrames | None = None
        if steady_frames:
            self.steady = SteadyFrames(self.model, self.policy, self.bank, self.fill_hole_area)
        self.frame_index = 0
        self.frame_size: tuple[int, int] | None = None
        self._memory_pos: torch.Tensor | None = None  # (T, mem_dim) spatial encoding of memories
        # (num_layers, num_maskmem, T, d_model): the rotated key term of each temporal slot.
        self._temporal_keys: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------
    def _forget_stream(self) -> None:
        self._memory_pos = None
        self._temporal_keys = None
        if self.steady is not None:
            self.steady.reset()

    def state_bytes(self) -> int:
        """Bytes of tensors the tracker holds between frames."""
        extra = sum(
            tensor.numel() * tensor.element_size()
            for tensor in (self._memory_pos, self._temporal_keys)
            if tensor is not None
        )
        return self.bank.stored_bytes() + extra

    @torch.inference_mode()
    def step(
        self, frame: np.ndarray, prompts: Mapping[int, Prompt] | None = None, features: ImageFeatures | None = None
    ) -> FrameResult:
        """Track every object on the next frame (HxWx3 uint8 RGB), applying ``prompts`` first.
        Object ids are integers in 1..255 (what a palette PNG mask stores). ``features``: this
        frame's `encode_frame`, when the caller already has it (e.g. several clicks on one frame)."""
        frame_index = self.frame_index
        if self.steady is not None and not prompts and features is None:
            result = self._steady_step(frame)
            if result is not None:
                return result
        outputs = self.advance(frame, prompts, features)
        return self.result(outputs, frame_index)

    def _steady_step(self, frame: np.ndarray) -> FrameResult | None:
        """The frame through `SteadyFrames` when the bank is in a steady state, else None."""
        plan = steady_plan(self.bank, self.frame_index, self.num_frames)
        if plan is None or self._memory_pos is None:
            return None
        frame, self.frame_size = check_stream_frame(frame, self.frame_index, self.frame_size)
        temporal_keys = self._rotated_temporal_keys() if self.cache_memory_keys else None
        result = self.steady.run(frame, self.frame_index, plan, self._memory_pos, temporal_keys, self.output_logits)
        self.frame_index += 1
        return result

    @torch.inference_mode()
    def encode_frame(self, frame: np.ndarray) -> ImageFeatures:
        """The image encoder's features of ``frame`` (HxWx3 uint8 RGB), as `step` computes them."""
        frame = validate_frame(frame, self.frame_index)
        model = self.model
        image = preprocess_frame(frame, model.image_size, model.device, model.dtype)
        with self.stage_hook.stage("encode_image"):
            return model.encode_image(image)

    @torch.inference_mode()
    def advance(
        self, frame: np.ndarray, prompts: Mapping[int, Prompt] | None = None, features: ImageFeatures | None = None
    ) -> dict[int, ObjectOutput]:
        """Validate, run the network on one frame, remember it and move to the next frame.
        Returns each object's output still on the device (`result` makes the masks of a frame).
        ``features``: this frame's `encode_frame` if already computed (not checked against it)."""
        frame, frame_size = check_stream_frame(frame, self.frame_index, self.frame_size)
        prompts = validate_prompts(prompts, frame_size)
        self.frame_size = frame_size
        outputs: dict[int, ObjectOutput] = {}
        if prompts or self.bank.objects:  # otherwise nothing to track yet: no network time
            model = self.model
            device = model.device
            if features is None:
                features = self.encode_frame(frame)
            model_prompts = {
                obj_id: to_model_prompt(prompt, frame_size, model.image_size, device)
                for obj_id, prompt in prompts.items()
            }
            outputs = self._run_frame(features, model_prompts)
            self._remember(features, outputs)
        self.frame_index += 1
        return outputs

    @torch.inference_mode()
    def result(self, outputs: Mapping[int, ObjectOutput], frame_index: int) -> FrameResult:
        """The result of frame ``frame_index`` from `advance` outputs (of this tracker, or of
        another one over the same frames, e.g. a backward pass): masks at the frame's size."""
        if outputs and self.frame_size is None:
            raise ValueError("result() needs a frame size: call advance() on a frame first")
        with self.stage_hook.stage("output"):
            return self._host_result(dict(outputs), frame_index)

    # ------------------------------------------------------------------------------------
    # One frame
    # ------------------------------------------------------------------------------------
    def _run_frame(self, features: ImageFeatures, prompts: dict[int, ModelPrompt]) -> dict[int, ObjectOutput]:
        outputs: dict[int, ObjectOutput] = {}
        known = [obj_id for obj_id in self.bank.objects]
        replaced = [obj_id for obj_id in known if obj_id in prompts and prompts[obj_id].mask is not None]
        tracked = [obj_id for obj_id in known if obj_id not in replaced]

        # 1. Track known objects with their memories (also those about to get corrective clicks).
        for obj_id, tracked_object in self._track(features, tracked).items():
            prompt = prompts.get(obj_id)
            if prompt is None:
                outputs[obj_id] = tracked_output(tracked_object)
                continue
            # 2. Corrective clicks: decode again with the clicks and the tracked mask as input.
            with self.stage_hook.stage("decoder"):
                corrected = self.model.decode(
                    tracked_object.pix_feat,
                    features.high_res,
                    point_coords=prompt.point_coords,
                    point_labels=prompt.point_labels,
                    mask_inputs=tracked_object.filled.clamp(-PREVIOUS_LOGITS_CLAMP, PREVIOUS_LOGITS_CLAMP),
                    multimask_output=self.model.use_multimask(False, prompt.num_points),
                )
            outputs[obj_id] = self._prompted_output(corrected)

        # 3. New objects, and known objects whose mask is replaced: decoded without memory.
        for obj_id, prompt in prompts.items():
            if obj_id in outputs:
                continue
            with self.stage_hook.stage("decoder"):
                if prompt.mask is not None:
                    decoded = self.model.mask_as_output(features.embedding, features.high_res, prompt.mask)
                else:
                    decoded = self.model.decode(
                        self.model.features_without_memory(features, 1),
                        features.high_res,
                        point_coords=prompt.point_coords,
                        point_labels=prompt.point_labels,
                        multimask_output=self.model.use_multimask(True, prompt.num_points),
                    )
            outputs[obj_id] = self._prompted_output(decoded)
        return outputs

    def _prompted_output(self, decoded: DecoderOutput) -> ObjectOutput:
        """A prompted frame's output: its memory is encoded from the shown (hole-filled) mask."""
        filled = fill_holes_for_device(decoded.low_res_masks, self.fill_hole_area)
        return ObjectOutput(
            filled, filled, decoded.ious, decoded.obj_ptr, decoded.object_score_logits, conditioning=True
        )

    def _track(self, features: ImageFeatures, obj_ids: list[int]) -> dict[int, TrackedObject]:
        """Memory attention + decoding of known objects, one batch per memory shape."""
        tracked: dict[int, TrackedObject] = {}
        for batch in self.memory_batches(obj_ids):
            rows = attend_and_decode(self.model, self.stage_hook, features, [batch], self.fill_hole_area)
            tracked.update(zip(batch.obj_ids, rows))
        return {obj_id: tracked[obj_id] for obj_id in obj_ids}

    def memory_batches(self, obj_ids: list[int]) -> list[MemoryBatch]:
        """Memory attention's inputs for ``obj_ids`` on the current frame, one batch per layout
        shape (objects whose memories came from different prompts differ)."""
        if not obj_ids:
            return []
        layouts = {obj_id: self.bank.layout(obj_id, self.frame_index, self.num_frames) for obj_id in obj_ids}
        groups: dict[tuple, list[int]] = {}
        for obj_id in obj_ids:
            groups.setdefault(layouts[obj_id].shape_key, []).append(obj_id)
        batches = []
        for group in groups.values():
            with self.stage_hook.stage("memory_assembly"):
                batches.append(MemoryBatch(group, *self._memory_inputs(group, [layouts[i] for i in group])))
        return batches

    def _memory_inputs(
        self, obj_ids: list[int], layouts: list[MemoryLayout]
    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """Memory tokens (L, B, C), their encodings, the number of pointer tokens and (with the
        key cache) the precomputed keys, after the policy chose which memories each object
        keeps (shared with training: memory.assembly)."""
        max_pointers = self.model.config.max_obj_ptrs_in_encoder
        if self.num_frames is not None:
            max_pointers = min(self.num_frames, max_pointers)
        with_quality = getattr(self.policy, "uses_quality", False)
        ring = isinstance(self.bank, RingBank)
        if ring:
            candidates, candidate_keys = self.bank.candidates(obj_ids, layouts, with_quality)
        else:
            candidates = gather_candidates(layouts, with_quality=with_quality)
        keep = select_memories(candidates, self.policy, self.model.num_maskmem)
        memory, memory_pos, num_ptr_tokens = memory_tokens(
            self.model, candidates, keep, self._memory_pos, max_pointers
        )
        keys = None
        if self.cache_memory_keys:
            temporal = self._rotated_temporal_keys()
            if ring:
                keys = kept_rotated_keys(candidate_keys, candidates.slots, keep, temporal, num_ptr_tokens)
            else:
                keys = cached_rotated_keys(layouts, keep, temporal, num_ptr_tokens)
        return memory, memory_pos, num_ptr_tokens, keys

    def _rotated_temporal_keys(self) -> torch.Tensor:
        """The rotated key term of every temporal slot, computed once per stream."""
        if self._temporal_keys is None:
            model = self.model
            temporal = model.maskmem_tpos_enc.view(model.num_maskmem, -1)
            self._temporal_keys = model.memory_attention.rotated_temporal_keys(temporal, self._memory_pos.shape[0])
        return self._temporal_keys

    # ------------------------------------------------------------------------------------
    # Memory and results
    # ------------------------------------------------------------------------------------
    def _remember(self, features: ImageFeatures, outputs: dict[int, ObjectOutput]) -> None:
        """Encode every object's memory of this frame in one batch and store it."""
        if not outputs:
            return
        obj_ids = self._bank_objects_of(outputs)
        masks, object_scores, conditioning = memory_encoder_inputs([outputs[i] for i in obj_ids])
        encoded = encode_memories(
            self.model, self.stage_hook, features, masks, object_scores, conditioning,
            self.bank.config.storage_dtype if self.cache_memory_keys else None, self._memory_pos,
            (0,) * len(obj_ids) if getattr(self.policy, "exclusive_memories", False) else None,
        )  # fmt: skip
        self.store_memories(obj_ids, outputs, encoded, object_scores)

    def store_memories(
        self,
        obj_ids: list[int],
        outputs: dict[int, ObjectOutput],
        encoded: EncodedMemories,
        object_scores: torch.Tensor,
    ) -> None:
        """Write the memories of this frame of ``obj_ids`` (rows of ``encoded`` and
        ``object_scores``, in that order) to the bank."""
        if self._memory_pos is None:
            self._memory_pos = encoded.spatial_pos
        tokens, keys = encoded.tokens, encoded.keys
        with_quality = getattr(self.policy, "uses_quality", False)
        if isinstance(self.bank, RingBank):  # every object in one write
            ious = torch.cat([outputs[i].ious.max(dim=-1).values for i in obj_ids]) if with_quality else None
            self.bank.write_frame(
                obj_ids, self.frame_index, tokens, torch.cat([outputs[i].obj_ptr for i in obj_ids]),
                [outputs[i].conditioning for i in obj_ids], keys,
                object_scores=object_scores.reshape(-1) if with_quality else None,
                ious=ious,
            )  # fmt: skip
            return
        for row, obj_id in enumerate(obj_ids):
            output = outputs[obj_id]
            self.bank.write(
                obj_id,
                self.frame_index,
                tokens[row],
                output.obj_ptr[0],
                conditioning=output.conditioning,
                keys=None if keys is None else own_row(keys, row),
                # The frame's quality stays on the device (no host sync) for quality-aware policies.
                object_score=output.object_score_logits.reshape(()) if with_quality else None,
                iou=output.ious.max(dim=-1).values.reshape(()) if with_quality else None,
            )

    def _host_result(self, outputs: dict[int, ObjectOutput], frame_index: int) -> FrameResult:
        """Upsample every object's mask to the frame size in one batch, then move to the host."""
        result = FrameResult(frame_index=frame_index)
        if not outputs:
            return result
        obj_ids = list(outputs)
        low_res = torch.cat([outputs[i].low_res_masks for i in obj_ids]).float()
        logits = F.interpolate(low_res, size=self.frame_size, mode="bilinear", align_corners=False)[:, 0]
        scores = torch.cat([outputs[i].object_score_logits for i in obj_ids]).float().sigmoid().flatten()
        ious = torch.stack(
            [outputs[i].ious.float().max(dim=-1).values[0] for i in obj_ids]
        )
        summary = torch.stack([scores, ious]).cpu()  # one transfer for both
        logits_host = logits.cpu().numpy()
        scores_host, ious_host = summary.tolist()
        for row, obj_id in enumerate(obj_ids):
            result.masks[obj_id] = logits_host[row] > 0
            if self.output_logits:
                result.logits[obj_id] = logits_host[row]
            result.scores[obj_id] = scores_host[row]
            result.ious[obj_id] = ious_host[row]
        return result
