"""The memory policies' names, one-line summaries and defaults, without torch.

The command line (and the torch-free ONNX runtime's `surgsam2 segment --engine onnx`) reads this
table to offer ``--memory``; `surgsam2.memory.policies` registers the policy classes and refuses a
name this table does not list, so the two cannot drift apart (tests/test_torch_free_cli.py checks
that the registry and the table name the same policies, in the same order, with these summaries).
"""

from __future__ import annotations

DEFAULT_POLICY = "refp"
DEFAULT_NUM_FRAME_TO_PRUNE = 2
DEFAULT_MIN_IOU = 0.5  # qefp, refp: the predicted IoU a memory needs to count as good (reliable)
DEFAULT_RETAINED_MEMORIES = 2  # refp: reliable memories retained per object beyond the recent window

# name -> the first line of its class docstring (what `--memory` help says), in registration order.
POLICY_SUMMARIES: dict[str, str] = {
    "fifo": "SAM 2: attend to every candidate (conditioning frames plus the last num_maskmem-1 frames)",
    "efp": "Surgical SAM 2's Efficient Frame Pruning",
    "qefp": "Quality-first EFP: drop memories of absent or poorly segmented frames first, then redundant ones",
    "refp": "Reliable-memory EFP: poor recent memories are replaced by retained reliable ones, then EFP prunes",
    "xefp": "Exclusive-memory EFP: memories encoded from masks that share no pixel with another tracked instrument",
}

POLICY_NAMES: tuple[str, ...] = tuple(POLICY_SUMMARIES)


def policy_help() -> str:
    """``"name: summary; ..."`` for every policy (the ``--memory`` help text)."""
    return "; ".join(f"{name}: {summary}" for name, summary in POLICY_SUMMARIES.items())
