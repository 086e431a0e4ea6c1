"""`surgsam2 bench` smoke tests: it runs and reports; never an assertion on time."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from oracle import require_official

from surgsam2 import bench
from surgsam2.bench import BenchConfig, count_flops, run_bench, run_stream
from surgsam2.cli import main


def test_bench_runs_and_writes_json(tmp_path, capsys) -> None:
    output = tmp_path / "bench.json"
    code = main(
        ["bench", "--model", "nano", "--image-size", "64", "--frames", "3", "--warmup", "1",
         "--profile", "--quiet", "--json", str(output)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "encode_image" in printed
    result = json.loads(output.read_text())
    ours = result["ours"]
    assert len(ours["frame_seconds"]) == 3
    assert ours["flops_per_frame"] > 0 and ours["state_bytes"] > 0
    assert result["official"] is None and result["peak"]["bf16_gflops"] > 0
    assert set(ours["stage_ms"]) >= {"encode_image", "memory_attention", "decoder", "memory_encoder", "other"}


def test_bench_bf16_with_baselines() -> None:
    """bf16 runs; --sdpa-baseline adds ours with the matmul attention path off and
    --key-cache-baseline ours recomputing memory keys (the befores of those optimisations)."""
    config = BenchConfig(
        model="nano", image_size=64, frames=2, warmup=1, dtype="bf16", memory="fifo", sdpa_baseline=True,
        key_cache_baseline=True, profile=True, progress=False,
    )  # fmt: skip
    result = run_bench(config)
    assert result.ours.dtype == "bf16" and len(result.ours.frame_seconds) == 2
    assert result.ours_sdpa is not None and result.ours_sdpa.name == "ours-sdpa"
    assert result.ours_nocache is not None and result.ours_nocache.name == "ours-nocache"
    assert result.ours_nocache.state_bytes < result.ours.state_bytes  # the cache is state
    table = result.format_table()
    assert result.speedup_over_sdpa is not None and "ours-sdpa" in table
    assert result.speedup_over_nocache is not None and "ours-nocache" in table


def test_flop_count_includes_attention() -> None:
    """Attention kernels are counted (4*Lq*Lk*d) whether or not torch's counter knows them."""
    q = torch.zeros(2, 3, 16, 8)
    k = torch.zeros(2, 3, 32, 8)
    with count_flops() as counted:
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    assert counted.total == 4 * 2 * 3 * 16 * 32 * 8


def test_stream_mode_reports_flat_state(capsys) -> None:
    config = BenchConfig(model="nano", image_size=64, stream_frames=30, warmup=1, progress=False)
    result = run_stream(config, clip_frames=5, checkpoints=(5, 20))
    assert [p.frame for p in result.points] == [5, 20, 30]
    # Past the memory capacity (7 memories, 16 pointers) the state no longer grows.
    assert result.points[0].state_bytes < result.points[1].state_bytes == result.points[2].state_bytes
    assert "state flat" in result.format_table()


def test_against_official_without_the_package_is_one_clear_line(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "sam2", None)  # import sam2 now raises ImportError
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    code = main(["bench", "--model", "sam2.1_hiera_t", "--image-size", "64", "--frames", "1", "--quiet",
                 "--against-official"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "pip install" in error and "sam2" in error


def test_against_official_runs_side_by_side() -> None:
    require_official()  # a missing oracle is a failure, never a skip
    config = BenchConfig(
        model="sam2.1_hiera_t", image_size=64, frames=2, warmup=1, against_official=True,
        memory="fifo", profile=True, progress=False,
    )  # fmt: skip
    result = run_bench(config)
    assert result.official is not None and len(result.official.frame_seconds) == 2
    assert result.speedup is not None and result.official.frame_buffer_bytes > 0
    # Same weights, same frames, SAM 2 memory on both sides: the masks agree.
    assert result.mask_agreement_iou is not None and result.mask_agreement_iou > 0.99
    assert result.official.stage_ms is not None and result.official.stage_ms["memory_attention"] >= 0


def test_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="objects"):
        BenchConfig(objects=0).validate()
    with pytest.raises(ValueError, match="official config"):
        bench._official_config_file("nano")
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N"):
        BenchConfig(device="tpu").validate()


def test_device_option_on_a_machine_without_cuda_is_one_clear_line(monkeypatch, capsys) -> None:
    """--device cuda where torch sees no GPU: exit 2 and one line naming the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["bench", "--model", "nano", "--image-size", "64", "--frames", "1", "--quiet", "--device", "cuda"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "device 'cuda'" in error and "CUDA is not available" in error
