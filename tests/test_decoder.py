"""Prompt encoder, two-way transformer and mask decoder against the official sam2 modules.

The official modules are built with the arguments SAM2Base uses (plus the video predictor's
dynamic-multimask settings), given seeded random weights, and loaded into ours with strict=True.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
import torch
from oracle import assert_close, perturb_, require_official

from surgsam2.model.mask_decoder import MaskDecoder
from surgsam2.model.prompt_encoder import PromptEncoder
from surgsam2.model.transformer import TwoWayTransformer

BATCH = 3  # objects of one frame, decoded together


@pytest.fixture(autouse=True)
def _one_thread():
    """Small CPU ops run far slower with 2 threads on busy shared cores: use 1, then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass(frozen=True)
class Spec:
    """One decoder configuration: widths, grid size and the MaskDecoder flags."""

    dim: int
    grid: int  # side of the image-embedding grid (image size / 16)
    heads: int = 8
    mlp_dim: int = 2048
    iou_hidden: int = 256
    flags: dict = field(default_factory=dict, hash=False)

    @property
    def image_size(self) -> int:
        return 16 * self.grid


# What SAM2Base builds for the sam2.1 configs, with the video predictor's extra decoder args.
SAM2_1_FLAGS = dict(
    use_high_res_features=True,
    iou_prediction_use_sigmoid=True,
    pred_obj_scores=True,
    pred_obj_scores_mlp=True,
    use_multimask_token_for_obj_ptr=True,
    dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05,
    dynamic_multimask_stability_thresh=0.98,
)

SPECS = {
    "sam2.1@1024": Spec(dim=256, grid=64, flags=SAM2_1_FLAGS),
    "sam2.1@512": Spec(dim=256, grid=32, flags=SAM2_1_FLAGS),
    "small@256": Spec(dim=128, grid=16, heads=4, mlp_dim=512, iou_hidden=128, flags=SAM2_1_FLAGS),
    # The other branches: no skip features, raw IoU, linear object-score head, single-mask pointer.
    "small-linear-obj": Spec(
        dim=128, grid=16, heads=4, mlp_dim=512, iou_hidden=128,
        flags=dict(pred_obj_scores=True, pred_obj_scores_mlp=False),
    ),
    "small-no-obj": Spec(dim=128, grid=16, heads=4, mlp_dim=512, iou_hidden=128, flags={}),
}


@dataclass
class Pair:
    """The official and our prompt encoder + mask decoder with identical weights."""

    spec: Spec
    official_prompt: torch.nn.Module
    official_decoder: torch.nn.Module
    prompt: PromptEncoder
    decoder: MaskDecoder


def _kwargs(spec: Spec) -> tuple[dict, dict, dict]:
    """Constructor arguments (prompt encoder, transformer, decoder) as SAM2Base passes them."""
    prompt = dict(
        embed_dim=spec.dim,
        image_embedding_size=(spec.grid, spec.grid),
        input_image_size=(spec.image_size, spec.image_size),
        mask_in_chans=16,
    )
    transformer = dict(depth=2, embedding_dim=spec.dim, mlp_dim=spec.mlp_dim, num_heads=spec.heads)
    decoder = dict(
        num_multimask_outputs=3,
        transformer_dim=spec.dim,
        iou_head_depth=3,
        iou_head_hidden_dim=spec.iou_hidden,
        **spec.flags,
    )
    return prompt, transformer, decoder


def _build_ours(spec: Spec) -> tuple[PromptEncoder, MaskDecoder]:
    """Our prompt encoder and mask decoder for a spec (default init)."""
    prompt_kw, transformer_kw, decoder_kw = _kwargs(spec)
    return PromptEncoder(**prompt_kw), MaskDecoder(
        transformer=TwoWayTransformer(**transformer_kw), **decoder_kw
    )


