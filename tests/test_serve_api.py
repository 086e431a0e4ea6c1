"""The web app's API (`surgsam2 serve`, issue 14): bad input answered with a 4xx one-line JSON
error while the server keeps serving, isolated sessions, cancel, propagated masks equal to the
library's `segment_video`, and the exported prompts replayed by `surgsam2 segment --prompts`."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from serve_support import FRAMES, HEIGHT, WIDTH, client, data_dir, model  # noqa: F401
from surgsam2.data.masks import read_mask
from surgsam2.pipelines.prompt_files import prompts_from_json
from surgsam2.pipelines.vos_inference import combine_object_logits
from surgsam2.tracking.offline import segment_video


def _session(client) -> str:
    answer = client.post("/api/sessions")
    assert answer.status_code == 200, answer.text
    return answer.json()["session"]


def _open_clip(client) -> str:
    sid = _session(client)
    answer = client.post(f"/api/sessions/{sid}/open", json={"path": "clip"})
    assert answer.status_code == 200, answer.text
    return sid


def _wait(client, sid: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/sessions/{sid}").json()["propagation"]
        if not state["running"]:
            return state
        time.sleep(0.05)
    raise AssertionError("propagation did not finish")


def _assert_error(answer, status: int) -> None:
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert message and "\n" not in message and "Traceback" not in message


def _prompt_session(client, sid: str) -> None:
    """Two objects: clicks on frame 0 and a box on frame 3."""
    for _ in range(2):
        assert client.post(f"/api/sessions/{sid}/objects", json={}).status_code == 200
    for body in (
        {"frame": 0, "object": 1, "kind": "point", "x": 30, "y": 40, "label": 1},
        {"frame": 0, "object": 1, "kind": "point", "x": 70, "y": 20, "label": 0},
        {"frame": 3, "object": 2, "kind": "box", "box": [50, 30, 90, 70]},
    ):
        answer = client.post(f"/api/sessions/{sid}/prompts", json=body)
        assert answer.status_code == 200, answer.text


def _library_masks(model, data_dir: Path, prompts) -> list:
    from surgsam2.serve.frames import LazyFrames

    frames = LazyFrames(data_dir / "clip")
    return list(segment_video(model, frames, prompts, memory="efp"))


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.mode == "P"  # a palette PNG: pixel = object id
    return np.array(image)


def _zip_masks(data: bytes, tmp_path: Path) -> Path:
    target = tmp_path / "export"
    zipfile.ZipFile(io.BytesIO(data)).extractall(target)
    return target / "clip"


def test_propagation_equals_segment_video_and_export_layout(client, model, data_dir, tmp_path):
    sid = _open_clip(client)
    _prompt_session(client, sid)
    assert client.get(f"/api/sessions/{sid}/masks/3.png").status_code == 200  # shown after one step
    answer = client.post(f"/api/sessions/{sid}/propagate", json={"direction": "both"})
    assert answer.status_code == 200, answer.text
    state = _wait(client, sid)
    assert state["error"] is None and state["done"] == FRAMES
    prompts = prompts_from_json(client.get(f"/api/sessions/{sid}/export/prompts.json").json())
    expected = _library_masks(model, data_dir, prompts)
    exported = _zip_masks(client.get(f"/api/sessions/{sid}/export/masks.zip").content, tmp_path)
    for result in expected:
        name = f"{result.frame_index:05d}.png"
        combined = combine_object_logits(result.logits, (HEIGHT, WIDTH))
        served = _png(client.get(f"/api/sessions/{sid}/masks/{result.frame_index}.png").content)
        np.testing.assert_array_equal(served, combined)  # exact, mask for mask
        np.testing.assert_array_equal(read_mask(exported / "all" / name), combined)
        for obj in (1, 2):
            own = result.masks[obj] if obj in result.masks else np.zeros((HEIGHT, WIDTH), bool)
            np.testing.assert_array_equal(read_mask(exported / f"{obj:03d}" / name), np.where(own, obj, 0))


def test_backward_and_forward_directions_cover_their_frames(client):
    sid = _open_clip(client)
    _prompt_session(client, sid)
    client.post(f"/api/sessions/{sid}/propagate", json={"direction": "backward"})
    assert _wait(client, sid)["done"] == FRAMES
    assert client.get(f"/api/sessions/{sid}/masks/0.png").status_code == 200
    client.post(f"/api/sessions/{sid}/propagate", json={"direction": "forward"})
    assert _wait(client, sid)["done"] == FRAMES
    assert client.get(f"/api/sessions/{sid}/masks/{FRAMES - 1}.png").status_code == 200


def test_second_propagate_is_409_and_cancel_stops(client, data_dir):
    sid = _open_clip(client)
    _prompt_session(client, sid)
    session = client.app.state.registry.get(sid)
    with session.shared.lock:  # hold the model so the propagation cannot finish under the test
        assert client.post(f"/api/sessions/{sid}/propagate", json={"direction": "both"}).status_code == 200
        _assert_error(client.post(f"/api/sessions/{sid}/propagate", json={"direction": "both"}), 409)
        _assert_error(client.post(f"/api/sessions/{sid}/prompts",
                                  json={"frame": 1, "object": 1, "kind": "point", "x": 5, "y": 5}), 409)  # fmt: skip
        assert client.post(f"/api/sessions/{sid}/cancel").json() == {"cancelled": True}
    state = _wait(client, sid)
    assert state["cancelled"] and state["done"] < FRAMES
    assert client.post(f"/api/sessions/{sid}/propagate", json={"direction": "forward"}).status_code == 200
    assert _wait(client, sid)["done"] == FRAMES  # serving and propagating again after a cancel


def test_two_sessions_are_isolated(client):
    first, second = _open_clip(client), _open_clip(client)
    _prompt_session(client, first)
    state = client.get(f"/api/sessions/{second}").json()
    assert state["objects"] == [] and state["prompted_frames"] == []
    assert client.get(f"/api/sessions/{second}/masks/0.png").status_code == 204
    _assert_error(client.post(f"/api/sessions/{second}/prompts",
                              json={"frame": 0, "object": 1, "kind": "point", "x": 5, "y": 5}), 404)  # fmt: skip
    client.delete(f"/api/sessions/{first}")
    _assert_error(client.get(f"/api/sessions/{first}/export/prompts.json"), 404)
    assert client.get(f"/api/sessions/{second}").status_code == 200


def test_ten_objects_with_classes_and_names(client):
    sid = _open_clip(client)
    for index in range(12):
        obj = client.post(f"/api/sessions/{sid}/objects", json={"name": f"tool {index}", "class_id": 1 + index % 7}).json()
        assert obj["id"] == index + 1 and obj["color"].startswith("#")
    renamed = client.patch(f"/api/sessions/{sid}/objects/12", json={"name": "clip applier", "class_id": 7}).json()
    assert renamed["class_name"] == "Clip Applier"
    for obj in range(1, 13):
        answer = client.post(f"/api/sessions/{sid}/prompts",
                             json={"frame": 0, "object": obj, "kind": "point", "x": 5 + 7 * obj, "y": 40})  # fmt: skip
        assert answer.status_code == 200, answer.text
    assert len(client.get(f"/api/sessions/{sid}/frames/0/prompts").json()["prompts"]) == 12
    assert client.post(f"/api/sessions/{sid}/prompts/undo", json={"frame": 0, "object": 12}).status_code == 200
    _assert_error(client.post(f"/api/sessions/{sid}/prompts/undo", json={"frame": 0, "object": 12}), 404)
    assert client.delete(f"/api/sessions/{sid}/objects/3").status_code == 200
    assert len(client.get(f"/api/sessions/{sid}").json()["objects"]) == 11


@pytest.mark.parametrize("path", ["../data", "/etc", "clip/../../x", "nothing-here", "", "escape"])
def test_bad_paths_are_refused(client, data_dir, path):
    escape = data_dir / "escape"
    if not escape.exists():
        escape.symlink_to(data_dir.parent, target_is_directory=True)  # a symlink out of --data-dir
    sid = _session(client)
    answer = client.post(f"/api/sessions/{sid}/open", json={"path": path})
    assert 400 <= answer.status_code < 500
    _assert_error(answer, answer.status_code)
    assert client.get(f"/api/sessions/{sid}").status_code == 200  # still serving


def test_bad_uploads_and_requests_are_one_line_errors(client):
    sid = _session(client)
    upload = f"/api/sessions/{sid}/upload"
    _assert_error(client.post(upload, files={"file": ("x.txt", b"hello")}), 415)
    _assert_error(client.post(upload, files={"file": ("x.zip", b"not a zip")}), 400)
    _assert_error(client.post(upload, files={"file": ("x.mp4", b"not a video")}), 400)
    _assert_error(client.post(upload, files={"file": ("big.zip", b"0" * (2 * 2**20))}), 413)
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../00000.png", b"x")
    _assert_error(client.post(upload, files={"file": ("evil.zip", evil.getvalue())}), 400)
    _assert_error(client.get("/api/sessions/nope"), 404)
    _assert_error(client.get(f"/api/sessions/{sid}/frames/0.jpg"), 409)  # nothing open yet
    client.post(f"/api/sessions/{sid}/open", json={"path": "clip"})
    client.post(f"/api/sessions/{sid}/objects", json={})
    prompts = f"/api/sessions/{sid}/prompts"
    _assert_error(client.post(prompts, json={"frame": 0, "object": 1, "kind": "point", "x": 500, "y": 5}), 400)
    _assert_error(client.post(prompts, json={"frame": 0, "object": 1, "kind": "box", "box": [9, 9, 3, 3]}), 400)
    _assert_error(client.post(prompts, json={"frame": 0, "object": 7, "kind": "point", "x": 5, "y": 5}), 404)
    _assert_error(client.post(prompts, json={"frame": 99, "object": 1, "kind": "point", "x": 5, "y": 5}), 404)
    _assert_error(client.post(prompts, json={"frame": 0, "object": 1, "kind": "lasso"}), 422)
    _assert_error(client.post(prompts, content=b"{not json", headers={"content-type": "application/json"}), 422)
    _assert_error(client.get(f"/api/sessions/{sid}/frames/99.jpg"), 404)
    _assert_error(client.post(f"/api/sessions/{sid}/propagate", json={"direction": "both"}), 400)  # no prompt
    _assert_error(client.patch(f"/api/sessions/{sid}/objects/1", json={"class_id": 42}), 400)
    assert client.get(f"/api/sessions/{sid}/frames/0.jpg").status_code == 200  # still serving


def test_upload_zip_of_frames_opens_clip(client, data_dir):
    sid = _session(client)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((data_dir / "clip").iterdir()):
            zf.write(path, f"clip/{path.name}")
    answer = client.post(f"/api/sessions/{sid}/upload", files={"file": ("mine.zip", archive.getvalue())})
    assert answer.status_code == 200, answer.text
    assert answer.json()["video"]["num_frames"] == FRAMES


def test_prompts_file_replayed_by_segment_gives_same_masks(client, model, data_dir, tmp_path):
    from surgsam2.cli import main

    sid = _open_clip(client)
    _prompt_session(client, sid)
    client.post(f"/api/sessions/{sid}/propagate", json={"direction": "both"})
    _wait(client, sid)
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(client.get(f"/api/sessions/{sid}/export/prompts.json").json()))
    exported = _zip_masks(client.get(f"/api/sessions/{sid}/export/masks.zip").content, tmp_path)
    out = tmp_path / "segment"
    code = main(["segment", str(data_dir / "clip"), "--prompts", str(prompts_file), "--out", str(out),
                 "--image-size", "64", "--memory", "efp", "--quiet"])  # fmt: skip
    assert code == 0
    for index in range(FRAMES):
        name = f"{index:05d}.png"
        np.testing.assert_array_equal(read_mask(out / "clip" / name), read_mask(exported / "all" / name))


def test_idle_sessions_are_freed_with_their_files(model, data_dir):
    from surgsam2.serve.registry import ServeConfig, SessionRegistry

    registry = SessionRegistry(model, ServeConfig(data_dir=data_dir, idle_timeout_s=0.05))
    try:
        session = registry.create()
        (session.work_dir / "upload").mkdir()
        time.sleep(0.1)
        registry.create()  # any request sweeps the idle ones
        assert session.session_id not in registry.sessions and not session.work_dir.exists()
    finally:
        registry.close()
    assert not registry.root.exists()


def test_frame_cache_is_bounded(data_dir):
    from surgsam2.pipelines.replay import FrameSequence

    frames = FrameSequence(data_dir / "clip", cache_bytes=3 * WIDTH * HEIGHT * 3)
    for index in range(FRAMES):
        frames[index]
    assert len(frames._cache) == 3


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ('{"format": "other"}', "not a surgsam2 prompts file"),
    ('{"format": "surgsam2-prompts", "version": 1, "prompts": [{"frame": 0, "object": 0, "points": [[1, 1]], '
     '"labels": [1]}]}', "object id 0"),
    ('{"format": "surgsam2-prompts", "version": 1, "prompts": [{"frame": 50, "object": 1, "points": [[1, 1]], '
     '"labels": [1]}]}', "frame 50"),
])  # fmt: skip
def test_bad_prompts_file_is_a_one_line_error(data_dir, tmp_path, capsys, content, message):
    from surgsam2.cli import main

    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(content)
    code = main(["segment", str(data_dir / "clip"), "--prompts", str(prompts_file), "--out", str(tmp_path / "out"),
                 "--image-size", "64", "--quiet"])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "out" / "clip").exists()
