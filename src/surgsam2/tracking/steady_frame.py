"""A steady-state frame of the tracker as one function without the host (issue 17).

When the ring bank is in a steady state (`memory.steady`: no prompt, the same objects, every
conditioning frame older than the memory windows), a frame needs nothing from the host but its
pixels: `SteadyFrame` runs, from fixed buffers (the pixels, a frame counter on the device, the
ring storage, the model), the image encoder, the candidates' rows from the counter
(`steady_indices`), their gather, the policy's selection, the memory tokens and kept keys, memory
attention and the decoder per batch of objects (as `Tracker` batches them), hole filling on the
device, the exclusive masks of ``xefp``, the memory encoder, the ring write at the counter's rows,
the counter's increment, and the masks upscaled to the frame size into one output buffer (logits,
then scores and predicted IoUs). No host read, no data-dependent shape, no branch on a tensor's
value: on a GPU it is captured as one CUDA graph per plan (`model.cuda_graphs.CapturedStep`) and
replayed; on the CPU the same function runs eagerly. Its masks and logits equal `Tracker`'s
ordinary path with the ring bank, bit for bit (tests/test_steady_frame.py).

`SteadyFrames` is the host side a `Tracker` keeps: per frame it copies the pixels in (on a GPU
from a pinned buffer, without blocking), sets the counter if an ordinary frame ran in between,
runs the plan's step, copies the output to the host once (on a GPU into one of two pinned buffers
used in turn, with an event each), records the write in the bank's host-side rules and builds the
`FrameResult`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from surgsam2.memory.assembly import kept_rotated_keys, memory_tokens, select_memories
from surgsam2.memory.policies import MemoryPolicy
from surgsam2.memory.ring import RingBank
from surgsam2.memory.steady import SteadyGroup, SteadyPlan, steady_indices, write_steady
from surgsam2.model.cuda_graphs import CapturedStep, GraphStats
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.frames import normalise_pixels, resize_frame
from surgsam2.tracking.phases import encode_memories
from surgsam2.tracking.postprocess import fill_holes_on_device
from surgsam2.tracking.results import FrameResult
from surgsam2.tracking.stages import NO_STAGES

# Plans (object sets, storage layouts) whose steps, buffers and graphs are kept at once.
MAX_PLANS = 8


@dataclass(frozen=True)
class SteadyInputs:
    """What a steady frame reads besides the bank: the pixels and frame counter (fixed buffers),
    and the stream's constants (the memories' spatial encoding, the temporal slots' key terms)."""

    pixels: torch.Tensor  # (S, S, 3) uint8 on the device
    counter: torch.Tensor  # () int64 on the device: the index of the frame to track
    memory_pos: torch.Tensor  # (T, C)
    temporal_keys: torch.Tensor | None  # (num_layers, num_maskmem, T, d), None without the key cache


