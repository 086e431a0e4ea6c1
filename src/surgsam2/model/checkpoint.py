"""Load and save SAM 2 / 2.1 and Surgical SAM 2 checkpoints; build a model with `load_model`.

File layouts read:
- official SAM 2 / 2.1 ``.pt``: ``{"model": state_dict}`` (extra top-level keys are ignored);
- Surgical SAM 2 ``.pth``: the same, or a bare state dict;
- ``.safetensors`` (any suffix: the format is recognised from the file's content).
PyTorch files are always read with ``weights_only=True``: no arbitrary object is ever unpickled.

Keys of `SAM2Model` equal the official checkpoint keys 1:1. The only tolerated differences are a
wrapper prefix (``module.`` from DDP, ``_orig_mod.`` from ``torch.compile``) and the explicit
`KEY_RENAMES` table. Missing or unexpected keys and shape mismatches raise `CheckpointError`
naming the file, the keys and, when it can tell, which named config the checkpoint looks like.

Files written by `save_checkpoint` keep the official layout (``{"model": state_dict}`` plus our
metadata under ``"surgsam2"``, which the official loader ignores), so they load in the official code.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgsam2.data.outputs import atomic_file
from surgsam2.model.configs import MODEL_CONFIGS, SAM2Config, check_image_size, get_config
from surgsam2.model.sam2 import SAM2Model

# Checkpoint key -> our key, for checkpoints whose names differ from the official ones.
# Empty: the official SAM 2 / 2.1 and Surgical SAM 2 checkpoints use our names exactly.
KEY_RENAMES: dict[str, str] = {}

# Prefixes added by wrappers around the model (DDP, torch.compile); stripped when every key has one.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

# Model weights within an official-layout file, and our metadata next to them.
MODEL_KEY = "model"
METADATA_KEY = "surgsam2"
METADATA_FORMAT_VERSION = 1
_RESERVED_METADATA = ("format_version", "config", "image_size")

# Packaged default weights: config name -> file name in the package's `weights/` folder.
# `nano`: trained from scratch by `surgsam2 train --config configs/train/nano_synthetic.yaml` on
# synthetic surgical video (see README, "The shipped model"). Other configs keep the random init
# unless a checkpoint is given (official weights cannot ship here).
PACKAGED_WEIGHTS: dict[str, str] = {"nano": "nano_synthetic.pt"}

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2_PLUS = b"\x80"
_MAX_LISTED_KEYS = 5


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


@dataclass
class Checkpoint:
    """The weights of a checkpoint file (our key names) and the metadata stored with them."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Packaged defaults and config inference
# ------------------------------------------------------------------------------------------
def default_checkpoint(name: str) -> Path | None:
    """The packaged default weights of config ``name`` (only ``nano`` has some), or None."""
    file_name = PACKAGED_WEIGHTS.get(name)
    if file_name is None:
        return None
    from importlib import resources

    path = Path(str(resources.files("surgsam2") / "weights" / file_name))
    return path if path.is_file() else None


@dataclass(frozen=True)
class _Signature:
    """The sizes that tell named configs apart, readable from a config or a state dict."""

    trunk_width: int
    trunk_blocks: int
    hidden_dim: int
    mem_dim: int
    sam2_1_layout: bool  # has `no_obj_embed_spatial` and a projected pointer temporal encoding

    def describe(self) -> str:
        family = "SAM 2.1 layout" if self.sam2_1_layout else "SAM 2.0 layout"
        return (
            f"trunk width {self.trunk_width}, {self.trunk_blocks} trunk blocks, "
            f"hidden dim {self.hidden_dim}, memory dim {self.mem_dim}, {family}"
        )


def _config_signature(config: SAM2Config) -> _Signature:
    """The signature a model built from ``config`` has."""
    return _Signature(
        trunk_width=config.trunk.embed_dim,
        trunk_blocks=sum(config.trunk.stages),
        hidden_dim=config.hidden_dim,
        mem_dim=config.memory_encoder.mem_dim,
        sam2_1_layout=config.no_obj_embed_spatial and config.proj_tpos_enc_in_obj_ptrs,
    )


