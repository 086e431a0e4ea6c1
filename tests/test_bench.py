"""`surgsam2 bench` smoke tests: it runs and reports; never an assertion on time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oracle import require_official

from surgsam2.bench import (
    STAGES,
    BenchConfig,
    OfficialUnavailableError,
    count_flops,
    run_bench,
    run_stream,
    run_streams,
    write_json,
)
from surgsam2.bench.profile import StageTimer, stage_gflop
from surgsam2.bench.runners import build_official_predictor, make_clip, official_config_file


def test_bench_runs_and_writes_json(tmp_path) -> None:
    """One side ("ours"), profiled through the tracker's stage hook, written as JSON."""
    output = tmp_path / "bench.json"
    config = BenchConfig(model="nano", image_size=64, frames=3, warmup=1, profile=True, progress=False)
    result = run_bench(config)
    table = result.format_table()
    assert "frames/s" in table and "encode_image" in table
    assert write_json(result, output) == output
    written = json.loads(output.read_text())
    assert list(written["sides"]) == ["ours"] and written["speedup_over"] == {}
    ours = written["sides"]["ours"]
    assert len(ours["frame_seconds"]) == 3
    assert ours["flops_per_frame"] > 0 and ours["state_bytes"] > 0
    assert written["peak"]["bf16_gflops"] > 0
    assert set(ours["stage_ms"]) == {*STAGES, "other", "total"}
    # Every stage of a tracked frame reached the hook (a stage never reported would read 0).
    assert all(ours["stage_ms"][stage] > 0 for stage in STAGES)
    # The counted frame's FLOPs by stage: the network's stages have some, and they add up.
    gflop = ours["stage_gflop"]
    assert set(gflop) == {*STAGES, "other", "total"}
    assert all(gflop[stage] > 0 for stage in ("encode_image", "memory_attention", "decoder", "memory_encoder"))
    staged = sum(gflop[stage] for stage in (*STAGES, "other"))
    print(f"stage GFLOP sum {staged:.6f} vs frame {gflop['total']:.6f}")
    assert staged == pytest.approx(gflop["total"], rel=1e-9) and gflop["total"] == pytest.approx(ours["flops_per_frame"] / 1e9)
    assert "encode_image (GFLOP/s, of peak)" in table
    # Rewriting our own result is allowed.
    write_json(result, output)


def test_bench_bf16_with_key_cache_baseline() -> None:
    """bf16 runs; --key-cache-baseline adds the side "ours-nocache" (memory keys recomputed),
    the before of the key cache, with its own profile."""
    config = BenchConfig(
        model="nano", image_size=64, frames=2, warmup=1, dtype="bf16", memory="fifo",
        key_cache_baseline=True, profile=True, progress=False,
    )  # fmt: skip
    result = run_bench(config)
    assert list(result.sides) == ["ours", "ours-nocache"]
    assert result.ours.dtype == "bf16" and len(result.ours.frame_seconds) == 2
    nocache = result.sides["ours-nocache"]
    assert nocache.name == "ours-nocache" and nocache.stage_ms is not None
    assert nocache.state_bytes < result.ours.state_bytes  # the cache is state
    assert set(result.speedup_over) == {"ours-nocache"} and result.speedup is None
    assert "ours-nocache" in result.format_table()


def test_stage_timer_attributes_flops_to_the_innermost_stage() -> None:
    """Nested stages count FLOPs as they count time: each in its innermost stage only."""
    timer = StageTimer()
    counted = [0.0]
    with timer.counting_flops(lambda: counted[0]):
        with timer.stage("memory_attention"):
            counted[0] += 10
            with timer.stage("decoder"):
                counted[0] += 3
            counted[0] += 1
        counted[0] += 100  # outside every stage: 'other'
    assert timer.take_flops() == {"memory_attention": 11, "decoder": 3}
    assert stage_gflop({"memory_attention": 11e9, "decoder": 3e9}, 114e9)["other"] == 100
    with timer.stage("decoder"):  # no FLOP source: time only
        pass
    assert timer.take_flops() == {} and "decoder" in timer.take()


