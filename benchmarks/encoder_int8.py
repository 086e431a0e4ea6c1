"""Is an int8 image encoder worth it on this CPU? (issue 17, item 3, the optional int8 path)

Hiera's linear layers replaced by dynamic int8 ones (weights per output channel, activations per
token quantized at run time, `torch._int_mm` with int32 accumulation, dequantized to bf16), against
the bf16 trunk, eager and under `torch.compile` (which fuses the quantize/dequantize passes into
the neighbouring element-wise work). Random weights; one thread by default; the sides alternate,
best of --rounds. Prints each stage's relative error against fp32 and the machine's bf16 peak.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/encoder_int8.py --model sam2.1_hiera_s \\
        --image-size 512 [--compile]

Experiment only: nothing here is a product path (see benchmarks/README.md, "int8 image encoder").
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from surgsam2.bench.machine import measure_matmul_peak
from surgsam2.model.checkpoint import load_model


class DynamicInt8Linear(nn.Module):
    """nn.Linear with int8 weights (one scale per output channel) and activations quantized per
    token at run time; the int8 product accumulates in int32 (`torch._int_mm`)."""

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("qweight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(out_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(out_dtype))
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        token_scale = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True, dtype=torch.float32)
        token_scale = token_scale.clamp_(min=1e-12).div_(127)
        quantized = rows.float().div_(token_scale).round_().to(torch.int8)
        out = torch._int_mm(quantized, self.qweight.t()).to(self.out_dtype)
        out.mul_(token_scale.to(self.out_dtype)).mul_(self.scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], -1)


def quantize_linear_layers(module: nn.Module, out_dtype: torch.dtype) -> nn.Module:
    """Replace every nn.Linear under ``module`` in place by a `DynamicInt8Linear`."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, DynamicInt8Linear(child, out_dtype))
        else:
            quantize_linear_layers(child, out_dtype)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_s")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also both trunks under torch.compile (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = load_model(args.model, image_size=args.image_size, dtype="fp32").image_encoder.trunk.eval()
    bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    int8 = quantize_linear_layers(copy.deepcopy(reference), torch.bfloat16).to(torch.bfloat16)
    image = torch.randn(1, 3, args.image_size, args.image_size)
    sides = {"bf16": bf16, "int8": int8}
    with torch.inference_mode():
        expected = reference(image)
        for name, trunk in sides.items():
            errors = [((out.float() - ref).norm() / ref.norm()).item() for out, ref in zip(trunk(image.bfloat16()), expected)]
            print(f"{name}: relative error per stage vs fp32 " + ", ".join(f"{e:.4f}" for e in errors), flush=True)
        if args.compile:
            for name in list(sides):
                start = time.perf_counter()
                sides[f"{name} compiled"] = torch.compile(sides[name])
                sides[f"{name} compiled"](image.bfloat16())
                print(f"{name}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
        seconds: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, trunk in sides.items():
                start = time.perf_counter()
                trunk(image.bfloat16())
                seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)
    peak = measure_matmul_peak()
    base = seconds["bf16"]
    print(f"{args.model} {args.image_size} px trunk, {args.threads} thread(s), best of {args.rounds}: "
          + ", ".join(f"{name} {1000 * s:.0f} ms ({base / s:.2f}x bf16)" for name, s in seconds.items())
          + f"; machine bf16 matmul peak {peak.bf16_gflops:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
