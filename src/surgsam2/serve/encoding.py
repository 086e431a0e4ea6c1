"""The image encoding of a session's last clicked frame, reused by the next clicks on that frame:
a click costs the prompt decoder only, not the image encoder (the click-to-mask latency)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from surgsam2.model.sam2 import ImageFeatures, SAM2Model


class EncodingCache:
    """One frame's preprocessed image and its `ImageFeatures`; a hit needs the identical image."""

    def __init__(self) -> None:
        self.image: torch.Tensor | None = None
        self.features: ImageFeatures | None = None
        self.hits = 0

    def clear(self) -> None:
        self.image, self.features = None, None

    def _encode(self, encode: Callable[[torch.Tensor], ImageFeatures], images: torch.Tensor) -> ImageFeatures:
        cached = self.image
        if cached is not None and self.features is not None and cached.shape == images.shape \
                and cached.dtype == images.dtype and cached.device == images.device and torch.equal(cached, images):  # fmt: skip
            self.hits += 1
            return self.features
        features = encode(images)
        self.image, self.features = images.clone(), features
        return features

    @contextmanager
    def reused_by(self, model: SAM2Model) -> Iterator[None]:
        """While the caller holds the model's lock: ``model.encode_image`` answers from this cache
        (the tracker's public `step` stays the one code path that computes a click's mask)."""
        encode = model.encode_image
        model.encode_image = lambda images: self._encode(encode, images)  # type: ignore[method-assign]
        try:
            yield
        finally:
            del model.encode_image
