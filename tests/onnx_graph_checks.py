"""Each exported graph against our torch part with ONNX Runtime (CPUExecutionProvider), shared by
the nano checks (tests/test_export_onnx.py) and the Hiera ones (tests/test_onnx_video_parity.py).

Tolerance: every element |onnx - torch| <= 1e-4 * max(1, |torch|); each check prints its margin
(the worst element's share of its allowance).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from onnx_parity import ORT_THREADS
from surgsam2.export.onnx_export import ExportOptions, SlotCounts
from surgsam2.memory.assembly import MemoryCandidates, memory_tokens
from surgsam2.model.sam2 import ImageFeatures, SAM2Model

TOLERANCE = 1e-4


def assert_close(name: str, got: np.ndarray, ref: torch.Tensor) -> None:
    """|got - ref| <= TOLERANCE * max(1, |ref|) element-wise; prints the margin used."""
    ref_np = ref.detach().float().numpy()
    assert got.shape == ref_np.shape, f"{name}: shape {got.shape} != {ref_np.shape}"
    allowance = TOLERANCE * np.maximum(1.0, np.abs(ref_np))
    used = float(np.max(np.abs(got.astype(np.float64) - ref_np) / allowance))
    print(f"{name}: max |delta| {np.max(np.abs(got - ref_np)):.2e}, {used:.1%} of the allowance")
    assert used <= 1.0, f"{name}: beyond 1e-4 x max(1, |ref|) ({used:.2f}x the allowance)"


def sessions(folder: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    if ORT_THREADS is not None:
        options.intra_op_num_threads = ORT_THREADS
    return {
        name: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        for name in ("image_encoder", "mask_decoder", "memory_attention", "memory_encoder", "memory_keys")
    }



def run_image_encoder(model: SAM2Model, session: ort.InferenceSession, seed: int) -> ImageFeatures:
    """Check the image encoder graph on a random image; returns the torch features."""
    images = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        features = model.encode_image(images)
    got = session.run(None, {"images": images.numpy()})
    refs = (features.embedding, features.position, *features.high_res)
    for output, value, ref in zip(session.get_outputs(), got, refs):
        assert_close(f"image_encoder.{output.name}", value, ref)
    return features


def check_decoder(model: SAM2Model, session: ort.InferenceSession, features: ImageFeatures) -> None:
    """Batch of 3: clicks with multimask, a box without, clicks with a mask input (correction)."""
    grid, size = model.config.embedding_size, model.image_size
    generator = torch.Generator().manual_seed(1)
    pix_feat = torch.randn(3, model.hidden_dim, grid, grid, generator=generator)
    coords = torch.rand(3, 2, 2, generator=generator) * size
    labels = torch.tensor([[1, -1], [2, 3], [1, 0]], dtype=torch.int32)
    mask_input = torch.randn(3, 1, 4 * grid, 4 * grid, generator=generator) * 5
    has_mask = torch.tensor([False, False, True])
    multimask = torch.tensor([True, False, False])
    got = session.run(None, {
        "pix_feat": pix_feat.numpy(), "high_res_0": features.high_res[0].numpy(),
        "high_res_1": features.high_res[1].numpy(), "point_coords": coords.numpy(), "point_labels": labels.numpy(),
        "mask_input": mask_input.numpy(), "has_mask": has_mask.numpy(), "multimask": multimask.numpy(),
    })  # fmt: skip
    outputs = dict(zip([o.name for o in session.get_outputs()], got))
    for row in range(3):
        with torch.no_grad():
            ref = model.decode(
                pix_feat[row : row + 1], features.high_res, coords[row : row + 1], labels[row : row + 1],
                mask_input[row : row + 1] if has_mask[row] else None, multimask_output=bool(multimask[row]),
            )  # fmt: skip
        chosen_iou = ref.ious.gather(1, ref.ious.argmax(1, keepdim=True)) if multimask[row] else ref.ious
        assert_close(f"mask_decoder[{row}].low_res_masks", outputs["low_res_masks"][row : row + 1], ref.low_res_masks)
        assert_close(f"mask_decoder[{row}].iou", outputs["iou"][row : row + 1], chosen_iou)
        assert_close(f"mask_decoder[{row}].obj_ptr", outputs["obj_ptr"][row : row + 1], ref.obj_ptr)
        assert_close(f"mask_decoder[{row}].scores", outputs["object_score_logits"][row : row + 1], ref.object_score_logits)
        if multimask[row]:
            assert_close(f"mask_decoder[{row}].multimask_masks", outputs["multimask_masks"][row : row + 1], ref.low_res_multimasks)


def memory_case(model: SAM2Model, slots: SlotCounts, seed: int) -> dict[str, torch.Tensor]:
    """Three objects: some slots invalid (filled with large garbage), all valid, none valid; each
    slot's keys as the torch tracker caches them (`MemoryAttention.rotated_spatial_keys`)."""
    from surgsam2.export.graphs import memory_spatial_position

    generator = torch.Generator().manual_seed(seed)
    tokens = model.config.embedding_size**2
    batch, num_slots, num_pointers = 3, slots.memory_slots, slots.pointer_slots
    memory_valid = torch.ones(batch, num_slots, dtype=torch.bool)
    memory_valid[0, 1::2] = False
    memory_valid[2] = False
    pointer_valid = torch.ones(batch, num_pointers, dtype=torch.bool)
    pointer_valid[0, ::3] = False
    pointer_valid[2] = False
    features = torch.randn(batch, num_slots, tokens, model.mem_dim, generator=generator)
    features[~memory_valid] = 1e3
    pointers = torch.randn(batch, num_pointers, model.hidden_dim, generator=generator)
    pointers[~pointer_valid] = -1e3
    with torch.no_grad():
        keys = model.memory_attention.rotated_spatial_keys(features.flatten(0, 1), memory_spatial_position(model))
    return {
        "memory_tokens": features,
        "memory_keys": keys.reshape(batch, num_slots, *keys.shape[1:]),
        "memory_slots": torch.randint(0, model.num_maskmem, (batch, num_slots), generator=generator),
        "memory_valid": memory_valid,
        "pointers": pointers,
        "pointer_offsets": torch.randint(-3, slots.max_pointers, (batch, num_pointers), generator=generator),
        "pointer_valid": pointer_valid,
    }


