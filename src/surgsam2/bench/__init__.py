"""`surgsam2 bench`: our tracker against the official SAM 2 video predictor, in one process.

What is compared, and why it is fair:
- the same random weights on every side (the official model is built with seeded random weights,
  its state dict saved in the official layout and loaded by ours; without the official package
  ours keeps a seeded random initialisation);
- the same frames: a synthetic surgical clip at ``image_size`` (so no resize enters), written as
  JPEG for the official loader and decoded back with PIL for ours, the decoded pixels being what
  every side sees; objects prompted with their masks on frame 0;
- the same driving: ours `Tracker.step` frame by frame; the official predictor with
  ``init_state`` + ``add_new_mask`` + ``propagate_in_video``, advanced one frame at a time;
- alternation: the sides advance in lockstep, frame by frame, and the order rotates each frame,
  so drift of the machine (other load, clocks) hits all sides alike.

The sides of a run (`BenchResult.sides`): "ours", its baselines (ours before one optimisation,
e.g. "ours-nocache" without the memory key cache, `run.BASELINES`) and "official". Reported per
side, over the steady-state frames after ``warmup``: per-frame latency (median, p90), frames/s
(1 / median), FLOPs per frame counted once with FlopCounterMode on one extra steady-state frame
(plus 4*Lq*Lk*d per scaled-dot-product attention when the counter misses them, as it does on CPU),
achieved GFLOP/s and its fraction of this machine's fp32 / bf16 matmul peaks (a big square matmul
timed in the same run), state held between frames, and ours' speedup over each other side. Peak
memory is the process's peak RSS (getrusage): the sides live in one process, so it is not split
per side; the state bytes are. ``--profile`` times the stages our tracker reports to its stage
hook (`surgsam2.tracking.stages`) and the matching methods of the official predictor, and splits
the counted frame's FLOPs the same way: each stage's GFLOP/s and fraction of the matmul peak of
its side's precision (which stage runs furthest from the peak).

``device="cuda"``: models, frames and state on the GPU; each frame is timed between two
``torch.cuda.synchronize()`` calls (the masks come back to the host anyway, as users need them),
the matmul peak is the GPU's, bf16 of the official predictor is ``torch.autocast("cuda")``, and
memory is ``torch.cuda.max_memory_allocated`` (process peak) plus each side's working memory:
the most any frame of that side, warm-up included (CUDA graphs are captured there, their memory
pools stay), allocated above what was allocated when the frame started.

``streams=N`` (`surgsam2.bench.streams`): ours only, one tracker on the clip against N copies of
it tracked together by one `MultiStreamTracker` (the official predictor has no multi-stream mode).

A benchmark, never a test: nothing here asserts on time. Absolute numbers mean little on a shared
machine: the load average before and after is recorded with the results.
"""

from surgsam2.bench.config import BenchConfig, OfficialUnavailableError
from surgsam2.bench.engines import FASTEST_PRECISION, EngineBenchResult, EngineSide, parse_engines, run_engines
from surgsam2.bench.machine import FlopCount, MachineInfo, MatmulPeak, count_flops, measure_matmul_peak
from surgsam2.bench.report import BenchResult, SideResult, StreamPoint, StreamResult, check_json_path, write_json
from surgsam2.bench.run import BASELINES, run_bench, run_stream
from surgsam2.bench.runners import BenchClip, build_official_predictor, build_our_model, make_clip
from surgsam2.bench.streams import StreamsBenchResult, StreamsSide, run_streams
from surgsam2.tracking.stages import STAGES

__all__ = [
    "BASELINES",
    "STAGES",
    "BenchClip",
    "BenchConfig",
    "BenchResult",
    "EngineBenchResult",
    "EngineSide",
    "FASTEST_PRECISION",
    "FlopCount",
    "MachineInfo",
    "MatmulPeak",
    "OfficialUnavailableError",
    "SideResult",
    "StreamPoint",
    "StreamResult",
    "StreamsBenchResult",
    "StreamsSide",
    "build_official_predictor",
    "build_our_model",
    "check_json_path",
    "count_flops",
    "make_clip",
    "measure_matmul_peak",
    "parse_engines",
    "run_bench",
    "run_engines",
    "run_stream",
    "run_streams",
    "write_json",
]
