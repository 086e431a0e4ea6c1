"""CUDA graphs for the network's parts at inference: one captured graph per input signature.

Tracking one frame of Hiera-S at 512 px launches a few thousand small kernels; on a fast GPU the
frame time is then set by the host issuing them, not by the GPU (measured on an H200: ~17 ms a
frame with the GPU ~1 % busy, benchmarks/README.md "GPU"). A CUDA graph replays a part's whole
kernel sequence with one launch. Shapes must repeat for that, which they do while tracking: the
image encoder always sees (1, 3, S, S); memory attention, the decoder and the memory encoder see
one shape per number of objects and of memories, fixed once the memory bank is full.

`CudaGraphed` wraps a callable. Per signature (the tensors' shapes, dtypes, strides and devices,
the other arguments' values) the first ``warmup_calls`` calls run eagerly (they also fill the
parts' caches, e.g. position encodings), the next one captures a graph, later ones copy their
inputs into the graph's input buffers, replay it and return clones of its outputs (the caller
owns them; the graph's buffers are overwritten by the next replay). Calls without CUDA tensors,
with autograd on, with ``enabled`` False (a replay is invisible to FLOP counters and profilers)
or whose capture failed (a part that synchronises with the host cannot be captured) run eagerly.
At most ``max_graphs`` graphs per part are kept (each holds its own memory pool).

`CapturedStep` captures a stateful step without arguments (the tracker's whole steady-state
frame, `surgsam2.tracking.steady_frame`) as one graph; `parts_eager` turns the parts' graphs off
while it is warmed up or captured.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the buffers the graph reads, in argument order
    outputs: Any  # the pytree of tensors the graph writes


@dataclass
class GraphStats:
    """What a `CudaGraphed` part did: calls replayed, run eagerly, graphs captured, captures failed."""

    replayed: int = 0
    eager: int = 0
    captured: int = 0
    failed: int = 0


class CudaGraphed:
    """Call ``function`` through CUDA graphs, one per input signature (see the module doc)."""

    def __init__(self, function: Callable[..., Any], name: str, warmup_calls: int = 1, max_graphs: int = 8) -> None:
        self.function = function
        self.name = name
        self.warmup_calls = warmup_calls
        self.max_graphs = max_graphs
        self.stats = GraphStats()
        self.enabled = True  # False: every call runs eagerly (e.g. to count its FLOPs)
        self._graphs: dict[Any, _Graph] = {}
        self._seen: Counter = Counter()
        self._failed: set[Any] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        key = self._signature(leaves, spec) if self.enabled else None
        if key is None:
            self.stats.eager += 1
            return self.function(*args, **kwargs)
        entry = self._graphs.get(key)
        if entry is None:
            self._seen[key] += 1
            if self._seen[key] <= self.warmup_calls or key in self._failed or len(self._graphs) >= self.max_graphs:
                self.stats.eager += 1
                return self.function(*args, **kwargs)
            entry = self._capture(key, leaves, spec)
            if entry is None:
                self.stats.eager += 1
                return self.function(*args, **kwargs)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        for buffer, tensor in zip(entry.inputs, tensors):
            buffer.copy_(tensor)
        entry.graph.replay()
        self.stats.replayed += 1
        return tree_map(lambda value: value.clone() if isinstance(value, torch.Tensor) else value, entry.outputs)

    @staticmethod
    def _signature(leaves: list[Any], spec: Any) -> Any:
        """Hashable description of a call, or None when it must run eagerly."""
        try:
            hash(spec)
            parts: list[Any] = [spec]
        except TypeError:  # tree specs of some torch versions are not hashable; their text is
            parts = [repr(spec)]
        on_cuda = False
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.requires_grad and torch.is_grad_enabled():
                    return None
                if leaf.device.type != "cuda":
                    return None
                on_cuda = True
                parts.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device))
            else:
                try:
                    hash(leaf)
                except TypeError:
                    return None
                parts.append(("value", type(leaf), leaf))
        return tuple(parts) if on_cuda else None

    def _capture(self, key: Any, leaves: list[Any], spec: Any) -> _Graph | None:
        inputs = [leaf.clone() for leaf in leaves if isinstance(leaf, torch.Tensor)]
        buffers = iter(inputs)
        static_leaves = [next(buffers) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(static_leaves, spec)
        try:
            # Warm up on a side stream, as capture requires (library handles, lazy allocations).
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.function(*args, **kwargs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self.function(*args, **kwargs)
        except Exception as error:  # a part that syncs with the host, or any capture error
            self._failed.add(key)
            self.stats.failed += 1
            warnings.warn(f"CUDA graph of {self.name} not captured, running eagerly: {error}", stacklevel=3)
            torch.cuda.synchronize()
            return None
        entry = _Graph(graph=graph, inputs=inputs, outputs=outputs)
        self._graphs[key] = entry
        self.stats.captured += 1
        return entry


@contextlib.contextmanager
def parts_eager(module: torch.nn.Module) -> Iterator[None]:
    """Inside: the `CudaGraphed` parts of ``module`` run eagerly (a graph cannot be replayed
    while a larger one that contains the call is captured, nor should its warm-up replay one)."""
    wrappers = [part.forward for part in module.modules() if isinstance(part.__dict__.get("forward"), CudaGraphed)]
    saved = [wrapper.enabled for wrapper in wrappers]
    for wrapper in wrappers:
        wrapper.enabled = False
    try:
        yield
    finally:
        for wrapper, enabled in zip(wrappers, saved):
            wrapper.enabled = enabled


class CapturedStep:
    """A step without arguments that reads and writes fixed buffers (e.g. a tracker's whole
    steady-state frame), replayed as one CUDA graph on a GPU.

    Unlike `CudaGraphed` the step changes state (it writes the buffers it reads next time), so it
    must run exactly once per call: the first ``warmup_calls`` calls run eagerly on a side stream
    (real steps, which also fill lazy caches and library handles), the next call captures the
    graph (capturing runs nothing) and replays it, and so do later calls. A failed capture (a
    step that synchronises with the host, say) is warned about once and the step runs eagerly from
    then on. On the CPU, or with ``device`` not CUDA or ``enabled`` False, every call runs eagerly. ``eager_parts``: a
    module whose `CudaGraphed` parts are turned off while the step warms up or is captured.
    """

    def __init__(
        self,
        function: Callable[[], None],
        name: str,
        device: torch.device,
        warmup_calls: int = 1,
        eager_parts: torch.nn.Module | None = None,
    ) -> None:
        self.function = function
        self.name = name
        self.device = torch.device(device)
        self.warmup_calls = warmup_calls
        self.eager_parts = eager_parts
        self.stats = GraphStats()
        self.enabled = True  # False: every call runs eagerly (e.g. to compare a replay with eager)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._failed = False

    def _parts_off(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.eager_parts is None else parts_eager(self.eager_parts)

    def __call__(self) -> None:
        if not self.enabled:
            self.function()
            self.stats.eager += 1
            return
        if self._graph is None and self.device.type == "cuda" and not self._failed:
            if self.stats.eager < self.warmup_calls:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side), self._parts_off():
                    self.function()
                torch.cuda.current_stream(self.device).wait_stream(side)
                self.stats.eager += 1
                return
            self._capture()
        if self._graph is None:
            self.function()
            self.stats.eager += 1
            return
        self._graph.replay()
        self.stats.replayed += 1

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with self._parts_off(), torch.cuda.graph(graph):
                self.function()
        except Exception as error:  # a step that syncs with the host, or any capture error
            self._failed = True
            self.stats.failed += 1
            warnings.warn(f"CUDA graph of {self.name} not captured, running eagerly: {error}", stacklevel=3)
            torch.cuda.synchronize(self.device)
            return
        self._graph = graph
        self.stats.captured += 1
