"""Checkpoint averaging: the uniform mean of the weights of several checkpoints of one model.

Checkpoints taken along the last stretch of one training run sit in one basin of the loss; their
mean (stochastic weight averaging done after the fact) smooths the step-to-step noise that makes
one checkpoint score several points above or below its neighbours on a small validation set.
All checkpoints must hold the same tensors (names, shapes, dtypes) of one model configuration at
one image size; tensors that are not floating point (none in SAM 2 today) must be equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from surgsam2.model.checkpoint import CheckpointError, infer_config_name, read_checkpoint, save_checkpoint
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model

# Metadata that belongs to one file, never carried over to the mean as is.
PER_FILE_METADATA = ("format_version", "config", "image_size", "train_step", "averaged_from")


@dataclass
class AveragedWeights:
    """The mean weights, the model they belong to and where they came from."""

    state_dict: dict[str, torch.Tensor]
    config_name: str
    image_size: int | None  # the size stored in the checkpoints' metadata (None: not stored)
    sources: list[dict[str, Any]] = field(default_factory=list)  # per file: name and training step
    common_metadata: dict[str, Any] = field(default_factory=dict)  # equal in every file (e.g. train_config)


def _config_name(metadata: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path) -> str:
    """The model config a checkpoint was written for: its metadata, else inferred from its shapes."""
    name = metadata.get("config") or infer_config_name(state_dict)
    if name is None:
        raise CheckpointError(f"{path}: cannot tell which model the checkpoint is for (no metadata, no unique match)")
    return str(name)


def _check_same_tensors(reference: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a checkpoint whose tensors differ in name, shape or dtype from the first one's."""
    missing, extra = sorted(set(reference) - set(state_dict)), sorted(set(state_dict) - set(reference))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors differ from the first checkpoint's (missing {missing[:3]}, "
                              f"extra {extra[:3]})")  # fmt: skip
    for key, tensor in state_dict.items():
        first = reference[key]
        if tensor.shape != first.shape or tensor.dtype != first.dtype:
            raise CheckpointError(f"{path}: {key} is {tuple(tensor.shape)} {tensor.dtype}, the first checkpoint's "
                                  f"{tuple(first.shape)} {first.dtype}")  # fmt: skip
        if not tensor.is_floating_point() and not torch.equal(tensor, first):
            raise CheckpointError(f"{path}: {key} (not floating point) differs from the first checkpoint's")


def average_checkpoints(paths: Sequence[str | Path]) -> AveragedWeights:
    """The uniform mean of the checkpoints at ``paths`` (at least two, each read with
    ``weights_only=True`` and refused if non-finite), accumulated in float64, one file at a time."""
    paths = [Path(path) for path in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            raise ValueError(f"checkpoint {path} is given twice (as {seen[path.resolve()]})")
        seen[path.resolve()] = path
    sums: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    config_name, image_size, sources = "", None, []
    common: dict[str, Any] = {}
    for index, path in enumerate(paths):
        loaded = read_checkpoint(path)
        name = _config_name(loaded.metadata, loaded.state_dict, path)
        size = loaded.metadata.get("image_size")
        if index == 0:
            config_name, image_size = name, size
            common = {key: value for key, value in loaded.metadata.items() if key not in PER_FILE_METADATA}
            reference = {key: tensor for key, tensor in loaded.state_dict.items()}
            # A copy even of float64 tensors: the sums are added to in place.
            sums = {key: tensor.to(torch.float64, copy=True) if tensor.is_floating_point() else tensor
                    for key, tensor in reference.items()}  # fmt: skip
        else:
            if (name, size) != (config_name, image_size):
                raise CheckpointError(f"{path}: model {name} at image size {size}, the first checkpoint's "
                                      f"{config_name} at {image_size}")  # fmt: skip
            _check_same_tensors(reference, loaded.state_dict, path)
            common = {key: value for key, value in common.items() if loaded.metadata.get(key) == value}
            for key, tensor in loaded.state_dict.items():
                if tensor.is_floating_point():
                    sums[key] += tensor.double()
        sources.append({"file": path.name, "train_step": loaded.metadata.get("train_step")})
    mean = {
        key: (total / len(paths)).to(reference[key].dtype) if total.is_floating_point() else total
        for key, total in sums.items()
    }  # fmt: skip
    return AveragedWeights(mean, config_name, image_size, sources, common)


def save_averaged(averaged: AveragedWeights, path: str | Path) -> Path:
    """Write the averaged weights as a checkpoint (`save_checkpoint`'s layout), loadable by
    `load_model`, with the source files and steps in its metadata (``averaged_from``) and the
    metadata every source shares (e.g. the run's ``train_config``)."""
    model = SAM2Model(get_config(averaged.config_name, averaged.image_size))
    model.load_state_dict(averaged.state_dict, strict=True)
    return save_checkpoint(model, path, extra={**averaged.common_metadata, "averaged_from": averaged.sources})


__all__ = ["AveragedWeights", "average_checkpoints", "save_averaged"]
