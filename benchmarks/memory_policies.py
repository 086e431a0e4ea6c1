"""Memory policies compared (issue 16): fifo, efp (P = 1, 2, 3), qefp, refp (with variants:
`REFP_VARIANTS`) and xefp on the held-out set and on the hard set, with the shipped nano (or --checkpoint).

Every row is the same evaluation: `vos-inference` (first-appearance mask prompts, `surgsam2`
protocol) gives J&F, Dice and Challenge IoU; the written per-object masks are then scored frame
by frame and grouped by kind of difficulty (`data.synthetic_occluders.frame_difficulty`) for J&F
and Dice by kind; memories attended per tracked object-frame (and, for refp, how many of them are
retained ones) are counted at the policy call; frames/s is a separate timed run (nano, 3 objects,
bf16, 256 px, one synthetic clip; the policies' trackers stepped frame by frame in turn in one
process, median step time; matmul peak printed).

    PYTHONPATH=src .venv/bin/python benchmarks/memory_policies.py --out outputs/bench_memory
    # reduced: --hard-videos 2 --hard-frames 300 --heldout-videos 8 --policies fifo efp2 qefp2 refp2

The datasets are generated into --out when missing (the held-out one exactly as
`surgsam2 synth --videos 8 --frames 60 --size 320x256 --seed 900001` writes it, the hard one as
`surgsam2 synth --preset hard --videos 4 --frames 300 --size 320x256 --seed 910001`).

Choosing (a default policy, its P) is done on the validation sets only: `val` (as
`benchmarks/validate_checkpoints.py` scores checkpoints, seed 800001) and `hardval` (the hard
preset with seed 920001). `heldout` and `hard` are looked at once per shipped model, to report.

    PYTHONPATH=src .venv/bin/python benchmarks/memory_policies.py --sets hardval --speed-frames 0 \
        --checkpoint runs/nano_synthetic_stage5/checkpoints/model_step0001200.pt --out outputs/bench_memory_val
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch

import surgsam2.tracking.tracker as tracker_module
from surgsam2.data.masks import read_mask
from surgsam2.data.outputs import atomic_write
from surgsam2.data.synthetic import (
    SYNTHETIC_PRESETS,
    SyntheticVideoConfig,
    generate_synthetic_video,
    write_synthetic_dataset,
)
from surgsam2.data.synthetic_occluders import DIFFICULTY_KINDS, frame_difficulty
from surgsam2.eval.metrics import frame_scores
from surgsam2.eval.vos_output import object_dir_name
from surgsam2.memory.policies import PolicyOptions, ReliableEfpPolicy, policy_names, register_policy
from surgsam2.pipelines.vos_inference import VOSInferenceConfig, run_vos_inference

HELDOUT = dict(seed=900001, videos=8, frames=60, size=(320, 256))
HARD_SEED = 910001
VALIDATION_SEED = 800001  # the checkpoint-validation set's seed (8 videos of 60 frames)
HARD_VALIDATION_SEED = 920001  # the hard preset, for choosing policies
SET_NAMES = ("heldout", "hard", "val", "hardval")
# The hard set: `surgsam2 synth --preset hard` (2-3 instruments that leave and come back, four
# occluders per clip, twice the camera motion, full smoke), long clips.
HARD_CONFIG = SYNTHETIC_PRESETS["hard"]
POLICIES = {"fifo": ("fifo", 2), "efp1": ("efp", 1), "efp2": ("efp", 2), "efp3": ("efp", 3),
            "qefp1": ("qefp", 1), "qefp2": ("qefp", 2), "qefp3": ("qefp", 3), "refp2": ("refp", 2),
            "xefp1": ("xefp", 1), "xefp2": ("xefp", 2), "xefp3": ("xefp", 3)}
# Variants of refp (benchmark-only registrations): reliability threshold, retained count, slot.
REFP_VARIANTS = {"refp2_iou80": dict(min_iou=0.8), "refp2_present": dict(min_iou=0.0),
                 "refp2_r4": dict(retained_memories=4), "refp2_condslot": dict(retained_slot=6)}


def refp_variant(name: str, options: dict) -> type[ReliableEfpPolicy]:
    """A policy class made from its name as refp with ``options`` (and the shared P)."""

    class Variant(ReliableEfpPolicy):
        @classmethod
        def from_options(cls, policy_options: PolicyOptions) -> ReliableEfpPolicy:
            return ReliableEfpPolicy(num_frame_to_prune=policy_options.num_frame_to_prune, name=name, **options)

    return Variant


def register_refp_variants() -> None:
    """Register each refp variant under its name, so `vos-inference` can run it like the others."""
    for name, options in REFP_VARIANTS.items():
        if name not in policy_names():
            register_policy(name)(refp_variant(name, options))
        POLICIES[name] = (name, 2)


register_refp_variants()


@dataclass
class ExclusiveReliableEfpPolicy(ReliableEfpPolicy):
    """refp with xefp's exclusive memory masks (benchmark-only): retained reliable memories, and
    every memory encoded from a mask that shares no pixel with another tracked instrument."""

    name: str = "xrefp"
    exclusive_memories: ClassVar[bool] = True


if "xrefp" not in policy_names():
    register_policy("xrefp")(ExclusiveReliableEfpPolicy)
POLICIES["xrefp2"] = ("xrefp", 2)


@dataclass
class AttendedCounter:
    """Counts memories attended per tracked object-frame, at the tracker's policy call."""

    memories: int = 0
    object_frames: int = 0
    retained: int = 0  # of which retained memories (refp), read on the host: benchmark only

    def install(self) -> None:
        original = tracker_module.select_memories

        def counted(candidates, policy, capacity):
            keep = original(candidates, policy, capacity)
            count, batch = candidates.features.shape[:2]
            self.memories += (count if keep is None else keep.shape[0]) * batch
            self.object_frames += batch
            quality = candidates.quality
            if quality is not None and any(quality.retained):
                flags = torch.tensor(quality.retained, device=candidates.features.device)
                self.retained += int(flags[keep].sum()) if keep is not None else sum(quality.retained) * batch
            return keep

        tracker_module.select_memories = counted


