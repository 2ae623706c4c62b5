"""The plan against reality on this machine: the default pipeline (``cluster=local``, the built-in corpus) is run
into a temporary folder, ``climb-hpc plan`` is made for the same config, and each stage's estimated and measured
wall time are printed side by side, with the whole run's.

    python benchmarks/plan_vs_actual.py [--run-dir DIR] [--keep] [--reuse DIR] [key=value ...]

* measured: a stage's wall from its completion marker (``_done/<stage>/_stage``, ``seconds``: from the stage's
  start in the controller to its end: planning, its tasks with their start-up, finalize; the search's includes
  its rounds of proxy trials). The whole run: the ``climb-hpc run`` process, start to end.
* estimated: ``climb_hpc.plan.make_plan`` for ``cluster=local`` and the same overrides: each stage's own
  ``Stage.estimate`` at the CPU rates of ``configs/plan/default.yaml`` (``plan.cpu``), which are constants
  measured once with this script, never read back from a run.
* ``--reuse DIR``: compare the plan with a finished run folder instead of running the pipeline.

Goal: within +-30 % for every stage that takes over 10 s and for the whole run. Stages under 10 s are shown but
not judged (their seconds are mostly process start-up). The script prints figures and exits 0 whatever they are;
it exits 1 only when the run itself fails. Other load on the machine makes the measured times longer: the load
average before and after is printed, rerun when it was high.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from climb_hpc.config import compose
from climb_hpc.plan import make_plan
from climb_hpc.rundir import STAGE_MARKER

GOAL = 0.30      # |estimated / measured - 1| at most this
JUDGED_S = 10.0  # stages shorter than this (measured and estimated) are not judged
RUN = "import sys; from climb_hpc.cli import main; sys.exit(main(sys.argv[1:]))"


def stage_marker(run_dir: Path, stage: str) -> Optional[dict]:
    """A stage's completion marker (``<run>/_done/<stage>/_stage``), None while it is not complete."""
    try:
        return json.loads((run_dir / "_done" / stage / STAGE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def trials_run(run_dir: Path) -> int:
    """The search's tasks: its rounds' proxy trials (``_done/proxy/<group>/_stage``)."""
    return sum(int((stage_marker(run_dir, f"proxy/{g.name}") or {}).get("num_tasks") or 0)
               for g in sorted((run_dir / "_done" / "proxy").glob("*")))


def run_pipeline(run_dir: Path, overrides: list[str], log: Path) -> float:
    """``climb-hpc run`` in a process of its own, as a user runs it; its wall seconds (the log: ``log``)."""
    cmd = [sys.executable, "-c", RUN, "run", f"run_dir={run_dir}", "cluster=local", "progress=false", *overrides]
    print(f"running the default pipeline into {run_dir} (log: {log}) ...", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if code != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"the run failed (exit {code}); its log: {log}")
    return seconds


def whole_run_seconds(log: Path) -> Optional[float]:
    """A reused run's wall, from its log's ``run folder: DIR  (371.7 s)`` line when there is one."""
    for line in log.read_text().splitlines() if log.is_file() else []:
        if line.startswith("run folder:") and line.rstrip().endswith(" s)"):
            return float(line.rsplit("(", 1)[1].split()[0])
    return None


def verdict(est: float, meas: float) -> str:
    if max(est, meas) < JUDGED_S:
        return f"(< {JUDGED_S:.0f} s)"
    return "yes" if abs(est / meas - 1) <= GOAL else "NO"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, help="run here (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run folder")
    ap.add_argument("--reuse", type=Path, help="a finished run folder to compare with (nothing is run)")
    ap.add_argument("overrides", nargs="*", help="config overrides for both the run and the plan")
    a = ap.parse_args()

    plan = make_plan(compose(["cluster=local", *a.overrides]), "local")
    load_before = os.getloadavg()
    tmp = None
    if a.reuse:
        run_dir = a.reuse.resolve()
        total = whole_run_seconds(run_dir.parent / "run.log") or whole_run_seconds(Path(f"{run_dir}.log"))
    else:
        if a.run_dir:
            run_dir = a.run_dir.resolve()
        else:
            tmp = Path(tempfile.mkdtemp(prefix="plan_vs_actual_"))
            run_dir = tmp / "run"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        total = run_pipeline(run_dir, a.overrides, run_dir.parent / "run.log")
    load_after = os.getloadavg()

    head = f"{'stage':<11}{'tasks':>6}{'run':>6}{'estimated s':>13}{'measured s':>12}{'est/meas':>10}  within +-30 %?"
    print("\n" + head + "\n" + "-" * len(head))
    est_sum = meas_sum = 0.0
    for s in plan.stages:
        marker = stage_marker(run_dir, s.stage)
        if marker is None:
            print(f"{s.stage:<11}{s.tasks:>6}{'-':>6}{s.wall_h * 3600:>13.1f}{'-':>12}{'-':>10}  (not run)")
            continue
        est, meas = s.wall_h * 3600, float(marker["seconds"])
        ran = trials_run(run_dir) if s.stage == "search" else int(marker.get("num_tasks") or 0)
        est_sum, meas_sum = est_sum + est, meas_sum + meas
        shown = "no estimate" if not s.estimated else verdict(est, meas)
        print(f"{s.stage:<11}{s.tasks:>6}{ran:>6}{est:>13.1f}{meas:>12.1f}{est / meas:>10.2f}  {shown}")
    print("-" * len(head))
    print(f"{'stages':<23}{est_sum:>13.1f}{meas_sum:>12.1f}{est_sum / meas_sum:>10.2f}  {verdict(est_sum, meas_sum)}")
    if total:
        print(f"{'whole run':<23}{est_sum:>13.1f}{total:>12.1f}{est_sum / total:>10.2f}  {verdict(est_sum, total)}"
              f"   (the run process, start to end)")
    print(f"\nload average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores; "
          f"'tasks': planned, 'run': the run's (mix: an upper bound of the final clusters is planned)")
    if tmp and not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    elif not a.reuse:
        print(f"run folder kept: {run_dir}")


if __name__ == "__main__":
    main()
