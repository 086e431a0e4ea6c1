"""The machine a bench runs on: what it is, its matmul peak, memory in use, and FLOP counting."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from surgsam2.bench.config import DTYPES, BenchConfig
from surgsam2.runtime.devices import resolve_device


@dataclass
class MachineInfo:
    """Where and when the numbers were taken."""

    cpu_model: str
    logical_cpus: int
    cpu_flags: list[str]  # the matrix-unit flags present (avx512_bf16, amx_*)
    torch_version: str
    torch_threads: int
    python_version: str
    accelerator: str | None  # the GPU's name when the run is on one
    date_utc: str
    load_before: tuple[float, float, float]  # other work on the machine when the run started
    load_after: tuple[float, float, float] | None = None  # includes the run's own threads


@dataclass
class MatmulPeak:
    """Best-of-N rate of an n x n @ n x n matmul, in GFLOP/s, per dtype."""

    size: int
    fp32_gflops: float
    bf16_gflops: float


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    """CPU model name and its bf16/AMX flags from /proc/cpuinfo (platform fallback elsewhere)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and not flags:
            flags = sorted(f for f in value.split() if f == "avx512_bf16" or f.startswith("amx"))
    return model, flags


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (NaN where the system has none)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (float("nan"),) * 3
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def start_run(config: BenchConfig) -> tuple[torch.device, MachineInfo]:
    """Every run's start: the config checked, torch's threads set (--threads), the device
    resolved and the machine described (its load before the run)."""
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    return device, machine_info(device)


def machine_info(device: torch.device | str = "cpu") -> MachineInfo:
    """The machine now, with the load average before the run."""
    cpu_model, flags = _cpu_model_and_flags()
    device = torch.device(device)
    return MachineInfo(
        cpu_model=cpu_model,
        logical_cpus=os.cpu_count() or 0,
        cpu_flags=flags,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        python_version=platform.python_version(),
        accelerator=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        date_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=load_average(),
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that a host clock reads its end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(size: int | None = None, repeats: int = 8, device: torch.device | str = "cpu") -> MatmulPeak:
    """The machine's matmul rate per dtype: best of ``repeats`` timed size^3 products (after a
    warm-up one) on random data. The best, not the median, since the peak is what a kernel could
    reach. Default size 2048 on CPU, 8192 on a GPU (smaller products do not fill one)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    rates: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    for name, dtype in DTYPES.items():
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        torch.mm(a, b)
        best = math.inf
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        rates[name] = 2.0 * size**3 / best / 1e9
        del a, b
    return MatmulPeak(size=size, fp32_gflops=rates["fp32"], bf16_gflops=rates["bf16"])


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (getrusage; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """Resident set size now (/proc/self/statm), or the peak where /proc is missing."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


# Attention kernels whose FLOPs FlopCounterMode may not know (CPU flash attention).
SDPA_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """4 * Lq * Lk * d per head (Q K^T and P V, one multiply-add = 2 FLOPs), any batch dims."""
    *batch, query_length, head_dim = query_shape
    key_length = key_shape[-2]
    value_dim = value_shape[-1]
    return 2 * math.prod(batch) * query_length * key_length * (head_dim + value_dim)


def sdpa_counted_by_torch(device: torch.device | str = "cpu") -> bool:
    """Whether FlopCounterMode alone counts a scaled_dot_product_attention on ``device`` (torch-
    version and kernel dependent; on CPU it does not on 2.13)."""
    from torch.utils.flop_counter import FlopCounterMode

    q = torch.zeros(1, 1, 8, 4, device=device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() > 0


def _onednn_linear_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """2 * tokens * in * out: oneDNN's fused linear (`surgsam2.model.layers.linear`, bf16 CPU),
    which FlopCounterMode's registry does not know."""
    return 2 * math.prod(input_shape[:-1]) * input_shape[-1] * weight_shape[0]


@dataclass
class FlopCount:
    """FLOPs of a block of code, and the part added by hand for attention kernels.

    ``running()`` is the count so far while the block runs (the stage profile attributes FLOPs
    to stages with it), the total after.
    """

    total: float
    sdpa_added: float
    running: Callable[[], float] = field(default=lambda: 0.0, repr=False, compare=False)


@contextlib.contextmanager
def count_flops(device: torch.device | str = "cpu") -> Iterator[FlopCount]:
    """Count FLOPs of the enclosed code: FlopCounterMode plus the CPU attention kernels and the
    oneDNN fused linear it misses."""
    from torch.utils.flop_counter import FlopCounterMode

    native = sdpa_counted_by_torch(device)
    custom: dict[Any, Callable[..., int]] = {}
    if not native:
        for name in SDPA_OPS:
            packet = getattr(torch.ops.aten, name, None)
            if packet is not None:
                custom[packet] = _sdpa_flops
    onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if onednn_linear is not None:
        custom[onednn_linear] = _onednn_linear_flops
    result = FlopCount(0.0, 0.0)
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        result.running = lambda: float(counter.get_total_flops())
        yield result
    result.total = float(counter.get_total_flops())
    result.running = lambda: result.total
    counts = counter.get_flop_counts().get("Global", {})
    result.sdpa_added = float(sum(v for op, v in counts.items() if any(n in str(op) for n in SDPA_OPS)))
