"""Training clips from VOS-layout datasets, as SAM 2's VOS sampler draws them.

An epoch lists every annotated video of the given roots, ``multiplier`` times, and (SAM 2's
``frames_sampling_mult``) once per frame it has, so long videos are seen more often. Item
``(epoch, index)`` picks a random start in its video, takes ``num_frames`` frames ``frame_stride``
apart, and up to ``max_objects`` of the objects visible on the clip's first frame. Everything
random is drawn from ``default_rng([seed, epoch, index])``: an item is the same whichever process,
worker or order reads it, which is what makes resuming and multi-process sharding exact.

Frames are resized to a square ``image_size`` with Pillow's default filter and normalised with the
ImageNet statistics, exactly as the tracker prepares frames at inference
(`surgsam2.tracking.frames`); masks are resized with nearest-neighbour sampling.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from surgsam2.data.vos import VOSDataset, VOSVideo
from surgsam2.tracking.frames import IMAGENET_MEAN, IMAGENET_STD
from surgsam2.train.augment import augment_clip
from surgsam2.train.config import AugmentSection

# Random starts tried before scanning the video for a first frame with a visible object.
START_RETRIES = 20


@dataclass(frozen=True)
class ClipSpec:
    """What a clip dataset samples."""

    num_frames: int = 8
    image_size: int = 512
    max_objects: int = 3
    frame_stride: int = 1
    multiplier: int = 1
    frames_sampling_mult: bool = True
    used_object_ids: tuple[int, ...] | None = None

    @property
    def span(self) -> int:
        """Frames of the video a clip covers."""
        return (self.num_frames - 1) * self.frame_stride + 1


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size, with Pillow's default filter as the tracker's preprocessing."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size)))


def resize_id_map(id_map: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 id map -> size x size with nearest-neighbour sampling."""
    if id_map.shape == (size, size):
        return id_map
    return cv2.resize(id_map, (size, size), interpolation=cv2.INTER_NEAREST)


def normalise_frames(images: np.ndarray) -> torch.Tensor:
    """(T, S, S, 3) float RGB in [0, 1] -> (T, 3, S, S) float32 normalised with ImageNet statistics."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return ((tensor - mean) / std).contiguous()


class ClipDataset(Dataset):
    """Map-style dataset of training clips, indexed by ``(epoch, index)`` (or ``index``: epoch 0).

    Each item is a dict: ``frames`` (T, 3, S, S) float32 normalised, ``masks`` (T, O, S, S) bool
    with O = max_objects (padded), ``valid`` (O,) bool, and ``video`` / ``start`` / ``object_ids``
    for inspection. ``augment``: the clip augmentation settings, or None for none.
    """

    def __init__(
        self,
        roots: Sequence[str | Path],
        spec: ClipSpec,
        augment: AugmentSection | None = None,
        seed: int = 0,
    ) -> None:
        if not roots:
            raise ValueError("ClipDataset needs at least one dataset root")
        self.spec = spec
        self.augment = augment
        self.seed = int(seed)
        self.videos: list[VOSVideo] = []
        skipped: list[str] = []
        for root in roots:
            dataset = VOSDataset(root)
            if dataset.annotation_root is None:
                raise FileNotFoundError(f"{root}: no Annotations folder; training needs ground-truth masks")
            for video in dataset:
                if not video.has_annotations:
                    skipped.append(f"{video.name} (no annotations)")
                elif len(video) < spec.span:
                    skipped.append(f"{video.name} ({len(video)} frames < {spec.span})")
                else:
                    self.videos.append(video)
        if skipped:
            warnings.warn(f"ClipDataset skips {len(skipped)} videos: {', '.join(skipped[:5])}", stacklevel=2)
        if not self.videos:
            raise ValueError(
                f"no usable videos in {', '.join(str(r) for r in roots)}: need annotated videos of at least "
                f"{spec.span} frames"
            )
        entries: list[int] = []
        for video_index, video in enumerate(self.videos):
            repeats = len(video) if spec.frames_sampling_mult else 1
            entries.extend([video_index] * repeats)
        self.entries = entries * spec.multiplier

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------------------------
    def _visible_ids(self, id_map: np.ndarray) -> list[int]:
        ids = [int(i) for i in np.unique(id_map) if i != 0]
        if self.spec.used_object_ids is not None:
            ids = [i for i in ids if i in self.spec.used_object_ids]
        return ids

    def _choose_start(self, video: VOSVideo, rng: np.random.Generator) -> tuple[int, list[int]]:
        """A start position whose frame shows at least one object, and those objects' ids."""
        last_start = len(video) - self.spec.span
        for _ in range(START_RETRIES):
            start = int(rng.integers(0, last_start + 1))
            ids = self._visible_ids(video.read_annotation(start))
            if ids:
                return start, ids
        offset = int(rng.integers(0, last_start + 1))
        for step in range(last_start + 1):
            start = (offset + step) % (last_start + 1)
            ids = self._visible_ids(video.read_annotation(start))
            if ids:
                return start, ids
        raise ValueError(f"video {video.name!r}: no frame that can start a clip shows an object to train on")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, object]:
        epoch, index = (0, key) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        if not 0 <= index < len(self.entries):
            raise IndexError(f"clip index {index} out of range 0..{len(self.entries) - 1}")
        spec = self.spec
        rng = np.random.default_rng([self.seed, epoch, index])
        video = self.videos[self.entries[index]]
        start, visible = self._choose_start(video, rng)
        count = min(len(visible), spec.max_objects)
        object_ids = [int(i) for i in rng.choice(visible, size=count, replace=False)]

        positions = [start + step * spec.frame_stride for step in range(spec.num_frames)]
        size = spec.image_size
        frames = np.stack([resize_frame(video.read_frame(p), size) for p in positions])
        id_maps = np.stack([resize_id_map(video.read_annotation(p), size) for p in positions])
        if self.augment is not None:
            images, id_maps = augment_clip(frames, id_maps, object_ids, self.augment, rng)
        else:
            images = frames.astype(np.float32) / np.float32(255.0)

        masks = np.zeros((spec.num_frames, spec.max_objects, size, size), dtype=bool)
        for slot, object_id in enumerate(object_ids):
            masks[:, slot] = id_maps == object_id
        valid = np.zeros(spec.max_objects, dtype=bool)
        valid[:count] = True
        return {
            "frames": normalise_frames(images),
            "masks": torch.from_numpy(masks),
            "valid": torch.from_numpy(valid),
            "video": video.name,
            "start": start,
            "object_ids": object_ids,
        }