def test_flop_count_includes_attention() -> None:
    """Attention kernels are counted (4*Lq*Lk*d) whether or not torch's counter knows them."""
    q = torch.zeros(2, 3, 16, 8)
    k = torch.zeros(2, 3, 32, 8)
    with count_flops() as counted:
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    assert counted.total == 4 * 2 * 3 * 16 * 32 * 8


def test_stream_mode_reports_flat_state() -> None:
    config = BenchConfig(model="nano", image_size=64, stream_frames=30, warmup=1, progress=False)
    result = run_stream(config, clip_frames=5, checkpoints=(5, 20))
    assert [p.frame for p in result.points] == [5, 20, 30]
    # Past the memory capacity (7 memories, 16 pointers) the state no longer grows.
    assert result.points[0].state_bytes < result.points[1].state_bytes == result.points[2].state_bytes
    assert "state flat" in result.format_table()


def test_streams_mode_reports_both_sides(tmp_path) -> None:
    """--streams 3: one tracker against 3 copies of the clip, frames/s in all and per stream."""
    config = BenchConfig(model="nano", image_size=64, frames=2, warmup=1, streams=3, progress=False)
    result = run_streams(config)
    single, multi = result.sides
    assert (single.name, single.streams, multi.name, multi.streams) == ("one tracker", 1, "3 streams", 3)
    assert len(single.step_seconds) == len(multi.step_seconds) == 2
    assert multi.frames_per_second == pytest.approx(3 * multi.frames_per_second_per_stream)
    assert result.ratio == pytest.approx(multi.frames_per_second / single.frames_per_second)
    table = result.format_table()
    assert "frames/s in all" in table and "bf16" in table and "no multi-stream mode" in table
    written = json.loads(write_json(result, tmp_path / "streams.json").read_text())
    assert written["config"]["streams"] == 3 and len(written["sides"]) == 2
    with pytest.raises(ValueError, match="ours only: the official predictor has no multi-stream mode"):
        BenchConfig(streams=2, against_official=True).validate()
    with pytest.raises(ValueError, match="streams must be >= 1, got 0"):
        BenchConfig(streams=0).validate()


def test_against_official_without_the_package_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sam2", None)  # import sam2 now raises ImportError
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    config = BenchConfig(model="sam2.1_hiera_t", image_size=64, frames=1, against_official=True, progress=False)
    with pytest.raises(OfficialUnavailableError) as raised:
        run_bench(config)
    error = str(raised.value)
    assert "\n" not in error and "pip install" in error and "sam2" in error


def test_against_official_runs_side_by_side() -> None:
    require_official()  # a missing oracle is a failure, never a skip
    config = BenchConfig(
        model="sam2.1_hiera_t", image_size=64, frames=2, warmup=1, against_official=True,
        memory="fifo", profile=True, progress=False,
    )  # fmt: skip
    result = run_bench(config)
    assert list(result.sides) == ["ours", "official"]
    assert result.official is not None and len(result.official.frame_seconds) == 2
    assert result.speedup == result.speedup_over["official"] and result.official.frame_buffer_bytes > 0
    # Same weights, same frames, SAM 2 memory on both sides: the masks agree.
    assert result.mask_agreement_iou is not None and result.mask_agreement_iou > 0.99
    assert result.official.stage_ms is not None and result.official.stage_ms["memory_attention"] >= 0
    assert result.official.stage_gflop is not None and result.official.stage_gflop["encode_image"] > 0
    assert "ours / official" in result.format_table()


def test_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="objects"):
        BenchConfig(objects=0).validate()
    with pytest.raises(ValueError, match=r"objects must be in 1\.\.16, got 17"):
        BenchConfig(model="nano", image_size=64, objects=17).validate()
    with pytest.raises(ValueError, match="official_vos_optimized needs against_official"):
        BenchConfig(model="nano", image_size=64, official_vos_optimized=True).validate()
    with pytest.raises(ValueError, match="official config"):
        official_config_file("nano")
    for device in ("tpu", "tpu9", "cuda:x"):
        with pytest.raises(ValueError, match=f"unknown device '{device}': use cpu, cuda, cuda:N") as raised:
            BenchConfig(device=device).validate()
        assert "\n" not in str(raised.value)


