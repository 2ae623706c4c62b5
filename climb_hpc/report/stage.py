"""Stage ``report``: ``<run>/report.html`` + ``<run>/report/*.png`` from the run folder (``build.write_report``).

A driver stage: one small job that runs in the controller whatever the executor, so a run on Slurm does
not queue a job for a page. Options come from the run config's ``report.*`` when set (``max_points``,
``dpi``, ``top_trials``). To refresh the page at any time, also while a run is going:
``climb-hpc report run_dir=DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from climb_hpc.estimate import Inputs, Ledger, Work, rate
from climb_hpc.stage import DriverStage, Resources

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir
    from climb_hpc.stage import RunStageFn

NAME = "report"


@dataclass(frozen=True)
class Outputs:
    """The page in the run folder, its PNGs under ``report/``."""

    dir: Path
    page: Path


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME, rd.path / "report.html")


def drive(cfg: DictConfig, rd: RunDir, run_stage: RunStageFn) -> None:
    from climb_hpc.report.build import write_report

    print(f"report: {write_report(rd.path)}", flush=True)


#: It reads whatever the other stages left (a section whose stage has not run says so): no declared inputs.
# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Plots and the page, in the controller: a fixed time."""
    return Work("report (CPU)", [1], task_s=rate(cfg, x, "report_s", led, "s", name="report"))


STAGE = DriverStage(name=NAME, drive=drive, resources=lambda cfg: Resources(cpus=1, time_min=10), outputs=outputs, estimate=estimate)
