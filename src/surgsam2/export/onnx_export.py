"""Export the tracking step of a model as six ONNX graphs plus ``manifest.json``.

The graphs (see `surgsam2.export.graphs`): ``image_encoder.onnx``, ``mask_decoder.onnx``,
``memory_attention.onnx`` (memory slots up to a bound, fixed pointer slots, validity masks),
``memory_encoder.onnx``, ``memory_keys.onnx`` (a written memory's attention keys, which the host
stores with it) and ``mask_prompt.onnx`` (a mask prompt's pointer and score). All files
fp32 (each graph's ``precision`` in the manifest); the engine chooses the precision it runs them in
(``engine_precisions``: ONNX Runtime fp32, OpenVINO fp32 or bf16). B (objects) is a dynamic axis,
N (prompt points) of the decoder and S (memory slots, at most the manifest's ``memory_slots``) of
memory attention. The memory policy is the host's (which memories go into the
slots); the manifest records it and its parameters.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from surgsam2 import __version__
from surgsam2.export.engines import ENGINE_PRECISIONS
from surgsam2.memory.policy_table import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY
from surgsam2.export.graphs import (
    INVALID_SCORE,
    ImageEncoderGraph,
    MaskDecoderGraph,
    MaskPromptGraph,
    MemoryAttentionGraph,
    MemoryEncoderGraph,
    MemoryKeysGraph,
    memory_spatial_position,
)
from surgsam2.export.manifest import file_sha256, write_manifest
from surgsam2.memory.bank import BankConfig
from surgsam2.model.sam2 import SAM2Model
from surgsam2.tracking.frames import IMAGENET_MEAN, IMAGENET_STD

MIN_OPSET = 17
DEFAULT_CONDITIONING_SLOTS = 4


@dataclass(frozen=True)
class ExportOptions:
    """What `export_onnx` writes: opset, memory policy (recorded for the host) and slot counts."""

    opset: int = MIN_OPSET
    memory: str = DEFAULT_POLICY
    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE
    conditioning_slots: int = DEFAULT_CONDITIONING_SLOTS

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ValueError(f"--opset {self.opset}: the export needs opset {MIN_OPSET} or newer")
        if self.conditioning_slots < 1:
            raise ValueError(f"--conditioning-slots {self.conditioning_slots}: at least 1 is needed")


@dataclass(frozen=True)
class SlotCounts:
    """Memory attention's slot counts: at most S memory slots, P pointer slots."""

    memory_slots: int
    pointer_slots: int
    max_pointers: int

    @classmethod
    def of(cls, model: SAM2Model, conditioning_slots: int) -> SlotCounts:
        """Conditioning frames plus the num_maskmem - 1 recent frames; their pointers plus the
        max_obj_ptrs_in_encoder - 1 recent ones (`MemoryBank.layout`'s most)."""
        config = model.config
        return cls(
            memory_slots=conditioning_slots + config.num_maskmem - 1,
            pointer_slots=conditioning_slots + config.max_obj_ptrs_in_encoder - 1,
            max_pointers=config.max_obj_ptrs_in_encoder,
        )


def config_record(model: SAM2Model) -> dict[str, Any]:
    """The model config as plain JSON values (as the manifest stores and compares it)."""
    return json.loads(json.dumps(dataclasses.asdict(model.config), default=str))


