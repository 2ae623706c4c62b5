"""The executor interface and what all executors share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from omegaconf import DictConfig
from tqdm import tqdm

from climb_hpc.rundir import RunDir
from climb_hpc.stage import Resources, Stage

Outcome = Literal["finished", "dry_run"]


class Executor(ABC):
    def __init__(self, cfg: DictConfig, rd: RunDir):
        self.cfg = cfg
        self.rd = rd

    @abstractmethod
    def run_tasks(self, stage: Stage, tasks: list[int], res: Resources) -> Outcome:
        """Run these tasks and block until each has finished or failed for good.

        Success is the task's completion marker; a failure is recorded in the run folder.
        """

    def active_tasks(self, stage: str) -> int:
        """Tasks of ``stage`` that an earlier controller launched and that still run (Slurm jobs outlive it)."""
        return 0

    @abstractmethod
    def describe(self, res: Resources) -> str:
        """One line for the log: where and how the tasks run."""

    def progress(self, stage: Stage, tasks: list[int]) -> tqdm[None]:
        return tqdm(total=len(tasks), desc=stage.name, unit="task", disable=not self.cfg.progress,
                    dynamic_ncols=True)
