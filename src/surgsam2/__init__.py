"""surgsam2: real-time promptable segmentation and tracking of surgical instruments.

SAM 2 / 2.1 in plain PyTorch with a streaming tracker and pluggable memory policies
(``fifo`` = SAM 2, ``efp`` = Surgical SAM 2's Efficient Frame Pruning).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names are resolved lazily so that `import surgsam2` stays cheap and side-effect free.
_LAZY = {
    "load_model": ("surgsam2.model.checkpoint", "load_model"),
    "save_checkpoint": ("surgsam2.model.checkpoint", "save_checkpoint"),
    "SAM2Model": ("surgsam2.model.sam2", "SAM2Model"),
    "Tracker": ("surgsam2.tracking.tracker", "Tracker"),
    "Prompt": ("surgsam2.tracking.prompts", "Prompt"),
    "FrameResult": ("surgsam2.tracking.results", "FrameResult"),
    "segment_video": ("surgsam2.tracking.offline", "segment_video"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'surgsam2' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from surgsam2.model.checkpoint import load_model, save_checkpoint
    from surgsam2.model.sam2 import SAM2Model
