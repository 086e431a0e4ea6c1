"""The training loop: data, clip forward, AdamW, checkpoints, resume, logging, DDP.

`run_training(config)` runs a whole training (or continues one with ``resume=True``). The same
call works in one process or under ``torchrun --nproc_per_node N`` (DDP: gloo on CPU, NCCL on
CUDA; each process draws its own clips, rank 0 logs and writes checkpoints).

Reproducibility: the model is initialised under ``train.seed``; step s of process r reseeds torch
(dropout, drop-path) and draws its prompts from seeds derived from (seed, s, r); its clips are a
function of the step (`StepBatchSampler`). So a resumed run continues bit-exactly: with the same
config, step s after a resume computes the same loss as step s of an uninterrupted run.

Files under ``train.out_dir``:
- ``checkpoints/model_step0000500.pt``: the weights in the official SAM 2 layout (loadable by
  `surgsam2.load_model` and the official code), and ``checkpoints/trainer_step0000500.pt``: the
  optimizer, scheduler, step and RNG states (tensors and plain data only: it loads with
  ``weights_only=True``); the newest ``keep_checkpoints`` pairs are kept;
- ``checkpoints/model_final.pt``: the weights at the end of training, never written by a run that
  diverged (a non-finite loss, gradient or weight stops it with `TrainingDiverged` before the
  weights change or are saved; the checkpoints written before stay);
- ``config.yaml`` (the resolved config), ``metrics.jsonl`` (per logged step: losses per object,
  lr, gradient norm, throughput) and ``loss.png`` (the curves).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from surgsam2.data.outputs import OutputFolder, atomic_file
from surgsam2.memory.policies import make_policy
from surgsam2.model.checkpoint import load_weights, read_torch_file, save_checkpoint
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model
from surgsam2.runtime.distributed import ProcessGroup
from surgsam2.train.config import TrainConfig
from surgsam2.train.dataset import ClipDataset, ClipSpec, StepBatchSampler, make_loader
from surgsam2.train.losses import LOSS_NAMES, weighted_total
from surgsam2.train.metrics import MetricsLog, plot_loss_curves
from surgsam2.train.model_forward import ClipForward
from surgsam2.train.optim import build_optimizer, build_scheduler

CHECKPOINT_DIR = "checkpoints"
# What a run writes into its output folder (listed as ours there, so a later run may replace them).
RUN_ENTRIES = (CHECKPOINT_DIR, "config.yaml", "metrics.jsonl", "loss.png")
MODEL_FILE = "model_step{step:07d}.pt"
STATE_FILE = "trainer_step{step:07d}.pt"
FINAL_MODEL_FILE = "model_final.pt"
STATE_FORMAT = "surgsam2-trainer-state"
STATE_VERSION = 1
# A rank waits at most this long for the others (a checkpoint save, a slow step).
TRAINING_TIMEOUT = timedelta(minutes=30)
_STATE_PATTERN = re.compile(r"trainer_step(\d+)\.pt$")
_STATE_KEYS = ("step", "world_size", "optimizer", "scheduler", "rng", "config")
# Keys that may change between a run and its resumption without changing the result.
# (train.num_threads is not one: another thread count may change the last bits of reductions.)
_RESUME_NEUTRAL_KEYS = {
    "train.progress", "train.out_dir", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "data.num_workers",
}  # fmt: skip
# Purposes of the per-step derived seeds.
_SEED_TORCH, _SEED_PROMPTS = 0, 1


class TrainingDiverged(ValueError):
    """A step whose loss or gradient is not finite: the run stops before the weights are updated.

    A ValueError, so the command line reports it in one line (exit 2): divergence comes from the
    run's settings (learning rate, loss weights) or its data, and the last checkpoint is kept.
    """


@dataclass
class TrainSummary:
    """What a call of `run_training` did (on this process; losses are averaged over processes)."""

    out_dir: Path
    start_step: int
    end_step: int
    total_steps: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> loss
    seconds: float = 0.0
    final_checkpoint: Path | None = None


# ------------------------------------------------------------------------------------------
# Seeds and RNG state
# ------------------------------------------------------------------------------------------
def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs, platforms and processes)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain numbers (loadable with weights_only=True)."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {
            "version": int(python_state[0]),
            "state": torch.tensor(python_state[1], dtype=torch.int64),
            "gauss": python_state[2],
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    python_internal = tuple(int(v) for v in python_state["state"].tolist())
    random.setstate((python_state["version"], python_internal, python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------
# Checkpoint files
# ------------------------------------------------------------------------------------------
def checkpoint_files(out_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(model file, trainer-state file) of ``step``."""
    directory = Path(out_dir) / CHECKPOINT_DIR
    return directory / MODEL_FILE.format(step=step), directory / STATE_FILE.format(step=step)