def _state_dict_signature(state_dict: Mapping[str, Any]) -> _Signature | None:
    """The signature of a state dict (our key names), or None if it lacks the telling keys."""
    try:
        trunk_width = state_dict["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
        hidden_dim = state_dict["no_mem_embed"].shape[-1]
        mem_dim = state_dict["maskmem_tpos_enc"].shape[-1]
    except (KeyError, AttributeError, IndexError):
        return None
    prefix = "image_encoder.trunk.blocks."
    block_ids = {key[len(prefix):].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}
    sam2_1_layout = "no_obj_embed_spatial" in state_dict and "obj_ptr_tpos_proj.weight" in state_dict
    return _Signature(int(trunk_width), len(block_ids), int(hidden_dim), int(mem_dim), sam2_1_layout)


def infer_config_name(state_dict: Mapping[str, Any]) -> str | None:
    """The named config a state dict (our key names) was made for, or None if not exactly one fits."""
    signature = _state_dict_signature(state_dict)
    if signature is None:
        return None
    matches = [name for name, config in MODEL_CONFIGS.items() if _config_signature(config) == signature]
    return matches[0] if len(matches) == 1 else None


# ------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------
def _describe_content(head: bytes) -> str:
    """A short guess at what a file that is not a checkpoint is, from its first bytes."""
    if not head:
        return "the file is empty"
    if head.startswith(b"\xff\xd8\xff"):
        return "it is a JPEG image"
    if head.startswith(b"\x89PNG"):
        return "it is a PNG image"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed"
    for cut in range(4):  # the first bytes may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "\x00" not in text:
            return "it looks like a text file"
        break
    return f"it starts with {head[:8]!r}"


def _looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= file_size - 8 and head[8:9] == b"{"


def _first_line(error: BaseException) -> str:
    """One line of an exception's message, preferring the informative one in torch's long errors."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            detail = line[line.index("WeightsUnpickler error"):]
            if detail.rstrip().endswith(":") and index + 1 < len(lines):
                detail = f"{detail} {lines[index + 1]}"
            return _first_sentence(detail)
    return _first_sentence(lines[0]) if lines else ""


def _first_sentence(text: str, limit: int = 200) -> str:
    """``text`` cut after its first sentence when it is long."""
    if len(text) <= limit or ". " not in text:
        return text
    return text[: text.index(". ") + 1]


# Phrases of torch's weights-only unpickler when it refuses a pickled object (torch 2.4 .. 2.13:
# the wrapper's text and the inner reason have both been reworded between versions).
_REFUSAL_MARKERS = (
    "Weights only load failed",
    "WeightsUnpickler error",
    "Unsupported global",
    "unsupported GLOBAL",
    "Unsupported operand",
    "Unsupported class",
)


def _weights_only_refusal(error: BaseException) -> str | None:
    """The reason torch's weights-only unpickler refused a file, or None for any other error.

    A refusal is a `pickle.UnpicklingError` (truncated files end in EOFError, struct or
    RuntimeError instead) or names the unpickler; torch re-raises it with a long advice text and
    keeps the short reason as the exception's context.
    """
    text = str(error)
    if not (isinstance(error, pickle.UnpicklingError) or any(marker in text for marker in _REFUSAL_MARKERS)):
        return None
    inner = error.__cause__ or error.__context__
    if isinstance(inner, pickle.UnpicklingError) and str(inner).strip():
        return _first_sentence(str(inner).strip().splitlines()[0])
    return _first_line(error) or type(error).__name__


def _read_torch_file(path: Path, is_zip: bool, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True``; errors become one-line `CheckpointError`s."""
    try:
        with warnings.catch_warnings():
            # Raised for pickles of protocol > 2, which then fail (or not) with their own error.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # Memory-mapping the zip format avoids a second copy of large checkpoints in RAM.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except MemoryError:
        raise
    except Exception as error:
        reason = _weights_only_refusal(error)
        if reason is not None:
            raise CheckpointError(
                f"{path}: refused to load as unsafe: the file holds pickled Python objects other than "
                f"tensors and plain containers, and checkpoints are read with weights_only=True ({reason})"
            ) from error
        raise CheckpointError(
            f"{path}: not a readable PyTorch {what} (truncated or corrupt?): "
            + ": ".join(filter(None, [type(error).__name__, _first_line(error)]))
        ) from error


def _read_safetensors_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and our metadata (JSON under the ``surgsam2`` metadata entry) of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw_metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): "
            + (_first_line(error) or type(error).__name__)
        ) from error
    metadata: dict[str, Any] = {}
    if METADATA_KEY in raw_metadata:
        try:
            metadata = json.loads(raw_metadata[METADATA_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: corrupt {METADATA_KEY!r} metadata: {error}") from error
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: corrupt {METADATA_KEY!r} metadata: not a JSON object")
    return tensors, metadata


def _list_keys(keys: list[str]) -> str:
    """The first few keys, and how many more there are."""
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _extract_state_dict(loaded: Any, path: Path) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The weights and our metadata inside a loaded PyTorch file: official layout or bare state dict."""
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path}: not a checkpoint: expected {{'model': state_dict}} or a state dict, "
            f"found a {type(loaded).__name__}"
        )
    if isinstance(loaded.get(MODEL_KEY), Mapping):
        metadata = loaded.get(METADATA_KEY)
        return loaded[MODEL_KEY], dict(metadata) if isinstance(metadata, Mapping) else {}
    if loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return loaded, {}
    raise CheckpointError(
        f"{path}: no model weights found: expected {{'model': state_dict}} or a bare state dict; "
        f"top-level keys: {_list_keys([str(key) for key in loaded]) or 'none'}"
    )


def _normalise_keys(state_dict: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """Check the entries are named tensors, strip wrapper prefixes, apply `KEY_RENAMES`."""
    if not state_dict:
        raise CheckpointError(f"{path}: the state dict is empty")
    not_str = [repr(key) for key in state_dict if not isinstance(key, str)]
    if not_str:
        raise CheckpointError(f"{path}: state dict keys must be strings, found {_list_keys(not_str)}")
    not_tensor = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensor:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {_list_keys(not_tensor)}")
    keys = list(state_dict)
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in keys):
                keys = [key[len(prefix):] for key in keys]
                stripped = True
    renamed: dict[str, torch.Tensor] = {}
    for original, key in zip(state_dict, keys):
        renamed[KEY_RENAMES.get(key, key)] = state_dict[original]
    if len(renamed) != len(state_dict):
        raise CheckpointError(f"{path}: several checkpoint keys map to the same model key")
    return renamed


def _read_head(path: Path, what: str) -> bytes:
    """The first bytes of an existing regular file; a one-line error for a missing path or a folder."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a {what} file")
    with open(path, "rb") as handle:
        return handle.read(16)


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """The content of a PyTorch file (zip or legacy format), read on CPU with ``weights_only=True``.

    For files that are not model weights (e.g. trainer states): the same guards and one-line
    `CheckpointError`s as `read_checkpoint`; ``what`` names the kind of file in the messages.
    """
    path = Path(path)
    head = _read_head(path, what)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTOCOL_2_PLUS)):
        raise CheckpointError(f"{path}: not a PyTorch {what} file: {_describe_content(head)}")
    return _read_torch_file(path, is_zip=head.startswith(_ZIP_MAGIC), what=what)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read the weights (renamed to our keys) and metadata of a checkpoint file, on CPU."""
    path = Path(path)
    head = _read_head(path, "checkpoint")
    file_size = path.stat().st_size
    # safetensors before raw pickle: a safetensors header length may begin with the byte 0x80.
    if head.startswith(_ZIP_MAGIC):
        state_dict, metadata = _extract_state_dict(_read_torch_file(path, is_zip=True), path)
    elif _looks_like_safetensors(head, file_size):
        state_dict, metadata = _read_safetensors_file(path)
    elif head.startswith(_PICKLE_PROTOCOL_2_PLUS):  # the legacy (pre-1.6) PyTorch format
        state_dict, metadata = _extract_state_dict(_read_torch_file(path, is_zip=False), path)
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint (neither a PyTorch file nor safetensors): {_describe_content(head)}"
        )
    tensors = _normalise_keys(state_dict, path)
    _check_finite(tensors, path)
    return Checkpoint(path=path, state_dict=tensors, metadata=metadata)


def _check_finite(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity: the model would run and predict nothing."""
    bad = [
        key for key, value in state_dict.items()
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all())
    ]  # fmt: skip
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or infinite values ({_list_keys(bad)}): "
            "the file is corrupt or comes from a diverged training"
        )


