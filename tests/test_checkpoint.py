"""Checkpoints: official layouts in and out, strict key/shape checks, clear errors, `load_model`."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
from oracle import build_official_video_model, official_config_file, require_official

from surgsam2.model import checkpoint as checkpoint_module
from surgsam2.model.checkpoint import (
    CheckpointError,
    check_state_dict,
    default_checkpoint,
    infer_config_name,
    load_model,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from surgsam2.model.configs import MODEL_CONFIGS, check_image_size, get_config, image_size_multiple
from surgsam2.model.sam2 import SAM2Model

OFFICIAL_NAMES = [name for name in MODEL_CONFIGS if name != "nano"]

# Parameter counts of the official models, measured once with the official package (sam2 1.1.0):
#   cfg = hydra.compose(config_name="configs/<family>/<name>.yaml")
#   model = hydra.utils.instantiate(cfg.model); sum(p.numel() for p in model.parameters())
# They do not depend on image_size.
OFFICIAL_PARAMETER_COUNTS = {
    "sam2_hiera_t": 38_945_986,
    "sam2_hiera_s": 46_043_842,
    "sam2_hiera_b+": 80_833_666,
    "sam2_hiera_l": 224_430_130,
    "sam2.1_hiera_t": 38_962_498,
    "sam2.1_hiera_s": 46_060_354,
    "sam2.1_hiera_b+": 80_850_178,
    "sam2.1_hiera_l": 224_446_642,
}


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """This file copies tensors and builds models, no heavy maths: one thread avoids waiting on a
    descheduled pool thread for every small copy when the CPU is shared (10x slower there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build modules on the meta device (shapes only, no memory, no init cost).

    Both Hiera implementations call ``.item()`` on ``torch.linspace`` for drop-path rates, which
    meta tensors cannot do, so that one call is computed on CPU.
    """
    real_linspace = torch.linspace

    def linspace_on_cpu(*args, **kwargs):
        kwargs["device"] = "cpu"
        return real_linspace(*args, **kwargs)

    with torch.device("meta"), mock.patch("torch.linspace", linspace_on_cpu):
        yield


def meta_model(name: str) -> SAM2Model:
    """Our model of config ``name`` on the meta device."""
    with meta_device():
        return SAM2Model(get_config(name))


def official_meta_model(name: str) -> torch.nn.Module:
    """The official SAM2Base of config ``name`` on the meta device, built from its yaml by hydra."""
    require_official()
    from hydra import compose
    from hydra.utils import instantiate

    config = compose(config_name=official_config_file(name))
    with meta_device():
        return instantiate(config.model, _recursive_=True)


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a module's state dict."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys, and every tensor bit-identical."""
    assert set(actual) == set(expected)
    unequal = [key for key in expected if not torch.equal(actual[key].cpu(), expected[key].cpu())]
    assert not unequal, f"tensors differ: {unequal[:5]}"


def nano_model(seed: int = 1) -> SAM2Model:
    """A nano model with seeded random weights."""
    torch.manual_seed(seed)
    return SAM2Model(get_config("nano")).eval()


@pytest.fixture
def nano_file(tmp_path: Path) -> tuple[SAM2Model, Path]:
    """A nano model and its checkpoint written by `save_checkpoint`."""
    model = nano_model()
    return model, save_checkpoint(model, tmp_path / "nano.pt")


@dataclass
class OfficialTiny:
    model: torch.nn.Module  # the official SAM2VideoPredictor, seeded random weights, 512 px
    state_dict: dict[str, torch.Tensor]  # a copy of its weights as saved
    path: Path  # {"model": state_dict} written with torch.save


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory: pytest.TempPathFactory) -> OfficialTiny:
    """An official-layout sam2.1_hiera_t checkpoint written from the official model's state dict."""
    official = build_official_video_model("sam2.1_hiera_t", 512)
    state_dict = {key: value.clone() for key, value in official.state_dict().items()}
    path = tmp_path_factory.mktemp("official") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": official.state_dict()}, path)
    return OfficialTiny(official, state_dict, path)


_unpickled: list[str] = []


def _record_unpickling() -> str:
    """Called only if a checkpoint's arbitrary pickled object is ever executed."""
    _unpickled.append("executed")
    return "executed"


class _Canary:
    """A pickled object that calls `_record_unpickling` when unpickled."""

    def __reduce__(self):
        return (_record_unpickling, ())


