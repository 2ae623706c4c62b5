"""In-process, one task after another: for debugging a stage with pdb or in tests."""

from __future__ import annotations

import logging

from climb_hpc import preempt
from climb_hpc.config import ConfigError
from climb_hpc.errors import UserError, one_line
from climb_hpc.execute import execute
from climb_hpc.scheduler.base import Executor, Outcome
from climb_hpc.stage import Resources, Stage

log = logging.getLogger("climb_hpc")


class DebugExecutor(Executor):
    def describe(self, res: Resources) -> str:
        return "in this process, sequentially"

    def run_tasks(self, stage: Stage, tasks: list[int], res: Resources) -> Outcome:
        if res.world_size > 1:
            raise ConfigError(f"stage {stage.name} needs {res.world_size} ranks; cluster=debug runs one process. "
                              "Use cluster=local or cluster=slurm.")
        with self.progress(stage, tasks) as bar:
            for t in tasks:
                try:
                    execute(str(self.rd.path), stage.name, t)
                except preempt.Preempted:
                    log.warning("task %s/%d preempted in debug mode; it resumes on the next run", stage.name, t)
                except UserError as e:  # the controller reports it, in one line
                    log.error("task %s/%d failed: %s", stage.name, t, one_line(str(e)))
                except Exception:
                    log.exception("task %s/%d failed", stage.name, t)
                bar.update(1)
        return "finished"
