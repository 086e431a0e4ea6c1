"""Collect the JSON files `benchmarks/gpu/run.sh` wrote into one summary beside issue 17's targets.

    python benchmarks/gpu/summary.py benchmarks/results/gpu    # writes summary.json there, prints a table

Reads each `surgsam2 bench --json` result (and host_syncs.json); a missing or failed step is
reported as missing, never guessed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# name of the bench JSON -> (what it measures, issue 17's target or None)
TARGETS = {
    "hiera_s_512_1obj": ("Hiera-S 512, 1 object, bf16 frames/s", 300.0),
    "hiera_s_512_1obj_steady": ("Hiera-S 512, 1 object, bf16, steady frames as one graph, frames/s", 300.0),
    "hiera_s_512_3obj": ("Hiera-S 512, 3 objects, bf16 frames/s", 250.0),
    "hiera_s_512_3obj_steady": ("Hiera-S 512, 3 objects, bf16, steady frames as one graph, frames/s", 250.0),
    "hiera_s_512_16obj": ("Hiera-S 512, 16 objects, bf16 frames/s", 60.0),
    "streams_4x1obj": ("Hiera-S 512, 4 streams x 1 object, frames/s in all", None),
    "streams_16x1obj": ("Hiera-S 512, 16 streams x 1 object, frames/s in all", 1000.0),
    "nano_256_3obj": ("nano 256, 3 objects, bf16 frames/s", 1000.0),
    "hiera_s_1024_1obj_vos": ("Hiera-S 1024, 1 object: ours over official vos_optimized", 2.0),
}


def measured(name: str, result: dict) -> dict:
    """The headline numbers of one bench result."""
    if "speedup_over" in result:  # a side-by-side run
        sides = result["sides"]
        row = {"ours_fps": sides["ours"]["frames_per_second"]}
        if "official" in sides:
            row["official_fps"] = sides["official"]["frames_per_second"]
            row["ours_over_official"] = result["speedup_over"]["official"]
        row["value"] = row["ours_over_official"] if name.endswith("_vos") else row["ours_fps"]
        return row
    sides = {side["name"]: side for side in result["sides"]}  # --streams: one tracker and N streams
    many = max(result["sides"], key=lambda side: side["streams"])
    return {"one_stream_fps": min(result["sides"], key=lambda side: side["streams"])["frames_per_second"],
            "streams": many["streams"], "fps_in_all": many["frames_per_second"],
            "fps_per_stream": many["frames_per_second_per_stream"], "ratio": result["ratio"],
            "value": many["frames_per_second"], "sides": list(sides)}


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/gpu")
    summary: dict[str, dict] = {}
    for name, (what, target) in TARGETS.items():
        path = folder / f"{name}.json"
        try:
            row = measured(name, json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as error:
            summary[name] = {"what": what, "target": target, "missing": f"{type(error).__name__}: {error}"}
            continue
        peak = json.loads(path.read_text()).get("peak", {})
        row.update(what=what, target=target, met=None if target is None else row["value"] >= target,
                   bf16_peak_gflops=peak.get("bf16_gflops"))
        summary[name] = row
    for name in ("host_syncs", "host_syncs_ring", "host_syncs_steady"):
        if (folder / f"{name}.json").is_file():
            summary[name] = json.loads((folder / f"{name}.json").read_text())
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, row in summary.items():
        if name.startswith("host_syncs"):
            steady = ", steady frames as one graph (+1 event wait)" if row.get("steady_frames") else ""
            print(f"host syncs per steady-state frame ({row.get('bank', 'dict')} bank{steady}): {row['host_syncs']}")
        elif "missing" in row:
            print(f"{row['what']}: missing ({row['missing']})")
        else:
            verdict = "" if row["target"] is None else f" (target {row['target']:g}: {'met' if row['met'] else 'NOT met'})"
            print(f"{row['what']}: {row['value']:.2f}{verdict}")


if __name__ == "__main__":
    main()
