"""The server's sessions: created per browser tab with an unguessable id, freed when idle."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from surgsam2.memory.policies import DEFAULT_NUM_FRAME_TO_PRUNE, DEFAULT_POLICY
from surgsam2.model.sam2 import SAM2Model
from surgsam2.serve.session import ApiError, Session, SharedModel


@dataclass
class ServeConfig:
    """What `surgsam2 serve` was started with (besides the model)."""

    data_dir: Path | None = None
    max_upload_mb: int = 500
    memory: str = DEFAULT_POLICY
    num_frame_to_prune: int = DEFAULT_NUM_FRAME_TO_PRUNE
    idle_timeout_s: float = 3600.0
    max_sessions: int = 32
    frame_cache_mb: int = 256
    live_sources: tuple[str, ...] = ()  # cameras (index) and stream URLs the page may open live
    status: str = ""  # model, device, precision, memory: shown in the page


class SessionRegistry:
    """Every live session; one lock for the table, each session has its own."""

    def __init__(self, model: SAM2Model, config: ServeConfig) -> None:
        self.config = config
        self.shared = SharedModel(model, threading.Lock(), config.memory, config.num_frame_to_prune)
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.root = Path(tempfile.mkdtemp(prefix="surgsam2-serve-"))

    def create(self) -> Session:
        self.sweep()
        with self.lock:
            if len(self.sessions) >= self.config.max_sessions:
                raise ApiError(503, f"the server holds {self.config.max_sessions} sessions already: close a tab or wait")
            session_id = secrets.token_urlsafe(16)
            work_dir = self.root / session_id
            work_dir.mkdir()
            session = Session(session_id, self.shared, work_dir)
            self.sessions[session_id] = session
            return session

    def get(self, session_id: str) -> Session:
        self.sweep()
        with self.lock:
            session = self.sessions.get(session_id)
        if session is None:
            raise ApiError(404, "unknown or expired session: reload the page to start a new one")
        session.last_used = time.monotonic()
        return session

    def remove(self, session_id: str) -> None:
        with self.lock:
            session = self.sessions.pop(session_id, None)
        if session is None:
            raise ApiError(404, "unknown or expired session")
        session.close()

    def sweep(self) -> None:
        """Free sessions idle longer than the timeout (a running propagation counts as use)."""
        now = time.monotonic()
        with self.lock:
            idle = [sid for sid, s in self.sessions.items()
                    if not s.propagation.running and now - s.last_used > self.config.idle_timeout_s]  # fmt: skip
            closing = [self.sessions.pop(sid) for sid in idle]
        for session in closing:
            session.close()

    def close(self) -> None:
        with self.lock:
            closing = list(self.sessions.values())
            self.sessions.clear()
        for session in closing:
            session.close()
        shutil.rmtree(self.root, ignore_errors=True)
