"""Defects of issue 13 in checkpoints, image sizes and training: each bad input is refused in one line.

Defects covered (one test each, in this order):
1. a checkpoint of NaNs runs and writes empty masks with exit 0;
2. a checkpoint of int64 tensors runs and writes empty masks with exit 0;
3. a checkpoint whose metadata says ``image_size: 100000`` gets the process killed for memory;
4. ``--image-size 32000`` gets the process killed for memory;
5. refused malicious pickles say "truncated or corrupt?" (torch 2.13 reworded its refusal);
6. training with ``optim.lr=.inf`` exits 0 and writes ``model_final.pt``;
7. training with a NaN loss weight exits 0 and writes ``model_final.pt``;
8. a non-finite training loss does not stop the run (it must: non-zero exit, the last good
   checkpoint kept, no ``model_final.pt``);
9. a corrupt trainer state on ``--resume`` is a traceback (trainer-state files must be loaded with
   the same guarded loader as models);
10. a training run into its own data or into a folder another run is writing is not refused;
11. a training run replaces a config.yaml / metrics.jsonl it did not write (its own --config too).

Everything runs the `nano` model (64 px for training) on CPU with one thread.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from held_output import held_output_folder

from surgsam2.cli import main
from surgsam2.data.outputs import OutputError
from surgsam2.data.synthetic import write_synthetic_dataset
from surgsam2.model import checkpoint as checkpoint_module
from surgsam2.model.checkpoint import CheckpointError, load_model, load_weights, read_checkpoint, save_checkpoint
from surgsam2.model.configs import get_config
from surgsam2.model.sam2 import SAM2Model
from surgsam2.train import trainer as trainer_module
from surgsam2.train.config import ConfigError, load_config
from surgsam2.train.trainer import TrainingDiverged, load_trainer_state, run_training

# The first-listed key of the nano state dict, which error messages name first.
FIRST_KEY = "maskmem_tpos_enc"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One CPU thread: the machine is shared and these models are tiny."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nano_state() -> dict[str, torch.Tensor]:
    """Seeded random weights of the nano model."""
    torch.manual_seed(3)
    return SAM2Model(get_config("nano")).state_dict()


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("defect_data") / "synthetic"
    write_synthetic_dataset(root, videos=2, frames=10, size=(96, 80), seed=11)
    return root


def write_train_config(path: Path, root: Path, out_dir: Path) -> Path:
    """A tiny run: nano at 64 px, 3-frame clips, 2 clips per step, 4 steps, checkpoints at 2 and 4."""
    values = {
        "model": {"name": "nano", "image_size": 64},
        "data": {"roots": [str(root)], "num_frames": 3, "max_objects": 2},
        "prompts": {"num_correction_points": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"batch_size": 2, "max_steps": 4, "checkpoint_every": 2, "amp": "off", "seed": 5,
                  "out_dir": str(out_dir), "progress": False, "num_threads": 1},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(values))
    return path


def one_line(error: BaseException) -> str:
    """The error's message, asserted to be one line."""
    message = str(error)
    assert "\n" not in message, message
    return message


@pytest.fixture
def no_model_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if `load_model` gets as far as building a network (allocating)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built: the size was not checked before allocating")

    monkeypatch.setattr(checkpoint_module, "SAM2Model", refuse)


# ------------------------------------------------------------------------------------------
# Checkpoints and image sizes
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nan_checkpoint_is_refused(tmp_path: Path, nano_state: dict[str, torch.Tensor], bad_value: float) -> None:
    """Defect: "A checkpoint of NaNs, or of int64 tensors, runs and writes empty masks with exit 0"."""
    state = {key: value.clone() for key, value in nano_state.items()}
    state["no_mem_embed"][0, 0, 3] = bad_value
    path = tmp_path / "nan.pt"
    torch.save({"model": state}, path)
    for load in (read_checkpoint, lambda p: load_model("nano", checkpoint=p),
                 lambda p: load_weights(SAM2Model(get_config("nano")), p)):  # fmt: skip
        with pytest.raises(CheckpointError, match=r"nan\.pt: 1 tensors hold NaN or infinite values \(no_mem_embed\)"):
            load(path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    one_line(caught.value)


def test_int64_checkpoint_is_refused(tmp_path: Path, nano_state: dict[str, torch.Tensor]) -> None:
    """Defect: "A checkpoint of NaNs, or of int64 tensors, runs and writes empty masks with exit 0"."""
    path = tmp_path / "int64.pt"
    torch.save({"model": {key: value.to(torch.int64) for key, value in nano_state.items()}}, path)
    expected = rf"int64\.pt: {len(nano_state)} tensors are not floating point .*\({FIRST_KEY} \(int64\)"
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_model("nano", checkpoint=path)
    one_line(caught.value)
    with pytest.raises(CheckpointError, match=expected):
        load_weights(SAM2Model(get_config("nano")), path)


def test_metadata_image_size_100000_is_refused_before_allocating(
    tmp_path: Path, nano_state: dict[str, torch.Tensor], no_model_built: None
) -> None:
    """Defect: "A checkpoint whose metadata says `image_size: 100000` gets the process killed for memory"."""
    path = tmp_path / "huge.pt"
    torch.save({"model": nano_state, "surgsam2": {"format_version": 1, "config": "nano", "image_size": 100000}}, path)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"huge\.pt: metadata image_size must be a multiple of 32 "
                                              r"between 64 and 4096, got 100000") as caught:  # fmt: skip
        load_model("nano", checkpoint=path)
    assert time.perf_counter() - started < 10.0  # reading a 5 MB file, nothing more
    one_line(caught.value)


