"""Optimizer and learning-rate schedule of SAM 2 fine-tuning.

AdamW over parameter groups that differ in learning-rate scale and weight decay:
- layer-wise lr decay in the Hiera trunk (SAM 2's layer_decay_param_modifier): with L blocks,
  block i gets ``decay ** (L - i)``, the patch embedding ``decay ** (L + 1)``, the trunk's position
  embeddings ``pos_embed_lr_scale`` (1.0 in the published config), everything else 1;
- ``trunk_lr`` (SAM 2's vision_lr) for ``image_encoder.*``, ``lr`` for the rest;
- weight decay on weights only: 0 on biases, normalisation layers and position embeddings.
The schedule is a linear warm-up to the group's lr, then a cosine to ``final_lr_ratio`` of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from surgsam2.train.config import OptimSection

TRUNK_PREFIX = "image_encoder.trunk."
IMAGE_ENCODER_PREFIX = "image_encoder."
# Parameter names holding position embeddings (no weight decay).
POSITION_EMBEDDING_NAMES = ("pos_embed", "pos_enc", "tpos_enc")


@dataclass(frozen=True)
class ParamRule:
    """How one parameter is optimised."""

    lr_scale: float
    weight_decay: float
    base_lr: float


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters without weight decay: biases, norm layers, position embeddings."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param_name == "bias" or any(key in param_name for key in POSITION_EMBEDDING_NAMES):
                names.add(full)
    return names


def trunk_lr_scale(name: str, num_blocks: int, decay: float, pos_embed_scale: float) -> float:
    """Layer-decay scale of a parameter (1 outside the trunk)."""
    if not name.startswith(TRUNK_PREFIX):
        return 1.0
    local = name[len(TRUNK_PREFIX):]
    if "pos_embed" in local:
        return pos_embed_scale
    if local.startswith("patch_embed"):
        return decay ** (num_blocks + 1)
    if local.startswith("blocks."):
        block = int(local.split(".")[1])
        return decay ** (num_blocks - block)
    return 1.0


def parameter_rules(model: nn.Module, config: OptimSection) -> dict[str, ParamRule]:
    """The lr scale, weight decay and base lr of every trainable parameter, by name."""
    trunk = getattr(getattr(model, "image_encoder", None), "trunk", None)
    num_blocks = len(trunk.blocks) if trunk is not None and hasattr(trunk, "blocks") else 0
    no_decay = _no_decay_names(model)
    trunk_lr = config.trunk_lr if config.trunk_lr is not None else config.lr
    rules: dict[str, ParamRule] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        rules[name] = ParamRule(
            lr_scale=trunk_lr_scale(name, num_blocks, config.layer_decay, config.pos_embed_lr_scale),
            weight_decay=0.0 if name in no_decay else config.weight_decay,
            base_lr=trunk_lr if name.startswith(IMAGE_ENCODER_PREFIX) else config.lr,
        )
    return rules


def build_optimizer(model: nn.Module, config: OptimSection) -> torch.optim.AdamW:
    """AdamW with one parameter group per (lr, weight decay) combination, in a stable order."""
    rules = parameter_rules(model, config)
    parameters = dict(model.named_parameters())
    groups: dict[tuple[float, float], list[str]] = {}
    for name, rule in rules.items():
        groups.setdefault((rule.base_lr * rule.lr_scale, rule.weight_decay), []).append(name)
    param_groups = [
        {
            "params": [parameters[name] for name in names],
            "lr": lr,
            "weight_decay": weight_decay,
            "group_name": f"lr={lr:.3g} wd={weight_decay:g} ({len(names)} tensors)",
        }
        for (lr, weight_decay), names in sorted(groups.items(), key=lambda item: (-item[0][0], -item[0][1]))
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def lr_factor(total_steps: int, warmup_steps: int, final_ratio: float) -> Callable[[int], float]:
    """step -> lr multiplier: linear warm-up then cosine from 1 to ``final_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule (call ``step()`` after each optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(total_steps, config.warmup_steps, config.final_lr_ratio)
    )


__all__ = [
    "ParamRule",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "parameter_rules",
    "trunk_lr_scale",
]
