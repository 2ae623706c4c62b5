"""Shared fixtures. Slurm tests use the REAL local Slurm (`bash hpc/local-slurm.sh start`); with CI=true
a missing Slurm fails the run instead of skipping."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from climb_hpc.config import compose

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def slurm_problem() -> str | None:
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed: {e}"
    if p.returncode != 0:
        return f"sinfo failed: {p.stderr.strip()}"
    usable = [ln for ln in p.stdout.splitlines() if ln.split()[-1] in ("idle", "mixed", "allocated", "completing")]
    if len({ln.split()[0] for ln in usable}) < 2:
        return f"need 2 usable Slurm nodes, sinfo says: {p.stdout.strip()!r}"
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    problem = slurm_problem()
    if problem:
        msg = f"local Slurm not usable ({problem}); start it with: bash hpc/local-slurm.sh start"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def make_cfg(run_dir: Path, *overrides: str):
    return compose([f"run_dir={run_dir}", "progress=false", *overrides])


SLURM = ("cluster=slurm", "cluster.poll_s=0.5")