def checkpoint_steps(out_dir: str | Path) -> list[int]:
    """Steps that have both a model and a trainer-state file, ascending."""
    directory = Path(out_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    steps = []
    for path in directory.iterdir():
        match = _STATE_PATTERN.match(path.name)
        if match and checkpoint_files(out_dir, int(match.group(1)))[0].is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read a trainer-state file with the models' guarded loader (weights_only, one-line errors)."""
    path = Path(path)
    state = read_torch_file(path, what="trainer state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a surgsam2 trainer-state file")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"{path}: incomplete trainer-state file (missing {', '.join(missing)})")
    return state


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (ignoring resume-neutral keys)."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    keys = sorted(set(old_flat) | set(new_flat))
    return [k for k in keys if k not in _RESUME_NEUTRAL_KEYS and old_flat.get(k) != new_flat.get(k)]


# ------------------------------------------------------------------------------------------
# Building the run
# ------------------------------------------------------------------------------------------
def build_train_model(config: TrainConfig) -> SAM2Model:
    """The model to train: random init (under the current torch seed) or ``init_checkpoint``."""
    model_config = get_config(config.model.name, config.model.image_size)
    if config.model.drop_path_rate != model_config.trunk.drop_path_rate:
        trunk = dataclasses.replace(model_config.trunk, drop_path_rate=config.model.drop_path_rate)
        model_config = model_config.replace(trunk=trunk)
    model = SAM2Model(model_config)
    if config.model.init_checkpoint:
        load_weights(model, config.model.init_checkpoint)
    return model


def build_dataset(config: TrainConfig) -> ClipDataset:
    data = config.data
    spec = ClipSpec(
        num_frames=data.num_frames,
        image_size=config.model.image_size,
        max_objects=data.max_objects,
        frame_stride=data.frame_stride,
        multiplier=data.multiplier,
        frames_sampling_mult=data.frames_sampling_mult,
        used_object_ids=tuple(data.used_object_ids) if data.used_object_ids is not None else None,
    )
    return ClipDataset(data.roots, spec, augment=config.augment, seed=config.train.seed)


