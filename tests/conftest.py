import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Under pytest-xdist (`make test` runs `-n 2 --dist loadscope`) the workers share the cores: one
# torch thread each, and one OpenMP thread for the programs the tests start. A plain `pytest` run
# keeps torch's default.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _work_unit(item: pytest.Item) -> str:
    """xdist's unit under `--dist loadscope`: the test's class, else its file."""
    return item.nodeid.rsplit("::", 1)[0]


@pytest.hookimpl(trylast=True)  # after pytest's own ordering by fixtures, which it keeps within a unit
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist: the work units (a test class, else a file) holding a `slow` test go first, so
    that the workers do not end waiting on one long unit."""
    if not XDIST_WORKER:
        return
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_work_unit(item), []).append(item)
    ordered = sorted(units.values(), key=lambda unit: not any(item.get_closest_marker("slow") for item in unit))
    items[:] = [item for unit in ordered for item in unit]


@pytest.fixture(autouse=True)
def _deterministic():
    """Each test starts from the same RNG state, independent of test order."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shipped_export(tmp_path_factory: pytest.TempPathFactory):
    """The shipped nano (fp32, CPU) and its ONNX export, shared by the ONNX runtime tests."""
    from surgsam2.export.onnx_export import ExportOptions, export_onnx
    from surgsam2.model.checkpoint import load_model

    model = load_model("nano", device="cpu")
    folder = tmp_path_factory.mktemp("shipped_nano_onnx")
    export_onnx(model, folder, ExportOptions())
    return model, folder