def torch_memory_attention(
    model: SAM2Model, features: ImageFeatures, case: dict[str, torch.Tensor], row: int,
    spatial_pos: torch.Tensor, max_pointers: int,
) -> torch.Tensor:  # fmt: skip
    """Our torch path on the valid memories of one object only (features without memory if none)."""
    valid, pointer_valid = case["memory_valid"][row], case["pointer_valid"][row]
    if not valid.any() and not pointer_valid.any():
        return model.features_without_memory(features, 1)
    candidates = MemoryCandidates(
        features=case["memory_tokens"][row][valid][:, None],
        slots=case["memory_slots"][row][valid][:, None],
        protected=tuple(True for _ in range(int(valid.sum()))),
        pointers=case["pointers"][row][pointer_valid][:, None],
        pointer_offsets=case["pointer_offsets"][row][pointer_valid][:, None],
    )
    memory, memory_pos, num_pointer_tokens = memory_tokens(model, candidates, None, spatial_pos, max_pointers)
    return model.attend_to_memory(features, memory, memory_pos, num_pointer_tokens)


def check_memory_attention(model: SAM2Model, session: ort.InferenceSession, features: ImageFeatures) -> None:
    from surgsam2.export.graphs import memory_spatial_position

    slots = SlotCounts.of(model, ExportOptions().conditioning_slots)
    case = memory_case(model, slots, seed=2)
    inputs = {"image_embedding": features.embedding.numpy(), "image_position": features.position.numpy()}
    inputs.update({name: value.numpy() for name, value in case.items()})
    (got,) = session.run(None, inputs)
    spatial_pos = memory_spatial_position(model)
    for row in range(3):
        with torch.no_grad():
            ref = torch_memory_attention(model, features, case, row, spatial_pos, slots.max_pointers)
        assert_close(f"memory_attention[{row}] ({int(case['memory_valid'][row].sum())} valid slots)", got[row : row + 1], ref)


def check_memory_encoder(model: SAM2Model, session: ort.InferenceSession, features: ImageFeatures) -> None:
    grid = model.config.embedding_size
    generator = torch.Generator().manual_seed(3)
    low_res = torch.randn(2, 1, 4 * grid, 4 * grid, generator=generator) * 8
    scores = torch.tensor([[3.0], [-2.0]])
    binarize = torch.tensor([True, False])
    (got,) = session.run(None, {
        "image_embedding": features.embedding.numpy(), "low_res_masks": low_res.numpy(),
        "object_score_logits": scores.numpy(), "binarize": binarize.numpy(),
    })  # fmt: skip
    with torch.no_grad():
        ref, _ = model.encode_memory(features, model.upscale_masks(low_res), scores, binarize)
    assert_close("memory_encoder.memory_tokens", got, ref.flatten(2).transpose(1, 2))


def check_memory_keys(model: SAM2Model, session: ort.InferenceSession) -> None:
    """Two memories' keys (bfloat16-rounded tokens, as the bank stores them) against the keys the
    torch tracker caches (`MemoryAttention.rotated_spatial_keys`)."""
    from surgsam2.export.graphs import memory_spatial_position

    generator = torch.Generator().manual_seed(4)
    tokens = torch.randn(2, model.config.embedding_size**2, model.mem_dim, generator=generator)
    tokens = tokens.to(torch.bfloat16).float()
    (got,) = session.run(None, {"memory_tokens": tokens.numpy()})
    with torch.no_grad():
        ref = model.memory_attention.rotated_spatial_keys(tokens, memory_spatial_position(model))
    assert_close("memory_keys.memory_keys", got, ref)


def check_all_graphs(model: SAM2Model, folder: Path, label: str) -> None:
    """The image encoder, decoder, memory attention, memory encoder and memory keys graphs of an
    export (the mask prompt's is checked through the trackers)."""
    start = time.perf_counter()
    parts = sessions(folder)
    features = run_image_encoder(model, parts["image_encoder"], seed=0)
    check_decoder(model, parts["mask_decoder"], features)
    check_memory_attention(model, parts["memory_attention"], features)
    check_memory_encoder(model, parts["memory_encoder"], features)
    check_memory_keys(model, parts["memory_keys"])
    print(f"{label}: five graphs checked in {time.perf_counter() - start:.1f} s")