# ------------------------------------------------------------------------------------------
# Checking and loading weights into a model
# ------------------------------------------------------------------------------------------
def check_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str | Path) -> None:
    """Raise `CheckpointError` unless ``state_dict`` has exactly the model's keys and shapes, and
    floating-point tensors where the model has floating-point ones.

    Only shapes and dtypes are compared, so ``model`` may live on the meta device.
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {expected[key]}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != expected[key]
    ]
    if not (missing or unexpected or wrong_shape):
        _check_dtypes(state_dict, model, source)
        return
    config: SAM2Config | None = getattr(model, "config", None)
    model_name = f"model {config.name!r}" if config is not None else "the model"
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_list_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_list_keys(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches ({_list_keys(wrong_shape)})")
    message = f"{source}: checkpoint does not fit {model_name}: " + "; ".join(problems)
    signature = _state_dict_signature(state_dict)
    if signature is not None and (config is None or signature != _config_signature(config)):
        guess = infer_config_name(state_dict)
        if guess is not None:
            message += f". The checkpoint looks like {guess!r} ({signature.describe()}): load it as {guess!r}"
        else:
            message += f". The checkpoint matches no named config ({signature.describe()})"
    raise CheckpointError(message)


def _check_dtypes(state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str | Path) -> None:
    """Refuse integer or boolean tensors where the model has floating-point weights or buffers.

    Loading would silently cast them (an all-int64 file of truncated weights runs and predicts
    nothing); floating tensors of another precision are fine and cast on load.
    """
    wrong = [
        f"{key} ({state_dict[key].dtype})".replace("torch.", "")
        for key, value in model.state_dict().items()
        if value.is_floating_point() and key in state_dict and not state_dict[key].is_floating_point()
    ]
    if wrong:
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors are not floating point where the model's weights are "
            f"({_list_keys(wrong)}): not a weights file of this model"
        )


def load_weights(model: nn.Module, checkpoint: str | Path) -> Checkpoint:
    """Load a checkpoint file into ``model`` (strict: every key and shape must match).

    Returns the checkpoint read (its tensors stay on CPU); the model keeps its device and dtype.
    """
    loaded = read_checkpoint(checkpoint)
    check_state_dict(loaded.state_dict, model, loaded.path)
    model.load_state_dict(loaded.state_dict, strict=True)
    return loaded


def _config_at_stored_size(config: SAM2Config, loaded: Checkpoint) -> SAM2Config:
    """``config`` at the image size stored in the checkpoint's metadata, if any (checked first)."""
    stored_size = loaded.metadata.get("image_size")
    if stored_size is None:
        return config
    try:
        return config.replace(image_size=check_image_size(stored_size, config))
    except ValueError as error:
        raise CheckpointError(f"{loaded.path}: metadata {error}") from None


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> SAM2Model:
    """Build the named SAM 2 model, load its weights, return it in eval mode on ``device``/``dtype``.

    ``dtype``: a torch dtype, or a precision name of `SAM2Model.to_precision` ("fp32", "bf16",
    "mixed": fp32 with memory attention in bf16).

    ``checkpoint``: an official SAM 2 / 2.1 ``.pt``, a Surgical SAM 2 ``.pth``, a ``.safetensors``
    or a file written by `save_checkpoint`. With None, the packaged default weights of ``name`` are
    used (`default_checkpoint`: ``nano`` ships trained weights); other configs then KEEP THEIR
    RANDOM INITIALISATION.
    ``image_size``: input side (`check_image_size`: a multiple of 32 in 64..4096); None means the
    size stored by `save_checkpoint` in the file's metadata if any (checked the same way), else
    the config's default (1024 official, 256 nano). Official checkpoints hold no image size: the
    trunk's position embedding is interpolated to any size.
    """
    if isinstance(dtype, str):
        if dtype not in SAM2Model.PRECISIONS:
            raise ValueError(f"unknown precision {dtype!r}; choose one of {', '.join(SAM2Model.PRECISIONS)}")
    elif not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    config = get_config(name, image_size)  # a bad name or size fails before any file is read
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(name)
    loaded = read_checkpoint(path) if path is not None else None
    if image_size is None and loaded is not None:
        config = _config_at_stored_size(config, loaded)
    model = SAM2Model(config)
    if loaded is not None:
        check_state_dict(loaded.state_dict, model, loaded.path)
        model.load_state_dict(loaded.state_dict, strict=True)
        del loaded
    model = model.to(device=torch.device(device))
    model = model.to_precision(dtype) if isinstance(dtype, str) else model.to(dtype=dtype)
    return model.eval()


