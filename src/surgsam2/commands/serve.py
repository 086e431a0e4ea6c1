"""Start the interactive web app: open a clip, click or drag a box on instruments, propagate them
through the video, correct any frame and export masks and prompts. Needs the serve extras
(pip install 'surgsam2[serve]'). Binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from surgsam2.app.options import ModelOptions, add_memory_options, add_model_options, load_model_for_run

NAME = "serve"
HELP = "interactive web app: click, track, correct and export instrument masks in the browser"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_memory_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--data-dir", help="folder whose frame folders and videos the page may open")
    parser.add_argument("--max-upload-mb", type=int, default=500, help="largest upload accepted (default 500 MB)")
    parser.add_argument("--idle-timeout", type=float, default=3600.0,
                        help="seconds after which an unused session is freed (default 3600)")  # fmt: skip
    parser.add_argument("--camera", type=int, action="append", default=[], metavar="INDEX",
                        help="a camera the page may track live (repeatable; none by default)")  # fmt: skip
    parser.add_argument("--stream", action="append", default=[], metavar="URL",
                        help="a stream URL (or video file) the page may track live (repeatable)")  # fmt: skip


def _check(args: argparse.Namespace) -> Path | None:
    """The data dir, after checking the options that can fail before the model loads."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb < 1:
        raise ValueError(f"--max-upload-mb must be >= 1, got {args.max_upload_mb}")
    if args.idle_timeout <= 0:
        raise ValueError(f"--idle-timeout must be > 0, got {args.idle_timeout}")
    if any(camera < 0 for camera in args.camera):
        raise ValueError(f"--camera must be >= 0, got {min(args.camera)}")
    if args.data_dir is None:
        return None
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a folder")
    return data_dir.resolve()


def run(args: argparse.Namespace) -> int:
    data_dir = _check(args)
    try:
        import uvicorn

        from surgsam2.serve.app import create_app
        from surgsam2.serve.registry import ServeConfig
    except ImportError as error:
        raise ValueError(f"surgsam2 serve needs the serve extras ({error.name} is missing):"
                         " pip install 'surgsam2[serve]'") from None  # fmt: skip
    options = ModelOptions.from_args(args)
    model = load_model_for_run(options, warn=lambda message: print(message, file=sys.stderr))
    status = (f"model {options.name} ({model.image_size} px), device {next(model.parameters()).device},"
              f" precision {options.dtype}, memory {args.memory}")  # fmt: skip
    config = ServeConfig(data_dir=data_dir, max_upload_mb=args.max_upload_mb, memory=args.memory,
                         num_frame_to_prune=args.num_frame_to_prune, idle_timeout_s=args.idle_timeout, status=status,
                         live_sources=tuple(str(camera) for camera in args.camera) + tuple(args.stream))  # fmt: skip
    app = create_app(model, config)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    _announce(server, args.host)
    server.run()
    return 0


def _announce(server, host: str) -> None:
    """Print the URL once the server listens (the real port, also when --port 0)."""
    import threading
    import time

    def wait_and_print() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        print(f"surgsam2 serve: open http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)

    threading.Thread(target=wait_and_print, daemon=True).start()
