"""The bf16 CPU fast path: fused oneDNN linears (image encoder, attention projections, memory
attention and memory encoder MLPs), packed window attention written straight into the
heads-merged layout, and a contiguous channels-last token grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surgsam2.model import attention, layers
from surgsam2.model.layers import MLP, linear


def sdpa_heads(qkv: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
    """The reference: SDPA on (B, heads, N, d) views, heads merged to (B, Nq, heads * d)."""
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    if query is not None:
        q = query.transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("block_bytes", [None, 7 * 56 * 8], ids=["dense", "blocked"])
def test_heads_into_is_attention(pooled: bool, block_bytes: int | None, monkeypatch) -> None:
    """`heads_into` computes SDPA's function (float64, tolerance 1e-10), in the dense form and in
    the blocked form used beyond SCORE_BLOCK_BYTES (here 7 query rows at a time)."""
    if block_bytes is not None:
        monkeypatch.setattr(attention, "SCORE_BLOCK_BYTES", block_bytes)
    generator = torch.Generator().manual_seed(3)
    qkv = torch.randn(5, 56, 3, 3, 16, generator=generator, dtype=torch.float64)
    query = torch.randn(5, 14, 3, 16, generator=generator, dtype=torch.float64) if pooled else None
    heads_first = qkv.permute(2, 3, 0, 1, 4).contiguous()
    q = heads_first[0] if query is None else query.permute(2, 0, 1, 3).contiguous()
    out = qkv.new_empty(5, q.shape[2], 3, 16)
    got = attention.heads_into(q, heads_first[1], heads_first[2], out).flatten(2)
    expected = sdpa_heads(qkv, query)
    error = (got - expected).abs().max().item()
    print(f"[fast path] heads_into vs SDPA, float64: max |d| {error:.1e} (allowed 1e-10)")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pooled", [False, True])
def test_attend_packed_bf16_close_to_sdpa(pooled: bool) -> None:
    """bf16 on CPU takes the packed matmul path and stays within bf16 rounding of float32 SDPA
    (max error <= 2% of the output's scale); float32 takes SDPA and equals it exactly."""
    generator = torch.Generator().manual_seed(5)
    qkv = torch.randn(4, 64, 3, 2, 32, generator=generator)
    query = torch.randn(4, 16, 2, 32, generator=generator) if pooled else None
    expected = sdpa_heads(qkv, query)
    assert torch.equal(attention.attend_packed(qkv, query), expected)
    as_bf16 = None if query is None else query.bfloat16()
    got = attention.attend_packed(qkv.bfloat16(), as_bf16)
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    error = (got.float() - expected).abs().max().item() / expected.abs().max().item()
    print(f"[fast path] attend_packed bf16 vs fp32 SDPA: {error:.2e} of scale (allowed 2e-2)")
    assert error <= 2e-2


def test_linear_fused_bias_exact_and_activation_close() -> None:
    """bf16 inference: the fused linear's bias equals the module call bit for bit, ReLU too (it
    commutes with rounding); GELU on the float32 accumulator is within one bf16 rounding of the
    unfused GELU (max error <= 1% of scale). With autograd on, or a hook, the module call runs."""
    torch.manual_seed(6)
    layer = nn.Linear(48, 40).bfloat16()
    x = torch.randn(3, 7, 48).bfloat16()
    with torch.no_grad():
        assert torch.equal(linear(x, layer), layer(x))
        assert torch.equal(linear(x, layer, nn.ReLU()), torch.relu(layer(x)))
        fused = linear(x, layer, nn.GELU()).float()
        reference = torch.nn.functional.gelu(torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float()))
        error = (fused - reference).abs().max().item() / reference.abs().max().item()
        print(f"[fast path] fused GELU linear vs fp32: {error:.2e} of scale (allowed 1e-2)")
        assert error <= 1e-2
    seen = []
    handle = layer.register_forward_hook(lambda *args: seen.append(1))
    with torch.no_grad():
        linear(x, layer)
    handle.remove()
    assert seen, "a hooked layer must keep its module call"
    out = linear(x, layer.requires_grad_(True))
    assert out.requires_grad, "with autograd on, the differentiable module call runs"


