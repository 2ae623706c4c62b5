"""The Slurm executor at scale: tiny tasks packed several to an array element, one listing of the marker
folder a poll, squeue failures retried. Against the REAL local Slurm (hpc/local-slurm.sh); a failing squeue
is a PATH shim that fails its first calls and then runs the real one."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from climb_hpc.pipeline import StageFailed, run_pipeline
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.scheduler.packing import pack, tasks_per_element
from climb_hpc.scheduler.slurm import SlurmUnreachable
from climb_hpc.selftest import counter_value
from climb_hpc.stage import Resources, get_stage
from tests.conftest import SLURM, make_cfg


def jobs_of(run: Path, stage: str) -> dict[int, str]:
    return {int(t): j for t, j in read_json(run / "_jobs" / f"{stage}.json", default={}).items()}


# ---------------------------------------------------------------- choosing tasks_per_element (no Slurm)


def test_71k_tasks_without_an_estimate_are_one_array_of_at_most_max_array_size_elements():
    cfg = make_cfg(Path("/tmp/unused"), "cluster=slurm", "pipeline=selftest")
    counter = get_stage("counter")  # states no estimate
    k, why = tasks_per_element(cfg, counter, Resources(), 71_000, 1001)
    assert k == 71 and "no estimate" in why
    assert len(pack(list(range(71_000)), k)) == 1000


def test_tiny_tasks_fill_every_throttle_slot_and_fixed_or_multi_rank_settings_win():
    cfg = make_cfg(Path("/tmp/unused"), "cluster=slurm", "pipeline=selftest", "cluster.array_parallelism=8")
    noop = get_stage("noop")  # its estimate: no work at all
    assert tasks_per_element(cfg, noop, Resources(), 100, 1001)[0] == 13  # 8 elements of <= 13
    assert tasks_per_element(cfg, noop, Resources(), 5, 1001)[0] == 1  # fewer tasks than slots: one an element
    assert tasks_per_element(cfg, noop, Resources(nodes=2), 100, 1001)[0] == 1
    fixed = make_cfg(Path("/tmp/unused"), "cluster=slurm", "pipeline=selftest", "cluster.tasks_per_element=4")
    assert tasks_per_element(fixed, noop, Resources(), 100, 1001) == (4, "cluster.tasks_per_element")
    assert pack([3, 4, 5, 6, 7], 2) == [[3, 4], [5, 6], [7]]


# ---------------------------------------------------------------- on the real Slurm


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_packed_elements_time_limit_is_capped():
    """Its tasks' limits together, at most cluster.element_max_time_min (a partition would hold a longer job
    pending for ever; an element that runs out is requeued and goes on at its first unfinished task)."""
    from climb_hpc.scheduler.slurm_options import submitit_parameters

    cfg = make_cfg(Path("/tmp/unused"), "cluster=slurm")
    res = Resources(cpus=1, time_min=120)
    assert submitit_parameters(cfg.cluster, res, "x", False, tasks_per_element=3)["time"] == 360
    assert submitit_parameters(cfg.cluster, res, "x", False, tasks_per_element=71)["time"] == 2880
    cfg.cluster.element_max_time_min = 60  # below one task's: one task's limit
    assert submitit_parameters(cfg.cluster, res, "x", False, tasks_per_element=71)["time"] == 120


def test_300_tiny_tasks_are_one_array_of_few_elements_each_task_with_its_marker_and_log(tmp_path):
    """MaxArraySize 10 (as a cluster's 1001 is to 71k tasks): today's rule would chain 30 arrays."""
    run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=300",
                          "cluster.max_array_size=10", "cluster.array_parallelism=4"))
    rd = RunDir(tmp_path)
    assert rd.done_tasks("noop") == set(range(300))
    jobs = jobs_of(tmp_path, "noop")
    assert len({j.split("_")[0] for j in jobs.values()}) == 1  # ONE array ...
    assert len(set(jobs.values())) == 4  # ... of 4 elements (the %4 slots), 75 tasks each
    (script,) = (tmp_path / "logs" / "noop" / "slurm").glob("*_submission.sh")
    assert "#SBATCH --array=0-3%4" in script.read_text()
    assert "#SBATCH --time=750" in script.read_text()  # 75 tasks x their 10 min
    for t in (0, 74, 75, 299):  # each task: its own log, named in its marker, naming its element's log
        own = tmp_path / "logs" / "noop" / f"task_{t:05d}.log"
        assert own.is_file() and not own.is_symlink()
        assert read_json(rd.marker_dir("noop") / f"{t:05d}")["log"] == str(own)
        element_log = re.search(r"the element's log: (\S+)", own.read_text()).group(1)
        assert f"task noop/{t}: done" in Path(element_log).read_text()


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_a_failing_task_does_not_stop_its_element_and_only_it_is_resubmitted(tmp_path):
    cfg = make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=8", "selftest.fail_tasks=[2]",
                   "cluster.tasks_per_element=4", "cluster.max_retries=1")
    with pytest.raises(StageFailed, match="1 of 8 task"):
        run_pipeline(cfg)
    rd = RunDir(tmp_path)
    assert rd.done_tasks("noop") == set(range(8)) - {2}  # its element ran the tasks after it
    jobs = jobs_of(tmp_path, "noop")
    assert len({jobs[t] for t in range(8) if t != 2}) == 2 and jobs[2] not in (jobs[0], jobs[4])  # resubmitted alone
    failure = rd.failures("noop")[2]
    own = tmp_path / "logs" / "noop" / "task_00002.log"
    assert failure["log"] == str(own) and "fails on purpose" in failure["error"]
    assert own.read_text().count("fails on purpose") >= 2  # both attempts' tracebacks, in the task's own log


def _wait_for(path: Path, step: int = 0, timeout: float = 180) -> None:
    """Until ``path`` exists (a marker) and, a counter's state, has saved ``step``."""
    deadline = time.time() + timeout
    while not (path.exists() and (read_json(path, default={}) or {}).get("step", 0) >= step):
        if time.time() > deadline:
            raise TimeoutError(f"{path} never appeared at step {step}")
        time.sleep(0.2)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
@pytest.mark.parametrize("how", ["requeue", "preempt"])
def test_a_packed_element_stopped_midway_resumes_only_its_unfinished_tasks(tmp_path, how):
    """Three checkpointable counter tasks in ONE element. Once task 0 is done and task 1 has saved a checkpoint,
    the element is requeued (killed: task 1 resumes from its periodic checkpoint) or preempted (USR2: task 1
    saves and requeues the element). Task 0 must not run again, task 1 must resume, not restart, task 2 must
    run once, and every task must end with the uninterrupted result."""
    steps = 50  # 20 s a task: longer than KillWait, so a requeue's SIGKILL lands inside task 1
    cfg = make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=counter", "selftest.tasks=1",
                   "selftest.counter_tasks=3", f"selftest.steps={steps}", "selftest.step_s=0.4",
                   "selftest.ckpt_every=5", "cluster.tasks_per_element=3")
    th = threading.Thread(target=run_pipeline, args=(cfg,))
    th.start()
    _wait_for(tmp_path / "_done" / "counter" / "00000")
    _wait_for(tmp_path / "counter" / "state_00001.json", step=5)  # task 1 saved its first periodic checkpoint
    (job,) = set(jobs_of(tmp_path, "counter").values())
    cmd = ["scontrol", "requeue", job] if how == "requeue" else ["scancel", "--signal=USR2", job]
    subprocess.run(cmd, check=True)
    th.join(600)
    assert not th.is_alive()
    results = {t: read_json(tmp_path / "counter" / f"result_{t:05d}.json") for t in range(3)}
    assert all(results[t]["acc"] == counter_value(steps, t) for t in range(3))
    assert results[0]["starts"] == [0] and results[2]["starts"] == [0]  # finished before / after: ran once
    assert len(results[1]["starts"]) == 2 and results[1]["starts"][1] >= 5, results[1]  # resumed
    restarts = {t: read_json(tmp_path / "_done" / "counter" / f"{t:05d}")["restarts"] for t in range(3)}
    assert restarts == {0: 0, 1: 1, 2: 1}
    log1 = (tmp_path / "logs" / "counter" / "task_00001.log").read_text()
    assert log1.count("==== ") == 2 and f"Slurm job {job}, restart 1;" in log1  # both attempts, in its own log


