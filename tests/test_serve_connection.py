"""A dropped connection mid-propagation (issue 14, "bad input ... a dropped connection
mid-propagation"), against a real uvicorn server: a client that vanishes while its propagation
runs leaves the propagation to finish in its session (the masks equal `segment_video`'s when the
page comes back); a tab that closes mid-propagation has the propagation cancelled and its files
removed; either way the server keeps serving other requests."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from local_server import local_server

from serve_support import FRAMES, HEIGHT, WIDTH, write_clip  # noqa: F401

from surgsam2.model.checkpoint import load_model
from surgsam2.pipelines.vos_inference import combine_object_logits
from surgsam2.serve.app import create_app
from surgsam2.serve.frames import LazyFrames
from surgsam2.serve.registry import ServeConfig
from surgsam2.tracking.offline import segment_video


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, app, model, data dir) of a uvicorn server on a free local port."""
    root = write_clip(tmp_path_factory.mktemp("data"))
    model = load_model("nano", image_size=64)
    app = create_app(model, ServeConfig(data_dir=root, memory="efp"))
    with local_server(app) as base:
        yield base, app, model, root


def _call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _send_and_drop(base: str, method: str, path: str, body: dict | None = None) -> None:
    """Send one request on a raw socket and close it without reading the answer."""
    host, port = base.removeprefix("http://").split(":")
    payload = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + payload)


def _prompted_session(base: str) -> str:
    sid = _call(base, "POST", "/api/sessions")["session"]
    _call(base, "POST", f"/api/sessions/{sid}/open", {"path": "clip"})
    _call(base, "POST", f"/api/sessions/{sid}/objects", {})
    _call(base, "POST", f"/api/sessions/{sid}/prompts", {"frame": 0, "object": 1, "kind": "point", "x": 30, "y": 40})
    return sid


def _until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_dropped_connection_mid_propagation_finishes_and_server_keeps_serving(served):
    base, app, model, root = served
    sid = _prompted_session(base)
    session = app.state.registry.get(sid)
    with session.shared.lock:  # holds the model: the propagation waits before its first frame
        _send_and_drop(base, "POST", f"/api/sessions/{sid}/propagate", {"direction": "both"})
        _until(lambda: session.propagation.running, "the dropped request did not start the propagation")
        _send_and_drop(base, "GET", f"/api/sessions/{sid}/masks/0.png")  # a page polling masks, gone too
        assert _call(base, "GET", f"/api/sessions/{sid}")["propagation"]["running"]  # still serving, mid-way
    _until(lambda: not session.propagation.running, "the propagation did not finish")
    state = _call(base, "GET", f"/api/sessions/{sid}")["propagation"]
    assert state["done"] == FRAMES and state["error"] is None and not state["cancelled"]
    prompts = session.all_prompts()
    for result in segment_video(model, LazyFrames(root / "clip"), prompts, memory="efp"):
        np.testing.assert_array_equal(session.masks[result.frame_index].combined,
                                      combine_object_logits(result.logits, (HEIGHT, WIDTH)))  # fmt: skip
    other = _prompted_session(base)  # the server serves new sessions as before
    assert _call(base, "GET", f"/api/sessions/{other}")["video"]["num_frames"] == FRAMES


def test_tab_closed_mid_propagation_cancels_it_and_removes_the_session(served):
    base, app, _, _ = served
    sid = _prompted_session(base)
    session = app.state.registry.get(sid)
    work_dir: Path = session.work_dir
    with session.shared.lock:
        _call(base, "POST", f"/api/sessions/{sid}/propagate", {"direction": "both"})
        thread = session.propagation.thread
        _send_and_drop(base, "POST", f"/api/sessions/{sid}/close")  # the page's close beacon, then gone
        _until(lambda: session.propagation.cancel_event.is_set(), "the close request did not cancel")
    _until(lambda: not thread.is_alive() and not work_dir.exists(), "the session was not cleaned up")
    assert session.propagation.cancelled and session.propagation.done < FRAMES
    with pytest.raises(urllib.error.HTTPError) as gone:
        _call(base, "GET", f"/api/sessions/{sid}")
    assert gone.value.code == 404
    assert _call(base, "GET", f"/api/sessions/{_prompted_session(base)}")["video"]["num_frames"] == FRAMES
