"""Named stages of a tracked frame, reported to an optional hook: profiling without patching.

A hook is any object whose ``stage(name)`` returns a context manager; the tracker enters it around
each stage of a frame (names in `STAGES`, pipeline order). The default, `NO_STAGES`, returns one
shared no-op context, so an unprofiled frame pays a method call per stage and nothing else.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Protocol

# The stages of one frame, in pipeline order: the image encoder, choosing and stacking memories,
# memory attention, the mask decoder (tracking, clicks and mask prompts), the memory encoder, and
# upsampling the masks and moving them to the host.
STAGES = ("encode_image", "memory_assembly", "memory_attention", "decoder", "memory_encoder", "output")


class StageHook(Protocol):
    """Receives the stages of the tracker's frames (e.g. a profiler's timer)."""

    def stage(self, name: str) -> AbstractContextManager[object]:
        """A context entered around the stage ``name`` (one of `STAGES`)."""
        ...


_NO_OP = contextlib.nullcontext()


class NoStages:
    """The default hook: every stage is the same reusable no-op context."""

    def stage(self, name: str) -> AbstractContextManager[object]:
        return _NO_OP


NO_STAGES = NoStages()
