"""Training-run configuration: typed dataclasses loaded from YAML (`configs/train/*.yaml`).

A YAML file has one mapping per section (``model``, ``data``, ``augment``, ``prompts``, ``loss``,
``optim``, ``train``); every key is optional and defaults to SAM 2's training settings (the
published SurgSAM2 EndoVis18 values, except where SAM 2's own default is noted). An
unknown key, a wrong type or a bad value is a `ConfigError` naming the key (``optim.lr``), so a
typo never silently falls back to a default. `--set section.key=value` overrides use the same
checks (the value is parsed as YAML: ``1e-4``, ``true``, ``[a, b]``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from surgsam2.memory.policies import policy_names
from surgsam2.model.configs import check_image_size


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the offending key."""


@dataclass
class ModelSection:
    """Which network to train and how it starts."""

    name: str = "sam2.1_hiera_s"  # a named config of surgsam2.model.configs
    image_size: int = 512  # square input side (multiple of 32)
    init_checkpoint: str | None = None  # official/our checkpoint to start from; None: random init
    drop_path_rate: float = 0.0  # stochastic depth in the Hiera trunk during training
    train_memory_policy: str = "fifo"  # fifo (the published recipe) | efp | xefp (prune while training)
    num_frame_to_prune: int = 2  # EFP's P when train_memory_policy is efp
    # Probability, per object and tracked frame, that the decoder gets no high-resolution skip
    # features, so its mask must come from the memory-conditioned embedding (not in SAM 2: for
    # training from scratch, where the skip features let the decoder ignore the memory).
    high_res_dropout: float = 0.0


@dataclass
class DataSection:
    """Clips sampled from VOS-layout dataset roots (see surgsam2.train.dataset)."""

    roots: list[str] = field(default_factory=list)  # one or more dataset roots
    num_frames: int = 8  # frames per clip
    frame_stride: int = 1  # take every k-th frame of the video
    max_objects: int = 3  # objects per clip, chosen among those visible on its first frame
    multiplier: int = 1  # repeats of the video list per epoch
    frames_sampling_mult: bool = True  # SAM 2: each video appears once per frame it has, per epoch
    used_object_ids: list[int] | None = None  # only these object ids are trained on (None: all)
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class AugmentSection:
    """Clip-consistent geometry and colour, plus per-frame colour jitter (surgsam2.train.augment)."""

    hflip_prob: float = 0.5
    degrees: float = 25.0  # rotation range +-degrees
    shear: float = 20.0  # x-shear range +-degrees
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # zoom range (scale jitter)
    translate: float = 0.0  # max shift as a fraction of the side
    affine_tries: int = 1  # redraws when the affine pushes a first-frame object out of view
    brightness: float = 0.1
    contrast: float = 0.03
    saturation: float = 0.03
    grayscale_prob: float = 0.05
    frame_brightness: float = 0.1  # per-frame jitter
    frame_contrast: float = 0.05
    frame_saturation: float = 0.05


@dataclass
class PromptSection:
    """Prompt simulation (SAM 2's SAM2Train settings; surgsam2.train.prompts)."""

    prob_points: float = 0.5  # else a mask prompt on the initial conditioning frames
    prob_box: float = 0.5  # box instead of clicks, given a point prompt
    max_initial_points: int = 1  # 1..n positive clicks (drawn per batch) when not a box
    box_noise: float = 0.1  # corner noise as a fraction of the box size ...
    box_noise_bound: float = 20.0  # ... capped at this many pixels
    num_init_cond_frames: int = 1  # prompted frames: the first, plus random ones (up to n)
    rand_init_cond_frames: bool = True  # draw 1..n initial conditioning frames
    num_frames_to_correct: int = 2  # frames that get clicks (initial ones first); SurgSAM2 used 1
    rand_frames_to_correct: bool = True  # draw the count in [num_init_cond_frames, n]
    num_correction_points: int = 7  # iterative corrective clicks per corrected frame
    prob_sample_from_gt: float = 0.1  # a click drawn from the ground truth instead of the error
    click_method: str = "uniform"  # uniform (SAM 2 training) | center (farthest from the boundary)


