"""What the web app's tests share: the serve extras (a failure in CI, which installs them; a skip
that says why elsewhere), a small synthetic clip as a frame folder, and a TestClient fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("the serve extras are not installed: pip install -e '.[serve,test]'", allow_module_level=True)
from fastapi.testclient import TestClient  # noqa: E402

from surgsam2.data.synthetic import SyntheticVideoConfig, generate_synthetic_video  # noqa: E402
from surgsam2.model.checkpoint import load_model  # noqa: E402
from surgsam2.serve.app import create_app  # noqa: E402
from surgsam2.serve.registry import ServeConfig  # noqa: E402

WIDTH, HEIGHT, FRAMES = 96, 80, 8


def write_clip(root: Path, name: str = "clip") -> Path:
    """A FRAMES-frame synthetic clip of WIDTH x HEIGHT as ``<root>/<name>/00000.png ...``; returns root."""
    clip = generate_synthetic_video(SyntheticVideoConfig(width=WIDTH, height=HEIGHT, num_frames=FRAMES, seed=3))
    folder = root / name
    folder.mkdir(parents=True)
    for index, frame in enumerate(clip.frames):
        cv2.imwrite(str(folder / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def model():
    return load_model("nano", image_size=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def client(model, data_dir) -> Iterator[TestClient]:
    app = create_app(model, ServeConfig(data_dir=data_dir, max_upload_mb=1, memory="efp"))
    with TestClient(app) as test_client:
        yield test_client
