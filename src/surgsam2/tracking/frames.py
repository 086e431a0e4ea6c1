"""Turn an RGB frame into the model's input tensor, exactly as the official video loader does."""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported where tensors are made: validation stays torch-free
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def validate_frame(frame: np.ndarray, frame_index: int) -> np.ndarray:
    """Check a frame is an HxWx3 uint8 RGB array; raise ValueError naming the frame otherwise."""
    torch_module = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch_module is not None and isinstance(frame, torch_module.Tensor):
        frame = frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame {frame_index}: expected an HxWx3 uint8 numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame {frame_index}: expected dtype uint8, got {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame {frame_index}: expected shape HxWx3, got {frame.shape}")
    return frame


def check_stream_frame(
    frame: np.ndarray, frame_index: int, stream_size: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """`validate_frame`, and the frame's (H, W), which must be the stream's (when it has one)."""
    frame = validate_frame(frame, frame_index)
    size = (int(frame.shape[0]), int(frame.shape[1]))
    if stream_size is not None and size != stream_size:
        raise ValueError(
            f"frame {frame_index}: size {size[1]}x{size[0]} differs from the "
            f"stream's {stream_size[1]}x{stream_size[0]} (call reset() for a new video)"
        )
    return frame, size


def resize_frame(frame: np.ndarray, image_size: int) -> np.ndarray:
    """An HxWx3 uint8 frame at S x S with Pillow's default filter, as the official loader resizes
    (frames already at S x S are returned as they are)."""
    if frame.shape[0] != image_size or frame.shape[1] != image_size:
        frame = np.asarray(Image.fromarray(frame).resize((image_size, image_size)))
    return frame


@lru_cache(maxsize=8)
def _normalisation_table(device: torch.device) -> torch.Tensor:
    """(3 * 256,) float32 table on ``device``: entry 256 c + v = (v/255 - mean_c) / std_c, computed
    as the official loader does (v/255 in float64, rounded to float32, then normalised in float32)."""
    import torch

    scaled = torch.from_numpy(np.arange(256, dtype=np.float64) / 255.0).to(torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None]
    return ((scaled[None, :] - mean) / std).flatten().to(device)


@lru_cache(maxsize=8)
def _channel_offsets(device: torch.device) -> torch.Tensor:
    """(3, 1, 1) offsets 0, 256, 512 of the channels' rows in the flattened table."""
    import torch

    return (torch.arange(3, dtype=torch.long) * 256).view(3, 1, 1).to(device)


def preprocess_frame(frame: np.ndarray, image_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (1, 3, S, S) normalised tensor on ``device``.

    Resizing uses Pillow's default filter, as the official loader, so results match it on real
    videos; frames already at S x S are not resampled. The uint8 pixels travel to the device and
    are normalised there by a table lookup (one gather; on a GPU a quarter of the bytes of a float
    image to copy, and no per-pixel work left on the host).
    """
    import torch

    frame = resize_frame(frame, image_size)
    device = torch.device(device)
    # np.require: torch wants a writable, C-ordered array (Pillow's are read-only).
    return normalise_pixels(torch.from_numpy(np.require(frame, requirements=("C", "W"))).to(device), dtype)


def normalise_pixels(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(S, S, 3) uint8 RGB pixels on the device -> (1, 3, S, S) normalised, by one table lookup
    (`preprocess_frame`'s device part; no host work, so a captured frame can run it)."""
    device = pixels.device
    indices = pixels.permute(2, 0, 1).long() + _channel_offsets(device)  # (3, S, S)
    image = _normalisation_table(device).take(indices)
    return image[None].to(dtype)
