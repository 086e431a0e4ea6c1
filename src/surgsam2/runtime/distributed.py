"""The processes of a run: the same command runs alone or under ``torchrun`` (training with DDP,
vos-inference sharded over processes). Alone, every collective here is a no-op, so callers have
one code path.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) ``join`` starts a process group: NCCL
when this process runs on CUDA, gloo otherwise; each process takes GPU ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from surgsam2.runtime.devices import resolve_device

# Ranks of a vos-inference run meet once, after all their videos: a fast rank may wait for hours.
DEFAULT_TIMEOUT = timedelta(days=2)


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process sits in the run, and the collectives the programs use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started_here: bool = False  # this process started the torch process group, so it ends it

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProcessGroup:
        """Rank and world size from the torchrun variables; one process when WORLD_SIZE is unset."""
        env = os.environ if environ is None else environ
        try:
            world_size = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world_size}")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    @classmethod
    def join(
        cls, device: str | torch.device | None = "auto", timeout: timedelta = DEFAULT_TIMEOUT,
        environ: Mapping[str, str] | None = None,
    ) -> ProcessGroup:  # fmt: skip
        """This process's place and device; starts the process group when there are several."""
        group = cls.from_env(environ)
        group = replace(group, device=resolve_device(device, group.local_rank if group.is_distributed else None))
        if not group.is_distributed:
            return group
        if group.device.type == "cuda":
            torch.cuda.set_device(group.device)
        if dist.is_initialized():
            return group
        backend = "nccl" if group.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=group.rank, world_size=group.world_size, timeout=timeout)
        return replace(group, started_here=True)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and evaluates."""
        return self.rank == 0

    @property
    def log_prefix(self) -> str:
        """``"[rank r/n] "`` in a multi-process run, else empty."""
        return f"[rank {self.rank}/{self.world_size}] " if self.is_distributed else ""

    def leave(self) -> None:
        """End the process group if this process started it."""
        if self.started_here and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over processes (a copy; the input is unchanged)."""
        if not self.is_distributed:
            return values.clone()
        reduced = values.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / self.world_size

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's picklable ``value``, in rank order (waits for all ranks)."""
        if not self.is_distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_from_first(self, value: Any) -> Any:
        """Rank 0's picklable ``value`` on every rank."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_in_sync(self, model: nn.Module) -> None:
        """RuntimeError unless every process holds bit-identical parameters (by fingerprint)."""
        if not self.is_distributed:
            return
        fingerprint = parameter_fingerprint(model).to(self.device)
        gathered = [torch.zeros_like(fingerprint) for _ in range(self.world_size)]
        dist.all_gather(gathered, fingerprint)
        if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
            raise RuntimeError(
                "DDP processes hold different parameters: "
                + ", ".join(f"rank {r}: {g.tolist()}" for r, g in enumerate(gathered))
            )


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """The items of one rank: item i goes to rank i % world_size."""
    return [item for index, item in enumerate(items) if index % world_size == rank]


def parameter_fingerprint(model: nn.Module) -> torch.Tensor:
    """A few numbers that change when any parameter changes (sum, sum of squares, weighted sum)."""
    totals = torch.zeros(3, dtype=torch.float64)
    for index, parameter in enumerate(model.parameters()):
        values = parameter.detach().to(torch.float64).flatten().cpu()
        totals[0] += values.sum()
        totals[1] += (values * values).sum()
        totals[2] += (index + 1) * values.sum()
    return totals
