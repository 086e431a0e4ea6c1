"""Import the `surgsam2` package as it was at a git commit, beside the working tree's, so that a
benchmark can time before and after in one process (same load, same weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def import_package_at(commit: str, folder: Path, package: str) -> str:
    """Extract ``src/surgsam2`` at ``commit`` into ``folder`` as ``package`` (its imports renamed)
    and put ``folder`` on the import path; returns ``package``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "src/surgsam2"],
        check=True, capture_output=True,
    ).stdout
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    source = folder / "src" / "surgsam2"
    for path in source.rglob("*.py"):
        text = path.read_text()
        path.write_text(text.replace("surgsam2.", f"{package}.").replace("import surgsam2", f"import {package}"))
    source.rename(folder / package)
    sys.path.insert(0, str(folder))
    return package
