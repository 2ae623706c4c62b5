"""Tasks as Slurm job arrays through submitit: the only module that imports submitit.

One stage = one job array of elements, each running one task or several one after another
(``cluster.tasks_per_element``, ``packing.py``); an array larger than the cluster's MaxArraySize is split,
the parts chained so that the ``%N`` throttle (N elements at once) holds overall. Each element runs
``SlurmTask`` -> ``climb_hpc.execute.execute`` for each of its tasks. The controller polls with one
``squeue`` call (retried with backoff) and one listing of the stage's marker folder a poll.
Preemption: for a checkpointable stage the USR2 signal only raises a flag; the task saves at its next
safe point and raises ``Preempted``, and then submitit's own handler requeues the job (timeouts are
requeued at most ``cluster.max_num_timeout`` times). Job ids are kept in the run folder, so a
restarted controller re-attaches to jobs still queued or running instead of submitting them twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import submitit
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import _make_sbatch_string

from climb_hpc.config import ConfigError
from climb_hpc.errors import UserError, one_line
from climb_hpc.rundir import atomic_write, atomic_write_json, read_json
from climb_hpc.scheduler.base import Executor, Outcome
from climb_hpc.scheduler.packing import pack, tasks_per_element
from climb_hpc.scheduler.slurm_options import max_array_size, submitit_parameters, test_only
from climb_hpc.scheduler.slurm_task import SlurmTask
from climb_hpc.stage import Resources, Stage

log = logging.getLogger("climb_hpc")


class SlurmExecutor(Executor):
    def describe(self, res: Resources) -> str:
        c = self.cfg.cluster
        where = ", ".join(f"{k}={c.get(k)}" for k in ("partition", "account", "qos", "reservation") if c.get(k))
        return (f"Slurm job array, {res.nodes} node(s) x {res.tasks_per_node} task(s), {res.cpus} CPU(s), "
                f"{res.gpus} GPU(s) a task, at most {c.get('array_parallelism')} element(s) at once"
                + (f", {where}" if where else ""))

    def active_tasks(self, stage: str) -> int:
        return len(self._alive(read_json(self.rd.jobs_file(stage), default={})))

    def _executor(self, stage: Stage, res: Resources, per_element: int = 1) -> tuple[submitit.SlurmExecutor, dict[str, Any]]:
        params = submitit_parameters(self.cfg.cluster, res, job_name=f"climb-{stage.name}",
                                      checkpointable=stage.checkpointable, tasks_per_element=per_element)
        folder = self.rd.log_dir(stage.name) / "slurm"
        kind = _ScriptOnlyExecutor if self.cfg.get("dry_run") else submitit.SlurmExecutor
        ex = kind(folder=folder, max_num_timeout=int(self.cfg.cluster.max_num_timeout))
        ex.update_parameters(**params)
        return ex, params

    def sbatch_script(self, ex: submitit.SlurmExecutor, n: int) -> str:
        """The batch script submitit would submit for an array of ``n`` tasks."""
        params = dict(ex.parameters)
        if n > 1:
            params["map_count"] = n
        return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params)

    def run_tasks(self, stage: Stage, tasks: list[int], res: Resources) -> Outcome:
        size = max_array_size(self.cfg.cluster)
        jobs = {} if self.cfg.get("dry_run") else self._attach(stage, tasks)  # task -> Slurm job id
        to_submit = [t for t in tasks if t not in jobs]
        per_element, why = tasks_per_element(self.cfg, stage, res, len(to_submit), size)
        ex, _ = self._executor(stage, res, per_element)
        elements = pack(to_submit, per_element)
        if to_submit:
            log.info("stage %s: %d task(s) as %d array element(s) of up to %d (%s)", stage.name, len(to_submit),
                     len(elements), per_element, why)
        if self.cfg.get("dry_run"):
            self._write_scripts(ex, stage, elements, size)
            return "dry_run"
        if elements:
            with outside_job_env():
                error = test_only(self.sbatch_script(ex, min(len(elements), size)))
                if error:
                    raise ConfigError(f"Slurm refused the options for stage {stage.name}: {error}\n"
                                      "Check cluster.partition / account / qos / reservation / constraint and "
                                      "the stage's resources (cluster.stage_resources)"
                                      + (f"; an element runs {per_element} tasks, and its time limit is theirs "
                                         "together (cluster.tasks_per_element)" if per_element > 1 else "") + ".")
                jobs.update(self._submit(ex, stage, elements, size))
        return self._wait(stage, jobs)

    def _write_scripts(self, ex: submitit.SlurmExecutor, stage: Stage, elements: list[list[int]], size: int) -> None:
        """A dry run: the batch scripts the stage's arrays would be submitted with."""
        out = self.rd.path / "sbatch"
        parts = pack(list(range(len(elements))), size)
        for k, part in enumerate(parts):
            path = out / (f"{stage.name}.sbatch" if len(parts) == 1 else f"{stage.name}.part{k}.sbatch")
            atomic_write(path, self.sbatch_script(ex, len(part)))
            n = sum(len(elements[e]) for e in part)
            print(f"dry run: would submit {n} task(s) of stage {stage.name} as {len(part)} array element(s) "
                  f"with {path}")

    # ---- submission, re-attachment, polling
    def _jobs_file(self, stage: Stage) -> Path:
        return self.rd.jobs_file(stage.name)

    def _submit(self, ex: submitit.SlurmExecutor, stage: Stage, elements: list[list[int]], size: int) -> dict[int, str]:
        """Submit the elements as arrays of at most ``size``, each after the previous one (``afterany``)."""
        fn = SlurmTask(str(self.rd.path), stage.name, stage.checkpointable)
        jobs: dict[int, str] = {}
        previous: Optional[str] = None
        for part in pack(list(range(len(elements))), size):
            chunk = [elements[e] for e in part]
            ex.update_parameters(dependency=f"afterany:{previous}" if previous else None)
            with deferred_termination():  # an array is recorded as soon as it exists (see there)
                submitted = ex.map_array(fn, chunk)
                previous = submitted[0].job_id.split("_")[0]
                new = {t: job.job_id for job, element in zip(submitted, chunk, strict=True) for t in element}
                jobs.update(new)
                recorded = read_json(self._jobs_file(stage), default={})
                recorded.update({str(t): j for t, j in new.items()})
                atomic_write_json(self._jobs_file(stage), recorded)
            log.info("stage %s: submitted %d task(s) as job %s (%d element(s))", stage.name, len(new), previous,
                     len(chunk))
        return jobs

    def _attach(self, stage: Stage, tasks: list[int]) -> dict[int, str]:
        """Jobs of an earlier controller that are still queued or running, by task."""
        recorded = read_json(self._jobs_file(stage), default={})
        alive = self._alive({t: recorded[str(t)] for t in tasks if str(t) in recorded})
        if alive:
            log.info("stage %s: re-attached to %d task(s) still queued or running", stage.name, len(alive))
        return alive

    def _wait(self, stage: Stage, jobs: dict[int, str]) -> Outcome:
        """Poll until every task has its marker or its element has left the queue without one. A poll is one
        squeue call and one listing of the marker folder, however many tasks."""
        poll = float(self.cfg.cluster.poll_s)
        folder = self.rd.log_dir(stage.name) / "slurm"
        started = time.time()
        pending = dict(jobs)
        gone: dict[int, int] = {}  # polls since the job left the queue without a marker
        with self.progress(stage, list(jobs)) as bar:
            while pending:
                time.sleep(poll)
                queued = self._queue_states(pending.values())  # ONE squeue call for every job of the stage
                done = self.rd.done_tasks(stage.name)  # ONE listing of the marker folder
                ended = []
                for t, job_id in list(pending.items()):
                    if t in done:
                        del pending[t]
                        bar.update(1)
                    elif job_id not in queued:
                        gone[t] = gone.get(t, 0) + 1
                        if gone[t] >= 2:  # once more, for the marker to show on a shared filesystem
                            del pending[t]
                            bar.update(1)
                            ended.append(t)
                if ended:
                    states = final_states({jobs[t] for t in ended})
                    for t in ended:
                        self._record_failure(stage, t, jobs[t], states.get(jobs[t], "(no state in accounting)"), folder, started)
        return "finished"

    def _queue_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        c = self.cfg.cluster
        return queue_states(job_ids, attempts=1 + int(c.get("squeue_retries") or 0),
                            backoff_s=float(c.get("squeue_backoff_s") or 0))

    def _alive(self, jobs: dict) -> dict:
        """The entries of ``{task: job id}`` whose job is still queued or running (one squeue call). COMPLETING
        counts as over: its work is done, and a task without its marker must run again."""
        if not jobs:
            return {}
        queued = self._queue_states(jobs.values())
        return {t: j for t, j in jobs.items() if queued.get(j, "COMPLETING") != "COMPLETING"}

    def _record_failure(self, stage: Stage, task: int, job_id: str, state: str, folder: Path, since: float) -> None:
        own = self.rd.log_dir(stage.name) / f"task_{task:05d}.log"  # a packed task's own log (not a link)
        log_path = own if own.is_file() and not own.is_symlink() else JobPaths(folder, job_id=job_id, task_id=0).stdout
        recorded = self.rd.failures(stage.name).get(task) or {}
        if recorded.get("time", 0) < since:  # the task died before it could say why (killed, node lost, ...)
            self.rd.mark_failed(stage.name, task, error=f"Slurm job {job_id} ended {state} without finishing",
                                log=str(log_path))
        log.error("task %s/%d (job %s) ended %s; log: %s", stage.name, task, job_id, state, log_path)