def collate_clips(items: Sequence[dict[str, object]]) -> dict[str, object]:
    """Stack clip items: frames (B, T, 3, S, S), masks (B, T, O, S, S), valid (B, O); lists for the rest."""
    return {
        "frames": torch.stack([item["frames"] for item in items]),  # type: ignore[misc]
        "masks": torch.stack([item["masks"] for item in items]),  # type: ignore[misc]
        "valid": torch.stack([item["valid"] for item in items]),  # type: ignore[misc]
        "video": [item["video"] for item in items],
        "start": [item["start"] for item in items],
        "object_ids": [item["object_ids"] for item in items],
    }


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """The (epoch, index) keys of each training step's batch on one process, from ``start_step``.

    The item stream is the concatenation of per-epoch permutations (``default_rng([seed, epoch])``);
    global step s takes the next ``batch_size * world_size`` items and process ``rank`` its own
    contiguous ``batch_size`` of them, like a DistributedSampler without padding. Because a step's
    batch is a function of the step alone, resuming at any step continues the same stream.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        total_steps: int,
        seed: int = 0,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("StepBatchSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 2:
                self._permutations.pop(min(self._permutations))
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)
            else:
                order = np.arange(self.dataset_size)
            self._permutations[epoch] = order
        return self._permutations[epoch]

    def keys_for_step(self, step: int) -> list[tuple[int, int]]:
        """The batch of process ``rank`` at global step ``step`` (0-based)."""
        first = (step * self.world_size + self.rank) * self.batch_size
        keys = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.dataset_size)
            keys.append((epoch, int(self._order(epoch)[offset])))
        return keys

    def epoch_of_step(self, step: int) -> float:
        """Epochs of data consumed (all processes) when step ``step`` (0-based) starts."""
        return step * self.world_size * self.batch_size / self.dataset_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.keys_for_step(step)


def make_loader(dataset: ClipDataset, sampler: StepBatchSampler, num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` following ``sampler`` (workers=0: load in the main process)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_clips,
        num_workers=num_workers,
        persistent_workers=False,
    )


__all__ = [
    "ClipDataset",
    "ClipSpec",
    "StepBatchSampler",
    "collate_clips",
    "make_loader",
    "normalise_frames",
    "resize_frame",
    "resize_id_map",
]