def test_mlp_fast_path_matches_module_calls() -> None:
    """MLP in bf16 inference (fused linears) is within bf16 rounding of its unfused layers."""
    torch.manual_seed(7)
    mlp = MLP(32, 64, 16, num_layers=3, activation=nn.GELU).bfloat16().eval()
    x = torch.randn(10, 32).bfloat16()
    with torch.no_grad():
        fused = mlp(x).float()
        unfused = x
        for index, layer in enumerate(mlp.layers):
            unfused = layer(unfused)
            if index < 2:
                unfused = mlp.act(unfused)
    error = (fused - unfused.float()).abs().max().item() / unfused.float().abs().max().item()
    print(f"[fast path] MLP fused vs unfused bf16: {error:.2e} of scale (allowed 2e-2)")
    assert error <= 2e-2


def _memory_attention_layer() -> nn.Module:
    from surgsam2.model.memory_attention import MemoryAttentionLayer

    return MemoryAttentionLayer(d_model=64, dim_feedforward=128, num_heads=1, kv_in_dim=16)


def _decoder_attention() -> nn.Module:
    return attention.Attention(64, num_heads=2, downsample_rate=2)


def _cx_block() -> nn.Module:
    from surgsam2.model.memory_encoder import CXBlock

    return CXBlock(32, layer_scale_init_value=0.5)


# (module builder, inputs builder, call, linear calls, tolerance): every nn.Linear call of the
# forward. The memory attention layer makes 9 of its 10 (its cross-attention applies the value
# projection after the attention, as a matmul on the narrow memory values). Bias and ReLU fused
# are bit-identical to the module calls (tolerance 0); the CX block's GELU on the float32
# accumulator rounds once instead of twice (within 1 % of scale).
FUSED_MODULES = {
    "memory attention layer": (
        _memory_attention_layer,
        lambda g: (torch.randn(2, 64, 64, generator=g), torch.randn(2, 2 * 64 + 4, 16, generator=g)),
        lambda m, args: m(*args, pos=torch.ones_like(args[1]), num_k_exclude_rope=4),
        9,
        0.0,
    ),
    "decoder attention": (
        _decoder_attention,
        lambda g: (torch.randn(2, 8, 64, generator=g), torch.randn(2, 256, 64, generator=g)),
        lambda m, args: m(args[0], args[1], args[1]),
        4,
        0.0,
    ),
    "memory encoder CX block": (
        _cx_block,
        lambda g: (torch.randn(2, 32, 16, 16, generator=g),),
        lambda m, args: m(*args),
        2,
        1e-2,
    ),
}


@pytest.mark.parametrize("name", list(FUSED_MODULES))
def test_fused_linears_beyond_the_encoder(name: str, monkeypatch) -> None:
    """In bf16 inference every linear of memory attention, the decoder's attention and the memory
    encoder's CX blocks is one fused oneDNN call, and the output equals the module calls' (within
    1% of the output's scale where a GELU is fused)."""
    build, inputs, run, expected_calls, tolerance = FUSED_MODULES[name]
    if layers._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN")
    torch.manual_seed(8)
    module = build().bfloat16().eval()
    args = tuple(t.bfloat16() for t in inputs(torch.Generator().manual_seed(9)))
    calls = []
    fused_linear = layers._ONEDNN_LINEAR

    def counting(*call_args):
        calls.append(1)
        return fused_linear(*call_args)

    with torch.no_grad():
        monkeypatch.setattr(layers, "_ONEDNN_LINEAR", counting)
        fused = run(module, args).float()
        monkeypatch.setattr(layers, "_ONEDNN_LINEAR", None)
        unfused = run(module, args).float()
    assert len(calls) == expected_calls
    error = (fused - unfused).abs().max().item() / unfused.abs().max().item()
    print(f"[fast path] {name}: {len(calls)} fused linears; vs module calls {error:.2e} of scale (allowed {tolerance:.0e})")
    assert error <= tolerance


def test_hiera_grid_contiguous_after_position_embedding() -> None:
    """The trunk's token grid is a contiguous (B, H, W, C) tensor from the first block on, so no
    LayerNorm or window partition has to copy it from the convolution's NCHW order."""
    from surgsam2.model.configs import get_config
    from surgsam2.model.hiera import Hiera

    trunk = Hiera.from_config(get_config("nano", 256).trunk).eval()
    seen = []
    handle = trunk.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        trunk(torch.randn(2, 3, 256, 256))
    handle.remove()
    assert seen == [True]


def test_flop_count_includes_fused_linear() -> None:
    """The bench's FLOP count sees the fused linear (FlopCounterMode alone counts it as 0)."""
    from surgsam2.bench.machine import count_flops

    layer = nn.Linear(64, 32).bfloat16()
    x = torch.randn(2, 10, 64).bfloat16()
    with torch.no_grad(), count_flops() as flops:
        linear(x, layer, nn.GELU())
    assert flops.total == 2 * 20 * 64 * 32
