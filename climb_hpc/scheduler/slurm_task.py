"""What one Slurm array element runs. Kept apart from ``slurm.py`` so that a task imports little."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import submitit

from climb_hpc import preempt
from climb_hpc.scheduler.distributed import slurm_env

log = logging.getLogger("climb_hpc")


class SlurmTask(submitit.helpers.Checkpointable):
    """What one array element runs (pickled by submitit). ``checkpoint`` resubmits it unchanged:
    the task's own state lives in the run folder."""

    def __init__(self, run_dir: str, stage: str, checkpointable: bool):
        self.run_dir, self.stage, self.checkpointable = run_dir, stage, checkpointable

    def __call__(self, task: int) -> str:
        from climb_hpc.execute import execute

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        env = submitit.JobEnvironment()
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            os.environ.update(slurm_env())
        log_path = str(env.paths.stdout)
        if env.global_rank == 0:
            _link(Path(self.run_dir) / "logs" / self.stage / f"task_{task:05d}.log", Path(log_path))
        if self.checkpointable:
            requeue = preempt.install_handler(signal.SIGUSR2)
        else:
            # submitit ignores SIGTERM so that a checkpointing task can finish saving. A plain task has nothing
            # to save: when its job is requeued, cancelled or preempted, Slurm's SIGTERM means its work is lost,
            # so it stops at once. Ignoring it let the process outlive the batch shell that died on the same
            # SIGTERM: orphaned, it escaped the SIGKILL after KillWait where Slurm tracks processes by parentage
            # (proctrack/linuxproc), and ran on next to the requeued attempt: two writers of the same outputs.
            requeue = None
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            return execute(self.run_dir, self.stage, task, log_path=log_path)
        except preempt.Preempted:
            log.warning("task %s/%d saved its state after a preemption signal", self.stage, task)
            assert callable(requeue)
            requeue(signal.SIGUSR2, None)  # submitit: checkpoint() + scontrol requeue + exit (rank 0)
            time.sleep(300)  # other ranks: rank 0's requeue ends this process
            sys.exit(1)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: temporary outputs are removed, no marker is written


def _link(link: Path, target: Path) -> None:
    """Point logs/<stage>/task_NNNNN.log at submitit's log of the current attempt."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:
        pass
