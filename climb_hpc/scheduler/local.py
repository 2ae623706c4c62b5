"""Tasks as subprocesses on this machine, as many at once as the CPU budget allows.

Each task is ``python -m climb_hpc.task RUN_DIR STAGE TASK`` with its own log; a multi-rank task
gets one process per rank with torch.distributed variables (see ``distributed.local_env``). A task
process that exits with ``EXIT_PREEMPTED`` saved its state and is started again to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from climb_hpc.execute import EXIT_PREEMPTED
from climb_hpc.scheduler.base import Executor, Outcome
from climb_hpc.scheduler.distributed import free_port, local_env
from climb_hpc.stage import Resources, Stage

log = logging.getLogger("climb_hpc")
MAX_RESUMES = 100


@dataclass
class _Running:
    task: int
    procs: list[subprocess.Popen]
    logs: list[Path]
    resumes: int = 0
    started: float = field(default_factory=time.time)
    codes: dict[int, int] = field(default_factory=dict)


class LocalExecutor(Executor):
    def cpu_budget(self) -> int:
        return int(self.cfg.cluster.get("cpus") or os.cpu_count() or 1)

    def describe(self, res: Resources) -> str:
        return f"local subprocesses, {self.cpu_budget()} CPUs, {res.cpus} CPU(s) x {res.world_size} rank(s) a task"

    def _start(self, stage: Stage, task: int, res: Resources, resumes: int = 0) -> _Running:
        logs_dir = self.rd.log_dir(stage.name)
        port = free_port()
        procs, logs = [], []
        for rank in range(res.world_size):
            logf = logs_dir / (f"task_{task:05d}.log" if rank == 0 else f"task_{task:05d}.rank{rank}.log")
            env = dict(os.environ)
            env.setdefault("OMP_NUM_THREADS", str(res.cpus))
            env["CLIMB_HPC_TASK_LOG"] = str(logs_dir / f"task_{task:05d}.log")
            if res.world_size > 1:
                env.update(local_env(rank, res.world_size, port))
            with open(logf, "ab") as f:
                f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} start (resume {resumes})\n".encode())
                f.flush()
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "climb_hpc.task", str(self.rd.path), stage.name, str(task)],
                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True,
                ))
            logs.append(logf)
        return _Running(task, procs, logs, resumes)

    def run_tasks(self, stage: Stage, tasks: list[int], res: Resources) -> Outcome:
        budget = self.cpu_budget()
        cost = min(budget, res.cpus * res.world_size)  # a task larger than the machine still runs, alone
        pending = list(tasks)
        running: list[_Running] = []
        used = 0
        with self.progress(stage, tasks) as bar:
            try:
                while pending or running:
                    while pending and used + cost <= budget:
                        running.append(self._start(stage, pending.pop(0), res))
                        used += cost
                    time.sleep(0.05)
                    for r in list(running):
                        for i, p in enumerate(r.procs):
                            if i not in r.codes and p.poll() is not None:
                                r.codes[i] = p.returncode
                                if p.returncode != 0:  # one rank failed: the others cannot finish
                                    self._kill(r)
                        if len(r.codes) < len(r.procs):
                            continue
                        running.remove(r)
                        used -= cost
                        if r.codes.get(0) == EXIT_PREEMPTED and r.resumes < MAX_RESUMES:
                            running.append(self._start(stage, r.task, res, r.resumes + 1))
                            used += cost
                            continue
                        if not self.rd.is_done(stage.name, r.task):
                            self._record_failure(stage, r)
                        bar.update(1)
            finally:
                for r in running:
                    self._kill(r)
        return "finished"

    def _kill(self, r: _Running) -> None:
        for p in r.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in r.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def _record_failure(self, stage: Stage, r: _Running) -> None:
        codes = ", ".join(f"rank {i}: {c}" for i, c in sorted(r.codes.items()))
        recorded = self.rd.failures(stage.name).get(r.task) or {}
        if recorded.get("time", 0) < r.started:  # the task died before it could record why
            self.rd.mark_failed(stage.name, r.task, error=f"task process exited without finishing ({codes})",
                                log=str(r.logs[0]))
        log.error("task %s/%d failed (%s); log: %s", stage.name, r.task, codes, r.logs[0])
