"""Execute one task of one stage: the code every executor runs, wherever the task lands.

``execute`` loads the run's saved config, skips a task whose marker exists, runs the stage function,
and writes the completion marker last (rank 0 only). A failure is recorded in the run folder with
its traceback, so `climb-hpc status` can show it whatever the executor.

The debug executor and a Slurm array element (``scheduler/slurm_task.py``) call it in their own process;
the local executor and hand launches run it through the program ``python -m climb_hpc.task``
(``climb_hpc/task.py``). It imports only the run folder and the stage, so that a task starts fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
import traceback
from typing import Any, Optional

from omegaconf import DictConfig

from climb_hpc import preempt
from climb_hpc.errors import ConfigError, UserError, one_line
from climb_hpc.rundir import RunDir, atomic_write_json, task_temps
from climb_hpc.stage import Stage, get_stage, task_config

log = logging.getLogger("climb_hpc")

#: Exit code of a task process that saved its state on a preemption request (EX_TEMPFAIL).
EXIT_PREEMPTED = 75


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def raise_open_files_limit() -> None:
    """Lift the soft limit of open files to the hard one: a proxy trial maps every train store of every cluster
    (clusters x tokenize.max_parts files), past the 1024 that many nodes hand a job by default."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16),
                                                        hard))


def execute(run_dir: str, stage_name: str, task: int, log_path: Optional[str] = None,
            cfg: Optional[DictConfig] = None) -> str:
    """Run one task; returns "done", "skipped" (marker existed) or raises (``Preempted`` included).

    ``cfg``: the run's config, already loaded by the caller (a packed Slurm element runs many tasks, and
    parsing config.yaml is most of a tiny task's time); by default read from the run folder."""
    rd = RunDir(run_dir)
    if rd.is_done(stage_name, task):
        return "skipped"
    raise_open_files_limit()
    cfg = cfg if cfg is not None else rd.load_config()
    stage = get_stage(stage_name)
    if not isinstance(stage, Stage):
        raise ConfigError(f"{stage_name} is a driver stage: it runs in the controller (climb-hpc run), not as tasks")
    t0 = time.time()
    try:
        with task_temps(rd.path, stage_name, task, global_rank()):  # an earlier attempt's leftovers go first
            stage.run(task_config(cfg, stage), rd, task)  # the resources the scheduler requested
    except preempt.Preempted:
        raise
    except UserError as e:  # bad input or config: the message says what to do; retrying cannot help
        rd.mark_failed(stage_name, task, error=one_line(str(e)), log=log_path, user_error=True)
        raise
    except Exception as e:  # not BaseException: a requeue exits through SystemExit and is no failure
        tb = traceback.format_exc(limit=-8)
        rd.mark_failed(stage_name, task, error=f"{type(e).__name__}: {e}\n{tb}", log=log_path)
        raise
    if global_rank() == 0:
        rd.mark_done(stage_name, task, seconds=round(time.time() - t0, 3), log=log_path,
                     restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
    return "done"


def task_usage(seconds: float) -> dict[str, Any]:
    """What this process used so far: peak resident memory, CPU seconds, and bytes read.

    The peak is ``VmHWM`` (this program's own: ``ru_maxrss`` would start at the parent's RSS when it forked us),
    ``ru_maxrss`` where there is no /proc. Bytes read are ``/proc/self/io``'s: ``rchar`` = every read() call, page
    cache included, ``read_bytes`` = what storage delivered; both include the children this process waited for
    (DataLoader workers), and a file read through mmap (numpy memmap) counts in neither."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    status, io = _proc("status"), _proc("io")
    peak = int(status["VmHWM"].split()[0]) * 1024 if "VmHWM" in status else ru.ru_maxrss * 1024
    out: dict[str, Any] = {"wall_seconds": round(seconds, 3), "max_rss_bytes": peak,
                           "user_seconds": round(ru.ru_utime, 3), "system_seconds": round(ru.ru_stime, 3)}
    out.update({k: int(io[k]) for k in ("rchar", "read_bytes", "wchar", "write_bytes") if k in io})
    return out


def _proc(name: str) -> dict[str, str]:
    """``/proc/self/<name>`` as ``key: value`` pairs; empty where there is none (not Linux)."""
    try:
        with open(f"/proc/self/{name}") as f:
            return dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    except OSError:
        return {}


def record_usage(run_dir: str, stage_name: str, task: int, outcome: str, seconds: float) -> None:
    """``<run>/logs/<stage>/task_<task>[.rank<r>].usage.json``: :func:`task_usage` of this task process and how it
    ended (done, skipped, failed, preempted); the last attempt's. Never raises: it is a diagnostic."""
    rank = global_rank()
    name = f"task_{task:05d}" + (f".rank{rank}" if rank else "") + ".usage.json"
    try:
        atomic_write_json(RunDir(run_dir).log_dir(stage_name) / name,
                          {"stage": stage_name, "task": task, "rank": rank, "outcome": outcome, "pid": os.getpid(),
                           **task_usage(seconds)})
    except Exception as e:  # a full disk, a vanished run folder: the task's result stands
        log.warning("could not record the task's resource usage: %s", e)