def _squeue_shim(tmp_path: Path, failures: int) -> Path:
    """A squeue that fails its first ``failures`` calls as an unreachable slurmctld does, then runs the real one."""
    real = shutil.which("squeue")
    assert real
    shim = tmp_path / "shim"
    shim.mkdir()
    count = tmp_path / "squeue_calls"
    (shim / "squeue").write_text(f"""#!/bin/bash
n=$(cat {count} 2>/dev/null || echo 0)
echo $((n + 1)) > {count}
if [ "$n" -lt {failures} ]; then
  echo "squeue: error: slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2
  exit 1
fi
exec {real} "$@"
""")
    (shim / "squeue").chmod(0o755)
    return shim


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_squeue_failures_are_retried_with_backoff(tmp_path, monkeypatch, caplog):
    shim = _squeue_shim(tmp_path, failures=3)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    caplog.set_level(logging.WARNING, logger="climb_hpc")
    run_pipeline(make_cfg(tmp_path / "run", *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=6",
                          "cluster.squeue_retries=3", "cluster.squeue_backoff_s=0.1"))
    assert RunDir(tmp_path / "run").done_tasks("noop") == set(range(6))
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("squeue failed")]
    assert [m.split(":")[0] for m in failed] == [f"squeue failed (attempt {i} of 4)" for i in (1, 2, 3)]
    assert "Unable to contact slurm controller" in failed[0]
    assert "trying again in 0.1 s" in failed[0] and "trying again in 0.4 s" in failed[2]  # doubling


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_squeue_that_keeps_failing_stops_with_one_line_and_a_relaunch_submits_nothing_twice(tmp_path, monkeypatch):
    run = tmp_path / "run"
    shim = _squeue_shim(tmp_path, failures=10**6)
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{shim}:{path}")
    cfg = make_cfg(run, *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=6",
                   "cluster.squeue_retries=2", "cluster.squeue_backoff_s=0.05")
    with pytest.raises(SlurmUnreachable) as e:
        run_pipeline(cfg)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("`squeue -h -r -o '%i|%T' -j ") and "failed 3 time(s)" in message
    assert "Unable to contact slurm controller" in message and "run the same command again" in message
    submitted = jobs_of(run, "noop")
    assert len(submitted) == 6
    monkeypatch.setenv("PATH", path)  # Slurm answers again: the relaunch waits for the same jobs
    run_pipeline(cfg)
    assert RunDir(run).done_tasks("noop") == set(range(6)) and jobs_of(run, "noop") == submitted
