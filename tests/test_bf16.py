"""bf16 inference: every part of the model runs in bf16, and its masks match the fp32 masks.

The issue asks for IoU >= 0.98 per frame on the shipped model. No shipped model exists yet, so
this runs the nano architecture with seeded random weights (object-score head biased so objects
are visible), where bf16 rounding moves the random-feature masks a little more than trained ones
would. Tolerance here: mean IoU over (frame, object) >= 0.95 and the worst object of every frame
>= 0.90 (seen at 256 px: mean 0.978, worst frame 0.966).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch

import surgsam2
from surgsam2 import Prompt
from surgsam2.bench import make_clip
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model

MEAN_IOU_MIN = 0.95
FRAME_IOU_MIN = 0.90
IMAGE_SIZE = 256  # 16 x 16 tokens: memory attention takes the bf16 matmul path (>= 16 queries and keys)
NUM_FRAMES = 10
NUM_OBJECTS = 2


def sdpa_only() -> contextlib.AbstractContextManager:
    """Every attention on SDPA within the block: both bf16 matmul-path choices patched off."""
    from surgsam2.model import attention

    return mock.patch.multiple(
        attention, use_matmul_attention=lambda *args: False, use_training_matmul_attention=lambda *args: False
    )


def random_nano(dtype: torch.dtype) -> SAM2Model:
    """Nano with seeded random weights, identical before the cast for every dtype."""
    torch.manual_seed(0)
    model = SAM2Model(get_config("nano", IMAGE_SIZE)).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model.to(dtype)


def track(model: SAM2Model, frames: list[np.ndarray], masks: dict[int, np.ndarray]) -> list[dict[int, np.ndarray]]:
    tracker = surgsam2.Tracker(model, memory="efp")
    prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in masks.items()}
    return [tracker.step(frame, prompts if index == 0 else None).masks for index, frame in enumerate(frames)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def clip():
    return make_clip(IMAGE_SIZE, NUM_FRAMES, NUM_OBJECTS, seed=0, jpeg_dir=None)


def test_bf16_model_runs_every_module_in_bf16(clip) -> None:
    """No module holding bf16 weights is ever fed float32 tensors (no silent float32 islands),
    and the outputs and the stored memories are what a user expects."""
    model = random_nano(torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    offenders: list[str] = []

    def check_inputs(module: torch.nn.Module, args: tuple) -> None:
        own = next(module.parameters(recurse=False), None)
        if own is None or own.dtype != torch.bfloat16:
            return
        for value in args:
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.bfloat16:
                offenders.append(f"{type(module).__name__} got {value.dtype}")

    handles = [module.register_forward_pre_hook(check_inputs) for module in model.modules()]
    try:
        tracker = surgsam2.Tracker(model, memory="efp")
        prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}
        for index, frame in enumerate(clip.frames[:4]):
            result = tracker.step(frame, prompts if index == 0 else None)
    finally:
        for handle in handles:
            handle.remove()
    assert not offenders, f"float32 inputs reached bf16 modules: {sorted(set(offenders))}"
    assert all(logits.dtype == np.float32 for logits in result.logits.values())
    assert all(t.dtype == torch.bfloat16 for t in tracker.bank.stored_tensors())


def test_bf16_masks_match_fp32_masks(clip, monkeypatch) -> None:
    from surgsam2.model import attention

    calls = []
    original = attention.matmul_attention
    monkeypatch.setattr(attention, "matmul_attention", lambda *args: calls.append(1) or original(*args))
    fp32 = track(random_nano(torch.float32), clip.frames, clip.masks)
    assert not calls, "float32 must keep SDPA"
    bf16 = track(random_nano(torch.bfloat16), clip.frames, clip.masks)
    assert calls, "the bf16 run did not take the matmul attention path"
    per_frame = []
    nontrivial = 0
    for reference, candidate in zip(fp32, bf16):
        assert sorted(reference) == sorted(candidate)
        scores = [iou(reference[obj_id], candidate[obj_id]) for obj_id in reference]
        per_frame.append(min(scores))
        nontrivial += sum(0.0 < reference[obj_id].mean() < 1.0 for obj_id in reference)
    everything = float(np.mean(per_frame))
    worst = min(per_frame)
    print(
        f"[bf16] IoU(bf16, fp32) over {len(per_frame)} frames x {len(clip.masks)} objects: mean {everything:.4f}"
        f" (min {MEAN_IOU_MIN}, margin {everything - MEAN_IOU_MIN:+.4f}), worst frame {worst:.4f}"
        f" (min {FRAME_IOU_MIN}, margin {worst - FRAME_IOU_MIN:+.4f})"
    )
    # The comparison must not be vacuous: masks neither empty nor full.
    assert nontrivial >= len(per_frame) * len(clip.masks) // 2, f"only {nontrivial} non-trivial masks"
    assert everything >= MEAN_IOU_MIN
    assert worst >= FRAME_IOU_MIN


def test_matmul_attention_equals_sdpa() -> None:
    """The bf16 CPU kernel computes the same function as SDPA (checked in float64, also in the
    chunked form used for long key sequences)."""
    from surgsam2.model import attention

    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 40, 16, generator=generator, dtype=torch.float64)
    k = torch.randn(2, 3, 56, 16, generator=generator, dtype=torch.float64)
    v = torch.randn(2, 1, 56, 8, generator=generator, dtype=torch.float64)  # shared by the heads
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v.expand(-1, 3, -1, -1))
    torch.testing.assert_close(attention.matmul_attention(q, k, v), reference, rtol=1e-10, atol=1e-10)
    original = attention.SCORE_BLOCK_BYTES
    try:
        attention.SCORE_BLOCK_BYTES = 56 * 8 * 7  # one batch element and 7 query rows at a time
        torch.testing.assert_close(attention.matmul_attention(q, k, v), reference, rtol=1e-10, atol=1e-10)
    finally:
        attention.SCORE_BLOCK_BYTES = original


def test_values_projected_after_attention_is_exact() -> None:
    """Memory cross-attention mixes the 64-channel memory and projects after: the same function."""
    from surgsam2.model.attention import RoPEAttention

    torch.manual_seed(2)
    layer = RoPEAttention(64, num_heads=2, kv_in_dim=16, rope_k_repeat=True, feat_sizes=(4, 4)).double().eval()
    queries = torch.randn(3, 16, 64, dtype=torch.float64)
    memory = torch.randn(3, 2 * 16 + 4, 16, dtype=torch.float64)
    q = layer.split_heads(layer.q_proj(queries))
    k = layer.split_heads(layer.k_proj(memory))
    v = layer.split_heads(layer.v_proj(memory))
    torch.testing.assert_close(layer._attend_raw_values(q, k, memory), layer._attend(q, k, v), rtol=1e-10, atol=1e-10)


def test_bf16_memory_attention_close_to_fp32(monkeypatch) -> None:
    """End to end, the bf16 memory attention (matmul kernel, values projected after) stays
    within bf16 rounding of float32, and closer than 5% of the output scale."""
    from surgsam2.model import attention

    raw_values = []
    original = attention.Attention._attend_raw_values
    monkeypatch.setattr(
        attention.Attention, "_attend_raw_values", lambda self, *args: raw_values.append(1) or original(self, *args)
    )

    model = random_nano(torch.float32)
    attention_fp32 = model.memory_attention
    generator = torch.Generator().manual_seed(3)
    tokens = (IMAGE_SIZE // 16) ** 2
    curr = torch.randn(tokens, 2, model.hidden_dim, generator=generator)
    curr_pos = torch.randn(tokens, 2, model.hidden_dim, generator=generator)
    memory = torch.randn(3 * tokens + 8, 2, model.mem_dim, generator=generator)
    memory_pos = torch.randn(3 * tokens + 8, 2, model.mem_dim, generator=generator)
    with torch.inference_mode():
        reference = attention_fp32(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=8)
        attention_bf16 = random_nano(torch.bfloat16).memory_attention
        inputs = [t.bfloat16() for t in (curr, memory, curr_pos, memory_pos)]
        fast = attention_bf16(*inputs, num_obj_ptr_tokens=8).float()
        with sdpa_only():
            sdpa = attention_bf16(*inputs, num_obj_ptr_tokens=8).float()
    assert raw_values, "the bf16 cross-attention did not project the values after the attention"
    scale = reference.abs().max().item()
    fast_error = (fast - reference).abs().max().item() / scale
    sdpa_error = (sdpa - reference).abs().max().item() / scale
    print(
        f"[bf16] memory attention max rel error vs fp32: matmul path {fast_error:.2e},"
        f" SDPA {sdpa_error:.2e} (allowed 5e-2)"
    )
    assert fast_error <= 5e-2


def test_bf16_image_encoder_matmul_path_close_to_sdpa(monkeypatch) -> None:
    """Hiera's window and global attentions take the bf16 matmul path, and the encoder's features
    stay within bf16 rounding of the SDPA run (max error <= 3% of each level's scale, seen 1.1%)."""
    from surgsam2.model import attention, hiera

    calls = []
    original = attention.heads_into
    monkeypatch.setattr(attention, "heads_into", lambda *args: calls.append(1) or original(*args))
    model = random_nano(torch.bfloat16)
    generator = torch.Generator().manual_seed(4)
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(torch.bfloat16)
    with torch.inference_mode():
        fast = model.image_encoder(image)
        assert calls, "no Hiera attention took the bf16 matmul path"
        assert hiera.attend_packed is attention.attend_packed
        with sdpa_only():
            reference = model.image_encoder(image)
    pairs = enumerate(zip(fast["backbone_fpn"], reference["backbone_fpn"]))
    levels = {f"backbone_fpn[{index}]": pair for index, pair in pairs}
    levels["vision_features"] = (fast["vision_features"], reference["vision_features"])
    for name, (candidate, expected) in levels.items():
        error = (candidate.float() - expected.float()).abs().max().item()
        scale = expected.float().abs().max().item()
        print(f"[bf16] image encoder {name}: matmul vs SDPA max error {error / scale:.2e} of scale (allowed 3e-2)")
        assert error <= 3e-2 * scale


def test_bf16_training_attention_takes_matmul_path_with_sdpa_gradients(monkeypatch) -> None:
    """Training under CPU autocast: short dropout-free attentions (Hiera windows) take the matmul
    path, whose output and gradients stay within bf16 rounding of SDPA's (max error <= 1.5% of
    each tensor's scale, seen 0.8%); attentions with dropout, more than TRAINING_MATMUL_MAX_KEYS
    keys, or in float32 stay on SDPA."""
    from surgsam2.model import attention

    calls = []
    original = attention.dense_attention
    monkeypatch.setattr(attention, "dense_attention", lambda *args: calls.append(1) or original(*args))
    generator = torch.Generator().manual_seed(5)
    # nano's first Hiera stage change: 8 windows x 2 heads, 16 pooled queries x 64 keys.
    leaves = [torch.randn(8, 2, length, 32, generator=generator).requires_grad_() for length in (16, 64, 64)]

    def forward_backward(use_sdpa: bool) -> list[torch.Tensor]:
        for leaf in leaves:
            leaf.grad = None
        context = sdpa_only() if use_sdpa else contextlib.nullcontext()
        with context, torch.autocast("cpu", dtype=torch.bfloat16):
            out = attention.attend(*(leaf.bfloat16() for leaf in leaves), training=True)
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        (out.float() * weights).sum().backward()
        return [out.detach().float(), *(leaf.grad.clone() for leaf in leaves)]

    fast = forward_backward(use_sdpa=False)
    assert calls, "the bf16 training attention did not take the matmul path"
    calls.clear()
    reference = forward_backward(use_sdpa=True)
    assert not calls
    for name, candidate, expected in zip(("output", "grad q", "grad k", "grad v"), fast, reference):
        error = (candidate - expected).abs().max().item()
        scale = expected.abs().max().item()
        print(f"[bf16 training] attention {name}: matmul vs SDPA max error {error / scale:.2e} of scale"
              " (allowed 1.5e-2)")
        assert scale > 0 and error <= 1.5e-2 * scale

    q, k, v = (leaf.detach().bfloat16() for leaf in leaves)
    attention.attend(q, k, v, training=True, dropout_p=0.1)
    long_keys = k.repeat(1, 1, attention.TRAINING_MATMUL_MAX_KEYS // 64 + 1, 1)
    attention.attend(q, long_keys, long_keys, training=True)
    attention.attend(q.float(), k.float(), v.float(), training=True)
    assert not calls, "dropout, long key sequences and float32 must stay on SDPA in training"
