"""The ``--device`` vocabulary without torch (the command line's help; `runtime.devices` resolves it)."""

from __future__ import annotations

DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda when available, else cpu)"
