"""What one Slurm array element runs. Kept apart from ``slurm.py`` so that a task imports little."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional, Union

import submitit
from omegaconf import DictConfig

from climb_hpc import preempt
from climb_hpc.errors import one_line
from climb_hpc.rundir import RunDir
from climb_hpc.scheduler.distributed import slurm_env

log = logging.getLogger("climb_hpc")


class SlurmTask(submitit.helpers.Checkpointable):
    """What one array element runs (pickled by submitit): one task, or several one after another (a packed
    element, ``scheduler/packing.py``). ``checkpoint`` resubmits it unchanged: the tasks' own state lives in
    the run folder, and the requeued element skips the tasks whose marker exists."""

    def __init__(self, run_dir: str, stage: str, checkpointable: bool):
        self.run_dir, self.stage, self.checkpointable = run_dir, stage, checkpointable

    def __call__(self, tasks: Union[int, list[int]]) -> str:
        tasks = [tasks] if isinstance(tasks, int) else list(tasks)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        env = submitit.JobEnvironment()
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            os.environ.update(slurm_env())
        requeue = self._install_handlers()
        cfg = RunDir(self.run_dir).load_config() if len(tasks) > 1 else None  # once for all, as the debug executor
        errors: dict[int, Exception] = {}
        for task in tasks:
            if self.checkpointable and preempt.requested():  # asked to stop between two tasks: go now
                self._requeue(requeue)
            try:
                self._run(task, env, cfg)
            except preempt.Preempted:
                log.warning("task %s/%d saved its state after a preemption signal", self.stage, task)
                self._requeue(requeue)
            except Exception as e:  # recorded by execute; the element's other tasks still run
                log.error("task %s/%d failed: %s", self.stage, task, one_line(str(e))[:500])
                errors[task] = e
        if len(tasks) == 1 and errors:
            raise next(iter(errors.values()))
        if errors:
            raise RuntimeError(f"{len(errors)} of the {len(tasks)} tasks of this element failed: {sorted(errors)}; "
                               f"see their logs in {Path(self.run_dir) / 'logs' / self.stage}")
        return "done"

    def _install_handlers(self) -> Optional[Callable[..., Any]]:
        """A checkpointable stage: USR2 only raises the flag, and submitit's handler (returned) requeues."""
        if self.checkpointable:
            return preempt.install_handler(signal.SIGUSR2)  # type: ignore[return-value]
        # submitit ignores SIGTERM so that a checkpointing task can finish saving. A plain task has nothing
        # to save: when its job is requeued, cancelled or preempted, Slurm's SIGTERM means its work is lost,
        # so it stops at once. Ignoring it let the process outlive the batch shell that died on the same
        # SIGTERM: orphaned, it escaped the SIGKILL after KillWait where Slurm tracks processes by parentage
        # (proctrack/linuxproc), and ran on next to the requeued attempt: two writers of the same outputs.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return None

    def _run(self, task: int, env: submitit.JobEnvironment, cfg: Optional[DictConfig]) -> str:
        """One task. Packed (``cfg``: the config the element loaded), the task writes its own log; alone in its
        element, its log is a link to submitit's, unless an earlier attempt wrote its own (kept, appended to)."""
        from climb_hpc.execute import execute

        task_log = Path(self.run_dir) / "logs" / self.stage / f"task_{task:05d}.log"
        element_log = str(env.paths.stdout)
        own = cfg is not None or (env.num_tasks == 1 and task_log.is_file() and not task_log.is_symlink())
        if not own:
            if env.global_rank == 0:
                _link(task_log, Path(element_log))
            return execute(self.run_dir, self.stage, task, log_path=element_log)
        with _output_to(task_log, f"Slurm job {env.job_id}, restart {os.environ.get('SLURM_RESTART_COUNT', '0')}; "
                                  f"the element's log: {element_log}"):
            try:
                outcome = execute(self.run_dir, self.stage, task, log_path=str(task_log), cfg=cfg)
            except preempt.Preempted:
                raise
            except Exception:
                log.exception("task %s/%d failed", self.stage, task)  # the traceback in the task's own log
                raise
        log.info("task %s/%d: %s", self.stage, task, outcome)
        return outcome

    def _requeue(self, requeue: Optional[Callable[..., Any]]) -> None:
        """submitit: checkpoint() + scontrol requeue + exit (rank 0); the requeued element skips finished tasks."""
        assert callable(requeue)
        requeue(signal.SIGUSR2, None)
        time.sleep(300)  # other ranks: rank 0's requeue ends this process
        sys.exit(1)


@contextlib.contextmanager
def _output_to(task_log: Path, about: str) -> Iterator[None]:
    """Send stdout and stderr (the file descriptors: child processes and C libraries too) to a packed task's own
    log while it runs, after a header line (``about``: the job, the element's log); then back to the element's."""
    task_log.parent.mkdir(parents=True, exist_ok=True)
    if task_log.is_symlink():  # an unpacked attempt's link to submitit's log: this attempt writes its own
        task_log.unlink()
    header = f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {about}\n"
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(task_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    saved = os.dup(1), os.dup(2)
    try:
        os.write(fd, header.encode())
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


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