# ------------------------------------------------------------------------------------------
# Configs: our parameters equal the official ones
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_parameters_match_official(name: str) -> None:
    ours = meta_model(name)
    official = official_meta_model(name)
    assert shapes(ours) == shapes(official)
    count = sum(parameter.numel() for parameter in ours.parameters())
    assert count == sum(parameter.numel() for parameter in official.parameters())
    assert count == OFFICIAL_PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_infer_config_name(name: str) -> None:
    assert infer_config_name(meta_model(name).state_dict()) == name


def test_infer_config_name_unknown() -> None:
    assert infer_config_name({}) is None
    assert infer_config_name({"weight": torch.zeros(3)}) is None


def test_only_nano_has_packaged_default_weights() -> None:
    """nano ships trained weights; the official configs need a checkpoint (none can ship here)."""
    assert default_checkpoint("nano") is not None
    assert all(default_checkpoint(name) is None for name in MODEL_CONFIGS if name != "nano")


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    model = nano_model()
    path = save_checkpoint(model, tmp_path / f"nano{suffix}", extra={"step": 7, "note": "test"})
    loaded = load_model("nano", checkpoint=path)
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    metadata = read_checkpoint(path).metadata
    assert metadata["config"] == "nano" and metadata["image_size"] == 256
    assert metadata["step"] == 7 and metadata["note"] == "test"
    if suffix == ".safetensors":  # a plain safetensors file: tensors by key, metadata as strings
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            assert set(handle.keys()) == set(model.state_dict())
            assert all(isinstance(value, str) for value in handle.metadata().values())
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_saved_layout_is_official(nano_file: tuple[SAM2Model, Path]) -> None:
    _, path = nano_file
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "surgsam2"}
    assert all(isinstance(value, torch.Tensor) for value in raw["model"].values())


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_bare_and_wrapped_state_dicts(tmp_path: Path, prefix: str) -> None:
    model = nano_model()
    path = tmp_path / "bare.pth"
    torch.save({prefix + key: value for key, value in model.state_dict().items()}, path)
    assert_same_tensors(load_model("nano", checkpoint=path).state_dict(), model.state_dict())


