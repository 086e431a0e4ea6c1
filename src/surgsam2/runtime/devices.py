"""One resolver for the ``--device`` of every command, the trainer's ``train.device`` and each
process of a ``torchrun`` job: a name becomes a checked, indexed ``torch.device`` or a one-line
``ValueError`` that names the device."""

from __future__ import annotations

import re

import torch

from surgsam2.runtime.device_names import DEVICE_HELP

_CUDA_NAME = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The device called ``name`` (None or ``auto``: CUDA when available, else the CPU).

    A CUDA device always gets its index (``torch.cuda.set_device`` refuses a plain "cuda"): the
    ``local_rank``-th GPU of a multi-process run (modulo the GPU count), else the current one.
    """
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' is not available on this machine")
        return torch.device("mps")
    match = _CUDA_NAME.match(text)
    if match is None:
        raise ValueError(f"unknown device {str(name)!r}: use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r}: no CUDA device is available here (use --device cpu)")
    count = torch.cuda.device_count()
    if match.group(1) is not None:
        index = int(match.group(1))
        if index >= count:
            raise ValueError(f"device {str(name)!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif local_rank is not None:
        index = local_rank % max(count, 1)
    else:
        index = torch.cuda.current_device()
    return torch.device("cuda", index)


def is_cuda(device: str | torch.device) -> bool:
    """Whether ``device`` names a CUDA device (what CUDA graphs need)."""
    return torch.device(device).type == "cuda"
