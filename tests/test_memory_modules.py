"""Memory encoder and memory attention: same state-dict keys and same numbers as the official SAM 2.1.

The official modules are built from the sam2.1 Hiera-S yaml's arguments, their weights perturbed
(layer-scale gammas start at 1e-6 and would otherwise hide a wrong fuser), then loaded into ours
with strict=True and compared on identical random inputs.
"""

from __future__ import annotations

import importlib.resources

import pytest
import torch
from oracle import assert_close, perturb_, require_official

from surgsam2.model.configs import MemoryAttentionConfig, MemoryEncoderConfig
from surgsam2.model.memory_attention import MemoryAttention, MemoryAttentionLayer
from surgsam2.model.memory_encoder import MemoryEncoder

HIDDEN_DIM = 256
MEM_DIM = 64
# A reduced model for a second parity check: other widths, fewer layers, smaller MLP.
SMALL = {"d_model": 128, "mem_dim": 32, "num_layers": 2, "dim_feedforward": 512}


def _official_nodes(small: bool = False):
    """The yaml nodes of the official memory attention and memory encoder (optionally shrunk)."""
    require_official()
    from omegaconf import OmegaConf

    path = importlib.resources.files("sam2") / "configs/sam2.1/sam2.1_hiera_s.yaml"
    model = OmegaConf.load(str(path)).model
    attention, encoder = model.memory_attention, model.memory_encoder
    if small:
        d_model, mem_dim = SMALL["d_model"], SMALL["mem_dim"]
        attention.d_model = attention.layer.d_model = d_model
        attention.num_layers = SMALL["num_layers"]
        attention.layer.dim_feedforward = SMALL["dim_feedforward"]
        attention.layer.self_attention.embedding_dim = d_model
        attention.layer.cross_attention.embedding_dim = d_model
        attention.layer.cross_attention.kv_in_dim = mem_dim
        encoder.out_dim = mem_dim
        encoder.in_dim = d_model
        encoder.mask_downsampler.embed_dim = d_model
        encoder.fuser.layer.dim = d_model
        encoder.position_encoding.num_pos_feats = mem_dim
    return attention, encoder


