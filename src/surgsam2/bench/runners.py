"""The inputs every side shares (clip, weights) and the sides, each driven one frame at a time."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from surgsam2.bench.config import CLIP_INSTRUMENTS, BenchConfig, OfficialUnavailableError
from surgsam2.bench.profile import StageTimer
from surgsam2.model.sam2 import SAM2Model

OFFICIAL_INSTALL_HINT = (
    "SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0 hydra-core iopath"
)
# The object-score head's last bias on random weights: objects count as visible (random weights
# would call every object absent and track constant "no object" logits).
RANDOM_OBJECT_SCORE_BIAS = 10.0
# Scale of the noise added to the official model's initial weights, so that no part is zero.
RANDOM_WEIGHT_NOISE = 0.02
# The official predictor's methods timed as our stages (--profile).
OFFICIAL_STAGES = {
    "forward_image": "encode_image",
    "_prepare_memory_conditioned_features": "memory_assembly",
    "_forward_sam_heads": "decoder",
    "_encode_new_memory": "memory_encoder",
    "_get_orig_video_res_output": "output",
}


@dataclass
class BenchClip:
    """Decoded frames (what every side sees), the frame-0 prompt masks, and the JPEG folder."""

    frames: list[np.ndarray]
    masks: dict[int, np.ndarray]
    jpeg_dir: Path | None


def make_clip(image_size: int, num_frames: int, objects: int, seed: int, jpeg_dir: Path | None) -> BenchClip:
    """A synthetic clip with ``objects`` objects (ids 1..objects) all visible on frame 0, at
    image_size^2: one instrument each, up to `CLIP_INSTRUMENTS`; beyond that, objects are prompted
    with the instruments' masks again, in turn (each tracked on its own: the same work).

    With ``jpeg_dir`` the frames are written as JPEG (quality 95) and decoded back with PIL,
    exactly as the official loader reads them; the decoded frames are what ours gets too.
    """
    from PIL import Image

    from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video

    instruments = min(objects, CLIP_INSTRUMENTS)
    for attempt in range(32):
        config = SyntheticVideoConfig(
            width=image_size,
            height=image_size,
            num_frames=num_frames,
            min_instruments=instruments,
            max_instruments=instruments,
            reentry_probability=0.0,
            late_entry_probability=0.0,
            seed=seed + attempt,
        )
        video = generate_synthetic_video(config)
        masks = {obj_id: video.id_maps[0] == obj_id for obj_id in sorted(video.object_classes)}
        # Every object needs a usable prompt: at least 0.1% of the frame on frame 0.
        if len(masks) == instruments and all(mask.mean() >= 1e-3 for mask in masks.values()):
            break
    else:
        raise ValueError(f"could not draw a clip with {instruments} instruments all visible on frame 0")
    drawn = list(masks.values())
    masks = {obj_id: drawn[(obj_id - 1) % instruments] for obj_id in range(1, objects + 1)}
    frames = list(video.frames)
    if jpeg_dir is not None:
        jpeg_dir.mkdir(parents=True, exist_ok=True)
        decoded = []
        for index, frame in enumerate(frames):
            path = jpeg_dir / f"{index:05d}.jpg"
            Image.fromarray(frame).save(path, quality=95)
            with Image.open(path) as image:
                decoded.append(np.array(image.convert("RGB")))
        frames = decoded
    return BenchClip(frames=frames, masks=masks, jpeg_dir=jpeg_dir)


def official_config_file(name: str) -> str:
    """The official package's config file of model ``name`` (sam2[.1]_hiera_*), else ValueError."""
    from surgsam2.model.configs import MODEL_CONFIGS

    if name not in MODEL_CONFIGS or not name.startswith(("sam2_", "sam2.1_")):
        raise ValueError(f"--against-official needs an official config (sam2[.1]_hiera_*), got {name!r}")
    family = "sam2.1" if name.startswith("sam2.1") else "sam2"
    return f"configs/{family}/{name}.yaml"


def build_official_predictor(
    name: str, image_size: int, seed: int, device: torch.device | str = "cpu", vos_optimized: bool = False
) -> Any:
    """The official SAM2VideoPredictor with seeded random weights (perturbed so no part is
    trivially zero), in fp32 on ``device``, holes not filled (the official code needs its CUDA
    extension for that). The weights are drawn on CPU, so they are the same on every device.
    ``vos_optimized``: its VOS mode (SAM2VideoPredictorVOS, parts compiled on first use).
    Raises OfficialUnavailableError with the install command when sam2 is missing."""
    config_file = official_config_file(name)
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as error:
        raise OfficialUnavailableError(
            f"--against-official needs the official sam2 package ({error}); install it with: {OFFICIAL_INSTALL_HINT}"
        ) from None
    torch.manual_seed(seed)
    predictor = build_sam2_video_predictor(
        config_file,
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={image_size}", "++model.fill_hole_area=0"],
        vos_optimized=vos_optimized,
    )
    predictor.fill_hole_area = 0
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in predictor.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * RANDOM_WEIGHT_NOISE)
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(RANDOM_OBJECT_SCORE_BIAS)
    return predictor.to(device).eval()