def make_datasets(out: Path, hard_videos: int, hard_frames: int, heldout_videos: int,
                  sets: tuple[str, ...] = ("heldout", "hard")) -> dict[str, Path]:
    """The datasets of ``sets`` under ``out`` (written when missing): held-out and validation
    (default preset), hard and hard validation (hard preset, long clips)."""
    hard = f"{hard_videos}x{hard_frames}"
    plans = {
        "heldout": ("synth_heldout", heldout_videos, HELDOUT["frames"], HELDOUT["seed"], None),
        "val": ("synth_val", heldout_videos, HELDOUT["frames"], VALIDATION_SEED, None),
        "hard": (f"synth_hard_{hard}", hard_videos, hard_frames, HARD_SEED, HARD_CONFIG),
        "hardval": (f"synth_hardval_{hard}", hard_videos, hard_frames, HARD_VALIDATION_SEED, HARD_CONFIG),
    }
    roots = {name: out / "data" / plan[0] for name, plan in plans.items()}
    for name in sets:
        _, videos, frames, seed, config = plans[name]
        if not (roots[name] / "meta.json").is_file():
            write_synthetic_dataset(roots[name], videos=videos, frames=frames, size=HELDOUT["size"], seed=seed,
                                    config=config)
    return roots


def by_kind(root: Path, pred_dir: Path) -> dict[str, dict[str, float]]:
    """J&F and Dice per kind of difficulty, over every (object, frame) of every video (%)."""
    meta = json.loads((root / "meta.json").read_text())
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for video, entry in meta["videos"].items():
        frames = sorted((root / "Annotations" / video).glob("*.png"))
        gt = np.stack([read_mask(path) for path in frames])
        objects = [int(obj) for obj in entry["objects"]]
        masks = {obj: gt == obj for obj in objects}
        labels = frame_difficulty(masks, entry.get("occluders", []))
        for obj in objects:
            for t, path in enumerate(frames):
                kind = labels[obj][t]
                if kind == "before_prompt":
                    continue
                pred_path = pred_dir / video / object_dir_name(obj) / path.name
                pred = read_mask(pred_path) > 0 if pred_path.is_file() else np.zeros_like(masks[obj][t])
                scores = frame_scores(pred, masks[obj][t])
                for key in (kind, "all"):
                    sums[key][0] += (scores.J + scores.F) / 2
                    sums[key][1] += scores.Dice
                    sums[key][2] += 1
    return {kind: {"JF": 100 * s[0] / s[2], "Dice": 100 * s[1] / s[2], "n": int(s[2])}
            for kind, s in sums.items()}


def evaluate_policy(root: Path, out: Path, name: str, dtype: str, counter: AttendedCounter,
                    checkpoint: Path | None = None) -> dict:
    """One vos-inference run with scoring, plus the per-kind breakdown and memories attended
    (``checkpoint``: nano weights to evaluate; None: the shipped ones)."""
    memory, prune = POLICIES[name]
    config = VOSInferenceConfig(
        base_video_dir=root / "JPEGImages", input_mask_dir=root / "VOS" / "Annotations_vos_instrument",
        output_mask_dir=out, gt_root=root / "Annotations", meta=root / "meta.json",
        memory=memory, num_frame_to_prune=prune, overwrite=True, progress=False,
    )
    config.model = replace(config.model, dtype=dtype, checkpoint=checkpoint)
    counter.memories = counter.object_frames = counter.retained = 0
    start = time.perf_counter()
    report = run_vos_inference(config, info=lambda message: None)
    seconds = time.perf_counter() - start
    result = report.evaluation.to_json_dict()
    class_based = result.get("class_based", {})
    return {
        "policy": name, "JF": 100 * result["summary"]["JF"], "Dice": 100 * result["summary"]["Dice"],
        "challenge_IoU": None if class_based.get("challenge_IoU") is None else 100 * class_based["challenge_IoU"],
        "memories_per_frame": counter.memories / max(counter.object_frames, 1),
        "retained_per_frame": counter.retained / max(counter.object_frames, 1),
        "by_kind": by_kind(root, out), "seconds": seconds,
    }


