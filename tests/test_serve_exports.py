"""The web app's second step (issue 14): COCO RLE and overlay-mp4 exports, re-propagation from a
corrected frame that keeps the earlier frames' masks, and the cached image encoding of clicks."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from serve_support import FRAMES, HEIGHT, WIDTH, client, data_dir, model  # noqa: F401
from fastapi.testclient import TestClient

from surgsam2.pipelines.prompt_files import prompts_from_json
from surgsam2.serve.app import create_app
from surgsam2.serve.exports import rle_decode, rle_encode
from surgsam2.serve.frames import LazyFrames
from surgsam2.serve.registry import ServeConfig
from surgsam2.tracking.offline import segment_video


def _post(client, url: str, body: dict | None = None) -> dict:
    answer = client.post(url, json=body or {})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _open_prompted(client) -> str:
    """A session on the clip with object 1 (class 3) clicked on frame 0 and object 2 boxed on frame 3."""
    sid = _post(client, "/api/sessions")["session"]
    _post(client, f"/api/sessions/{sid}/open", {"path": "clip"})
    _post(client, f"/api/sessions/{sid}/objects", {"name": "needle driver", "class_id": 3})
    _post(client, f"/api/sessions/{sid}/objects", {})
    _post(client, f"/api/sessions/{sid}/prompts", {"frame": 0, "object": 1, "kind": "point", "x": 30, "y": 40})
    _post(client, f"/api/sessions/{sid}/prompts", {"frame": 3, "object": 2, "kind": "box", "box": [50, 30, 90, 70]})
    return sid


def _propagate(client, sid: str, body: dict) -> dict:
    _post(client, f"/api/sessions/{sid}/propagate", body)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.get(f"/api/sessions/{sid}").json()["propagation"]
        if not state["running"]:
            assert state["error"] is None, state
            return state
        time.sleep(0.05)
    raise AssertionError("propagation did not finish")


def _object_masks(client, sid: str) -> dict[int, dict[int, np.ndarray]]:
    session = client.app.state.registry.get(sid)
    return {frame: {obj: masks.object_mask(obj, (HEIGHT, WIDTH)) for obj in (1, 2)}
            for frame, masks in session.masks.items()}  # fmt: skip


def test_rle_round_trip_and_coco_counts():
    """Compressed RLE as COCO writes it: column-major runs from a zero run; decoding gives the mask back."""
    assert rle_encode(np.array([[0, 1], [0, 1]], bool))["counts"] == "22"
    assert rle_encode(np.array([[1, 1], [0, 0]], bool))["counts"] == "01100"  # an empty zero run first; from the 4th run on, deltas
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (7, 5), (80, 96)):
        for density in (0.0, 0.1, 0.5, 1.0):
            mask = rng.random(shape) < density
            rle = rle_encode(mask)
            assert rle["size"] == list(shape)
            np.testing.assert_array_equal(rle_decode(rle), mask)
    big_runs = np.zeros((300, 300), bool)
    big_runs[:, 150:] = True  # runs over 2^15 exercise multi-group counts and negative deltas
    np.testing.assert_array_equal(rle_decode(rle_encode(big_runs)), big_runs)


def test_coco_export_decodes_to_the_session_masks(client):
    sid = _open_prompted(client)
    _propagate(client, sid, {"direction": "both"})
    document = client.get(f"/api/sessions/{sid}/export/coco.json").json()
    assert [image["file_name"] for image in document["images"]] == [f"{i:05d}" for i in range(FRAMES)]
    assert {c["id"]: c["name"] for c in document["categories"]} == {0: "instrument", 3: "Large Needle Driver"}
    masks = _object_masks(client, sid)
    seen = set()
    for annotation in document["annotations"]:
        frame, obj = annotation["image_id"], annotation["object_id"]
        decoded = rle_decode(annotation["segmentation"])
        np.testing.assert_array_equal(decoded, masks[frame][obj])
        assert annotation["area"] == int(decoded.sum()) and annotation["category_id"] == (3 if obj == 1 else 0)
        x, y, w, h = annotation["bbox"]
        assert decoded[y : y + h, x : x + w].sum() == annotation["area"]
        seen.add((frame, obj))
    expected = {(f, o) for f, objects in masks.items() for o, m in objects.items() if m.any()}
    assert seen == expected and len(seen) >= FRAMES


def test_overlay_mp4_export_is_complete_and_leaves_no_file(client):
    sid = _open_prompted(client)
    _propagate(client, sid, {"direction": "both"})
    answer = client.get(f"/api/sessions/{sid}/export/overlay.mp4")
    assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4"
    work_dir = client.app.state.registry.get(sid).work_dir
    target = work_dir.parent / "check.mp4"
    target.write_bytes(answer.content)
    capture = cv2.VideoCapture(str(target))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == FRAMES and int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == WIDTH
    capture.release()
    target.unlink()
    assert not list(work_dir.rglob("*.mp4"))  # the temporary video is removed once sent


def test_failed_overlay_export_is_a_one_line_error_and_leaves_nothing(model, data_dir, monkeypatch):
    from surgsam2.data.video import OverlayVideoWriter

    app = create_app(model, ServeConfig(data_dir=data_dir, max_upload_mb=1, memory="efp"))
    with TestClient(app, raise_server_exceptions=False) as client:  # the 500 answer, as a browser sees it
        sid = _open_prompted(client)
        calls = []

        def failing_write(self, frame, masks=None):
            calls.append(1)
            if len(calls) == 3:
                raise OSError("disk full")
            return original(self, frame, masks)

        original = OverlayVideoWriter.write
        monkeypatch.setattr(OverlayVideoWriter, "write", failing_write)
        answer = client.get(f"/api/sessions/{sid}/export/overlay.mp4")
        assert answer.status_code == 500 and answer.json()["error"] == "internal error: OSError: disk full"
        work_dir = client.app.state.registry.get(sid).work_dir
        assert not [p for p in work_dir.rglob("*") if p.is_file()]  # no half-written video anywhere
        assert client.get(f"/api/sessions/{sid}").status_code == 200  # still serving


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_repropagation_from_a_corrected_frame_keeps_the_earlier_frames(client, model, data_dir, direction):
    """Defined as SAM 2's propagate from a start frame t: frames from t on (in the direction) get the
    library's pass with all the session's prompts; the other frames keep their masks exactly."""
    sid = _open_prompted(client)
    _propagate(client, sid, {"direction": "both"})
    before = _object_masks(client, sid)
    corrected = 5 if direction == "forward" else 2
    _post(client, f"/api/sessions/{sid}/prompts",
          {"frame": corrected, "object": 1, "kind": "point", "x": 32, "y": 42, "label": 0})  # fmt: skip
    state = _propagate(client, sid, {"direction": direction, "start": corrected})
    assert state["start"] == corrected and state["done"] == FRAMES
    after = _object_masks(client, sid)
    prompts = prompts_from_json(client.get(f"/api/sessions/{sid}/export/prompts.json").json())
    assert corrected in prompts
    frames = LazyFrames(data_dir / "clip")
    if direction == "forward":
        expected = {r.frame_index: r for r in segment_video(model, frames, prompts, backward=False, memory="efp")}
        recomputed = range(corrected, FRAMES)
    else:
        reverse = {FRAMES - 1 - frame: p for frame, p in prompts.items()}
        reversed_frames = [frames[FRAMES - 1 - i] for i in range(FRAMES)]
        results = segment_video(model, reversed_frames, reverse, backward=False, memory="efp")
        expected = {FRAMES - 1 - r.frame_index: r for r in results}
        recomputed = range(0, corrected + 1)
    changed = False
    for frame in range(FRAMES):
        for obj in (1, 2):
            if frame in recomputed:
                own = expected[frame].masks.get(obj, np.zeros((HEIGHT, WIDTH), bool))
                np.testing.assert_array_equal(after.get(frame, {}).get(obj, np.zeros_like(own)), own)
                changed |= not np.array_equal(own, before[frame][obj])
            else:
                np.testing.assert_array_equal(after[frame][obj], before[frame][obj])  # kept, mask for mask
    assert changed  # the correction changed a re-propagated frame


def test_repropagation_start_is_checked(client):
    sid = _open_prompted(client)
    for body, status in (({"direction": "both", "start": 2}, 400), ({"direction": "forward", "start": FRAMES}, 404)):
        answer = client.post(f"/api/sessions/{sid}/propagate", json=body)
        assert answer.status_code == status and "\n" not in answer.json()["error"]


def test_clicks_on_one_frame_reuse_its_encoding_and_equal_a_fresh_step(client, model, data_dir):
    """The second and later clicks on a frame reuse its image encoding; each mask equals a fresh
    `Tracker.step` with the frame's prompts (exactly); another frame is encoded anew."""
    from surgsam2.tracking.prompts import Prompt
    from surgsam2.tracking.tracker import Tracker

    sid = _post(client, "/api/sessions")["session"]
    _post(client, f"/api/sessions/{sid}/open", {"path": "clip"})
    _post(client, f"/api/sessions/{sid}/objects", {})
    session = client.app.state.registry.get(sid)
    frames = LazyFrames(data_dir / "clip")
    clicks = [(30, 40, 1), (70, 20, 0), (35, 45, 1)]
    for count in range(1, len(clicks) + 1):
        x, y, label = clicks[count - 1]
        _post(client, f"/api/sessions/{sid}/prompts", {"frame": 2, "object": 1, "kind": "point", "x": x, "y": y, "label": label})
        assert session.encodings.hits == count - 1
        prompt = Prompt(points=[(a, b) for a, b, _ in clicks[:count]], labels=[c for _, _, c in clicks[:count]])
        fresh = Tracker(model, memory="efp").step(frames[2], {1: prompt})
        np.testing.assert_array_equal(session.masks[2].object_mask(1, (HEIGHT, WIDTH)), fresh.masks[1])
    _post(client, f"/api/sessions/{sid}/prompts", {"frame": 4, "object": 1, "kind": "point", "x": 30, "y": 40})
    assert session.encodings.hits == len(clicks) - 1  # a new frame: no reuse
    assert "encode_image" not in vars(model)  # the shared model is left as it was
