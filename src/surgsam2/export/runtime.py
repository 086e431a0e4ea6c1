"""`OnnxTracker`: the streaming tracker on an ONNX export, without PyTorch.

Needs numpy, OpenCV, Pillow, a runtime (onnxruntime, or openvino: `export.engines`) and an export
folder (`surgsam2 export --format onnx`).
It has the `Tracker` API (`step(frame, prompts) -> FrameResult`, `remove_object`, `object_ids`)
and follows the same rules by sharing their code: frame and prompt validation
(`tracking.frames`, `tracking.prompts`), which memories and pointers a frame may attend to
(`memory.rules.BankRules`, the base of the torch `MemoryBank`), hole filling
(`tracking.postprocess`). It runs the policies of `RUNTIME_POLICIES`. What is re-written in numpy
(the policies' selection and refp's retained memories in `export.runtime_memory`, the antialiased
resize of mask prompts) is tested against the torch original. Nothing on this module's import
path imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from surgsam2.export.engines import GraphFile, GraphSession, engine_version, open_sessions
from surgsam2.export.manifest import load_manifest
from surgsam2.export.runtime_memory import (
    RetainingBankRules,
    efp_num_dropped,
    efp_select,
    layout_quality,
    refp_select,
)
from surgsam2.memory.policy_table import DEFAULT_MIN_IOU, DEFAULT_RETAINED_MEMORIES
from surgsam2.memory.rules import MemoryLayout, MemoryRules
from surgsam2.tracking.frames import check_stream_frame, resize_frame
from surgsam2.tracking.postprocess import fill_holes_array
from surgsam2.tracking.prompts import Prompt, prompt_point_arrays, validate_prompts
from surgsam2.tracking.results import FrameResult
from surgsam2.tracking.stream import StreamTracker

GRAPHS = ("image_encoder", "mask_decoder", "memory_attention", "memory_encoder", "memory_keys", "mask_prompt")
PREVIOUS_LOGITS_CLAMP = 32.0  # as the torch tracker clamps the tracked mask fed back with clicks
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0  # a mask prompt's logits, as SAM2Model.mask_as_output


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest, ties to even) and back: the torch bank stores
    memories in bfloat16, so the runtime keeps exactly the values it would."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


# The memory policies this runtime runs: fifo, efp, refp (efp with retained reliable memories) and
# xefp (efp on exclusive memory masks).
RUNTIME_POLICIES = ("efp", "fifo", "refp", "xefp")
LOST_PIXEL_LOGIT = -10.0  # as `surgsam2.memory.exclusive`


def exclusive_masks_array(logits: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """`surgsam2.memory.exclusive.exclusive_masks` for the objects of one video, in numpy: (B, 1, h, w)
    logits with each pixel kept only by the object(s) with the highest logit, prompted objects
    (``fixed``, (B,) bool) kept whole and first where positive; lost pixels clamped to <= -10."""
    if logits.shape[0] <= 1:
        return logits
    fixed = np.asarray(fixed, bool).reshape(-1, *([1] * (logits.ndim - 1)))
    ranking = np.where(fixed & (logits > 0), np.inf, logits)
    keep = fixed | (ranking >= ranking.max(axis=0, keepdims=True))
    return np.where(keep, logits, np.minimum(logits, LOST_PIXEL_LOGIT)).astype(logits.dtype)


def _aa_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of torch's antialiased bilinear resize (align_corners=False) on one axis."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for index in range(out_size):
        center = scale * (index + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((taps - center + 0.5) * inv), 0.0, None).astype(np.float32)
        total = w.sum()
        weights[index, lo:hi] = w / total if total > 0 else w
    return weights


def resize_antialiased(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) float32 -> (height, width) as ``F.interpolate(..., 'bilinear', antialias=True)``."""
    rows, cols = _aa_weights(plane.shape[0], height), _aa_weights(plane.shape[1], width)
    return (rows @ plane.astype(np.float32) @ cols.T).astype(np.float32)


