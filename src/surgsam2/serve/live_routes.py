"""The live-mode endpoints of a session: start an allow-listed camera or stream, poll its state,
fetch the newest frame (with the overlay drawn, or its masks as a palette PNG), click, stop."""

from __future__ import annotations

from typing import Literal

import cv2
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, StrictInt, StrictStr

from surgsam2.data.overlay import overlay_masks
from surgsam2.serve.exports import palette_png
from surgsam2.serve.live import LiveSnapshot, LiveStream, resolve_live_source
from surgsam2.serve.registry import SessionRegistry
from surgsam2.serve.session import ApiError, Session


class LiveStartBody(BaseModel):
    source: StrictInt | StrictStr  # an index into the allow-list, or its exact text


class LivePromptBody(BaseModel):
    object: int
    kind: Literal["point", "box"]
    x: float | None = None
    y: float | None = None
    label: Literal[0, 1] = 1
    box: list[float] | None = None


def _live(session: Session) -> LiveStream:
    if session.live is None:
        raise ApiError(409, "no live source is open in this session: start one first")
    return session.live


def _snapshot(session: Session) -> LiveSnapshot:
    snapshot = _live(session).snapshot
    if snapshot is None:
        raise ApiError(409, "no live frame yet: the source has not delivered a processed frame")
    return snapshot


def prompt_values(body: LivePromptBody) -> tuple[float, ...]:
    """(x, y, label) of a point, or (x0, y0, x1, y1) of a box; 422 when the kind's fields are missing."""
    if body.kind == "point":
        if body.x is None or body.y is None:
            raise ApiError(422, "a point prompt needs x and y")
        return (body.x, body.y, float(body.label))
    if body.box is None or len(body.box) != 4:
        raise ApiError(422, "a box prompt needs box [x0, y0, x1, y1]")
    return tuple(body.box)


def add_live_routes(app: FastAPI, registry: SessionRegistry) -> None:
    allowed = registry.config.live_sources

    @app.post("/api/sessions/{sid}/live")
    def start_live(sid: str, body: LiveStartBody) -> dict:
        session = registry.get(sid)
        source = resolve_live_source(allowed, body.source)
        with session.lock:
            session.check_idle()
            if session.live is not None:
                session.live.stop()
                session.live = None
            session.live = LiveStream(source, registry.shared)
        return session.live.to_json()

    @app.get("/api/sessions/{sid}/live")
    def live_state(sid: str) -> dict:
        return _live(registry.get(sid)).to_json()

    @app.delete("/api/sessions/{sid}/live")
    def stop_live(sid: str) -> dict:
        session = registry.get(sid)
        with session.lock:
            live = _live(session)
            session.live = None
        live.stop()
        return {"stopped": live.label, "running": live.running}

    @app.get("/api/sessions/{sid}/live/view.jpg")
    def live_view(sid: str, opacity: float = 0.5, hide: str = "") -> Response:
        """The newest processed frame with its masks drawn (``hide``: comma-separated object ids)."""
        snapshot = _snapshot(registry.get(sid))
        combined = snapshot.combined
        hidden = [int(part) for part in hide.split(",") if part.strip().isdigit()]
        if hidden:
            combined = combined.copy()
            combined[(combined[..., None] == hidden).any(-1)] = 0
        image = overlay_masks(snapshot.frame, combined, alpha=min(max(opacity, 0.0), 1.0), draw_ids=False)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        return Response(data.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "no-store", "X-Live-Seq": str(snapshot.seq)})

    @app.get("/api/sessions/{sid}/live/masks.png")
    def live_masks(sid: str) -> Response:
        snapshot = _snapshot(registry.get(sid))
        return Response(palette_png(snapshot.combined), media_type="image/png", headers={"Cache-Control": "no-store", "X-Live-Seq": str(snapshot.seq)})

    @app.post("/api/sessions/{sid}/live/prompts")
    def live_prompt(sid: str, body: LivePromptBody) -> dict:
        session = registry.get(sid)
        live = _live(session)
        session.require_object(body.object)
        live.add_prompt(body.object, body.kind, prompt_values(body))
        return live.to_json()