def total_steps_of(config: TrainConfig, dataset_size: int, world_size: int) -> int:
    """``max_steps``, else enough steps to see ``epochs`` x the dataset (all processes together)."""
    if config.train.max_steps is not None:
        return config.train.max_steps
    return max(1, math.ceil(config.train.epochs * dataset_size / (config.train.batch_size * world_size)))


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device`` (any CPU runs it; fast with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
class _Trainer:
    """State of one run; `run_training` is the entry point."""

    def __init__(self, config: TrainConfig, context: ProcessGroup) -> None:
        self.config = config
        self.context = context
        self.device = context.device
        self.out_dir = Path(config.train.out_dir)

    def _say(self, message: str) -> None:
        if self.context.is_main:
            print(f"[surgsam2 train] {message}", flush=True)

    def setup(self, resume: bool) -> None:
        config, context = self.config, self.context
        existing = checkpoint_steps(self.out_dir)
        self.resume_step: int | None = None
        if resume and existing:
            self.resume_step = existing[-1]
        elif resume:
            self._say(f"--resume: no checkpoint in {self.out_dir / CHECKPOINT_DIR}, starting a fresh run")
        elif existing:
            raise ValueError(
                f"{self.out_dir / CHECKPOINT_DIR} already holds checkpoints (up to step {existing[-1]}): "
                "pass --resume to continue that run, or choose another --out"
            )

        seed_everything(config.train.seed)
        self.model = build_train_model(config).to(self.device)
        if self.resume_step is not None:
            load_weights(self.model, checkpoint_files(self.out_dir, self.resume_step)[0])
        self.model.train()
        policy = make_policy(config.model.train_memory_policy, config.model.num_frame_to_prune)
        self.clip_forward = ClipForward(
            self.model, config.prompts, config.loss, policy, high_res_dropout=config.model.high_res_dropout
        )
        self.forward_module: torch.nn.Module = self.clip_forward
        if context.is_distributed:
            self.forward_module = DistributedDataParallel(
                self.clip_forward,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.dataset = build_dataset(config)
        self.total_steps = total_steps_of(config, len(self.dataset), context.world_size)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, self.total_steps)
        self.start_step = 0
        if self.resume_step is not None:
            state = load_trainer_state(checkpoint_files(self.out_dir, self.resume_step)[1])
            if int(state["world_size"]) != context.world_size:
                warnings.warn(
                    f"resuming a run of {state['world_size']} processes with {context.world_size}: "
                    "training continues, but not bit-exactly",
                    stacklevel=2,
                )
            changed = config_differences(state["config"], config.to_dict())
            if changed:
                warnings.warn(f"resuming with a changed config ({', '.join(changed)})", stacklevel=2)
            self._restore(state, checkpoint_files(self.out_dir, self.resume_step)[1])

        self.use_bf16 = config.train.amp == "bf16" and bf16_supported(self.device)
        if config.train.amp == "bf16" and not self.use_bf16:
            warnings.warn(f"bf16 autocast is not supported on {self.device}; training in fp32", stacklevel=2)
        self.metrics: MetricsLog | None = None
        if context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            resumed_at = self.start_step if self.resume_step is not None else None
            self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", resume_step=resumed_at)

    def _restore(self, state: Mapping[str, Any], path: Path) -> None:
        """Optimizer, scheduler, RNG and step from a trainer state; a one-line error if they do not fit."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_rng_state(state["rng"])
            self.start_step = int(state["step"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            lines = str(error).strip().splitlines()
            detail = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
            raise ValueError(
                f"{path}: trainer state does not fit this run ({detail}); start a fresh run in another --out"
            ) from None

    # --------------------------------------------------------------------------------
    def _autocast(self):
        if not self.use_bf16:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def train_step(self, step_index: int, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimizer step on this process's batch; returns the metrics averaged over processes."""
        config, context = self.config, self.context
        seed = config.train.seed
        torch.manual_seed(derived_seed(seed, step_index, context.rank, _SEED_TORCH))
        prompt_seed = derived_seed(seed, step_index, context.rank, _SEED_PROMPTS)
        frames = batch["frames"].to(self.device, non_blocking=True)
        masks = batch["masks"].to(self.device, non_blocking=True)
        valid = batch["valid"].to(self.device, non_blocking=True)
        with self._autocast():
            outputs = self.forward_module(frames, masks, valid, prompt_seed)
        # SAM 2 normalises by the objects per process, averaged over processes.
        num_objects = context.all_reduce_mean(outputs["num_objects"].detach().float()).clamp(min=1.0)
        per_object = {name: outputs[name].float() / num_objects for name in LOSS_NAMES}
        loss = weighted_total(per_object, config.loss)
        # Averaged over processes before the backward pass, so every process sees a NaN of any
        # one of them and all stop together, before the weights change.
        logged = torch.stack(
            [loss.detach(), *(per_object[name].detach() for name in LOSS_NAMES),
             outputs["num_predictions"].detach().float(), outputs["num_objects"].detach().float()]
        )  # fmt: skip
        logged = context.all_reduce_mean(logged).tolist()
        self._stop_if_diverged(step_index + 1, dict(zip(("loss", *LOSS_NAMES), logged)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if config.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in parameters]))
        # Gradients are averaged over processes by the backward pass: the same norm everywhere.
        self._stop_if_diverged(step_index + 1, {"gradient norm": float(grad_norm)})
        lr = self.optimizer.param_groups[0]["lr"]  # the highest group's lr, used by this step
        self.optimizer.step()
        self.scheduler.step()
        record = {"loss": logged[0]}
        record.update({name: value for name, value in zip(LOSS_NAMES, logged[1:])})
        record["predictions"] = logged[-2]
        record["objects"] = logged[-1]
        record["grad_norm"] = float(grad_norm)
        record["lr"] = lr
        return record

    def _stop_if_diverged(self, step: int, values: Mapping[str, float]) -> None:
        """Raise `TrainingDiverged` naming the non-finite ``values`` of ``step`` and the last checkpoint."""
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if not bad:
            return
        saved = checkpoint_steps(self.out_dir)
        kept = (
            f"the last checkpoint, {checkpoint_files(self.out_dir, saved[-1])[0]}, is kept"
            if saved else "no checkpoint was written before it"
        )  # fmt: skip
        terms = ", ".join(f"{name} {value}" for name, value in bad.items())
        raise TrainingDiverged(
            f"training diverged at step {step}: non-finite {terms}; no final model is written and {kept}; "
            "lower optim.lr or check the loss weights and the data"
        )

    def save(self, step: int) -> None:
        """Write the model and trainer state of ``step`` (rank 0), prune old checkpoints."""
        self.context.check_in_sync(self.model)
        broken = [name for name, value in self.model.state_dict().items() if not bool(torch.isfinite(value).all())]
        if broken:  # the weights are in sync, so every process stops here
            self._stop_if_diverged(step, {f"weights ({broken[0]}, {len(broken)} tensors)": math.nan})
        if self.context.is_main:
            model_path, state_path = checkpoint_files(self.out_dir, step)
            save_checkpoint(self.model, model_path, extra={"train_step": step, "train_config": self.config.to_dict()})
            state = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "step": step,
                "total_steps": self.total_steps,
                "world_size": self.context.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "config": self.config.to_dict(),
                "model_file": model_path.name,
            }
            with atomic_file(state_path) as temporary:
                torch.save(state, temporary)
            keep = self.config.train.keep_checkpoints
            if keep > 0:
                for old in checkpoint_steps(self.out_dir)[:-keep]:
                    for path in checkpoint_files(self.out_dir, old):
                        path.unlink(missing_ok=True)
            if self.metrics is not None:
                plot_loss_curves(self.metrics.records(), self.out_dir / "loss.png")
        self.context.barrier()

    def run(self, stop_after: int | None) -> TrainSummary:
        config, context = self.config, self.context
        end_step = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        summary = TrainSummary(self.out_dir, self.start_step, self.start_step, self.total_steps)
        if self.start_step >= end_step:
            self._say(f"nothing to do: the run is at step {self.start_step} of {self.total_steps}")
            return summary
        sampler = StepBatchSampler(
            len(self.dataset), config.train.batch_size, end_step, seed=config.train.seed,
            start_step=self.start_step, rank=context.rank, world_size=context.world_size,
        )  # fmt: skip
        loader = make_loader(self.dataset, sampler, config.data.num_workers)
        self._say(
            f"{config.model.name} at {config.model.image_size} px, {len(self.dataset)} clips per epoch, "
            f"batch {config.train.batch_size} x {context.world_size} process(es), steps "
            f"{self.start_step + 1}..{end_step} of {self.total_steps}, amp {'bf16' if self.use_bf16 else 'off'}, "
            f"memory policy {config.model.train_memory_policy}, device {self.device}"
        )
        progress = None
        if context.is_main and config.train.progress:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.start_step, desc="train", unit="step",
                            dynamic_ncols=True)  # fmt: skip
        started = time.perf_counter()
        smoothed: float | None = None
        clips_per_step = config.train.batch_size * context.world_size
        tick = time.perf_counter()
        try:
            for step_index, batch in zip(range(self.start_step, end_step), loader):
                step = step_index + 1
                record = self.train_step(step_index, batch)
                now = time.perf_counter()
                step_seconds = now - tick
                record = {
                    "step": step,
                    "epoch": round(sampler.epoch_of_step(step), 4),
                    **record,
                    "step_s": round(step_seconds, 4),
                    "clips_per_s": round(clips_per_step / max(step_seconds, 1e-9), 3),
                }
                summary.losses[step] = record["loss"]
                summary.end_step = step
                smoothed = record["loss"] if smoothed is None else 0.9 * smoothed + 0.1 * record["loss"]
                if self.metrics is not None and (step % config.train.log_every == 0 or step == end_step):
                    self.metrics.write(record)
                if progress is not None:
                    progress.set_postfix(loss=f"{smoothed:.3f}", clips_s=f"{record['clips_per_s']:.2f}",
                                         lr=f"{record['lr']:.2e}")  # fmt: skip
                    progress.update(1)
                if step % config.train.checkpoint_every == 0 or step == self.total_steps:
                    self.save(step)
                tick = time.perf_counter()
        finally:
            if progress is not None:
                progress.close()
        summary.seconds = time.perf_counter() - started
        if summary.end_step == self.total_steps:
            context.check_in_sync(self.model)
            if context.is_main:
                final = self.out_dir / CHECKPOINT_DIR / FINAL_MODEL_FILE
                save_checkpoint(self.model, final, extra={"train_step": self.total_steps,
                                                          "train_config": config.to_dict()})  # fmt: skip
                summary.final_checkpoint = final
            context.barrier()
        if self.metrics is not None:
            plot_loss_curves(self.metrics.records(), self.out_dir / "loss.png")
        done = summary.end_step - summary.start_step
        last_loss = summary.losses.get(summary.end_step, float("nan"))
        self._say(
            f"ran steps {summary.start_step + 1}..{summary.end_step} in {summary.seconds:.1f} s "
            f"({summary.seconds / max(done, 1):.2f} s/step); last loss {last_loss:.4f}"
            + (f"; weights: {summary.final_checkpoint}" if summary.final_checkpoint else "")
        )
        return summary