@dataclass
class OnnxObjectOutput:
    """One object's output on a frame (numpy; as the torch tracker's `ObjectOutput`)."""

    low_res_masks: np.ndarray  # (1, h, w) hole-filled logits, what the user sees
    memory_masks: np.ndarray  # (1, h, w) logits the memory is encoded from
    iou: float
    obj_ptr: np.ndarray  # (C,)
    object_score_logit: float
    conditioning: bool


@dataclass
class _ModelPrompt:
    """A prompt in model coordinates: an S x S 0/1 mask, or points (N, 2) with labels (N,)."""

    mask: np.ndarray | None
    point_coords: np.ndarray | None
    point_labels: np.ndarray | None


class OnnxTracker(StreamTracker):
    """Streaming promptable tracker over an ONNX export (the `Tracker` API, no PyTorch).

    ``folder``: an export folder (its manifest is verified); ``memory``: one of `RUNTIME_POLICIES`,
    ``"efp"``, ``"fifo"``, ``"refp"`` or ``"xefp"`` (default: the manifest's; refp retains as many
    memories, as reliable, as the torch policy's defaults in `memory.policy_table`); ``engine``:
    ``"onnx"`` (ONNX Runtime, fp32) or ``"openvino"`` (``precision`` fp32, or bf16 compiled from the
    same fp32 files; `export.engines`);
    ``providers``: ONNX Runtime execution providers (default CPU); ``threads``: the runtime's.
    ``num_frames``: only clips of at least the pointer window (16 frames) may be given: the
    export's pointer encoding is fixed to it (shorter clips track as a stream).
    """

    def __init__(
        self,
        folder: str | Path,
        memory: str | None = None,
        num_frame_to_prune: int | None = None,
        fill_hole_area: int | None = None,
        num_frames: int | None = None,
        output_logits: bool = True,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        engine: str = "onnx",
        precision: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        config, memory_record = self.manifest["model"]["config"], self.manifest["memory"]
        self.config = config
        self.policy = memory_record["policy"] if memory is None else memory
        if self.policy not in RUNTIME_POLICIES:
            raise ValueError(f"the ONNX runtime runs the {', '.join(RUNTIME_POLICIES)} policies, not {self.policy!r}")
        self.num_frame_to_prune = memory_record["num_frame_to_prune"] if num_frame_to_prune is None else num_frame_to_prune
        if self.num_frame_to_prune < 0:
            raise ValueError(f"num_frame_to_prune must be >= 0, got {self.num_frame_to_prune}")
        self.fill_hole_area = config["fill_hole_area"] if fill_hole_area is None else fill_hole_area
        if num_frames is not None and num_frames < memory_record["max_pointers"]:
            num_frames = None
        self.num_frames = num_frames
        self.output_logits = output_logits
        self.image_size = int(self.manifest["image_size"])
        self.memory_record = memory_record
        self.engine = engine
        self.sessions = open_sessions(engine, self._graph_files(), precision, threads, providers)
        # What the runtime compiled (OpenVINO may run another precision than asked for).
        self.precision = "/".join(sorted({session.precision for session in self.sessions.values()}))
        self.bank = RetainingBankRules(memory_rules(config, self.policy))
        normalisation = self.manifest["normalisation"]
        scaled = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
        mean = np.asarray(normalisation["mean"], dtype=np.float32)[:, None]
        std = np.asarray(normalisation["std"], dtype=np.float32)[:, None]
        self._table = ((scaled[None, :] - mean) / std).astype(np.float32)  # (3, 256)
        self.frame_index = 0
        self.frame_size: tuple[int, int] | None = None

    def _graph_files(self) -> dict[str, GraphFile]:
        """The graph files by name; ValueError for a missing graph or one not stored in fp32."""
        graphs = self.manifest["graphs"]
        missing = [name for name in GRAPHS if name not in graphs]
        if missing:
            raise ValueError(f"{self.folder}: the export has no {missing[0]!r} graph; export again")
        for name in GRAPHS:
            if graphs[name].get("precision") != "fp32":
                raise ValueError(
                    f"{self.folder / graphs[name]['file']}: stored in {graphs[name].get('precision')!r}, this"
                    " runtime reads fp32 graph files (the engine chooses the precision it runs)"
                )
        return {
            name: GraphFile(
                self.folder / graphs[name]["file"],
                [value["name"] for value in graphs[name]["inputs"]],
                [value["name"] for value in graphs[name]["outputs"]],
            )
            for name in GRAPHS
        }

    def describe(self) -> str:
        """Engine, runtime version and the precision it runs, e.g. 'openvino (openvino 2026.4.1), bf16
        from fp32 graph files'."""
        return f"{self.engine} ({engine_version(self.engine)}), {self.precision} from fp32 graph files"

    # --- public API ---------------------------------------------------------------------------

    def step(self, frame: np.ndarray, prompts: Mapping[int, Prompt] | None = None) -> FrameResult:
        """Track every object on the next frame (HxWx3 uint8 RGB), applying ``prompts`` first."""
        frame, frame_size = check_stream_frame(frame, self.frame_index, self.frame_size)
        prompts = validate_prompts(prompts, frame_size)
        self.frame_size = frame_size
        outputs: dict[int, OnnxObjectOutput] = {}
        if prompts or self.bank.objects:
            features = self.encode_frame(frame)
            model_prompts = {obj_id: self._model_prompt(prompt) for obj_id, prompt in prompts.items()}
            outputs = self._run_frame(features, model_prompts)
            self._remember(features, outputs)
        result = self._result(outputs, self.frame_index)
        self.frame_index += 1
        return result

    def encode_frame(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """The image encoder's outputs by name, from the frame preprocessed as the torch tracker does."""
        pixels = resize_frame(frame, self.image_size)
        image = np.stack([self._table[channel][pixels[:, :, channel]] for channel in range(3)])[None]
        return _named(self.sessions["image_encoder"], {"images": np.ascontiguousarray(image)})

    # --- one frame ----------------------------------------------------------------------------
    def _use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        """`SAM2Model.use_multimask` from the manifest's config."""
        config = self.config
        return bool(
            config["multimask_output_in_sam"]
            and (is_init_cond_frame or config["multimask_output_for_tracking"])
            and config["multimask_min_pt_num"] <= num_points <= config["multimask_max_pt_num"]
        )

    def _model_prompt(self, prompt: Prompt) -> _ModelPrompt:
        """`tracking.prompts.to_model_prompt` in numpy (a validated prompt)."""
        height, width = self.frame_size
        size = self.image_size
        if prompt.mask is not None:
            mask = np.asarray(prompt.mask).astype(bool).astype(np.float32)
            if (height, width) != (size, size):
                mask = (resize_antialiased(mask, size, size) >= 0.5).astype(np.float32)
            return _ModelPrompt(mask, None, None)
        coords, labels = prompt_point_arrays(prompt, self.frame_size, size)
        return _ModelPrompt(None, coords, labels)

    def _decode(
        self, features: dict[str, np.ndarray], pix_feat: np.ndarray, coords: np.ndarray, labels: np.ndarray,
        mask_input: np.ndarray | None, multimask: bool,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """The mask decoder for one object (batch 1): points (N, 2), labels (N,), optional mask logits."""
        low = 4 * features["image_embedding"].shape[-1]
        inputs = {
            "pix_feat": pix_feat, "high_res_0": features["high_res_0"], "high_res_1": features["high_res_1"],
            "point_coords": coords[None].astype(np.float32), "point_labels": labels[None].astype(np.int32),
            "mask_input": np.zeros((1, 1, low, low), np.float32) if mask_input is None else mask_input.astype(np.float32),
            "has_mask": np.array([mask_input is not None]), "multimask": np.array([multimask]),
        }  # fmt: skip
        return _named(self.sessions["mask_decoder"], inputs)

    def _run_frame(self, features: dict[str, np.ndarray], prompts: dict[int, _ModelPrompt]) -> dict[int, OnnxObjectOutput]:
        """Known objects tracked (with corrective clicks), then new or replaced objects decoded from
        their prompts, as `Tracker._run_frame`."""
        known = list(self.bank.objects)
        replaced = [obj_id for obj_id in known if obj_id in prompts and prompts[obj_id].mask is not None]
        tracked = [obj_id for obj_id in known if obj_id not in replaced]
        clicked = [obj_id for obj_id, prompt in prompts.items() if obj_id not in known and prompt.mask is None]
        # One memory-attention batch: tracked objects with their memories, new clicked objects with none
        # (their features are the image embedding plus the 'no memory' embedding).
        pix_feats = self._attend(features, tracked, clicked)
        outputs: dict[int, OnnxObjectOutput] = {}
        no_point = (np.zeros((1, 2), np.float32), np.full((1,), -1, np.int32))
        multimask = self._use_multimask(False, 0)
        for obj_id in tracked:
            decoded = self._decode(features, pix_feats[obj_id], *no_point, None, multimask)
            filled = fill_holes_array(decoded["low_res_masks"], self.fill_hole_area)
            prompt = prompts.get(obj_id)
            if prompt is None:
                outputs[obj_id] = OnnxObjectOutput(
                    filled[0], decoded["low_res_masks"][0], float(decoded["iou"].max()), decoded["obj_ptr"][0],
                    float(decoded["object_score_logits"][0, 0]), conditioning=False,
                )
                continue
            clamped = np.clip(filled, -PREVIOUS_LOGITS_CLAMP, PREVIOUS_LOGITS_CLAMP)
            multi = self._use_multimask(False, len(prompt.point_labels))
            corrected = self._decode(features, pix_feats[obj_id], prompt.point_coords, prompt.point_labels, clamped, multi)
            outputs[obj_id] = self._prompted_output(corrected)
        for obj_id, prompt in prompts.items():
            if obj_id in outputs:
                continue
            if prompt.mask is not None:
                outputs[obj_id] = self._mask_output(features, prompt.mask)
            else:
                multi = self._use_multimask(True, len(prompt.point_labels))
                decoded = self._decode(features, pix_feats[obj_id], prompt.point_coords, prompt.point_labels, None, multi)
                outputs[obj_id] = self._prompted_output(decoded)
        return outputs

    def _prompted_output(self, decoded: dict[str, np.ndarray]) -> OnnxObjectOutput:
        """A prompted frame's output: its memory is encoded from the shown (hole-filled) mask."""
        filled = fill_holes_array(decoded["low_res_masks"], self.fill_hole_area)
        return OnnxObjectOutput(
            filled[0], filled[0], float(decoded["iou"].max()), decoded["obj_ptr"][0],
            float(decoded["object_score_logits"][0, 0]), conditioning=True,
        )  # fmt: skip

    def _mask_output(self, features: dict[str, np.ndarray], mask: np.ndarray) -> OnnxObjectOutput:
        """A mask prompt used as the output (`SAM2Model.mask_as_output`), hole-filled as prompted."""
        low = self.image_size // 4
        low_res = resize_antialiased(mask * np.float32(MASK_LOGIT_SCALE) + np.float32(MASK_LOGIT_BIAS), low, low)
        inputs = {
            "image_embedding": features["image_embedding"], "high_res_0": features["high_res_0"],
            "high_res_1": features["high_res_1"], "masks": mask[None, None].astype(np.float32),
        }  # fmt: skip
        session = self.sessions["mask_prompt"]
        declared = set(session.input_names)  # the exporter drops unused inputs
        obj_ptr, score = session.run({name: value for name, value in inputs.items() if name in declared})
        filled = fill_holes_array(low_res[None, None], self.fill_hole_area)
        return OnnxObjectOutput(filled[0], filled[0], 1.0, obj_ptr[0], float(score[0, 0]), conditioning=True)

    # --- memory -------------------------------------------------------------------------------
    def _kept(self, layout: MemoryLayout) -> list[int]:
        """Indices of the layout's candidate memories the policy keeps (ascending)."""
        count = len(layout.memories)
        capacity = self.config["num_maskmem"]
        if self.policy == "fifo" or efp_num_dropped(layout.protected, capacity, self.num_frame_to_prune) == 0:
            return list(range(count))
        features = np.stack([stored.features for stored, _ in layout.memories])[:, None]
        if self.policy == "refp":
            quality, min_iou = layout_quality(layout), self.bank.config.retained_min_iou
            kept = refp_select(features, layout.protected, capacity, self.num_frame_to_prune, quality, min_iou)
        else:
            kept = efp_select(features, layout.protected, capacity, self.num_frame_to_prune)
        return [int(i) for i in kept[:, 0]]

    def _slots(self, obj_ids: list[int], fresh: list[int]) -> dict[str, np.ndarray]:
        """Memory attention's slot inputs for ``obj_ids`` (their layouts) then ``fresh`` (no memory):
        as many memory slots as the object keeping the most memories fills (the graph's slot axis
        is dynamic up to the export's memory_slots), so no attention is spent on empty slots that
        no object needs."""
        record = self.memory_record
        slots, pointer_slots = record["memory_slots"], record["pointer_slots"]
        chosen = []
        for obj_id in obj_ids:
            layout = self.bank.layout(obj_id, self.frame_index, self.num_frames)
            kept = self._kept(layout)
            if len(kept) > slots or len(layout.pointers) > pointer_slots:
                raise ValueError(
                    f"object {obj_id}: {len(kept)} memories and {len(layout.pointers)} pointers on frame "
                    f"{self.frame_index}, the export holds {slots} and {pointer_slots} (export with more "
                    "--conditioning-slots for more prompted frames)"
                )
            chosen.append((layout, kept))
        used = max([len(kept) for _, kept in chosen] + [1])
        batch = len(obj_ids) + len(fresh)
        shapes = {value["name"]: value["shape"] for value in self.manifest["graphs"]["memory_attention"]["inputs"]}
        tokens, mem_dim = shapes["memory_tokens"][2:4]
        inputs = {
            "memory_tokens": np.zeros((batch, used, tokens, mem_dim), np.float32),
            "memory_keys": np.zeros((batch, used, *shapes["memory_keys"][2:]), np.float32),
            "memory_slots": np.full((batch, used), record["conditioning_temporal_slot"], np.int64),
            "memory_valid": np.zeros((batch, used), bool),
            "pointers": np.zeros((batch, pointer_slots, shapes["pointers"][2]), np.float32),
            "pointer_offsets": np.ones((batch, pointer_slots), np.int64),
            "pointer_valid": np.zeros((batch, pointer_slots), bool),
        }
        for row, (layout, kept) in enumerate(chosen):
            for position, index in enumerate(kept):
                stored, slot = layout.memories[index]
                inputs["memory_tokens"][row, position] = stored.features
                inputs["memory_keys"][row, position] = stored.keys
                inputs["memory_slots"][row, position] = slot
                inputs["memory_valid"][row, position] = True
            for position, (stored, offset) in enumerate(layout.pointers):
                inputs["pointers"][row, position] = stored.obj_ptr
                inputs["pointer_offsets"][row, position] = offset
                inputs["pointer_valid"][row, position] = True
        return inputs

    def _attend(self, features: dict[str, np.ndarray], obj_ids: list[int], fresh: list[int]) -> dict[int, np.ndarray]:
        """Memory-conditioned features (1, C, h, w) per object, all objects in one batch."""
        if not obj_ids and not fresh:
            return {}
        inputs = self._slots(obj_ids, fresh)
        inputs["image_embedding"] = features["image_embedding"]
        inputs["image_position"] = features["image_position"]
        (pix_feat,) = self.sessions["memory_attention"].run(inputs)
        return {obj_id: pix_feat[row : row + 1] for row, obj_id in enumerate(obj_ids + fresh)}

    def _remember(self, features: dict[str, np.ndarray], outputs: dict[int, OnnxObjectOutput]) -> None:
        """Encode every object's memory of this frame in one batch and store it (in bfloat16), with
        its memory-attention keys (computed once here from the stored tokens, as the torch tracker
        caches them) and its frame's quality (object-score logit and predicted IoU, read by refp)."""
        if not outputs:
            return
        obj_ids = self._bank_objects_of(outputs)
        masks = np.stack([outputs[i].memory_masks for i in obj_ids]).astype(np.float32)
        conditioning = np.array([outputs[i].conditioning for i in obj_ids])
        if self.policy == "xefp":
            masks = exclusive_masks_array(masks, conditioning)
        inputs = {
            "image_embedding": features["image_embedding"],
            "low_res_masks": masks,
            "object_score_logits": np.array([[outputs[i].object_score_logit] for i in obj_ids], np.float32),
            "binarize": conditioning,
        }
        (tokens,) = self.sessions["memory_encoder"].run(inputs)
        tokens = round_to_bfloat16(tokens)
        (keys,) = self.sessions["memory_keys"].run({"memory_tokens": tokens})
        for row, obj_id in enumerate(obj_ids):
            output = outputs[obj_id]
            self.bank.write(
                obj_id, self.frame_index, tokens[row], output.obj_ptr, conditioning=output.conditioning, keys=keys[row],
                object_score=output.object_score_logit, iou=output.iou,
            )  # fmt: skip

    # --- results ------------------------------------------------------------------------------
    def _result(self, outputs: dict[int, OnnxObjectOutput], frame_index: int) -> FrameResult:
        """Masks at the frame's size (bilinear, half-pixel centres, as the torch tracker)."""
        result = FrameResult(frame_index=frame_index)
        height, width = self.frame_size
        for obj_id, output in outputs.items():
            logits = cv2.resize(output.low_res_masks[0], (width, height), interpolation=cv2.INTER_LINEAR)
            result.masks[obj_id] = logits > 0
            if self.output_logits:
                result.logits[obj_id] = logits
            result.scores[obj_id] = float(1.0 / (1.0 + np.exp(-output.object_score_logit)))
            result.ious[obj_id] = output.iou
        return result


def memory_rules(config: Mapping, policy: str) -> MemoryRules:
    """The bank's rules from the manifest's model config; refp retains reliable memories with the
    torch policy's defaults, as `Tracker` configures its bank from the policy."""
    return MemoryRules(
        num_maskmem=config["num_maskmem"],
        max_obj_ptrs_in_encoder=config["max_obj_ptrs_in_encoder"],
        memory_temporal_stride=config["memory_temporal_stride_for_eval"],
        max_cond_frames_in_attn=config["max_cond_frames_in_attn"],
        only_obj_ptrs_in_the_past=config["only_obj_ptrs_in_the_past_for_eval"],
        use_signed_tpos_enc_to_obj_ptrs=config["use_signed_tpos_enc_to_obj_ptrs"],
        retained_memories=DEFAULT_RETAINED_MEMORIES if policy == "refp" else 0,
        retained_min_iou=DEFAULT_MIN_IOU,
    )


def _named(session: GraphSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A session's outputs by name."""
    return dict(zip(session.output_names, session.run(inputs)))


__all__ = ["OnnxTracker", "efp_select", "efp_num_dropped", "refp_select", "resize_antialiased", "round_to_bfloat16"]