def frames_per_second(names: list[str], frames: int = 40, warmup: int = 8) -> dict[str, float]:
    """Tracking frames/s of each policy: the shipped nano in bf16, 3 objects, one synthetic clip.

    One model and one tracker per policy, stepped frame by frame in turn (the order rotating every
    frame), so that a change in the machine's load falls on every policy alike; a policy's frames/s
    is 1 / its median step time."""
    from surgsam2 import Prompt, Tracker
    from surgsam2.model.checkpoint import load_model

    clip = generate_synthetic_video(SyntheticVideoConfig(num_frames=frames + warmup, class_ids=(1, 3, 6),
                                                         late_entry_probability=0.0, reentry_probability=0.0, seed=3))
    model = load_model("nano", dtype=torch.bfloat16)
    trackers = {name: Tracker(model, memory=POLICIES[name][0], num_frame_to_prune=POLICIES[name][1]) for name in names}
    prompts = {obj: Prompt(mask=clip.id_maps[0] == obj) for obj in (1, 2, 3)}
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for t in range(warmup + frames):
            for offset in range(len(names)):
                name = names[(t + offset) % len(names)]
                start = time.perf_counter()
                trackers[name].step(clip.frames[t], prompts if t == 0 else None)
                if t >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: 1.0 / float(np.median(seconds)) for name, seconds in times.items()}


def markdown(rows: dict[str, list[dict]], speeds: dict[str, float]) -> str:
    """The README tables: overall per set, then J&F by kind on the hard set."""
    lines = ["| set | policy | J&F | Dice | Challenge IoU | memories / frame | frames/s (bf16, 3 obj) |",
             "|---|---|---|---|---|---|---|"]
    for set_name, results in rows.items():
        for r in results:
            ciou = "–" if r["challenge_IoU"] is None else f"{r['challenge_IoU']:.1f}"
            fps = f"{speeds[r['policy']]:.1f}" if r["policy"] in speeds else "–"
            lines.append(f"| {set_name} | {r['policy']} | {r['JF']:.1f} | {r['Dice']:.1f} | {ciou} | "
                         f"{r['memories_per_frame']:.2f} | {fps} |")
    kinds = [k for k in DIFFICULTY_KINDS if k != "before_prompt"]
    for set_name, results in rows.items():
        lines += ["", f"J&F by kind of difficulty, {set_name} set (object-frames per kind in brackets):", "",
                  "| policy | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for r in results:
            cells = [f"{r['by_kind'][k]['JF']:.1f} ({r['by_kind'][k]['n']})" if k in r["by_kind"] else "–"
                     for k in kinds]
            lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_memory"))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--sets", nargs="*", default=["heldout", "hard"], choices=list(SET_NAMES),
                        help="sets to evaluate (none: frames/s only)")
    parser.add_argument("--hard-videos", type=int, default=4)
    parser.add_argument("--hard-frames", type=int, default=300)
    parser.add_argument("--heldout-videos", type=int, default=8)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="evaluation precision")
    parser.add_argument("--checkpoint", type=Path, default=None, help="nano weights (default: the shipped ones)")
    parser.add_argument("--speed-frames", type=int, default=40, help="timed frames per policy (0: skip)")
    args = parser.parse_args()
    roots = make_datasets(args.out, args.hard_videos, args.hard_frames, args.heldout_videos, tuple(args.sets))
    counter = AttendedCounter()
    counter.install()
    rows: dict[str, list[dict]] = {}
    for set_name in args.sets:
        rows[set_name] = []
        for name in args.policies:
            row = evaluate_policy(roots[set_name], args.out / "pred" / set_name / name, name, args.dtype, counter,
                                  args.checkpoint)
            rows[set_name].append(row)
            print(f"{set_name} {name}: J&F {row['JF']:.1f} Dice {row['Dice']:.1f} "
                  f"memories/frame {row['memories_per_frame']:.2f} (retained {row['retained_per_frame']:.2f}) "
                  f"({row['seconds']:.0f} s)", flush=True)
    speeds: dict[str, float] = {}
    if args.speed_frames:
        from surgsam2.bench.machine import measure_matmul_peak

        speeds = frames_per_second(args.policies, args.speed_frames)
        peak = measure_matmul_peak()
        print("frames/s (nano, 3 objects, bf16): " + ", ".join(f"{n} {v:.2f}" for n, v in speeds.items())
              + f"; machine bf16 matmul peak {peak.bf16_gflops:.0f} GFLOP/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "results.json", json.dumps({"rows": rows, "fps": speeds, "args": vars(args)},
                                                       indent=1, default=str))
    print(markdown(rows, speeds))


if __name__ == "__main__":
    main()