class _ScriptOnlyExecutor(submitit.SlurmExecutor):
    """For a dry run: renders the batch scripts on a machine without Slurm's commands (submitit refuses to
    start without srun)."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def check_slurm_commands(dry_run: bool) -> None:
    """ConfigError unless Slurm's commands are here (a dry run only writes scripts and needs none)."""
    missing = [c for c in ("sbatch", "squeue", "sacct", "srun") if shutil.which(c) is None]
    if missing and not dry_run:
        raise ConfigError(f"cluster=slurm: {', '.join(missing)} not found on PATH; run climb-hpc on a login node of "
                          "your cluster (or load its Slurm module), use dry_run=true to only write the job scripts, "
                          "or cluster=local to run on this machine")


@contextlib.contextmanager
def outside_job_env() -> Iterator[None]:
    """Hide the variables of the job we may be running in (the controller as a Slurm job) while
    submitting: sbatch exports the environment, and an inherited SLURM_MEM_PER_NODE, SLURM_NTASKS or
    RANK breaks the child jobs' srun and rendezvous. Unlike ``submitit.helpers.clean_env`` this keeps
    SLURM_CONF, which the jobs need to reach the same cluster."""
    hidden = {k: os.environ.pop(k) for k in list(os.environ)
              if (k.startswith(("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_")) and k != "SLURM_CONF")
              or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    try:
        yield
    finally:
        os.environ.update(hidden)


@contextlib.contextmanager
def deferred_termination(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Hold SIGTERM / SIGINT back while an array is submitted and its job ids recorded, then deliver them.

    A controller stopped in between (its own job requeued or preempted: Slurm's SIGTERM; Ctrl-C) would leave
    an array that the run folder does not know of: the restarted controller would submit the same tasks
    again, two attempts writing the same outputs at once. Only in the main thread (where Python runs
    signal handlers); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(caught):
            os.kill(os.getpid(), s)


class SlurmUnreachable(UserError):
    """squeue kept failing: the controller cannot tell which tasks still run."""


def queue_states(job_ids: Iterable[str], attempts: int = 1, backoff_s: float = 1.0) -> dict[str, str]:
    """State of every listed job (array elements one by one) still in the queue, in one squeue call.

    A failed call (slurmctld restarting, overloaded, a network blip) is retried ``attempts - 1`` times after
    ``backoff_s``, 2 x ``backoff_s``, ... seconds; then SlurmUnreachable names the command and its error."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)]
    why = ""
    for attempt in range(1, attempts + 1):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if p.returncode == 0 or "Invalid job id" in p.stderr:  # the latter: every listed job has left
                return dict(line.split("|", 1) for line in p.stdout.splitlines() if "|" in line)
            why = one_line(p.stderr or p.stdout) or f"exit status {p.returncode}"
        except (OSError, subprocess.TimeoutExpired) as e:
            why = one_line(str(e))
        if attempt < attempts:
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("squeue failed (attempt %d of %d): %s; trying again in %.3g s", attempt, attempts, why, delay)
            time.sleep(delay)
    raise SlurmUnreachable(f"`{shlex.join(cmd)}` failed {attempts} time(s), the last: {why}. The stage's jobs are not "
                           "cancelled: once Slurm answers, run the same command again and it re-attaches to them "
                           "(cluster.squeue_retries / squeue_backoff_s set how long it waits)")


def final_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Accounting state (COMPLETED, FAILED, CANCELLED, TIMEOUT ...) of finished jobs, in one sacct call."""
    job_ids = list(job_ids)
    arrays = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, str] = {}
    for _ in range(3):  # accounting lags a moment behind the queue
        p = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)],
                           capture_output=True, text=True, timeout=120)
        states = dict(line.split("|", 1) for line in p.stdout.splitlines() if "|" in line)
        if all(states.get(j, "PENDING") not in ("PENDING", "RUNNING", "COMPLETING") for j in job_ids):
            break
        time.sleep(1)
    return states