def test_image_size_32000_is_refused_before_allocating(tmp_path: Path, no_model_built: None) -> None:
    """Defect: "so do `--image-size 32000` ... (tracebacks at best)"."""
    message = "image_size must be a multiple of 32 between 64 and 4096, got 32000"
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        get_config("nano", 32000)
    with pytest.raises(ValueError, match=message) as caught:  # before the (missing) checkpoint is read
        load_model("nano", checkpoint=tmp_path / "absent.pt", image_size=32000)
    assert time.perf_counter() - started < 1.0
    one_line(caught.value)
    with pytest.raises(ValueError, match="got 100"):  # not a multiple of the network's step either
        get_config("sam2.1_hiera_t", 100)


class _RunsACommand:
    """Pickled as a call of ``os.system`` (harmless here, it would only run ``true``)."""

    def __reduce__(self):
        return (os.system, ("true",))


class _CustomObject:
    """A class that is no tensor, container or number."""


@pytest.mark.parametrize("writer", ["torch", "pickle"])
@pytest.mark.parametrize("payload", [_RunsACommand, _CustomObject])
def test_malicious_pickle_is_refused_as_unsafe(tmp_path: Path, writer: str, payload: type) -> None:
    """Defect: "Refused malicious pickles say "truncated or corrupt?" — the "refused to load"
    message no longer matches what torch 2.13 prints"."""
    path = tmp_path / "malicious.pt"
    content = {"model": {"no_mem_embed": payload()}}
    if writer == "torch":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(CheckpointError, match=r"malicious\.pt: refused to load as unsafe") as caught:
        read_checkpoint(path)
    assert "corrupt" not in one_line(caught.value)
    # A truly truncated file still says so.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if writer == "torch":
        with pytest.raises(CheckpointError, match=r"malicious\.pt: not a readable .*truncated or corrupt"):
            read_checkpoint(path)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "-1e-4"])