def test_device_option_on_a_machine_without_cuda_is_one_clear_line(monkeypatch) -> None:
    """--device cuda where torch sees no GPU, or cuda:N beyond its GPUs: one line naming the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as raised:
        BenchConfig(model="nano", image_size=64, device="cuda").validate()
    error = str(raised.value)
    assert "\n" not in error and "device 'cuda'" in error and "no CUDA device is available" in error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:3': this machine has 1 CUDA device\(s\)"):
        BenchConfig(model="nano", image_size=64, device="cuda:3").validate()


def test_json_never_overwrites_a_file_that_is_not_a_bench_result(tmp_path) -> None:
    """--json naming someone else's file (or a path under a file) is refused before the run; the
    file is kept as it was."""
    from surgsam2.bench import check_json_path

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    with pytest.raises(ValueError, match="is not a surgsam2 bench result; not overwriting it"):
        check_json_path(notes)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_json_path(notes / "bench.json")
    assert notes.read_text() == '{"mine": true}\n'
    assert check_json_path(tmp_path / "new" / "bench.json") == tmp_path / "new" / "bench.json"


def test_more_objects_than_instruments_reuse_their_masks() -> None:
    """16 objects on a clip of 8 instruments: ids 1..16, objects 9..16 prompted with the masks of
    1..8 (tracked independently: the per-object work a 16-object bench measures)."""
    BenchConfig(model="nano", image_size=64, objects=16).validate()
    clip = make_clip(128, 2, 16, seed=0, jpeg_dir=None)
    assert sorted(clip.masks) == list(range(1, 17))
    for obj_id in range(9, 17):
        assert np.array_equal(clip.masks[obj_id], clip.masks[obj_id - 8])
    assert len({clip.masks[i].tobytes() for i in range(1, 9)}) == 8  # eight different instruments
    assert all(mask.mean() >= 1e-3 for mask in clip.masks.values())


def test_official_vos_mode_builds_its_vos_predictor() -> None:
    """--official-vos-optimized builds the official SAM2VideoPredictorVOS (compiled on first use,
    so building costs no compile) with the same seeded weights as the plain predictor."""
    require_official()
    plain = build_official_predictor("sam2.1_hiera_t", 64, seed=0)
    vos = build_official_predictor("sam2.1_hiera_t", 64, seed=0, vos_optimized=True)
    assert type(vos).__name__ == "SAM2VideoPredictorVOS" and type(plain).__name__ == "SAM2VideoPredictor"
    plain_state, vos_state = plain.state_dict(), vos.state_dict()
    assert plain_state.keys() == vos_state.keys()
    assert all(torch.equal(plain_state[k], vos_state[k]) for k in plain_state)


def test_gpu_summary_reads_bench_and_streams_json(tmp_path, monkeypatch) -> None:
    """benchmarks/gpu/summary.py (run at the end of benchmarks/gpu/run.sh, where GPU time is
    scarce) reads real `--json` results of a side-by-side run and of a --streams run."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "summary.py"
    spec = importlib.util.spec_from_file_location("gpu_summary", script)
    assert spec is not None and spec.loader is not None
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)

    write_json(run_bench(BenchConfig(model="nano", image_size=64, frames=2, warmup=1, progress=False)),
               tmp_path / "nano_256_3obj.json")
    write_json(run_streams(BenchConfig(model="nano", image_size=64, frames=2, warmup=1, streams=2, progress=False)),
               tmp_path / "streams_16x1obj.json")
    monkeypatch.setattr(sys, "argv", ["summary.py", str(tmp_path)])
    summary.main()
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["nano_256_3obj"]["value"] == written["nano_256_3obj"]["ours_fps"] > 0
    assert written["streams_16x1obj"]["streams"] == 2 and written["streams_16x1obj"]["fps_in_all"] > 0
    assert written["streams_16x1obj"]["met"] is False  # 1,000 frames/s is not a 2-core CPU's
    assert "missing" in written["hiera_s_512_1obj"]
