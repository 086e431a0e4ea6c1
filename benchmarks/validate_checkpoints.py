"""Score a training run's checkpoints on the validation set, to choose one without the held-out set.

Every checkpoint ``<run>/checkpoints/model_stepNNNNNNN.pt`` whose step is a multiple of ``--every``
(and the final one) is tracked on the validation set with `vos-inference` (first-appearance mask
prompts, `surgsam2` protocol, fp32) under each ``--memory`` policy; the scores go to
``<out>/validation.json`` (rewritten atomically after each checkpoint; steps already there are
not scored again). With ``--watch`` it waits for new checkpoints until the run writes
``model_final.pt``. The best step by the first policy's J&F is printed.

    surgsam2 synth --out data/synth_val --videos 8 --frames 60 --size 320x256 --seed 800001
    PYTHONPATH=src nice -n 19 .venv/bin/python benchmarks/validate_checkpoints.py runs/nano_synthetic_stage5 \
        --data data/synth_val --out outputs/validation_stage5 --every 300 --watch
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from surgsam2.app.options import ModelOptions
from surgsam2.data.outputs import atomic_write
from surgsam2.pipelines.vos_inference import VOSInferenceConfig, run_vos_inference

STEP_PATTERN = re.compile(r"model_step(\d+)\.pt$")


def checkpoints_due(run: Path, every: int) -> dict[str, Path]:
    """Checkpoints to score, by step name ("final" for model_final.pt)."""
    due: dict[str, Path] = {}
    for path in sorted((run / "checkpoints").glob("model_step*.pt")):
        match = STEP_PATTERN.search(path.name)
        if match and int(match.group(1)) % every == 0:
            due[str(int(match.group(1)))] = path
    final = run / "checkpoints" / "model_final.pt"
    if final.is_file():
        due["final"] = final
    return due


def score(checkpoint: Path, data: Path, memory: str, model: str) -> dict[str, float]:
    """J&F, J, F and Dice (%) of one checkpoint on ``data`` under ``memory``."""
    with tempfile.TemporaryDirectory(prefix="surgsam2-validation-") as scratch:
        config = VOSInferenceConfig(
            base_video_dir=data / "JPEGImages", input_mask_dir=data / "VOS" / "Annotations_vos_instrument",
            output_mask_dir=Path(scratch) / "masks", gt_root=data / "Annotations", meta=data / "meta.json",
            memory=memory, progress=False, model=ModelOptions(name=model, checkpoint=checkpoint, device="cpu"),
        )
        report = run_vos_inference(config, info=lambda message: None)
    if report.failed or report.evaluation is None:
        raise RuntimeError(f"{checkpoint}: {len(report.failed)} video(s) failed or no evaluation")
    summary = report.evaluation.summary
    return {key: round(100 * getattr(summary, key), 2) for key in ("JF", "J", "F", "Dice")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="training output folder (train.out_dir)")
    parser.add_argument("--data", type=Path, default=Path("data/synth_val"), help="validation dataset (VOS layout)")
    parser.add_argument("--out", type=Path, required=True, help="folder for validation.json")
    parser.add_argument("--memory", nargs="+", default=["efp"], help="policies (the first one chooses)")
    parser.add_argument("--model", default="nano")
    parser.add_argument("--every", type=int, default=300, help="score checkpoints whose step is a multiple")
    parser.add_argument("--watch", action="store_true", help="wait for new checkpoints until model_final.pt")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "validation.json"
    scores: dict[str, dict] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    while True:
        for step, path in checkpoints_due(args.run, args.every).items():
            if step in scores:
                continue
            started = time.perf_counter()
            scores[step] = {memory: score(path, args.data, memory, args.model) for memory in args.memory}
            atomic_write(record_path, json.dumps(scores, indent=1) + "\n")
            print(f"step {step}: {scores[step]} ({time.perf_counter() - started:.0f} s)", flush=True)
        if not args.watch or "final" in scores:
            break
        time.sleep(60)
    if scores:
        best = max(scores, key=lambda step: scores[step][args.memory[0]]["JF"])
        print(f"best by {args.memory[0]} J&F: step {best} {scores[best][args.memory[0]]}")


if __name__ == "__main__":
    main()