def _build_official(spec: Spec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The official prompt encoder and mask decoder for a spec (default init)."""
    require_official()
    from sam2.modeling.sam.mask_decoder import MaskDecoder as OfficialMaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as OfficialPromptEncoder
    from sam2.modeling.sam.transformer import TwoWayTransformer as OfficialTwoWayTransformer

    prompt_kw, transformer_kw, decoder_kw = _kwargs(spec)
    return OfficialPromptEncoder(**prompt_kw), OfficialMaskDecoder(
        transformer=OfficialTwoWayTransformer(**transformer_kw), **decoder_kw
    )


@functools.lru_cache(maxsize=None)
def _pair(name: str) -> Pair:
    """Official modules with perturbed weights and ours loaded from them (cached per spec)."""
    spec = SPECS[name]
    torch.manual_seed(7)
    official_prompt, official_decoder = _build_official(spec)
    perturb_(official_prompt, seed=11)
    perturb_(official_decoder, seed=12)
    prompt, decoder = _build_ours(spec)
    prompt.load_state_dict(official_prompt.state_dict(), strict=True)
    decoder.load_state_dict(official_decoder.state_dict(), strict=True)
    modules = (official_prompt, official_decoder, prompt, decoder)
    for module in modules:
        module.eval().requires_grad_(False)
    return Pair(spec, *modules)


def _features(spec: Spec, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random image embedding and already-projected stride-4/8 skip features."""
    g = torch.Generator().manual_seed(seed)
    d, s = spec.dim, spec.grid
    return dict(
        image=torch.randn(batch, d, s, s, generator=g),
        feat_s0=torch.randn(batch, d // 8, 4 * s, 4 * s, generator=g),
        feat_s1=torch.randn(batch, d // 4, 2 * s, 2 * s, generator=g),
    )


def _prompts(spec: Spec, kind: str, batch: int, seed: int) -> dict:
    """Prompt tensors (pixel coordinates of the model input) for one prompt kind."""
    g = torch.Generator().manual_seed(seed)
    size = spec.image_size
    points = labels = boxes = masks = None
    if kind in ("one_point", "points", "points_box", "points_mask"):
        count = 1 if kind == "one_point" else 4
        points = torch.rand(batch, count, 2, generator=g) * (size - 1)
        labels = torch.randint(0, 2, (batch, count), generator=g, dtype=torch.int32)
        labels[:, 0] = 1
        if count > 1:
            labels[-1, -1] = -1  # an object with fewer clicks, padded
    if kind in ("box", "points_box"):
        corner = torch.rand(batch, 2, generator=g) * size / 2
        extent = torch.rand(batch, 2, generator=g) * size / 2
        boxes = torch.cat([corner, corner + extent], dim=1)
    if kind in ("mask", "points_mask"):
        masks = torch.randn(batch, 1, 4 * spec.grid, 4 * spec.grid, generator=g) * 5
    return dict(points=None if points is None else (points, labels), boxes=boxes, masks=masks)


def _decode(prompt_encoder, decoder, spec, features, prompts, multimask, repeat_image=False):
    """Prompt encoder then mask decoder, called the way SAM2Base._forward_sam_heads calls them."""
    sparse, dense = prompt_encoder(**prompts)
    high_res = None
    if spec.flags.get("use_high_res_features"):
        high_res = [features["feat_s0"], features["feat_s1"]]
    return decoder(
        image_embeddings=features["image"],
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=repeat_image,
        high_res_features=high_res,
    )


OUTPUT_NAMES = ("masks", "iou", "sam_tokens", "object_score_logits")


def _assert_outputs_close(ours, reference, what: str) -> None:
    """Parity of the four decoder outputs."""
    assert len(ours) == len(reference) == 4
    for name, mine, theirs in zip(OUTPUT_NAMES, ours, reference):
        assert_close(mine, theirs, f"{what} {name}")


# ------------------------------------------------------------------------------------------
# Structure
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_state_dict_matches_official(name: str) -> None:
    """Same keys, shapes and buffers; weights load 1:1 both ways with strict=True."""
    spec = SPECS[name]
    ours = _build_ours(spec)
    official = _build_official(spec)
    for mine, theirs in zip(ours, official):
        my_shapes = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
        their_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert my_shapes == their_shapes
        assert [n for n, _ in mine.named_buffers()] == [n for n, _ in theirs.named_buffers()]
        theirs.load_state_dict(mine.state_dict(), strict=True)
        mine.load_state_dict(theirs.state_dict(), strict=True)


# ------------------------------------------------------------------------------------------
# Prompt encoder
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sam2.1@512", "small@256"])
def test_dense_pe_matches_official(name: str) -> None:
    pair = _pair(name)
    ours, reference = pair.prompt.get_dense_pe(), pair.official_prompt.get_dense_pe()
    assert ours.shape == (1, pair.spec.dim, pair.spec.grid, pair.spec.grid)
    assert_close(ours, reference, f"{name} dense pe")


PROMPT_KINDS = ["one_point", "points", "box", "points_box", "mask", "points_mask"]


@pytest.mark.parametrize("kind", PROMPT_KINDS + ["nothing"])
def test_prompt_encoder_matches_official(kind: str) -> None:
    pair = _pair("sam2.1@512")
    prompts = _prompts(pair.spec, kind, BATCH, seed=3) if kind != "nothing" else dict(
        points=None, boxes=None, masks=None
    )
    with torch.no_grad():
        sparse, dense = pair.prompt(**prompts)
        ref_sparse, ref_dense = pair.official_prompt(**prompts)
    if ref_sparse.numel() == 0:  # no sparse prompt: an empty token list of the right shape
        assert sparse.shape == ref_sparse.shape == (BATCH if kind != "nothing" else 1, 0, 256)
    else:
        assert_close(sparse, ref_sparse, f"prompt {kind} sparse")
    assert_close(dense, ref_dense, f"prompt {kind} dense")


def test_padding_and_box_corner_labels() -> None:
    """Label -1 carries no position; labels 2/3 as points equal the box corners."""
    pair = _pair("small@256")
    encoder = pair.prompt
    with torch.no_grad():
        coords = torch.tensor([[[10.0, 20.0], [200.0, 5.0]], [[30.0, 40.0], [77.0, 150.0]]])
        labels = torch.tensor([[-1, -1], [2, 3]], dtype=torch.int32)
        sparse, _ = encoder(points=(coords, labels), boxes=None, masks=None)
        padding = encoder.not_a_point_embed.weight[0]
        torch.testing.assert_close(sparse[0], padding.expand(3, -1), rtol=0, atol=0)
        box_tokens, _ = encoder(points=None, boxes=coords[1].reshape(1, 4), masks=None)
        torch.testing.assert_close(sparse[1, :2], box_tokens[0], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Mask decoder (+ prompt encoder), batched like the video predictor
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("kind", PROMPT_KINDS)
@pytest.mark.parametrize("name", ["sam2.1@512", "small@256"])
def test_decoder_matches_official(name: str, kind: str, multimask: bool) -> None:
    pair = _pair(name)
    features = _features(pair.spec, BATCH, seed=5)
    prompts = _prompts(pair.spec, kind, BATCH, seed=6)
    with torch.no_grad():
        ours = _decode(pair.prompt, pair.decoder, pair.spec, features, prompts, multimask)
        reference = _decode(
            pair.official_prompt, pair.official_decoder, pair.spec, features, prompts, multimask
        )
    outputs = 3 if multimask else 1
    assert ours[0].shape == (BATCH, outputs, 4 * pair.spec.grid, 4 * pair.spec.grid)
    assert ours[2].shape == (BATCH, outputs if multimask else 1, pair.spec.dim)
    _assert_outputs_close(ours, reference, f"{name} {kind} multimask={multimask}")


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multi"])
def test_decoder_matches_official_at_1024(multimask: bool) -> None:
    pair = _pair("sam2.1@1024")
    features = _features(pair.spec, BATCH, seed=8)
    prompts = _prompts(pair.spec, "points_box", BATCH, seed=9)
    with torch.no_grad():
        ours = _decode(pair.prompt, pair.decoder, pair.spec, features, prompts, multimask)
        reference = _decode(
            pair.official_prompt, pair.official_decoder, pair.spec, features, prompts, multimask
        )
    assert ours[0].shape[-2:] == (256, 256)
    _assert_outputs_close(ours, reference, f"sam2.1@1024 points_box multimask={multimask}")


@pytest.mark.parametrize("name", ["small-linear-obj", "small-no-obj"])
@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multi"])
def test_decoder_other_flags_match_official(name: str, multimask: bool) -> None:
    pair = _pair(name)
    features = _features(pair.spec, BATCH, seed=10)
    prompts = _prompts(pair.spec, "points", BATCH, seed=11)
    with torch.no_grad():
        ours = _decode(pair.prompt, pair.decoder, pair.spec, features, prompts, multimask)
        reference = _decode(
            pair.official_prompt, pair.official_decoder, pair.spec, features, prompts, multimask
        )
    assert ours[2].shape[1] == 1  # pointer from the single-mask token
    _assert_outputs_close(ours, reference, f"{name} multimask={multimask}")


def test_shared_image_is_broadcast_and_matches_repeat() -> None:
    """One image embedding for all objects: ours broadcasts it, official repeats it."""
    pair = _pair("sam2.1@512")
    single = _features(pair.spec, 1, seed=12)
    prompts = _prompts(pair.spec, "points", BATCH, seed=13)
    expanded = {key: value.expand(BATCH, -1, -1, -1) for key, value in single.items()}
    with torch.no_grad():
        reference = _decode(
            pair.official_prompt, pair.official_decoder, pair.spec, expanded, prompts, True
        )
        repeated = _decode(pair.prompt, pair.decoder, pair.spec, single, prompts, True, True)
        broadcast = _decode(pair.prompt, pair.decoder, pair.spec, single, prompts, True, False)
        # The caller may also pass an expanded (stride-0) view, as the video path does.
        as_view = _decode(pair.prompt, pair.decoder, pair.spec, expanded, prompts, True, False)
    _assert_outputs_close(repeated, reference, "shared image repeat_image=True")
    _assert_outputs_close(broadcast, reference, "shared image broadcast")
    _assert_outputs_close(as_view, reference, "shared image expanded view")


def test_decoder_rejects_mismatched_image_batch() -> None:
    pair = _pair("small@256")
    features = _features(pair.spec, 2, seed=14)
    prompts = _prompts(pair.spec, "points", BATCH, seed=15)
    with torch.no_grad(), pytest.raises(ValueError, match="batch"):
        _decode(pair.prompt, pair.decoder, pair.spec, features, prompts, False)


def test_high_res_projection_matches_official() -> None:
    pair = _pair("sam2.1@512")
    g = torch.Generator().manual_seed(16)
    s = pair.spec.grid
    level0 = torch.randn(1, 256, 4 * s, 4 * s, generator=g)
    level1 = torch.randn(1, 256, 2 * s, 2 * s, generator=g)
    with torch.no_grad():
        feat_s0, feat_s1 = pair.decoder.project_high_res_features(level0, level1)
        assert_close(feat_s0, pair.official_decoder.conv_s0(level0), "conv_s0")
        assert_close(feat_s1, pair.official_decoder.conv_s1(level1), "conv_s1")


# ------------------------------------------------------------------------------------------
# Dynamic multimask via stability (single-mask output at inference)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sam2.1@512", "small@256"])
def test_dynamic_multimask_takes_both_paths(name: str) -> None:
    """Objects with strong skip features give stable single masks; the others fall back.

    Scaling the stride-4 skip features scales the mask logits, and so their stability.
    """
    pair = _pair(name)
    batch = 4
    features = _features(pair.spec, batch, seed=17)
    skip_scale = torch.tensor([100.0, 1.0, 100.0, 1.0])[:, None, None, None]
    features["feat_s0"] = features["feat_s0"] * skip_scale
    prompts = _prompts(pair.spec, "points", batch, seed=18)
    with torch.no_grad():
        ours = _decode(pair.prompt, pair.decoder, pair.spec, features, prompts, False)
        reference = _decode(
            pair.official_prompt, pair.official_decoder, pair.spec, features, prompts, False
        )
        # Which path each object took, from the official module's own pieces.
        sparse, dense = pair.official_prompt(**prompts)
        all_masks, all_iou, _, _ = pair.official_decoder.predict_masks(
            features["image"], pair.official_prompt.get_dense_pe(), sparse, dense,
            repeat_image=False, high_res_features=[features["feat_s0"], features["feat_s1"]],
        )
        scores = pair.official_decoder._get_stability_scores(all_masks[:, :1]).flatten()
    stable = scores >= 0.98
    print(f"[dynamic] {name}: stability={[round(v, 4) for v in scores.tolist()]}")
    assert stable.any() and (~stable).any(), "both the stable and the fallback path must occur"
    _assert_outputs_close(ours, reference, f"{name} dynamic multimask")

    best = all_iou[:, 1:].argmax(dim=-1)
    for index in range(batch):
        expected = all_masks[index, 0] if stable[index] else all_masks[index, 1 + best[index]]
        what = f"{name} object {index} stable={bool(stable[index])}"
        assert_close(ours[0][index, 0], expected, what)
    # Our stability score equals the official one.
    our_scores = pair.decoder._stability_scores(all_masks[:, :1]).flatten()
    torch.testing.assert_close(our_scores, scores, rtol=0, atol=0)


def test_dynamic_multimask_is_off_in_training_mode() -> None:
    """In training the single-mask output is always token 0, as in the official decoder."""
    pair = _pair("small@256")
    features = _features(pair.spec, BATCH, seed=19)
    prompts = _prompts(pair.spec, "one_point", BATCH, seed=20)
    try:
        pair.decoder.train()
        pair.official_decoder.train()
        with torch.no_grad():
            ours = _decode(pair.prompt, pair.decoder, pair.spec, features, prompts, False)
            reference = _decode(
                pair.official_prompt, pair.official_decoder, pair.spec, features, prompts, False
            )
    finally:
        pair.decoder.eval()
        pair.official_decoder.eval()
    _assert_outputs_close(ours, reference, "training mode single mask")


def test_stability_of_empty_mask_is_one() -> None:
    from surgsam2.model.mask_decoder import stability_scores

    logits = torch.full((2, 1, 8, 8), -5.0)
    logits[1, 0, :4] = 5.0
    logits[1, 0, 4, :2] = 0.0  # inside (-delta, delta]: in the outer mask only
    scores = stability_scores(logits, 0.05)
    torch.testing.assert_close(scores, torch.tensor([[1.0], [32 / 34]]))


def test_gradients_match_official() -> None:
    """Training path: the same loss gives the same parameter gradients (by state-dict name)."""
    import copy

    pair = _pair("small@256")
    features = _features(pair.spec, BATCH, seed=21)
    prompts = _prompts(pair.spec, "points_mask", BATCH, seed=22)
    grads = []
    for prompt_encoder, decoder in (
        (pair.prompt, pair.decoder),
        (pair.official_prompt, pair.official_decoder),
    ):
        prompt_encoder = copy.deepcopy(prompt_encoder).train().requires_grad_(True)
        decoder = copy.deepcopy(decoder).train().requires_grad_(True)
        g = torch.Generator().manual_seed(23)
        masks, iou, tokens, scores = _decode(
            prompt_encoder, decoder, pair.spec, features, prompts, multimask=True
        )
        outputs = (masks, iou, tokens, scores)
        loss = sum((out * torch.randn(out.shape, generator=g)).sum() for out in outputs)
        loss.backward()
        named = dict(prompt_encoder.named_parameters(prefix="prompt"))
        named.update(decoder.named_parameters(prefix="decoder"))
        grads.append({k: v.grad for k, v in named.items()})
    ours, reference = grads
    assert ours.keys() == reference.keys()
    untouched = [k for k, v in reference.items() if v is None]
    assert untouched == [k for k, v in ours.items() if v is None]
    worst = max(
        ((ours[k] - reference[k]).abs().max().item() / max(1.0, reference[k].abs().max().item()), k)
        for k in reference
        if reference[k] is not None
    )
    print(f"[parity] gradients: worst relative max|d|={worst[0]:.3e} ({worst[1]})")
    print(f"[parity] gradients: parameters unused by this loss: {untouched}")
    assert worst[0] <= 1e-4


@pytest.mark.parametrize("kind", ["points_box", "points_mask"])
def test_bf16_autocast_matches_official(kind: str) -> None:
    """Under bf16 autocast (how the official video predictor runs on GPU) the dtypes agree too,
    except the IoU predictions: ours take the sigmoid in float32 (bf16 rounds every probability
    above ~0.998 to 1, hiding the ranking of confident candidates)."""
    pair = _pair("small@256")
    features = _features(pair.spec, BATCH, seed=24)
    prompts = _prompts(pair.spec, kind, BATCH, seed=25)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _decode(pair.prompt, pair.decoder, pair.spec, features, prompts, True)
        reference = _decode(
            pair.official_prompt, pair.official_decoder, pair.spec, features, prompts, True
        )
    iou_index = OUTPUT_NAMES.index("iou")
    expected = [t.dtype for t in reference]
    expected[iou_index] = torch.float32
    assert [t.dtype for t in ours] == expected
    # Rounded to bf16, our IoUs are the official ones.
    ours = tuple(t.to(torch.bfloat16) if i == iou_index else t for i, t in enumerate(ours))
    _assert_outputs_close(ours, reference, f"bf16 autocast {kind}")