def test_lr_inf_is_refused(tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture, value: str) -> None:
    """Defect: "Training with `optim.lr=.inf` or a NaN loss weight exits 0 and writes `model_final.pt`"."""
    path = write_train_config(tmp_path / "run.yaml", synthetic_root, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"optim\.lr must be"):
        load_config(path, [f"optim.lr={value}"])
    assert main(["train", "--config", str(path), "--set", f"optim.lr={value}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "optim.lr must be" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["focal_weight", "dice_weight", "iou_weight", "class_weight"])
def test_nan_loss_weight_is_refused(tmp_path: Path, synthetic_root: Path, key: str) -> None:
    """Defect: "Training with `optim.lr=.inf` or a NaN loss weight exits 0 and writes `model_final.pt`"."""
    path = write_train_config(tmp_path / "run.yaml", synthetic_root, tmp_path / "out")
    for value in (".nan", ".inf"):
        with pytest.raises(ConfigError, match=rf"loss\.{key} must be a finite number") as caught:
            load_config(path, [f"loss.{key}={value}"])
        one_line(caught.value)
    with pytest.raises(ConfigError, match=rf"loss\.{key} must be >= 0"):
        load_config(path, [f"loss.{key}=-1"])


def test_non_finite_loss_mid_run_stops_it(
    tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Defect: "non-finite training loss stops the run (non-zero exit, the last good checkpoint kept,
    no `model_final.pt`)"."""
    original = trainer_module.weighted_total
    calls = []

    def nan_from_step_3(per_object, config):
        calls.append(1)
        total = original(per_object, config)
        return total * float("nan") if len(calls) >= 3 else total

    monkeypatch.setattr(trainer_module, "weighted_total", nan_from_step_3)
    config = load_config(write_train_config(tmp_path / "run.yaml", synthetic_root, tmp_path / "out"))
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 3: non-finite loss nan") as caught:
        run_training(config)
    assert "model_step0000002.pt, is kept" in one_line(caught.value)
    checkpoints = tmp_path / "out" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["model_step0000002.pt", "trainer_step0000002.pt"]
    assert read_checkpoint(checkpoints / "model_step0000002.pt").metadata["train_step"] == 2
    monkeypatch.undo()

    # An lr that blows the weights up makes the loss NaN on the next step: exit 2, one line.
    blown = write_train_config(tmp_path / "blown.yaml", synthetic_root, tmp_path / "blown")
    assert main(["train", "--config", str(blown), "--set", "optim.lr=1e30", "--set", "optim.grad_clip=0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "training diverged at step" in error
    assert not (tmp_path / "blown" / "checkpoints" / "model_final.pt").exists()


def test_corrupt_trainer_state_on_resume_is_one_line(
    tmp_path: Path, synthetic_root: Path, nano_state: dict[str, torch.Tensor]
) -> None:
    """Defect: "Tracebacks instead of one-line errors: ... a corrupt trainer state on `--resume`";
    "trainer-state files loaded with the same guarded loader as models"."""
    config = load_config(write_train_config(tmp_path / "run.yaml", synthetic_root, tmp_path / "out"))
    run_training(config, stop_after=2)
    state_path = tmp_path / "out" / "checkpoints" / "trainer_step0000002.pt"
    data = state_path.read_bytes()
    state_path.write_bytes(data[: len(data) // 2])
    expected = r"trainer_step0000002\.pt: not a readable PyTorch trainer state \(truncated or corrupt"
    with pytest.raises(ValueError, match=expected) as caught:
        run_training(config, resume=True)
    one_line(caught.value)
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--resume"]) == 2

    # A model file, text, or a pickle of objects in place of a trainer state.
    save_checkpoint(SAM2Model(get_config("nano")), state_path)
    with pytest.raises(ValueError, match=r"trainer_step0000002\.pt: not a surgsam2 trainer-state file"):
        load_trainer_state(state_path)
    state_path.write_text("step: 2\n")
    with pytest.raises(CheckpointError, match=r"trainer_step0000002\.pt: not a PyTorch trainer state file"):
        load_trainer_state(state_path)
    torch.save({"format": "surgsam2-trainer-state", "rng": _CustomObject()}, state_path)
    with pytest.raises(CheckpointError, match=r"trainer_step0000002\.pt: refused to load as unsafe"):
        load_trainer_state(state_path)


def test_training_output_inside_its_data_or_in_use_is_refused(tmp_path: Path, synthetic_root: Path) -> None:
    """Defect (every command writes through one safe way): a training run into its own dataset, or
    into a folder another run is writing, was not refused."""
    inside = load_config(write_train_config(tmp_path / "a.yaml", synthetic_root, synthetic_root / "runs"))
    with pytest.raises(OutputError, match="lies inside the input data.roots") as caught:
        run_training(inside)
    one_line(caught.value)
    assert not (synthetic_root / "runs").exists()
    busy = load_config(write_train_config(tmp_path / "b.yaml", synthetic_root, tmp_path / "busy"))
    with held_output_folder(tmp_path / "busy", command="train"):
        with pytest.raises(OutputError, match="in use by another surgsam2 run"):
            run_training(busy)


def test_training_never_replaces_files_it_did_not_write(tmp_path: Path, synthetic_root: Path) -> None:
    """Defect (review): training wrote config.yaml / metrics.jsonl over files of the same name that
    it had not written, and accepted an output folder holding its own --config file."""
    out = tmp_path / "exp"
    out.mkdir()
    config_file = write_train_config(out / "config.yaml", synthetic_root, out)  # the user's YAML, in --out
    before = config_file.read_text()
    assert main(["train", "--config", str(config_file)]) == 2
    assert config_file.read_text() == before and sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    elsewhere = write_train_config(tmp_path / "run.yaml", synthetic_root, out)
    with pytest.raises(OutputError, match="config.yaml was not written by surgsam2"):
        run_training(load_config(elsewhere), stop_after=1)
    assert config_file.read_text() == before
