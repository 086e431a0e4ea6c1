"""The FastAPI application: the page, and a JSON API per session. Every failure is a 4xx/5xx
answer ``{"error": "one line"}``; the server keeps serving."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from surgsam2.data.classes import ENDOVIS18_CLASSES
from surgsam2.model.sam2 import SAM2Model
from surgsam2.serve.exports import coco_document, masks_zip, overlay_video, palette_png, prompts_document
from surgsam2.serve.frames import (
    VIDEO_EXTENSIONS,
    ZIP_EXPANSION_LIMIT,
    list_data_dir,
    open_frames,
    resolve_in_data_dir,
)
from surgsam2.serve.live import live_source_names
from surgsam2.serve.live_routes import LivePromptBody, add_live_routes, prompt_values
from surgsam2.serve.registry import ServeConfig, SessionRegistry
from surgsam2.serve.session import ApiError, Session

STATIC_DIR = Path(__file__).parent / "static"
_CHUNK = 1 << 20


class OpenBody(BaseModel):
    path: str = Field(max_length=4096)


class ObjectBody(BaseModel):
    name: str | None = Field(default=None, max_length=100)
    class_id: int | None = None


class PromptBody(LivePromptBody):
    """A click or box on one frame of the clip (a live prompt applies to the newest frame)."""

    frame: int


class FrameObjectBody(BaseModel):
    frame: int
    object: int


class PropagateBody(BaseModel):
    direction: Literal["forward", "backward", "both"] = "both"
    start: int | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(FileNotFoundError)
    async def not_found(_: Request, error: FileNotFoundError) -> JSONResponse:
        return _error(404, str(error))

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, error: ValueError) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _error(422, f"bad request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal(_: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def _store_upload(upload: UploadFile, target: Path, max_bytes: int) -> Path:
    """Copy an upload into ``target`` in chunks, refusing it once it passes ``max_bytes``."""
    written = 0
    with target.open("wb") as out:
        while chunk := upload.file.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise ApiError(413, f"the upload is larger than --max-upload-mb {max_bytes // 2**20}")
            out.write(chunk)
    if written == 0:
        raise ApiError(400, "the upload is empty")
    return target


def _open_upload(session: Session, upload: UploadFile, config: ServeConfig) -> None:
    """A zip of frames or a video file, kept in the session's private dir, opened as its clip."""
    from surgsam2.serve.frames import LazyFrames, extract_frame_zip

    name = Path(upload.filename or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in (".zip", *VIDEO_EXTENSIONS):
        raise ApiError(415, f"unsupported upload {name!r}: a zip of frames or a video ({', '.join(VIDEO_EXTENSIONS)})")
    max_bytes = config.max_upload_mb * 2**20
    upload_dir = session.work_dir / "upload"
    shutil.rmtree(upload_dir, ignore_errors=True)
    upload_dir.mkdir()
    stored = _store_upload(upload, upload_dir / f"source{suffix}", max_bytes)
    cache = config.frame_cache_mb * 2**20
    if suffix == ".zip":
        folder = extract_frame_zip(stored, upload_dir / Path(name).stem, max_bytes * ZIP_EXPANSION_LIMIT)
        frames = LazyFrames(folder, cache)
    else:
        frames = open_frames(stored, upload_dir, cache)
        frames.name = Path(name).stem
    session.open(frames)


def _add_session_routes(app: FastAPI, registry: SessionRegistry) -> None:
    config = registry.config

    @app.post("/api/sessions")
    def create_session() -> dict:
        return registry.create().to_json()

    @app.get("/api/sessions/{sid}")
    def session_state(sid: str) -> dict:
        return registry.get(sid).to_json()

    @app.delete("/api/sessions/{sid}")
    def close_session(sid: str) -> dict:
        registry.remove(sid)
        return {"closed": sid}

    @app.post("/api/sessions/{sid}/close")
    def close_tab(sid: str) -> dict:
        registry.remove(sid)  # the page closes its session when the tab goes away
        return {"closed": sid}

    @app.post("/api/sessions/{sid}/open")
    def open_path(sid: str, body: OpenBody) -> dict:
        session = registry.get(sid)
        path = resolve_in_data_dir(config.data_dir, body.path)
        session.open(open_frames(path, session.work_dir, config.frame_cache_mb * 2**20))
        return session.to_json()

    @app.post("/api/sessions/{sid}/upload")
    def upload(sid: str, request: Request, file: UploadFile = File(...)) -> dict:
        session = registry.get(sid)
        declared = int(request.headers.get("content-length") or 0)
        if declared > config.max_upload_mb * 2**20 + _CHUNK:
            raise ApiError(413, f"the upload is larger than --max-upload-mb {config.max_upload_mb}")
        _open_upload(session, file, config)
        return session.to_json()

    @app.get("/api/sessions/{sid}/frames/{index}.jpg")
    def frame_image(sid: str, index: int) -> Response:
        session = registry.get(sid)
        frame = session.require_frames()[session.check_frame(index)]
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        return Response(data.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/sessions/{sid}/masks/{index}.png")
    def mask_image(sid: str, index: int) -> Response:
        session = registry.get(sid)
        session.check_frame(index)
        masks = session.masks.get(index)
        if masks is None:
            return Response(status_code=204)
        return Response(palette_png(masks.combined), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/sessions/{sid}/frames/{index}/prompts")
    def frame_prompts(sid: str, index: int) -> dict:
        session = registry.get(sid)
        return {"frame": session.check_frame(index), "prompts": session.prompts_on(index)}


def _add_edit_routes(app: FastAPI, registry: SessionRegistry) -> None:
    @app.post("/api/sessions/{sid}/objects")
    def add_object(sid: str, body: ObjectBody) -> dict:
        return registry.get(sid).add_object(body.name, body.class_id).to_json()

    @app.patch("/api/sessions/{sid}/objects/{oid}")
    def edit_object(sid: str, oid: int, body: ObjectBody) -> dict:
        return registry.get(sid).update_object(oid, body.name, body.class_id).to_json()

    @app.delete("/api/sessions/{sid}/objects/{oid}")
    def remove_object(sid: str, oid: int) -> dict:
        session = registry.get(sid)
        session.remove_object(oid)
        return session.to_json()

    @app.post("/api/sessions/{sid}/prompts")
    def add_prompt(sid: str, body: PromptBody) -> dict:
        session = registry.get(sid)
        values = prompt_values(body)
        session.add_prompt(body.frame, body.object, body.kind, values)
        return session.to_json()

    @app.post("/api/sessions/{sid}/prompts/{action}")
    def undo_or_clear_prompts(sid: str, action: Literal["undo", "clear"], body: FrameObjectBody) -> dict:
        """``undo``: the object's last prompt on the frame; ``clear``: all of them."""
        session = registry.get(sid)
        session.undo_prompt(body.frame, body.object, clear=action == "clear")
        return session.to_json()

    @app.post("/api/sessions/{sid}/propagate")
    def propagate(sid: str, body: PropagateBody) -> dict:
        session = registry.get(sid)
        session.start_propagation(body.direction, body.start)
        return session.to_json()

    @app.post("/api/sessions/{sid}/cancel")
    def cancel(sid: str) -> dict:
        session = registry.get(sid)
        return {"cancelled": session.cancel_propagation()}

    def download(sid: str, build: Callable[[Session], bytes], suffix: str, media_type: str) -> Response:
        """An export built in memory while the session is quiet, sent as ``<video><suffix>``."""
        session = registry.get(sid)
        session.check_idle()
        with session.lock:
            data = build(session)
        name = f"{session.require_frames().name}{suffix}"
        return Response(data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/sessions/{sid}/export/masks.zip")
    def export_masks(sid: str) -> Response:
        return download(sid, masks_zip, "_masks.zip", "application/zip")

    @app.get("/api/sessions/{sid}/export/coco.json")
    def export_coco(sid: str) -> Response:
        return download(sid, lambda session: json.dumps(coco_document(session)).encode(), "_coco.json", "application/json")

    @app.get("/api/sessions/{sid}/export/overlay.mp4")
    def export_overlay(sid: str) -> FileResponse:
        session = registry.get(sid)
        session.check_idle()
        scratch = Path(tempfile.mkdtemp(prefix="overlay-", dir=session.work_dir))
        try:
            with session.lock:
                video = overlay_video(session, scratch / f"{session.require_frames().name}_overlay.mp4")
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return FileResponse(video, media_type="video/mp4", filename=video.name,
                            background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True))  # fmt: skip

    @app.get("/api/sessions/{sid}/export/prompts.json")
    def export_prompts(sid: str) -> JSONResponse:
        session = registry.get(sid)
        with session.lock:
            document = prompts_document(session)
        return JSONResponse(document, headers={"Content-Disposition": f'attachment; filename="{document["video"]}_prompts.json"'})


def create_app(model: SAM2Model, config: ServeConfig) -> FastAPI:
    """The web app over ``model``; its sessions are freed when the app shuts down."""
    registry = SessionRegistry(model, config)
    app = FastAPI(title="surgsam2", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    _install_error_handlers(app)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    def info() -> dict:
        return {"status": config.status, "data": list_data_dir(config.data_dir), "max_upload_mb": config.max_upload_mb,
                "classes": {str(k): v for k, v in ENDOVIS18_CLASSES.items()},
                "live": live_source_names(config.live_sources)}  # fmt: skip

    _add_session_routes(app, registry)
    _add_edit_routes(app, registry)
    add_live_routes(app, registry)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.router.on_shutdown.append(registry.close)
    return app
