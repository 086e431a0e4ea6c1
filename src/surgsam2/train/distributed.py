"""Multi-process training helpers: the same command runs alone or under ``torchrun``.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1 in the environment) a process group is
started: NCCL on CUDA, gloo on CPU; each process takes GPU ``LOCAL_RANK`` when on CUDA. Alone,
everything here is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False  # we started the process group, so we end it

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is available, else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device is cuda but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size <= 1:
        return DistributedContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialised_here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        initialised_here = True
    return DistributedContext(rank, world_size, local_rank, device, initialised_here)


def shutdown(context: DistributedContext) -> None:
    """End the process group if this run started it."""
    if context.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The mean of ``values`` over processes (a copy; the input is unchanged)."""
    if not context.is_distributed:
        return values.clone()
    reduced = values.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / context.world_size


def parameter_fingerprint(model: nn.Module) -> torch.Tensor:
    """A few numbers that change when any parameter changes (sum, sum of squares, weighted sum)."""
    totals = torch.zeros(3, dtype=torch.float64)
    for index, parameter in enumerate(model.parameters()):
        values = parameter.detach().to(torch.float64).flatten().cpu()
        totals[0] += values.sum()
        totals[1] += (values * values).sum()
        totals[2] += (index + 1) * values.sum()
    return totals


def check_in_sync(model: nn.Module, context: DistributedContext) -> None:
    """Raise RuntimeError unless every process holds bit-identical parameters (by fingerprint)."""
    if not context.is_distributed:
        return
    fingerprint = parameter_fingerprint(model).to(context.device)
    gathered = [torch.zeros_like(fingerprint) for _ in range(context.world_size)]
    dist.all_gather(gathered, fingerprint)
    if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
        raise RuntimeError(
            "DDP processes hold different parameters: "
            + ", ".join(f"rank {r}: {g.tolist()}" for r, g in enumerate(gathered))
        )


__all__ = [
    "DistributedContext",
    "all_reduce_mean",
    "barrier",
    "check_in_sync",
    "init_distributed",
    "parameter_fingerprint",
    "resolve_device",
    "shutdown",
]
