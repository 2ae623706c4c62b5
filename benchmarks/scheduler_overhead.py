"""Scheduler overhead: N no-op tasks through the climb-hpc controller on Slurm, against a bare
``sbatch --array=0-(N-1)%P --wrap=true`` with the same throttle, run alternately (side by side).

    python benchmarks/scheduler_overhead.py [--tasks 100] [--parallelism 8] [--repeats 3] [--poll 1]
                                            [--tasks-per-element N]

Both are timed from submission to the moment the last task is known finished (the baseline polls
``squeue`` every 0.2 s; the controller polls with its configured ``cluster.poll_s``). Needs a running
Slurm (``bash hpc/local-slurm.sh start``). Goal: controller / bare <= 1.2.

A third column, a bare array of ``python -c 'import submitit, omegaconf'``, is the floor of any
Python task started by submitit: on a 2-core machine with 8 task slots, interpreter start-up is
CPU-bound. With one task an element (``--tasks-per-element 1``) the controller cannot beat that floor;
by default (``cluster.tasks_per_element`` automatic) the no-op tasks are packed into one element a
throttle slot, and the controller pays 8 Python starts for 100 tasks. Figures: docs/slurm.md.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from climb_hpc.config import compose
from climb_hpc.pipeline import run_pipeline

FLOOR = f"{sys.executable} -c 'import submitit, omegaconf'"


def bare_array(n: int, parallelism: int, workdir: Path, command: str = "true") -> float:
    t0 = time.perf_counter()
    out = subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}%{parallelism}", "--job-name=bench-bare",
                          f"--output={workdir}/bare_%A_%a.out", f"--wrap={command}"],
                         capture_output=True, text=True, check=True).stdout
    job = out.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        time.sleep(0.2)
    return time.perf_counter() - t0


def controller(n: int, parallelism: int, poll: float, workdir: Path, k: int, per_element: Optional[int]) -> float:
    cfg = compose([f"run_dir={workdir}/run{k}", "pipeline=selftest", "until=noop", f"selftest.tasks={n}",
                   "cluster=slurm", f"cluster.poll_s={poll}", f"cluster.array_parallelism={parallelism}",
                   f"cluster.tasks_per_element={'null' if per_element is None else per_element}", "progress=false"])
    t0 = time.perf_counter()
    run_pipeline(cfg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--parallelism", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--poll", type=float, default=1.0, help="controller poll interval (cluster.poll_s)")
    ap.add_argument("--tasks-per-element", type=int, default=None,
                    help="cluster.tasks_per_element (default: automatic; 1: one task an element)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bare, floor, ours = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
        for k in range(a.repeats):
            bare.append(bare_array(a.tasks, a.parallelism, Path(tmp)))
            floor.append(bare_array(a.tasks, a.parallelism, Path(tmp), FLOOR))
            ours.append(controller(a.tasks, a.parallelism, a.poll, Path(tmp), k, a.tasks_per_element))
            print(f"repeat {k}: bare `true` {bare[-1]:.2f} s   bare python floor {floor[-1]:.2f} s   "
                  f"climb-hpc controller {ours[-1]:.2f} s")
    b, f, o = statistics.median(bare), statistics.median(floor), statistics.median(ours)
    print(f"\n{a.tasks} no-op tasks, throttle %{a.parallelism}, median of {a.repeats}:")
    print(f"  bare sbatch --array of `true`:             {b:6.2f} s  ({a.tasks / b:.1f} tasks/s)")
    print(f"  bare array, python importing submitit:     {f:6.2f} s  ({a.tasks / f:.1f} tasks/s)")
    packing = "automatic" if a.tasks_per_element is None else a.tasks_per_element
    print(f"  climb-hpc controller (slurm):              {o:6.2f} s  ({a.tasks / o:.1f} tasks/s, "
          f"tasks_per_element={packing})")
    print(f"  ratio controller / bare true:   {o / b:.2f}x  (goal <= 1.2x)")
    print(f"  ratio controller / python floor: {o / f:.2f}x")


if __name__ == "__main__":
    main()