class SteadyFrame:
    """One steady frame of a plan: ``step()`` reads the inputs and the bank, writes the bank, the
    counter and ``output`` (B*H*W logits at the frame size, then B scores, then B IoUs)."""

    def __init__(
        self,
        model: SAM2Model,
        policy: MemoryPolicy,
        bank: RingBank,
        plan: SteadyPlan,
        inputs: SteadyInputs,
        frame_size: tuple[int, int],
        fill_hole_area: int,
    ) -> None:
        self.model, self.policy, self.bank, self.plan, self.inputs = model, policy, bank, plan, inputs
        self.frame_size, self.fill_hole_area = frame_size, fill_hole_area
        device = inputs.counter.device
        self.columns = [torch.tensor(group.columns, dtype=torch.long).to(device) for group in plan.groups]
        order = [column for group in plan.groups for column in group.columns]
        width = len(plan.obj_ids)
        # Rows of the groups' outputs stacked, in bank (column) order; None when already in it.
        self.bank_order = None if order == list(range(width)) else torch.tensor(np.argsort(order)).to(device)
        self.output = torch.empty(width * (frame_size[0] * frame_size[1] + 2), dtype=torch.float32, device=device)

    def _memory_inputs(
        self, group: SteadyGroup, columns: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """`Tracker._memory_inputs` of one batch, from the device-side layout."""
        model, inputs = self.model, self.inputs
        indices = steady_indices(
            self.bank.storage, inputs.counter, self.bank.config, columns, group.conditioning, group.retained
        )
        candidates, candidate_keys = self.bank.gather(indices, getattr(self.policy, "uses_quality", False))
        keep = select_memories(candidates, self.policy, model.num_maskmem)
        max_pointers = model.config.max_obj_ptrs_in_encoder  # a steady stream's clip length does not cap it
        memory, memory_pos, num_ptr_tokens = memory_tokens(model, candidates, keep, inputs.memory_pos, max_pointers)
        keys = None
        if inputs.temporal_keys is not None:
            keys = kept_rotated_keys(candidate_keys, candidates.slots, keep, inputs.temporal_keys, num_ptr_tokens, False)
        return memory, memory_pos, num_ptr_tokens, keys

    def _in_bank_order(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        joined = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        return joined if self.bank_order is None else joined.index_select(0, self.bank_order)

    def step(self) -> None:
        """Track one steady frame (see the class docstring)."""
        model, inputs, bank = self.model, self.inputs, self.bank
        features = model.encode_image(normalise_pixels(inputs.pixels, model.dtype))
        parts: dict[str, list[torch.Tensor]] = {"filled": [], "masks": [], "ious": [], "ptr": [], "scores": []}
        for group, columns in zip(self.plan.groups, self.columns):
            memory, memory_pos, num_ptr_tokens, keys = self._memory_inputs(group, columns)
            pix_feat = model.attend_to_memory(features, memory, memory_pos, num_ptr_tokens, keys)
            decoded = model.decode(pix_feat, features.high_res, multimask_output=model.use_multimask(False, 0))
            parts["filled"].append(fill_holes_on_device(decoded.low_res_masks, self.fill_hole_area))
            parts["masks"].append(decoded.low_res_masks)
            parts["ious"].append(decoded.ious)
            parts["ptr"].append(decoded.obj_ptr)
            parts["scores"].append(decoded.object_score_logits)
        filled, masks, ious, obj_ptrs, scores = (self._in_bank_order(parts[name]) for name in parts)
        width = len(self.plan.obj_ids)
        exclusive = (0,) * width if getattr(self.policy, "exclusive_memories", False) else None
        storage_dtype = bank.config.storage_dtype if inputs.temporal_keys is not None else None
        encoded = encode_memories(model, NO_STAGES, features, masks, scores, (False,) * width, storage_dtype,
                                  inputs.memory_pos, exclusive)  # fmt: skip
        with_quality = getattr(self.policy, "uses_quality", False)
        write_steady(
            bank.storage, inputs.counter, bank.config, encoded.tokens, obj_ptrs, encoded.keys,
            scores.reshape(-1) if with_quality else None, ious.max(dim=-1).values if with_quality else None,
        )  # fmt: skip
        inputs.counter.add_(1)
        logits = F.interpolate(filled.float(), size=self.frame_size, mode="bilinear", align_corners=False)[:, 0]
        count = logits.numel()
        self.output[:count].view_as(logits).copy_(logits)
        self.output[count : count + width].copy_(scores.float().sigmoid().flatten())
        self.output[count + width :].copy_(ious.float().max(dim=-1).values)


@dataclass
class _PlanEntry:
    """A plan's step (eager or graphed), keyed also by the storage's addresses it reads."""

    frame: SteadyFrame
    step: CapturedStep
    host: list[torch.Tensor]  # the output's host copies: two pinned buffers on a GPU, none on the CPU
    events: list[torch.cuda.Event]
    turn: int = 0


class SteadyFrames:
    """The host side of a tracker's steady frames (module docstring): buffers, one step per plan."""

    def __init__(self, model: SAM2Model, policy: MemoryPolicy, bank: RingBank, fill_hole_area: int) -> None:
        self.model, self.policy, self.bank, self.fill_hole_area = model, policy, bank, fill_hole_area
        self.count = 0  # steady frames run
        self._enabled = True
        self._entries: dict[tuple, _PlanEntry] = {}
        self._pixels: torch.Tensor | None = None
        self._staging: torch.Tensor | None = None  # pinned pixels on a GPU
        self._counter: torch.Tensor | None = None
        self._counter_frame = -1  # the frame index the device counter holds (-1: unknown)

    def reset(self) -> None:
        """Forget the stream's plans and buffers (a new stream: new constants)."""
        self._entries.clear()
        self._counter_frame = -1

    @property
    def enabled(self) -> bool:
        """False: steady frames run eagerly on a GPU too (e.g. to count their FLOPs, which a
        replay hides, or to compare a replay with eager), as `CudaGraphed.enabled`."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        for entry in self._entries.values():
            entry.step.enabled = value

    @property
    def stats(self) -> GraphStats:
        """Steady frames replayed as graphs, run eagerly, graphs captured and failed, over every plan."""
        total = GraphStats()
        for entry in self._entries.values():
            for name in ("replayed", "eager", "captured", "failed"):
                setattr(total, name, getattr(total, name) + getattr(entry.step.stats, name))
        return total

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pixels is None:
            device, size = self.model.device, self.model.image_size
            self._pixels = torch.zeros((size, size, 3), dtype=torch.uint8, device=device)
            self._counter = torch.zeros((), dtype=torch.long, device=device)
            if device.type == "cuda":
                self._staging = torch.empty((size, size, 3), dtype=torch.uint8, pin_memory=True)
        return self._pixels, self._counter

    def _entry(
        self, plan: SteadyPlan, frame_size: tuple[int, int], memory_pos: torch.Tensor, temporal_keys: torch.Tensor | None
    ) -> _PlanEntry:
        addresses = tuple(tensor.data_ptr() for tensor in self.bank.stored_tensors())
        key = (plan, frame_size, addresses, memory_pos.data_ptr())
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        if len(self._entries) >= MAX_PLANS:
            del self._entries[next(iter(self._entries))]
        pixels, counter = self._buffers()
        inputs = SteadyInputs(pixels, counter, memory_pos, temporal_keys)
        frame = SteadyFrame(self.model, self.policy, self.bank, plan, inputs, frame_size, self.fill_hole_area)
        device = counter.device
        step = CapturedStep(frame.step, f"steady frame of {len(plan.obj_ids)} object(s)", device, eager_parts=self.model)
        host, events = [], []
        if device.type == "cuda":
            host = [torch.empty(frame.output.shape, dtype=torch.float32, pin_memory=True) for _ in range(2)]
            events = [torch.cuda.Event() for _ in range(2)]
        step.enabled = self._enabled
        entry = _PlanEntry(frame, step, host, events)
        self._entries[key] = entry
        return entry

    def run(
        self,
        frame: np.ndarray,
        frame_index: int,
        plan: SteadyPlan,
        memory_pos: torch.Tensor,
        temporal_keys: torch.Tensor | None,
        output_logits: bool = True,
    ) -> FrameResult:
        """Track steady frame ``frame_index`` (a validated HxWx3 uint8 frame) of ``plan``."""
        frame_size = (int(frame.shape[0]), int(frame.shape[1]))
        entry = self._entry(plan, frame_size, memory_pos, temporal_keys)
        pixels, counter = self._buffers()
        resized = torch.from_numpy(np.require(resize_frame(frame, self.model.image_size), requirements=("C", "W")))
        if self._staging is not None:
            self._staging.copy_(resized)
            pixels.copy_(self._staging, non_blocking=True)
        else:
            pixels.copy_(resized)
        if self._counter_frame != frame_index:
            counter.fill_(frame_index)
        entry.step()
        self._counter_frame = frame_index + 1
        self.bank.record_tracked(plan.obj_ids, frame_index, getattr(self.policy, "uses_quality", False))
        self.count += 1
        return self._result(entry, frame_index, frame_size, plan.obj_ids, output_logits)

    def _result(
        self, entry: _PlanEntry, frame_index: int, frame_size: tuple[int, int], obj_ids: tuple[int, ...],
        output_logits: bool,
    ) -> FrameResult:  # fmt: skip
        """The output copied to the host once (pinned buffers in turn on a GPU) as a FrameResult."""
        output = entry.frame.output
        if entry.host:
            host, event = entry.host[entry.turn], entry.events[entry.turn]
            entry.turn = 1 - entry.turn
            host.copy_(output, non_blocking=True)
            event.record()
            event.synchronize()
            output = host
        values = output.numpy()
        width, pixels = len(obj_ids), frame_size[0] * frame_size[1]
        logits = values[: width * pixels].reshape(width, *frame_size)
        scores, ious = values[width * pixels :].reshape(2, width).tolist()
        result = FrameResult(frame_index=frame_index)
        for row, obj_id in enumerate(obj_ids):
            result.masks[obj_id] = logits[row] > 0
            if output_logits:
                result.logits[obj_id] = logits[row].copy()
            result.scores[obj_id] = scores[row]
            result.ious[obj_id] = ious[row]
        return result


__all__ = ["MAX_PLANS", "SteadyFrame", "SteadyFrames", "SteadyInputs"]