@dataclass
class LossSection:
    """SAM 2's MultiStepMultiMasksAndIous weights (surgsam2.train.losses)."""

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    class_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    supervise_all_iou: bool = True
    # "l1": SAM 2's |predicted - actual| on the sigmoid IoU; "bce": cross-entropy of the IoU
    # logit against the actual IoU (same optimum, but its gradient does not vanish when the
    # sigmoid saturates, which stalls the IoU head of a model trained from scratch).
    iou_loss: str = "l1"


@dataclass
class OptimSection:
    """AdamW with trunk layer-wise lr decay, cosine schedule with warm-up, gradient clipping."""

    lr: float = 5e-5
    trunk_lr: float | None = None  # SAM 2's vision_lr for image_encoder.* (None: lr)
    layer_decay: float = 0.9  # per Hiera block depth
    pos_embed_lr_scale: float = 1.0  # trunk position embeddings (SAM 2's override)
    weight_decay: float = 0.1  # 0 on biases, norms and position embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0
    final_lr_ratio: float = 0.1  # cosine to lr * this
    grad_clip: float = 0.1  # max global gradient norm (0: off)


@dataclass
class RunSection:
    """Batching, length, precision, seeding, checkpointing and logging."""

    batch_size: int = 4  # clips per process and step
    epochs: int = 30
    max_steps: int | None = None  # total optimizer steps (overrides epochs)
    amp: str = field(default="bf16", metadata={"yaml_false": "off"})  # bf16 | off (YAML reads off as false)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 2024
    out_dir: str = "runs/train"
    checkpoint_every: int = 500  # steps; the last step is always saved
    keep_checkpoints: int = 3  # newest checkpoints kept (0: all)
    log_every: int = 1  # steps between metric-log lines
    progress: bool = True  # tqdm progress bar on rank 0
    num_threads: int = 0  # torch CPU threads per process (0: torch's default)


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    prompts: PromptSection = field(default_factory=PromptSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check values beyond their types; raise ConfigError naming the key."""
        self._check_finite_numbers()
        try:
            check_image_size(self.model.image_size)
        except ValueError as error:
            raise ConfigError(f"model.{error}") from None
        checks: list[tuple[bool, str]] = [
            (self.model.train_memory_policy in policy_names(),
             "model.train_memory_policy must be one of " + ", ".join(policy_names())),
            (self.model.num_frame_to_prune >= 0, "model.num_frame_to_prune must be >= 0"),
            (0.0 <= self.model.drop_path_rate < 1.0, "model.drop_path_rate must be in [0, 1)"),
            (0.0 <= self.model.high_res_dropout < 1.0, "model.high_res_dropout must be in [0, 1)"),
            (self.data.num_frames >= 1, "data.num_frames must be >= 1"),
            (self.data.frame_stride >= 1, "data.frame_stride must be >= 1"),
            (self.data.max_objects >= 1, "data.max_objects must be >= 1"),
            (self.data.multiplier >= 1, "data.multiplier must be >= 1"),
            (self.data.num_workers >= 0, "data.num_workers must be >= 0"),
            (len(self.augment.scale) == 2 and 0 < self.augment.scale[0] <= self.augment.scale[1],
             "augment.scale must be [min, max] with 0 < min <= max"),
            (self.augment.affine_tries >= 1, "augment.affine_tries must be >= 1"),
            (self.loss.iou_loss in ("l1", "bce"), "loss.iou_loss must be l1 or bce"),
            (self.prompts.click_method in ("uniform", "center"), "prompts.click_method must be uniform or center"),
            (self.prompts.max_initial_points >= 1, "prompts.max_initial_points must be >= 1"),
            (self.prompts.num_init_cond_frames >= 1, "prompts.num_init_cond_frames must be >= 1"),
            (self.prompts.num_frames_to_correct >= 0, "prompts.num_frames_to_correct must be >= 0"),
            (self.prompts.num_correction_points >= 0, "prompts.num_correction_points must be >= 0"),
            (len(self.optim.betas) == 2 and all(0.0 <= beta < 1.0 for beta in self.optim.betas),
             "optim.betas must be [beta1, beta2], each in [0, 1)"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.trunk_lr is None or self.optim.trunk_lr > 0, "optim.trunk_lr must be > 0 (or null: lr)"),
            (self.optim.layer_decay > 0, "optim.layer_decay must be > 0"),
            (self.optim.pos_embed_lr_scale >= 0, "optim.pos_embed_lr_scale must be >= 0"),
            (self.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
            (self.optim.eps > 0, "optim.eps must be > 0"),
            (self.optim.final_lr_ratio >= 0, "optim.final_lr_ratio must be >= 0"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (self.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 turns clipping off)"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (self.train.max_steps is None or self.train.max_steps >= 1, "train.max_steps must be >= 1"),
            (self.train.amp in ("bf16", "off"), "train.amp must be bf16 or off"),
            (self.train.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda"),
            (self.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
            (self.train.keep_checkpoints >= 0, "train.keep_checkpoints must be >= 0"),
            (self.train.log_every >= 1, "train.log_every must be >= 1"),
            (self.train.num_threads >= 0, "train.num_threads must be >= 0 (0: torch's default)"),
        ]
        for probability_key in ("prob_points", "prob_box", "prob_sample_from_gt"):
            value = getattr(self.prompts, probability_key)
            checks.append((0.0 <= value <= 1.0, f"prompts.{probability_key} must be in [0, 1]"))
        for weight_key in ("focal_weight", "dice_weight", "iou_weight", "class_weight", "focal_gamma"):
            checks.append((getattr(self.loss, weight_key) >= 0, f"loss.{weight_key} must be >= 0"))
        for probability_key in ("hflip_prob", "grayscale_prob"):
            value = getattr(self.augment, probability_key)
            checks.append((0.0 <= value <= 1.0, f"augment.{probability_key} must be in [0, 1]"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if not self.data.roots:
            raise ConfigError("data.roots is empty: give one or more VOS dataset folders")

    def _check_finite_numbers(self) -> None:
        """Refuse NaN and infinity in every number of every section (``optim.lr=.inf`` in YAML)."""
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            for item in dataclasses.fields(values):
                value = getattr(values, item.name)
                numbers = value if isinstance(value, list) else [value]
                if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
                    raise ConfigError(f"{section.name}.{item.name} must be a finite number, got {value!r}")


# ------------------------------------------------------------------------------------------
# Building a config from plain data, with key and type checks
# ------------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked against (and lightly converted to) the field type ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, item_type, f"{key}[{index}]") for index, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {_type_name(annotation)}")


def _field_hints(
    cls: type, values: Mapping[str, Any], unknown_message: Callable[[list[str], set[str]], str]
) -> dict[str, Any]:
    """The type hints of dataclass ``cls``; ConfigError (``unknown_message(unknown, fields)``) for
    keys of ``values`` that are not its fields."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [str(key) for key in values if key not in fields]
    if unknown:
        raise ConfigError(unknown_message(unknown, fields))
    return typing.get_type_hints(cls)


def _section_from_mapping(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {values!r}")
    hints = _field_hints(
        cls, values,
        lambda unknown, fields: f"unknown config key {prefix}.{unknown[0]}"
        + (f" (and {', '.join(f'{prefix}.{k}' for k in unknown[1:])})" if len(unknown) > 1 else "")
        + f"; valid keys in {prefix}: {', '.join(sorted(fields))}",
    )  # fmt: skip
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if value is False and "yaml_false" in by_name[key].metadata:
            value = by_name[key].metadata["yaml_false"]  # YAML 1.1 reads a bare `off` as false
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}")
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any] | None) -> TrainConfig:
    """A TrainConfig from nested plain data; unknown sections or keys are a ConfigError."""
    values = dict(values or {})
    hints = _field_hints(
        TrainConfig, values,
        lambda unknown, sections: f"unknown config section {unknown[0]!r}; valid sections: {', '.join(sorted(sections))}",
    )  # fmt: skip
    built = {
        name: _section_from_mapping(hints[name], values[name] or {}, name) for name in values
    }
    config = TrainConfig(**built)
    return config


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to nested plain data (values parsed as YAML)."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        dotted, text = override.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override key {dotted!r} must be section.key (e.g. optim.lr)")
        section, key = parts
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {dotted}: cannot parse value {text!r}: {error}") from None
        target = values.setdefault(section, {})
        if target is None:
            target = values[section] = {}
        if not isinstance(target, dict):
            raise ConfigError(f"override {dotted}: section {section!r} is not a mapping")
        target[key] = value
    return values


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config, apply ``overrides``, check keys, types and values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        config = config_from_dict(apply_overrides(values, overrides))
        config.validate()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config


__all__ = [
    "AugmentSection",
    "ConfigError",
    "DataSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "PromptSection",
    "RunSection",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]
