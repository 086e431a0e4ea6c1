"""Speed of the web app (`surgsam2 serve`, issue 14): click-to-mask latency over HTTP and
propagation frames/s in the app next to `surgsam2 segment --prompts` on the same clip.

The app runs under uvicorn on a free local port with the shipped nano model. A click is the page's
round trip: POST the prompt (the server decodes the frame) then GET the frame's mask PNG; the first
click on a frame encodes the image, later clicks on it reuse the encoding. Propagation in the app
is timed from the POST to the last frame stored while a client polls the state every 200 ms and
downloads each new frame's mask PNG, as the page does; `segment` is `replay_prompts` (what
`surgsam2 segment INPUT --prompts FILE` runs) with the prompts exported by the app, writing its
PNGs. The two alternate for ``--rounds`` rounds; the 1-minute load average is printed each time.

    PYTHONPATH=src .venv/bin/python benchmarks/serve_speed.py [--frames 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import torch
import uvicorn

from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video
from surgsam2.model.checkpoint import load_model
from surgsam2.pipelines.prompt_files import prompts_from_json
from surgsam2.pipelines.replay import replay_prompts
from surgsam2.serve.app import create_app
from surgsam2.serve.registry import ServeConfig


def request(base: str, method: str, path: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    with urllib.request.urlopen(urllib.request.Request(base + path, data, headers, method=method)) as answer:
        return answer.read()


def start_server(app) -> tuple[uvicorn.Server, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def click_latency(base: str, sid: str, frames: list[int], clicks_per_frame: int) -> tuple[list[float], list[float]]:
    """Round trips (ms) of the first click on each frame and of the later clicks on it."""
    first, later = [], []
    for frame in frames:
        for click in range(clicks_per_frame):
            started = time.perf_counter()
            body = {"frame": frame, "object": 1, "kind": "point", "x": 60 + 4 * click, "y": 60, "label": 1}
            request(base, "POST", f"/api/sessions/{sid}/prompts", body)
            request(base, "GET", f"/api/sessions/{sid}/masks/{frame}.png")
            (first if click == 0 else later).append(1000 * (time.perf_counter() - started))
        request(base, "POST", f"/api/sessions/{sid}/prompts/clear", {"frame": frame, "object": 1})
    return first, later


def app_propagation(base: str, sid: str, num_frames: int) -> tuple[float, float]:
    """Frames/s of a propagation in the app (server-side, and as the client sees it: from the POST
    to the last mask fetched) while a page-like client polls and fetches masks."""
    started = time.perf_counter()
    request(base, "POST", f"/api/sessions/{sid}/propagate", {"direction": "both"})
    fetched = 0
    while True:
        state = json.loads(request(base, "GET", f"/api/sessions/{sid}"))["propagation"]
        while fetched < state["done"]:
            request(base, "GET", f"/api/sessions/{sid}/masks/{fetched}.png")
            fetched += 1
        if not state["running"]:
            break
        time.sleep(0.2)
    assert state["done"] == num_frames and state["error"] is None, state
    return num_frames / state["seconds"], num_frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, {load()}")
    model = load_model("nano", image_size=args.image_size)
    video = generate_synthetic_video(SyntheticVideoConfig(width=320, height=256, num_frames=args.frames, seed=5))
    with tempfile.TemporaryDirectory(prefix="serve-speed-") as scratch:
        root = Path(scratch)
        (root / "data" / "clip").mkdir(parents=True)
        for index, frame in enumerate(video.frames):
            cv2.imwrite(str(root / "data" / "clip" / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        server, base = start_server(create_app(model, ServeConfig(data_dir=root / "data", memory="efp")))
        sid = json.loads(request(base, "POST", "/api/sessions"))["session"]
        request(base, "POST", f"/api/sessions/{sid}/open", {"path": "clip"})
        request(base, "POST", f"/api/sessions/{sid}/objects", {})
        click_latency(base, sid, [0], 2)  # warm-up
        first, later = click_latency(base, sid, list(range(1, args.frames, max(1, args.frames // 8))), 3)
        print(f"click to mask, first on a frame: median {statistics.median(first):.0f} ms, max {max(first):.0f} ms "
              f"(n={len(first)}); later clicks: median {statistics.median(later):.0f} ms, max {max(later):.0f} ms "
              f"(n={len(later)}); {load()}")
        request(base, "POST", f"/api/sessions/{sid}/prompts", {"frame": 0, "object": 1, "kind": "box",
                                                                "box": [40, 40, 200, 180]})
        prompts = prompts_from_json(json.loads(request(base, "GET", f"/api/sessions/{sid}/export/prompts.json")))
        app_fps, segment_fps = [], []
        for round_index in range(args.rounds):
            server_fps, client_fps = app_propagation(base, sid, args.frames)
            app_fps.append(client_fps)
            print(f"round {round_index}: app {client_fps:.2f} frames/s (server-side {server_fps:.2f}); {load()}")
            started = time.perf_counter()
            replay_prompts(model, root / "data" / "clip", prompts, root / f"segment{round_index}", progress=False,
                           notice=lambda _: None)  # fmt: skip
            segment_fps.append(args.frames / (time.perf_counter() - started))
            print(f"round {round_index}: segment {segment_fps[-1]:.2f} frames/s; {load()}")
        server.should_exit = True
    app_median, segment_median = statistics.median(app_fps), statistics.median(segment_fps)
    print(f"propagation ({args.frames} frames, 320x256, nano {args.image_size} px): app {app_median:.2f} frames/s, "
          f"segment {segment_median:.2f} frames/s, app/segment {app_median / segment_median:.3f}")


if __name__ == "__main__":
    main()
