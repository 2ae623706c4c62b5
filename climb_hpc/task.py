"""The task program: one task of one stage (``climb_hpc.execute.execute``) in a process of its own.

Run by the local executor, or by hand under srun (slurm/distill_32n.sbatch):

    python -m climb_hpc.task RUN_DIR STAGE TASK

Under an srun of several tasks it takes the ranks from Slurm's environment; after saving on a
preemption signal it exits 75 and rank 0 leaves ``_preempted/<stage>/<task>``, which the sbatch
script turns into a requeue (srun's own exit code is not reliable once it has killed the other ranks).

A stage's tasks launched by hand as an array (slurm/embed_array.sbatch) need what the controller does
around its own array, under the run folder's lock:

    python -m climb_hpc.task RUN_DIR STAGE prepare     # plan it once (embed: layout + Zarr metadata); prints N
    python -m climb_hpc.task RUN_DIR STAGE finalize    # after tasks 0..N-1: checks, merges, the stage marker

(``climb_hpc.pipeline.hand_launch``). No executor imports this module: it is the program they start.

When a task process ends (done, skipped, failed or preempted) it leaves what it used beside its log,
``<run>/logs/<stage>/task_<task>[.rank<r>].usage.json`` (the last attempt's; see ``execute.task_usage``).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from climb_hpc import preempt
from climb_hpc.errors import UserError, one_line
from climb_hpc.execute import EXIT_PREEMPTED, execute, global_rank, record_usage
from climb_hpc.rundir import RunDir

log = logging.getLogger("climb_hpc")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if argv[2] in ("prepare", "finalize"):
        from climb_hpc.pipeline import StageFailed, hand_launch

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
    t0, outcome = time.time(), "failed"
    try:
        outcome = execute(run_dir, stage_name, task, log_path=os.environ.get("CLIMB_HPC_TASK_LOG"))
    except preempt.Preempted:
        outcome = "preempted"
        log.warning("task %s/%d saved its state on a preemption request; exiting to be resumed", stage_name, task)
        if global_rank() == 0:  # for a hand launch's sbatch script: requeue me (slurm/distill_32n.sbatch)
            RunDir(run_dir).mark_preempted(stage_name, task)
        return EXIT_PREEMPTED
    finally:
        record_usage(run_dir, stage_name, task, outcome, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