def example_inputs(
    model: SAM2Model, slots: SlotCounts, batch: int = 2, points: int = 2
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs of the right shapes for tracing each graph (values matter only for the tests)."""
    size, grid, hidden = model.image_size, model.config.embedding_size, model.hidden_dim
    tokens, mem_dim = grid * grid, model.mem_dim
    layers, d_model = model.memory_attention.num_layers, model.memory_attention.d_model
    with torch.no_grad():
        images = torch.randn(1, 3, size, size)
        embedding, position, high_0, high_1 = ImageEncoderGraph(model)(images)
    return {
        "image_encoder": (images,),
        "mask_decoder": (
            torch.randn(batch, hidden, grid, grid), high_0, high_1,
            torch.rand(batch, points, 2) * size, torch.ones(batch, points, dtype=torch.int32),
            torch.randn(batch, 1, 4 * grid, 4 * grid), torch.zeros(batch, dtype=torch.bool),
            torch.zeros(batch, dtype=torch.bool),
        ),
        "memory_attention": (
            embedding, position, torch.randn(batch, slots.memory_slots, tokens, mem_dim),
            torch.randn(batch, slots.memory_slots, layers, tokens, d_model), torch.full((batch, slots.memory_slots), model.num_maskmem - 1, dtype=torch.long),
            torch.ones(batch, slots.memory_slots, dtype=torch.bool), torch.randn(batch, slots.pointer_slots, hidden),
            torch.arange(1, slots.pointer_slots + 1).repeat(batch, 1), torch.ones(batch, slots.pointer_slots, dtype=torch.bool),
        ),
        "memory_encoder": (
            embedding, torch.randn(batch, 1, 4 * grid, 4 * grid), torch.ones(batch, 1), torch.zeros(batch, dtype=torch.bool),
        ),
        "memory_keys": (torch.randn(batch, tokens, mem_dim),),
        "mask_prompt": (embedding, high_0, high_1, (torch.rand(batch, 1, size, size) > 0.5).float()),
    }  # fmt: skip


def build_graphs(model: SAM2Model, slots: SlotCounts) -> dict[str, torch.nn.Module]:
    """The exportable parts of ``model`` in eval mode, by graph name (eval on the wrappers
    too: the exporter restores each wrapper's mode afterwards, recursively into the model)."""
    spatial_pos = memory_spatial_position(model)
    graphs = {
        "image_encoder": ImageEncoderGraph(model),
        "mask_decoder": MaskDecoderGraph(model),
        "memory_attention": MemoryAttentionGraph(model, spatial_pos, slots.max_pointers),
        "memory_encoder": MemoryEncoderGraph(model),
        "memory_keys": MemoryKeysGraph(model, spatial_pos),
        "mask_prompt": MaskPromptGraph(model),
    }
    return {name: graph.eval() for name, graph in graphs.items()}


# Dynamic axes: the object batch everywhere it appears, the decoder's number of points, and memory
# attention's number of memory slots (at most SlotCounts.memory_slots: the host passes as many as
# the batch's fullest object fills).
_DYNAMIC = {
    "mask_decoder": {
        "pix_feat": {0: "objects"}, "point_coords": {0: "objects", 1: "points"}, "point_labels": {0: "objects", 1: "points"},
        "mask_input": {0: "objects"}, "has_mask": {0: "objects"}, "multimask": {0: "objects"},
    },
    "memory_attention": {
        **{name: {0: "objects", 1: "slots"} for name in ("memory_tokens", "memory_keys", "memory_slots", "memory_valid")},
        **{name: {0: "objects"} for name in ("pointers", "pointer_offsets", "pointer_valid")},
    },
    "memory_keys": {"memory_tokens": {0: "objects"}},
    "memory_encoder": {"low_res_masks": {0: "objects"}, "object_score_logits": {0: "objects"}, "binarize": {0: "objects"}},
    "mask_prompt": {"masks": {0: "objects"}},
}  # fmt: skip


def _export_one(name: str, graph: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    dynamic = dict(_DYNAMIC.get(name, {}))
    if name != "image_encoder":  # every other output is per object
        dynamic.update({output: {0: "objects"} for output in graph.output_names})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants
        torch.onnx.export(
            graph, inputs, str(path), input_names=list(graph.input_names), output_names=list(graph.output_names),
            dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False,
        )  # fmt: skip


def _signature(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Input and output names, shapes (a string for a dynamic axis) and dtypes of an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: Any) -> list[dict[str, Any]]:
        described = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            described.append({"name": value.name, "shape": shape, "dtype": dtype})
        return described

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def export_onnx(
    model: SAM2Model, folder: Path, options: ExportOptions, checkpoint: str | None = None
) -> dict[str, Any]:
    """Write the graphs and manifest.json into ``folder`` (an empty staging folder); returns
    the manifest."""
    if model.dtype != torch.float32:
        raise ValueError(f"the ONNX export is fp32; the model is {model.dtype}")
    model = model.cpu().eval()
    slots = SlotCounts.of(model, options.conditioning_slots)
    graphs = build_graphs(model, slots)
    inputs = example_inputs(model, slots)
    records: dict[str, Any] = {}
    for name, graph in graphs.items():
        path = Path(folder) / f"{name}.onnx"
        _export_one(name, graph, inputs[name], path, options.opset)
        records[name] = {"file": path.name, "sha256": file_sha256(path), "precision": "fp32", **_signature(path)}
    bank = BankConfig()
    manifest = {
        "package_version": __version__,
        "model": {"name": model.config.name, "checkpoint": checkpoint, "config": config_record(model)},
        "image_size": model.image_size,
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": "pixel / 255, RGB"},
        "memory": {
            "policy": options.memory, "num_frame_to_prune": options.num_frame_to_prune,
            "conditioning_slots": options.conditioning_slots, "memory_slots": slots.memory_slots,
            "pointer_slots": slots.pointer_slots, "max_pointers": slots.max_pointers, "num_maskmem": model.num_maskmem,
            "conditioning_temporal_slot": model.num_maskmem - 1, "storage_dtype": str(bank.storage_dtype).removeprefix("torch."),
            "invalid_score": INVALID_SCORE,
        },
        "opset": options.opset,
        "precision": "fp32",
        "engine_precisions": {engine: list(choices) for engine, choices in ENGINE_PRECISIONS.items()},
        "graphs": records,
    }  # fmt: skip
    write_manifest(Path(folder), manifest)
    return manifest


__all__ = ["ExportOptions", "SlotCounts", "build_graphs", "config_record", "example_inputs", "export_onnx"]
