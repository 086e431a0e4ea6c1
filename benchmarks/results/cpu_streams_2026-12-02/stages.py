"""Per-stage time of a steady MultiStreamTracker step (nano 256, 1 object per stream), 1 thread."""
import sys, time, contextlib, statistics
from collections import defaultdict
import torch
from surgsam2.bench.config import BenchConfig
from surgsam2.bench.runners import build_our_model, make_clip
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.streams import MultiStreamTracker

torch.set_num_threads(1)
n = int(sys.argv[1])
config = BenchConfig(model="nano", image_size=256, objects=1, frames=20, warmup=5, streams=n, progress=False)
clip = make_clip(256, 25, 1, config.seed, None)
model = build_our_model(config, None)

class Timer:
    def __init__(self): self.seconds = defaultdict(float)
    @contextlib.contextmanager
    def stage(self, name):
        start = time.perf_counter(); yield; self.seconds[name] += time.perf_counter() - start

timer = Timer()
multi = MultiStreamTracker(model, n, stage_hook=timer)
prompts = {i: Prompt(mask=m) for i, m in clip.masks.items()}
steps = defaultdict(list); totals = []
for i in range(25):
    timer.seconds.clear(); start = time.perf_counter()
    multi.step([clip.frames[i]] * n, [prompts if i == 0 else None] * n)
    if i >= 5:
        totals.append(time.perf_counter() - start)
        for k, v in timer.seconds.items(): steps[k].append(v)
print(f"N={n} median step {1e3*statistics.median(totals):.1f} ms; " + ", ".join(
    f"{k} {1e3*statistics.median(v):.1f}" for k, v in steps.items()))
