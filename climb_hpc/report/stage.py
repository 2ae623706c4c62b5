"""Stage ``report``: ``<run>/report.html`` + ``<run>/report/*.png`` from the run folder (``build.write_report``).

One small task (1 CPU). It runs in the controller (``drive``) whatever the executor, so a run on Slurm
does not queue a job for a page; ``python -m climb_hpc.task RUN report 0`` runs it anywhere else. Options
come from the run config's ``report.*`` when set (``max_points``, ``dpi``, ``top_trials``). To refresh the
page at any time, also while a run is going: ``climb-hpc report run_dir=DIR``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir
    from climb_hpc.stage import RunStageFn

NAME = "report"


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    from climb_hpc.report.build import write_report

    if task != 0:
        raise IndexError(f"report has 1 task; there is no task {task}")
    print(f"report: {write_report(rd.path)}", flush=True)


def drive(cfg: DictConfig, rd: RunDir, run_stage: RunStageFn) -> None:
    run(cfg, rd, 0)


STAGE = Stage(name=NAME, run=run, num_tasks=lambda cfg, rd: 1, resources=lambda cfg: Resources(cpus=1, time_min=10),
              drive=drive)