def test_legacy_torch_format(tmp_path: Path) -> None:
    model = nano_model()
    path = tmp_path / "legacy.pth"
    torch.save({"model": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    assert_same_tensors(load_model("nano", checkpoint=path).state_dict(), model.state_dict())


def test_rename_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nano_model()
    weights = model.state_dict()
    weights["old_name_of_no_mem_embed"] = weights.pop("no_mem_embed")
    path = tmp_path / "renamed.pt"
    torch.save({"model": weights}, path)
    with pytest.raises(CheckpointError, match="old_name_of_no_mem_embed"):
        load_model("nano", checkpoint=path)
    monkeypatch.setitem(checkpoint_module.KEY_RENAMES, "old_name_of_no_mem_embed", "no_mem_embed")
    assert_same_tensors(load_model("nano", checkpoint=path).state_dict(), model.state_dict())


def test_load_model_device_dtype_eval(nano_file: tuple[SAM2Model, Path]) -> None:
    model, path = nano_file
    loaded = load_model("nano", checkpoint=path, dtype=torch.bfloat16)
    assert not loaded.training
    assert {parameter.dtype for parameter in loaded.parameters()} == {torch.bfloat16}
    assert loaded.device == torch.device("cpu")
    assert torch.equal(loaded.no_mem_embed.float(), model.no_mem_embed.to(torch.bfloat16).float())
    with pytest.raises(ValueError, match="floating"):
        load_model("nano", checkpoint=path, dtype=torch.int64)
    mixed = load_model("nano", checkpoint=path, dtype="mixed")  # fp32, memory attention in bf16
    assert {p.dtype for p in mixed.memory_attention.parameters()} == {torch.bfloat16}
    others = [p for name, p in mixed.named_parameters() if not name.startswith("memory_attention.")]
    assert {p.dtype for p in others} == {torch.float32} and mixed.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        load_model("nano", checkpoint=path, dtype="fp16")
    from surgsam2.cli import build_parser
    from surgsam2.model.sam2 import PRECISIONS

    segment = build_parser()._subparsers._group_actions[0].choices["segment"]  # the commands' --dtype choices
    assert next(a for a in segment._actions if a.dest == "dtype").choices == PRECISIONS


def test_load_model_random_init_without_checkpoint() -> None:
    model = load_model("nano")
    assert not model.training and model.image_size == 256
    with pytest.raises(ValueError, match="unknown model"):
        load_model("sam3_hiera_t")


def test_image_size_from_metadata_or_argument(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = SAM2Model(get_config("nano", image_size=320))
    path = save_checkpoint(trained, tmp_path / "nano320.safetensors")
    assert load_model("nano", checkpoint=path).image_size == 320
    resized = load_model("nano", checkpoint=path, image_size=384)
    assert resized.image_size == 384
    assert_same_tensors(resized.state_dict(), trained.state_dict())
    with torch.no_grad():  # the trunk's position embedding follows the input size
        features = resized.encode_image(torch.zeros(1, 3, 384, 384))
    assert features.embedding.shape[-2:] == (24, 24)


def test_image_size_bounds_and_step() -> None:
    """Sizes 64..4096 in steps of 32 are accepted (checked before a model is built), others not."""
    assert [image_size_multiple(config) for config in MODEL_CONFIGS.values()] == [32] * len(MODEL_CONFIGS)
    for size in (64, 96, 1024, 4096):
        assert get_config("sam2.1_hiera_l", size).image_size == size
    for size in (0, 32, 48, 4128, 2**20, -64, 512.0, "512", True):
        with pytest.raises(ValueError, match="image_size must be"):
            check_image_size(size)
    with pytest.raises(ValueError, match="image_size must be"):
        get_config("nano").replace(image_size=100)  # every config checks its own size


def test_half_precision_checkpoint_loads_and_nan_safetensors_is_refused(tmp_path: Path) -> None:
    """Only non-floating tensors are refused: an fp16 or bf16 file loads (cast to the model's dtype)."""
    model = nano_model()
    for dtype in (torch.float16, torch.bfloat16):
        path = tmp_path / f"{dtype}.pt".replace("torch.", "")
        torch.save({"model": {key: value.to(dtype) for key, value in model.state_dict().items()}}, path)
        loaded = load_model("nano", checkpoint=path)
        assert loaded.no_mem_embed.dtype == torch.float32
        assert torch.equal(loaded.no_mem_embed, model.no_mem_embed.to(dtype).float())
    with torch.no_grad():
        model.maskmem_tpos_enc[0, 0, 0, 1] = float("-inf")
    path = save_checkpoint(model, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: 1 tensors hold NaN or infinite values \(maskmem"):
        read_checkpoint(path)


def test_save_rejects_bad_metadata_and_leaves_nothing(tmp_path: Path) -> None:
    model = nano_model()
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(model, tmp_path / "bad.pt", extra={"tensor": torch.zeros(1)})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(model, tmp_path / "bad.pt", extra={"image_size": 3})
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(nano_model(seed=1), path)
    second = nano_model(seed=2)
    save_checkpoint(second, path)
    assert_same_tensors(read_checkpoint(path).state_dict, second.state_dict())
    assert [entry.name for entry in tmp_path.iterdir()] == ["model.pt"]


# ------------------------------------------------------------------------------------------
# Interoperability with the official code
# ------------------------------------------------------------------------------------------
def test_official_checkpoint_loads_into_ours(official_tiny: OfficialTiny) -> None:
    ours = load_model("sam2.1_hiera_t", checkpoint=official_tiny.path, image_size=512)
    assert ours.image_size == 512
    assert_same_tensors(ours.state_dict(), official_tiny.state_dict)


def test_official_checkpoint_at_1024_and_ours_into_official(official_tiny: OfficialTiny, tmp_path: Path) -> None:
    from sam2.build_sam import _load_checkpoint

    # Official checkpoints hold no image size: the same file loads at 1024 as at 512.
    ours = load_model("sam2.1_hiera_t", checkpoint=official_tiny.path, image_size=1024)
    assert ours.image_size == 1024
    assert_same_tensors(ours.state_dict(), official_tiny.state_dict)

    # Our file, with other weights than the official model's, loads in the official loader
    # (which reads ["model"] only and is strict).
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.add_(1.0)
    path = save_checkpoint(ours, tmp_path / "ours.pt", extra={"step": 1})
    _load_checkpoint(official_tiny.model, path)
    assert_same_tensors(official_tiny.model.state_dict(), ours.state_dict())


# ------------------------------------------------------------------------------------------
# Weights that do not fit
# ------------------------------------------------------------------------------------------
def test_missing_key(tmp_path: Path) -> None:
    weights = nano_model().state_dict()
    del weights["sam_mask_decoder.iou_token.weight"]
    path = tmp_path / "missing_key.pt"
    torch.save({"model": weights}, path)
    with pytest.raises(CheckpointError, match="1 missing keys") as error:
        load_model("nano", checkpoint=path)
    assert str(path) in str(error.value) and "sam_mask_decoder.iou_token.weight" in str(error.value)


def test_unexpected_key(tmp_path: Path) -> None:
    weights = nano_model().state_dict()
    weights["extra_head.weight"] = torch.zeros(2)
    path = tmp_path / "extra_key.pt"
    torch.save({"model": weights}, path)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(extra_head.weight\)"):
        load_model("nano", checkpoint=path)


def test_wrong_shape(tmp_path: Path) -> None:
    weights = nano_model().state_dict()
    weights["no_obj_ptr"] = torch.zeros(1, 64)
    path = tmp_path / "wrong_shape.pt"
    torch.save({"model": weights}, path)
    with pytest.raises(CheckpointError, match=r"no_obj_ptr: checkpoint \(1, 64\) vs model \(1, 128\)"):
        load_model("nano", checkpoint=path)


def test_many_missing_keys_are_counted_not_all_listed() -> None:
    with pytest.raises(CheckpointError) as error:
        check_state_dict({"no_mem_embed": torch.zeros(1, 1, 128)}, meta_model("nano"), "few.pt")
    message = str(error.value)
    assert "few.pt" in message and "more)" in message and len(message) < 1000


def test_wrong_size_hints_config(official_tiny: OfficialTiny) -> None:
    with pytest.raises(CheckpointError) as error:
        load_model("sam2.1_hiera_s", checkpoint=official_tiny.path)
    message = str(error.value)
    assert str(official_tiny.path) in message and "'sam2.1_hiera_s'" in message
    assert "looks like 'sam2.1_hiera_t'" in message and "missing keys" in message


def test_large_checkpoint_as_small_hints_config() -> None:
    with pytest.raises(CheckpointError, match=r"shape mismatches.*looks like 'sam2.1_hiera_l' \(trunk width 144, 48"):
        check_state_dict(meta_model("sam2.1_hiera_l").state_dict(), meta_model("sam2.1_hiera_s"), "l.pt")


def test_sam2_1_checkpoint_as_sam2_hints_config(official_tiny: OfficialTiny) -> None:
    with pytest.raises(CheckpointError) as error:
        check_state_dict(official_tiny.state_dict, meta_model("sam2_hiera_t"), official_tiny.path)
    message = str(error.value)
    assert "unexpected keys" in message and "no_obj_embed_spatial" in message
    assert "obj_ptr_tpos_proj.weight" in message and "looks like 'sam2.1_hiera_t'" in message


def test_sam2_checkpoint_as_sam2_1_hints_config() -> None:
    with pytest.raises(CheckpointError) as error:
        check_state_dict(meta_model("sam2_hiera_s").state_dict(), meta_model("sam2.1_hiera_s"), "s.pt")
    message = str(error.value)
    assert "3 missing keys" in message and "no_obj_embed_spatial" in message
    assert "looks like 'sam2_hiera_s'" in message and "SAM 2.0 layout" in message


def test_load_weights_into_existing_model(nano_file: tuple[SAM2Model, Path]) -> None:
    model, path = nano_file
    other = nano_model(seed=5)
    assert load_weights(other, path).metadata["config"] == "nano"
    assert_same_tensors(other.state_dict(), model.state_dict())


# ------------------------------------------------------------------------------------------
# Files that are not checkpoints
# ------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_model("nano", checkpoint=path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(nano_file: tuple[SAM2Model, Path], tmp_path: Path, suffix: str) -> None:
    model, _ = nano_file
    full = save_checkpoint(model, tmp_path / f"full{suffix}")
    data = full.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    for length in (len(data) // 2, len(data) - 1):
        truncated.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match=r"truncated\.\S+: not a readable .*truncated or corrupt"):
            read_checkpoint(truncated)


def test_truncated_legacy_file(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(nano_model().state_dict(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    for length in (20, 5000, len(data) // 2):
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match="legacy.pth: not a readable PyTorch checkpoint"):
            read_checkpoint(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"model weights go here\n", "looks like a text file"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200), "JPEG image"),
        (b"", "empty"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"model.pt: not a checkpoint .*{problem}"):
        load_model("nano", checkpoint=path)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_arbitrary_objects_are_never_unpickled(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "malicious.pt"
    payload = {"model": {"no_mem_embed": _Canary()}}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(CheckpointError, match="malicious.pt: refused to load.*weights_only=True"):
        read_checkpoint(path)
    assert _unpickled == []


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"epoch": 3, "optimizer": {}}, "no model weights found.*top-level keys: epoch, optimizer"),
        ([torch.zeros(1)], "found a list"),
        ({"model": {"no_mem_embed": 1.0}}, "not tensors: no_mem_embed"),
        ({"model": {}}, "empty"),
    ],
)
def test_no_state_dict_inside(tmp_path: Path, content: object, problem: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=rf"odd.pt: .*{problem}"):
        read_checkpoint(path)
