"""climb-hpc: CLIMB data-mixture search and Minitron compression as resumable Slurm batch pipelines.

The Python API (``from climb_hpc import Pipeline, status``) is in :mod:`climb_hpc.api`; it is imported on
first use, so that a task process that imports ``climb_hpc`` pays for nothing it does not run.
"""

from __future__ import annotations

from typing import Any

from climb_hpc._version import __version__

__all__ = ["Pipeline", "status", "__version__"]


def __getattr__(name: str) -> Any:  # PEP 562: lazy exports
    if name in ("Pipeline", "status"):
        from climb_hpc import api

        return getattr(api, name)
    raise AttributeError(f"module 'climb_hpc' has no attribute {name!r}")