def _training_inputs(config: TrainConfig) -> dict[str, list[str]]:
    """What a training run reads, by config key: its output folder may not touch any of them."""
    inputs = {"data.roots": list(config.data.roots)}
    if config.model.init_checkpoint:
        inputs["model.init_checkpoint"] = [config.model.init_checkpoint]
    return inputs


def run_training(
    config: TrainConfig, resume: bool = False, stop_after: int | None = None, config_file: str | Path | None = None
) -> TrainSummary:
    """Train (or, with ``resume``, continue from the newest checkpoint in ``train.out_dir``).

    ``stop_after``: end after this global step (as if interrupted there; the schedule still spans
    the configured number of steps). ``config_file``: the YAML the config came from (protected
    like the data: the output folder may not hold it). Under torchrun, every process calls this.
    """
    config.validate()
    context = ProcessGroup.join(config.train.device, timeout=TRAINING_TIMEOUT)
    threads_before = torch.get_num_threads()
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    try:
        with warnings.catch_warnings():
            # DDP notes that depthwise-conv weight gradients come in another memory layout than
            # its buckets: a copy per step on small tensors, not an error.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            with contextlib.ExitStack() as stack:
                if context.is_main:  # one run at a time in an output folder, never inside its inputs
                    inputs = {**_training_inputs(config), "--config": [config_file] if config_file else []}
                    folder = stack.enter_context(OutputFolder(config.train.out_dir, inputs=inputs, command="train"))
                    for name in RUN_ENTRIES:  # never replace a file of that name we did not write
                        folder.claim(name, replace_own=True)
                trainer = _Trainer(config, context)
                trainer.setup(resume)
                if context.is_main:
                    # Listed as ours before the first step: a run killed without cleanup (SIGKILL,
                    # power loss) leaves a folder that `--resume` accepts.
                    folder.record(RUN_ENTRIES)
                return trainer.run(stop_after)
    finally:
        torch.set_num_threads(threads_before)
        context.leave()


__all__ = [
    "TrainSummary",
    "TrainingDiverged",
    "build_dataset",
    "build_train_model",
    "checkpoint_files",
    "checkpoint_steps",
    "config_differences",
    "derived_seed",
    "load_trainer_state",
    "restore_rng_state",
    "rng_state",
    "run_training",
    "seed_everything",
    "total_steps_of",
]
