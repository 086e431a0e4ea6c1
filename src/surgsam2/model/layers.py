"""Small layers shared by several model parts, and `linear`, the one linear-layer call of the
bf16 CPU fast path."""

from __future__ import annotations

import torch
from torch import nn

# oneDNN's linear with the bias and an activation applied to the GEMM's float32 accumulator
# (PyTorch's CPU build ships it for inductor). `F.linear` on bf16 CPU instead writes the broadcast
# bias into the output and accumulates the GEMM onto it, a pass over the output (8 % of a Hiera-S
# stage-3 MLP linear, one thread), and an activation is one more pass.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _onednn_linear_applies(x: torch.Tensor, layer: nn.Module) -> bool:
    """bf16 inference on CPU, eager (traced or compiled graphs keep the module call), of a plain
    `nn.Linear` without hooks (a replaced or hooked layer keeps its own call)."""
    return (
        _ONEDNN_LINEAR is not None
        and type(layer) is nn.Linear
        and not (layer._forward_hooks or layer._forward_pre_hooks)
        and x.dtype == torch.bfloat16
        and layer.weight.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def linear(x: torch.Tensor, layer: nn.Module, activation: nn.Module | None = None) -> torch.Tensor:
    """``activation(layer(x))``; for bf16 CPU inference one oneDNN call with the bias and a ReLU or
    GELU fused into the GEMM (the bias bit-identical to the module call; a fused activation sees the
    float32 accumulator, so it rounds once instead of twice)."""
    if _onednn_linear_applies(x, layer):
        if activation is None:
            return _ONEDNN_LINEAR(x, layer.weight, layer.bias, "none", [], "")
        if isinstance(activation, nn.ReLU):
            return _ONEDNN_LINEAR(x, layer.weight, layer.bias, "relu", [], "")
        if isinstance(activation, nn.GELU):
            return _ONEDNN_LINEAR(x, layer.weight, layer.bias, "gelu", [], activation.approximate)
        return activation(_ONEDNN_LINEAR(x, layer.weight, layer.bias, "none", [], ""))
    out = layer(x)
    return out if activation is None else activation(out)


class MLP(nn.Module):
    """A stack of linear layers with an activation between them (none after the last)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = linear(x, layer, self.act if index < last else None)
        # The sigmoid in float32: in bf16 every probability above ~0.998 rounds to 1, which hides
        # the ranking of confident IoU predictions and stalls their training gradient.
        return torch.sigmoid(x.float()) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def get_activation(name: str) -> type[nn.Module]:
    """Map a config string to an activation class."""
    table: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch during training."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


__all__ = ["MLP", "LayerNorm2d", "DropPath", "drop_path", "get_activation", "linear"]
