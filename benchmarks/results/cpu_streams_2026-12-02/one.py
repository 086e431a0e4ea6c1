"""Tracker vs MultiStreamTracker(1) step, alternating; main-thread CPU time (1 torch thread)."""
import time, statistics, torch
from surgsam2.bench.config import BenchConfig
from surgsam2.bench.runners import build_our_model, make_clip
from surgsam2.tracking.prompts import Prompt
from surgsam2.tracking.streams import MultiStreamTracker
from surgsam2.tracking.tracker import Tracker
torch.set_num_threads(1)
config = BenchConfig(model="nano", image_size=256, objects=1, frames=20, warmup=5, streams=1, progress=False)
clip = make_clip(256, 60, 1, config.seed, None)
model = build_our_model(config, None)
prompts = {i: Prompt(mask=m) for i, m in clip.masks.items()}
single, multi = Tracker(model), MultiStreamTracker(model, 1)
t = {"tracker": [], "1 stream": []}
for i in range(60):
    for name in (["tracker", "1 stream"] if i % 2 else ["1 stream", "tracker"]):
        s = time.thread_time()
        if name == "tracker": single.step(clip.frames[i], prompts if i == 0 else None)
        else: multi.step([clip.frames[i]], [prompts if i == 0 else None])
        if i >= 10: t[name].append(time.thread_time() - s)
print({k: round(1e3 * statistics.median(v), 2) for k, v in t.items()})
