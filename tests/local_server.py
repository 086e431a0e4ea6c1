"""A test helper: an ASGI app served by uvicorn on a free local port in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def local_server(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 while inside; yields its base URL (the server stops on exit)."""
    import uvicorn

    # The server gets the socket bound here, so no other test process can take its port between
    # choosing it and serving on it (the tests run in parallel workers).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
