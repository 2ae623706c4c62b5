"""Execute one task of one stage: the code every executor runs, wherever the task lands.

``execute`` loads the run's saved config, skips a task whose marker exists, runs the stage function,
and writes the completion marker last (rank 0 only). A failure is recorded in the run folder with
its traceback, so `climb-hpc status` can show it whatever the executor.

Run as a program by the local executor, or by hand under srun (slurm/distill_32n.sbatch):

    python -m climb_hpc.task RUN_DIR STAGE TASK

Under an srun of several tasks it takes the ranks from Slurm's environment; after saving on a
preemption signal it exits 75 and rank 0 leaves ``_preempted/<stage>/<task>``, which the sbatch
script turns into a requeue (srun's own exit code is not reliable once it has killed the other ranks).

A stage's tasks launched by hand as an array (slurm/embed_array.sbatch) need what the controller does
around its own array, under the run folder's lock:

    python -m climb_hpc.task RUN_DIR STAGE prepare     # plan it once (embed: layout + Zarr metadata); prints N
    python -m climb_hpc.task RUN_DIR STAGE finalize    # after tasks 0..N-1: checks, merges, the stage marker
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from typing import Optional

from climb_hpc import preempt
from climb_hpc.errors import UserError, one_line
from climb_hpc.rundir import RunDir, task_temps

log = logging.getLogger("climb_hpc")

#: Exit code of a task process that saved its state on a preemption request (EX_TEMPFAIL).
EXIT_PREEMPTED = 75


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def execute(run_dir: str, stage_name: str, task: int, log_path: Optional[str] = None) -> str:
    """Run one task; returns "done", "skipped" (marker existed) or raises (``Preempted`` included)."""
    from climb_hpc.stage import get_stage

    rd = RunDir(run_dir)
    if rd.is_done(stage_name, task):
        return "skipped"
    cfg = rd.load_config()
    stage = get_stage(stage_name)
    t0 = time.time()
    try:
        with task_temps(rd.path, stage_name, task, global_rank()):  # an earlier attempt's leftovers go first
            stage.run(cfg, rd, task)
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


def hand_launch(run_dir: str, stage_name: str, action: str) -> int:
    """``prepare`` (returns the task count) or ``finalize`` a stage whose tasks are launched by hand."""
    import contextlib

    from climb_hpc.config import ConfigError
    from climb_hpc.pipeline import finalize_stage, prepare_stage
    from climb_hpc.stage import get_stage

    with RunDir(run_dir) as rd:
        cfg = rd.load_config()
        stage = get_stage(stage_name)
        names = list(cfg.pipeline.stages)
        if stage_name not in names or stage.drive is not None:
            raise ConfigError(f"{stage_name} is not an array stage of this run's pipeline ({', '.join(names)})")
        before = [s for s in names[: names.index(stage_name)] if not rd.stage_complete(s)]
        if before:
            raise ConfigError(f"stage {stage_name} needs the stages before it; not complete: {', '.join(before)}. "
                              f"Run them first: climb-hpc run run_dir={rd.path} until={before[-1]}")
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the answer alone
            if action == "prepare":
                n, _ = prepare_stage(cfg, rd, stage)
            elif rd.stage_complete(stage_name):
                n = -1
                log.info("stage %s is already complete", stage_name)
            else:
                n = finalize_stage(cfg, rd, stage).num_tasks
                log.info("stage %s complete: %d task(s)", stage_name, n)
    return n


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if argv[2] in ("prepare", "finalize"):
        from climb_hpc.pipeline import StageFailed

        try:
            n = hand_launch(argv[0], argv[1], argv[2])
        except (UserError, FileNotFoundError) as e:
            print(f"climb_hpc.task: error: {one_line(str(e))}", file=sys.stderr)
            return 2
        except StageFailed as e:
            print(f"climb_hpc.task: error: {e}", file=sys.stderr)
            return 1
        if argv[2] == "prepare":
            print(n)
        return 0
    if not argv[2].isdigit():
        print(f"climb_hpc.task: error: TASK must be a task number, prepare or finalize; got {argv[2]!r}",
              file=sys.stderr)
        return 2
    run_dir, stage_name, task = argv[0], argv[1], int(argv[2])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "RANK" not in os.environ:
        from climb_hpc.scheduler.distributed import slurm_env  # a hand launch: srun ... -m climb_hpc.task

        os.environ.update(slurm_env())
    preempt.install_handler()
    try:
        execute(run_dir, stage_name, task, log_path=os.environ.get("CLIMB_HPC_TASK_LOG"))
    except preempt.Preempted:
        log.warning("task %s/%d saved its state on a preemption request; exiting to be resumed", stage_name, task)
        if global_rank() == 0:  # for a hand launch's sbatch script: requeue me (slurm/distill_32n.sbatch)
            RunDir(run_dir).mark_preempted(stage_name, task)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