def _build_pair(kind: str, small: bool, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(official, ours) in eval mode with the same perturbed weights, loaded strictly."""
    from hydra.utils import instantiate

    attention_node, encoder_node = _official_nodes(small)
    torch.manual_seed(seed)
    if kind == "attention":
        official = instantiate(attention_node)
        d_model = SMALL["d_model"] if small else HIDDEN_DIM
        config = MemoryAttentionConfig(
            num_layers=SMALL["num_layers"] if small else 4,
            dim_feedforward=SMALL["dim_feedforward"] if small else 2048,
        )
        ours = MemoryAttention.from_config(
            config, d_model=d_model, kv_in_dim=SMALL["mem_dim"] if small else MEM_DIM
        )
    else:
        official = instantiate(encoder_node)
        config = MemoryEncoderConfig(mem_dim=SMALL["mem_dim"] if small else MEM_DIM)
        ours = MemoryEncoder.from_config(config, in_dim=SMALL["d_model"] if small else HIDDEN_DIM)
    perturb_(official, seed)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.eval(), ours.eval()


@pytest.fixture(scope="module")
def attention_pair():
    return _build_pair("attention", small=False, seed=11)


@pytest.fixture(scope="module")
def encoder_pair():
    return _build_pair("encoder", small=False, seed=12)


@pytest.fixture(scope="module")
def small_attention_pair():
    return _build_pair("attention", small=True, seed=21)


@pytest.fixture(scope="module")
def small_encoder_pair():
    return _build_pair("encoder", small=True, seed=22)


def _signature(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in module.state_dict().items()]


@pytest.mark.parametrize(
    "pair", ["attention_pair", "encoder_pair", "small_attention_pair", "small_encoder_pair"]
)
def test_state_dict_matches_official(request, pair: str) -> None:
    official, ours = request.getfixturevalue(pair)
    assert _signature(ours) == _signature(official)
    assert list(ours.buffers()) == [], "no buffers: official checkpoints have none here"


def _encoder_inputs(grid: int, batch: int, skip_sigmoid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(grid * 10 + batch)
    pix_feat = torch.randn(batch, HIDDEN_DIM, grid, grid, generator=generator)
    masks = torch.randn(batch, 1, 16 * grid, 16 * grid, generator=generator) * 8.0
    if skip_sigmoid:  # what SAM 2 feeds: probabilities scaled by 20, biased by -10
        masks = torch.sigmoid(masks) * 20.0 - 10.0
    return pix_feat, masks


@pytest.mark.parametrize(
    "grid,batch,skip_sigmoid", [(32, 1, False), (32, 3, True), (64, 1, True), (64, 3, False)]
)
@torch.no_grad()
def test_memory_encoder_parity(encoder_pair, grid: int, batch: int, skip_sigmoid: bool) -> None:
    official, ours = encoder_pair
    pix_feat, masks = _encoder_inputs(grid, batch, skip_sigmoid)
    expected = official(pix_feat, masks, skip_mask_sigmoid=skip_sigmoid)
    got = ours(pix_feat, masks, skip_mask_sigmoid=skip_sigmoid)
    what = f"memory encoder {grid}x{grid} B={batch} skip_sigmoid={skip_sigmoid}"
    assert set(got) == {"vision_features", "vision_pos_enc"}
    assert got["vision_features"].shape == (batch, MEM_DIM, grid, grid)
    assert_close(got["vision_features"], expected["vision_features"], what + " features")
    assert len(got["vision_pos_enc"]) == 1
    assert_close(got["vision_pos_enc"][0], expected["vision_pos_enc"][0], what + " pos")


def _attention_inputs(
    grid: int, batch: int, frames: int, ptr_tokens: int, d_model: int, mem_dim: int, seed: int = 0
) -> dict[str, torch.Tensor | int]:
    """Sequence-first inputs as SAM 2 builds them: frame tokens, memory frames, then pointer tokens."""
    generator = torch.Generator().manual_seed(seed)
    tokens = grid * grid
    memory_tokens = frames * tokens + ptr_tokens
    return {
        "curr": torch.randn(tokens, batch, d_model, generator=generator),
        "curr_pos": torch.randn(tokens, batch, d_model, generator=generator),
        "memory": torch.randn(memory_tokens, batch, mem_dim, generator=generator),
        "memory_pos": torch.randn(memory_tokens, batch, mem_dim, generator=generator),
        "num_obj_ptr_tokens": ptr_tokens,
    }


def _check_attention(official, ours, inputs, what: str) -> None:
    expected = official(**inputs)
    got = ours(**inputs)
    assert got.shape == expected.shape
    assert_close(got, expected, what)
    # SAM 2 reshapes the (HW, B, C) output with .view: our layout must allow it as theirs does.
    tokens, batch, channels = got.shape
    side = int(tokens**0.5)
    got.permute(1, 2, 0).view(batch, channels, side, side)


@pytest.mark.parametrize(
    "grid,batch,frames,ptr_tokens",
    [
        (32, 1, 1, 0),
        (32, 2, 1, 16),
        (32, 1, 3, 16),
        (32, 2, 3, 0),
        (32, 1, 7, 16),
        (64, 1, 1, 16),
    ],
)
@torch.no_grad()
def test_memory_attention_parity(
    attention_pair, grid: int, batch: int, frames: int, ptr_tokens: int
) -> None:
    official, ours = attention_pair
    inputs = _attention_inputs(grid, batch, frames, ptr_tokens, HIDDEN_DIM, MEM_DIM)
    what = f"memory attention {grid}x{grid} B={batch} frames={frames} ptr_tokens={ptr_tokens}"
    _check_attention(official, ours, inputs, what)


@torch.no_grad()
def test_small_config_parity(small_attention_pair, small_encoder_pair) -> None:
    official, ours = small_attention_pair
    inputs = _attention_inputs(16, 2, 3, 8, SMALL["d_model"], SMALL["mem_dim"], seed=3)
    _check_attention(official, ours, inputs, "small memory attention 16x16 B=2 frames=3 ptr=8")

    official, ours = small_encoder_pair
    generator = torch.Generator().manual_seed(4)
    pix_feat = torch.randn(2, SMALL["d_model"], 16, 16, generator=generator)
    masks = torch.randn(2, 1, 256, 256, generator=generator) * 8.0
    expected = official(pix_feat, masks)
    got = ours(pix_feat, masks)
    assert_close(got["vision_features"], expected["vision_features"], "small memory encoder")
    assert_close(got["vision_pos_enc"][0], expected["vision_pos_enc"][0], "small memory encoder pos")


def _bf16_errors(output: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max, mean) |output - fp32 reference|."""
    error = (output.float() - reference.float()).abs()
    return error.max().item(), error.mean().item()


@torch.no_grad()
def test_bf16_autocast_as_accurate_as_official(attention_pair, encoder_pair) -> None:
    """bf16 inputs under autocast run, give the official dtypes, and stay as close to the fp32
    result as the official modules do (bf16 rounding makes the two differ by a few ulps)."""
    official, ours = attention_pair
    inputs = _attention_inputs(8, 2, 3, 16, HIDDEN_DIM, MEM_DIM, seed=5)
    reference = official(**inputs)
    inputs = {k: v.bfloat16() if torch.is_tensor(v) else v for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = official(**inputs)
        got = ours(**inputs)
    assert got.dtype == expected.dtype
    (ours_max, ours_mean), (theirs_max, theirs_mean) = (
        _bf16_errors(got, reference),
        _bf16_errors(expected, reference),
    )
    print(
        f"[parity] memory attention bf16 autocast vs fp32: ours max {ours_max:.3e} mean "
        f"{ours_mean:.3e}; official max {theirs_max:.3e} mean {theirs_mean:.3e}"
    )
    assert ours_max <= 1.5 * theirs_max and ours_mean <= 1.25 * theirs_mean

    official_encoder, ours_encoder = encoder_pair
    pix_feat, masks = _encoder_inputs(8, 2, skip_sigmoid=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = official_encoder(pix_feat.bfloat16(), masks.bfloat16(), skip_mask_sigmoid=True)
        got = ours_encoder(pix_feat.bfloat16(), masks.bfloat16(), skip_mask_sigmoid=True)
    for key in ("vision_features", "vision_pos_enc"):
        mine, theirs = got[key], expected[key]
        if key == "vision_pos_enc":
            mine, theirs = mine[0], theirs[0]
        assert mine.dtype == theirs.dtype
        deviation = (mine.float() - theirs.float()).abs().max().item()
        print(f"[parity] memory encoder bf16 autocast {key}: max|d|={deviation:.3e}")
        assert deviation <= 1e-2 * max(1.0, theirs.float().abs().max().item())


def _stack(num_layers: int, **layer_options) -> MemoryAttention:
    """Memory attention of ``num_layers`` layers built with ``layer_options``."""
    return MemoryAttention([MemoryAttentionLayer(**layer_options) for _ in range(num_layers)])


def test_training_mode_dropout_and_gradients() -> None:
    """In training, dropout is active and every parameter receives a finite gradient."""
    torch.manual_seed(0)
    attention = _stack(2, d_model=64, dim_feedforward=128, kv_in_dim=16, dropout=0.1).train()
    encoder = MemoryEncoder(out_dim=16, in_dim=64, drop_path=0.1).train()
    perturb_(encoder, 1)
    pix_feat = torch.randn(2, 64, 8, 8)
    memory_out = encoder(pix_feat, torch.randn(2, 1, 128, 128))
    memory = memory_out["vision_features"].flatten(2).permute(2, 0, 1)
    memory_pos = memory_out["vision_pos_enc"][0].flatten(2).permute(2, 0, 1)
    pointers = torch.randn(4, 2, 16)
    memory = torch.cat([memory, pointers])
    memory_pos = torch.cat([memory_pos, torch.zeros_like(pointers)])
    curr = torch.randn(64, 2, 64, requires_grad=True)
    curr_pos = torch.randn(64, 2, 64)
    first = attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
    second = attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
    assert not torch.equal(first, second), "dropout should make two training passes differ"
    (first.square().mean() + second.mean()).backward()
    for module in (attention, encoder):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert curr.grad is not None


def test_rope_complex_path_equals_the_official_rotation_and_the_real_formula() -> None:
    """The complex-multiply RoPE (CPU/CUDA) is bit-identical to the official rotary encoding in
    float32 (same table, same complex multiply), and the real cos/sin formula (other devices)
    agrees within 1 ulp (<= 1e-6 here); both handle keys of several frames sharing one grid."""
    require_official()
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

    from surgsam2.model.position import apply_rope, axial_rope_tables, rope_rotation

    cos, sin = axial_rope_tables(64, 8, 8)
    rotation = rope_rotation(cos, sin)
    assert rotation is not None and rotation.is_complex()
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 2, 64, 64, generator=generator)
    keys = torch.randn(2, 2, 3 * 64, 64, generator=generator)  # 3 memory frames of the 8x8 grid
    official_q, official_k = apply_rotary_enc(
        queries, keys, freqs_cis=compute_axial_cis(dim=64, end_x=8, end_y=8), repeat_freqs_k=True
    )
    assert torch.equal(apply_rope(queries, cos, sin, rotation), official_q)
    assert torch.equal(apply_rope(keys, cos, sin, rotation), official_k)
    real_error = (apply_rope(keys, cos, sin) - official_k).abs().max().item()
    print(f"[rope] real formula vs official: max |d| {real_error:.1e} (allowed 1e-6); complex path: bit-identical")
    assert real_error <= 1e-6
    bf16 = apply_rope(keys.to(torch.bfloat16), cos, sin, rotation)
    assert bf16.dtype == torch.bfloat16 and bf16.shape == keys.shape


@pytest.mark.parametrize("num_heads", [1, 2])
def test_precomputed_keys_and_shared_frame_equal_the_plain_forward(num_heads: int) -> None:
    """Keys cached per memory frame (spatial part) plus the rotated term of its temporal slot,
    and one frame shared by B objects (batch-1 queries), give the plain forward's output
    (float64 except the RoPE rotation, computed in float32: max |d| <= 1e-7, seen ~1.2e-8)."""
    torch.manual_seed(0)
    grid, channels, frames, batch, pointers = 16, 16, 3, 2, 4
    attention = _stack(2, d_model=64, dim_feedforward=128, num_heads=num_heads, kv_in_dim=channels).eval().double()
    perturb_(attention, 1)
    features = torch.randn(frames, batch, grid, channels, dtype=torch.float64)
    spatial = torch.randn(grid, channels, dtype=torch.float64)
    temporal = torch.randn(7, channels, dtype=torch.float64)
    slots = torch.tensor([[6, 6], [1, 2], [0, 5]])  # (frames, batch): per object, per frame
    pointer_tokens = torch.randn(pointers, batch, channels, dtype=torch.float64)
    pointer_pos = torch.randn(pointers, batch, channels, dtype=torch.float64)
    memory = torch.cat([features.permute(0, 2, 1, 3).reshape(-1, batch, channels), pointer_tokens])
    memory_pos = (spatial[None, :, None] + temporal[slots][:, None]).reshape(-1, batch, channels)
    memory_pos = torch.cat([memory_pos, pointer_pos])
    curr = torch.randn(grid, 1, 64, dtype=torch.float64)
    curr_pos = torch.randn(grid, 1, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = attention(
            curr.expand(-1, batch, -1), memory, curr_pos.expand(-1, batch, -1), memory_pos, pointers
        )
        spatial_keys = torch.stack([attention.rotated_spatial_keys(features[t], spatial) for t in range(frames)])
        temporal_keys = attention.rotated_temporal_keys(temporal, grid)  # (layers, 7, grid, d)
        keys = torch.empty(2, batch, frames * grid + pointers, 64, dtype=torch.float64)
        for t in range(frames):
            for b in range(batch):
                keys[:, b, t * grid : (t + 1) * grid] = spatial_keys[t, b] + temporal_keys[:, slots[t, b]]
        candidate = attention(curr, memory, curr_pos, memory_pos, pointers, rotated_keys=keys)
    error = (candidate - expected).abs().max().item()
    print(f"[key cache] memory attention, {num_heads} head(s): max |d| {error:.2e} (allowed 1e-7)")
    assert candidate.shape == expected.shape
    assert error <= 1e-7
    with pytest.raises(ValueError, match="rotated_keys"):
        attention(curr, memory, curr_pos, memory_pos, pointers, rotated_keys=keys[:, :1])


def test_bad_inputs_raise() -> None:
    attention = _stack(1, d_model=32, dim_feedforward=64, kv_in_dim=16).eval()
    with pytest.raises(ValueError, match="batch"):
        attention(torch.randn(16, 2, 32), torch.randn(16, 1, 16))
    with pytest.raises(ValueError, match="num_obj_ptr_tokens"):
        attention(torch.randn(16, 1, 32), torch.randn(16, 1, 16), num_obj_ptr_tokens=20)
    encoder = MemoryEncoder(out_dim=16, in_dim=32).eval()
    with pytest.raises(ValueError, match="feature grid"):
        encoder(torch.randn(1, 32, 8, 8), torch.randn(1, 1, 64, 64))
