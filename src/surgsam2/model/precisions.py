"""The precisions a model can be loaded in, without torch (the command line offers them as --dtype)."""

from __future__ import annotations

# `SAM2Model.to_precision`, `load_model(dtype=...)`, the commands' --dtype: "mixed" is fp32 with
# memory attention in bf16.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "mixed")
