"""The runtimes that run an ONNX export (ONNX Runtime, OpenVINO), behind one small session interface.

Torch-free: `OnnxTracker`'s host loop drives a `GraphSession` per graph and does not know which
runtime is under it. Each runtime is imported only when chosen. Both read the same fp32 graph
files; the precision is the runtime's: ONNX Runtime's CPU provider runs them in fp32, OpenVINO
compiles them for the CPU in fp32 or, with ``INFERENCE_PRECISION_HINT``, in bf16 (on CPUs with
bf16 instructions, else it falls back to fp32: `GraphSession.precision` is what the runtime
compiled, read back from it). No fp16: on CPUs without fp16 arithmetic OpenVINO turns an f16 hint
into bf16, and ONNX Runtime's CPU provider runs fp16 graphs no faster than fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# The engines that run an export, and the precisions each can be asked for (the first is its default).
RUNTIME_ENGINES: tuple[str, ...] = ("onnx", "openvino")
ENGINE_PRECISIONS: dict[str, tuple[str, ...]] = {"onnx": ("fp32",), "openvino": ("fp32", "bf16")}
# OpenVINO's names of our precisions, and back.
_OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}
_OPENVINO_NAMES = {"float32": "fp32", "f32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "f16": "fp16"}
INSTALL_HINTS = {"onnx": "pip install 'surgsam2[onnx-runtime]'", "openvino": "pip install 'surgsam2[openvino]'"}


class GraphSession(Protocol):
    """One compiled graph: its input and output names, and ``run`` (outputs in the graph's order)."""

    input_names: list[str]
    output_names: list[str]
    precision: str  # what the runtime runs the graph in ("fp32", "bf16", ...)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def check_engine_precision(engine: str, precision: str | None) -> str:
    """The precision ``engine`` runs (its default when None), or ValueError naming the choices."""
    if engine not in ENGINE_PRECISIONS:
        raise ValueError(f"unknown engine {engine!r}; the export runs on {', '.join(RUNTIME_ENGINES)}")
    choices = ENGINE_PRECISIONS[engine]
    if precision is None:
        return choices[0]
    if precision not in choices:
        raise ValueError(f"engine {engine} runs {', '.join(choices)}, not {precision!r}")
    return precision


class OrtSession:
    """A graph on ONNX Runtime (fp32; CPU provider unless ``providers`` say otherwise)."""

    def __init__(self, path: Path, providers: Sequence[str] | None, threads: int | None) -> None:
        ort = _import("onnxruntime", "onnx")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        chosen = list(providers) if providers else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=chosen)
        self.input_names = [value.name for value in self.session.get_inputs()]
        self.output_names = [value.name for value in self.session.get_outputs()]
        self.precision = "fp32"

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, inputs))


@dataclass(frozen=True)
class GraphFile:
    """A graph file and the input and output names its ONNX graph declares (as the manifest records)."""

    path: Path
    input_names: list[str]
    output_names: list[str]


class OpenVinoSession:
    """A graph compiled by OpenVINO for its CPU plugin at ``precision`` (latency mode). OpenVINO
    gives a port several names (the graph's and inner tensors'): ports are found by the graph's."""

    def __init__(self, core: Any, graph: GraphFile, precision: str, threads: int | None) -> None:
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(graph.path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = list(graph.input_names)
        self.output_names = list(graph.output_names)
        ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        missing = [name for name in self.output_names if name not in ports]
        if missing:
            raise ValueError(f"{graph.path}: OpenVINO finds no output {missing[0]!r}; export again")
        self.outputs = [ports[name] for name in self.output_names]
        compiled = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        compiled = compiled.to_string() if hasattr(compiled, "to_string") else str(compiled)
        self.precision = _OPENVINO_NAMES.get(compiled.lower(), compiled)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(inputs)
        # Copies: the request reuses its output buffers on the next call.
        return [np.array(results[port], copy=True) for port in self.outputs]


def _import(module: str, engine: str) -> Any:
    """``module`` imported, or ValueError (one line, as the CLI reports it) naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"engine {engine} needs the {module} package: {INSTALL_HINTS[engine]}") from None


def open_sessions(
    engine: str, files: dict[str, GraphFile], precision: str | None = None, threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> dict[str, GraphSession]:  # fmt: skip
    """Every graph file of ``files`` (name -> path) compiled by ``engine`` at ``precision``."""
    precision = check_engine_precision(engine, precision)
    if engine == "onnx":
        return {name: OrtSession(graph.path, providers, threads) for name, graph in files.items()}
    if providers:
        raise ValueError("providers are ONNX Runtime's; engine openvino runs on its CPU plugin")
    core = _import("openvino", "openvino").Core()
    return {name: OpenVinoSession(core, graph, precision, threads) for name, graph in files.items()}


def engine_version(engine: str) -> str:
    """The installed runtime's name and version, e.g. 'onnxruntime 1.20.1'."""
    module = _import("onnxruntime" if engine == "onnx" else "openvino", engine)
    return f"{module.__name__} {module.__version__.split('-')[0]}"


__all__ = [
    "ENGINE_PRECISIONS",
    "RUNTIME_ENGINES",
    "GraphFile",
    "GraphSession",
    "OpenVinoSession",
    "OrtSession",
    "check_engine_precision",
    "engine_version",
    "open_sessions",
]