def build_our_model(config: BenchConfig, checkpoint: Path | None) -> SAM2Model:
    """Ours with the shared weights (``checkpoint``) or a seeded random initialisation."""
    from surgsam2.model.checkpoint import load_model

    torch.manual_seed(config.seed)
    model = load_model(
        config.model, checkpoint=checkpoint, image_size=config.image_size, dtype=config.dtype, device=config.device
    )
    if checkpoint is None:
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(RANDOM_OBJECT_SCORE_BIAS)
    return model


def ours_tracker_options(config: BenchConfig) -> dict[str, Any]:
    """The `Tracker` options of the side "ours" that its config asks for (--steady-frames)."""
    return {"bank": "ring", "steady_frames": True} if config.steady_frames else {}


class Runner(Protocol):
    """One side of the bench: ``step(i)`` tracks frame i and returns the masks by object id."""

    name: str

    def step(self, index: int) -> dict[int, np.ndarray]: ...

    def state_bytes(self) -> tuple[int, int]: ...

    def close(self) -> None: ...


class OursRunner:
    """Our streaming tracker under side ``name``; ``tracker_options`` go to `Tracker` (e.g.
    ``cache_memory_keys=False`` for the no-key-cache baseline). With a ``timer`` the tracker
    reports its stages to it (its stage hook)."""

    def __init__(
        self,
        name: str,
        model: SAM2Model,
        clip: BenchClip,
        memory: str,
        timer: StageTimer | None,
        like_official: bool = False,
        **tracker_options: Any,
    ) -> None:
        from surgsam2.tracking.prompts import Prompt
        from surgsam2.tracking.tracker import Tracker

        self.name = name
        self.clip = clip
        # Next to the official predictor: its post-processing on CPU (no hole filling) and its
        # pointer encodings (scaled by the clip length on clips under 16 frames), so the masks
        # of the sides can be compared as a sanity check.
        self.tracker = Tracker(
            model,
            memory=memory,
            fill_hole_area=0 if like_official else None,
            num_frames=len(clip.frames) if like_official else None,
            stage_hook=timer,
            **tracker_options,
        )
        self.prompts = {obj_id: Prompt(mask=mask) for obj_id, mask in clip.masks.items()}

    def step(self, index: int) -> dict[int, np.ndarray]:
        result = self.tracker.step(self.clip.frames[index], self.prompts if index == 0 else None)
        return result.masks

    def state_bytes(self) -> tuple[int, int]:
        """(state held between frames, preloaded frames: none)."""
        return self.tracker.state_bytes(), 0

    def close(self) -> None:
        """Nothing to release."""


def _tensor_bytes(container: Any, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable through dicts, lists and tuples."""
    if isinstance(container, torch.Tensor):
        storage = container.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(container, dict):
        return sum(_tensor_bytes(value, seen) for value in container.values())
    if isinstance(container, (list, tuple)):
        return sum(_tensor_bytes(value, seen) for value in container)
    return 0


class OfficialRunner:
    """The official video predictor, as its users drive it: init_state on the JPEG folder,
    add_new_mask per object on frame 0, then propagate_in_video advanced one frame per step.
    bf16 runs under ``torch.autocast(<device type>, dtype=torch.bfloat16)``, as users do."""

    name = "official"

    def __init__(self, predictor: Any, clip: BenchClip, dtype: str, timer: StageTimer | None) -> None:
        import sam2.sam2_video_predictor as video_module
        import sam2.utils.misc as loader_module

        self.predictor = predictor
        self.dtype = dtype
        self.device_type = predictor.device.type
        # Its tqdm bars (frame loading, propagation) would interleave with our output: silenced
        # for this run only, restored by close().
        self._saved_tqdm = [(module, module.tqdm) for module in (video_module, loader_module)]
        for module, _ in self._saved_tqdm:
            module.tqdm = lambda iterable, *args, **kwargs: iterable
        with self._context():
            self.state = predictor.init_state(str(clip.jpeg_dir))
            for obj_id, mask in clip.masks.items():
                predictor.add_new_mask(self.state, frame_idx=0, obj_id=obj_id, mask=mask)
        self._frames = predictor.propagate_in_video(self.state)
        if timer is not None:
            for method, stage in OFFICIAL_STAGES.items():
                timer.wrap(predictor, method, stage)
            timer.wrap(predictor.memory_attention, "forward", "memory_attention")

    def _context(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.dtype == "bf16":
            stack.enter_context(torch.autocast(self.device_type, dtype=torch.bfloat16))
        return stack

    def step(self, index: int) -> dict[int, np.ndarray]:
        with self._context():
            frame_index, obj_ids, video_logits = next(self._frames)
            masks = (video_logits[:, 0] > 0).cpu().numpy()
        if frame_index != index:
            raise RuntimeError(f"official predictor yielded frame {frame_index}, expected {index}")
        return {obj_id: masks[row] for row, obj_id in enumerate(obj_ids)}

    def state_bytes(self) -> tuple[int, int]:
        """(state without the preloaded frames, the preloaded frames)."""
        seen: set[int] = set()
        frames = _tensor_bytes(self.state["images"], seen)
        rest = {key: value for key, value in self.state.items() if key != "images"}
        return _tensor_bytes(rest, seen), frames

    def close(self) -> None:
        """Stop its propagation and give the tqdm bars back."""
        self._frames.close()
        for module, saved in self._saved_tqdm:
            module.tqdm = saved


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