# ------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------
def _metadata_for(model: nn.Module, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Our JSON-serialisable metadata: format version, config name, image size, plus ``extra``."""
    metadata: dict[str, Any] = {"format_version": METADATA_FORMAT_VERSION}
    config: SAM2Config | None = getattr(model, "config", None)
    if config is not None:
        metadata["config"] = config.name
        metadata["image_size"] = config.image_size
    if extra:
        clashes = [key for key in extra if key in _RESERVED_METADATA]
        if clashes:
            raise ValueError(f"extra metadata may not set the reserved keys {clashes}")
        metadata.update(extra)
    try:
        # A round trip through JSON also turns tuples into lists, as every reader will see them.
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {error}") from error


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors on CPU, contiguous, none sharing storage (as safetensors requires)."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return tensors


def save_checkpoint(model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the model's weights atomically, in the official layout so the official code loads them.

    ``.safetensors`` paths get a safetensors file (metadata as a JSON string); anything else a
    PyTorch file ``{"model": state_dict, "surgsam2": metadata}``. ``extra``: JSON-serialisable
    metadata stored alongside (e.g. training step); returns the path written.
    """
    path = Path(path)
    metadata = _metadata_for(model, extra)
    tensors = _cpu_state_dict(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(temporary), metadata={"format": "pt", METADATA_KEY: json.dumps(metadata)})
        else:
            with open(temporary, "wb") as handle:
                torch.save({MODEL_KEY: tensors, METADATA_KEY: metadata}, handle)
    return path
