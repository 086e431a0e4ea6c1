import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) the workers share the cores: one
# torch thread each, and one OpenMP thread for the programs the tests start. A plain `pytest` run
# keeps torch's default.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _has_slow_test(items: list[pytest.Item]) -> bool:
    return any(item.get_closest_marker("slow") for item in items)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist: each test file is one work unit (its module fixtures built once), unless its
    tests name their own `xdist_group`; units holding a `slow` test go first, so that the workers
    do not wait on one long unit at the end."""
    if not XDIST_WORKER:
        return
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is None:
            name = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(name))
        else:
            name = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
        groups.setdefault(name, []).append(item)
    ordered = sorted(groups.values(), key=lambda group: not _has_slow_test(group))
    items[:] = [item for group in ordered for item in group]


@pytest.fixture(autouse=True)
def _deterministic():
    """Each test starts from the same RNG state, independent of test order."""
    torch.manual_seed(0)
    yield
