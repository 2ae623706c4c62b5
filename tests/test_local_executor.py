"""The controller with the local (subprocess) and debug (in-process) executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from climb_hpc.pipeline import StageFailed, run_pipeline, status
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.selftest import counter_value
from tests.conftest import ROOT, make_cfg


def test_selftest_pipeline_local(tmp_path):
    cfg = make_cfg(tmp_path, "pipeline=selftest", "selftest.tasks=5", "selftest.steps=4", "selftest.step_s=0.01")
    results = run_pipeline(cfg)
    assert [r.name for r in results] == ["noop", "counter", "dist"]
    rd = RunDir(tmp_path)
    assert rd.done_tasks("noop") == set(range(5))
    for t in range(2):
        assert read_json(tmp_path / "counter" / f"result_{t:05d}.json")["acc"] == counter_value(4, 0 + t)
    dist = read_json(tmp_path / "dist" / "result_00000.json")
    assert dist["world_size"] == 2 and dist["all_reduce"] == 3.0
    assert sorted(r["rank"] for r in dist["ranks"]) == [0, 1]
    # a second run does nothing new
    assert all(r.ran == 0 for r in run_pipeline(cfg))


def test_relaunch_runs_only_unfinished_tasks(tmp_path):
    cfg = make_cfg(tmp_path, "pipeline=selftest", "until=noop", "selftest.tasks=8")
    run_pipeline(cfg)
    rd = RunDir(tmp_path)
    before = {t: (tmp_path / "_done" / "noop" / f"{t:05d}").stat().st_mtime_ns for t in range(8)}
    rd.clear_stage("noop")  # forget everything ...
    for t in (0, 1, 2, 4, 5, 7):  # ... but six finished tasks
        rd.mark_done("noop", t)
    kept = {t: (tmp_path / "_done" / "noop" / f"{t:05d}").stat().st_mtime_ns for t in (0, 1, 2, 4, 5, 7)}
    (r,) = run_pipeline(cfg)
    assert r.ran == 2 and rd.done_tasks("noop") == set(range(8))
    assert all((tmp_path / "_done" / "noop" / f"{t:05d}").stat().st_mtime_ns == kept[t] for t in kept)
    assert (tmp_path / "_done" / "noop" / "00003").stat().st_mtime_ns > before[3]


def test_failed_task_is_reported_with_its_log(tmp_path):
    cfg = make_cfg(tmp_path, "pipeline=selftest", "until=noop", "selftest.tasks=4", "selftest.fail_tasks=[2]")
    with pytest.raises(StageFailed, match=r"1 of 4 task\(s\) failed") as e:
        run_pipeline(cfg)
    assert "fails on purpose" in str(e.value) and "task_00002.log" in str(e.value)
    (row,) = [r for r in status(RunDir(tmp_path)) if r["stage"] == "noop"]
    assert (row["done"], row["total"], row["failed"], row["complete"]) == (3, 4, 1, False)
    assert "fails on purpose" in row["failures"][0]["error"]
    assert "fails on purpose" in open(row["failures"][0]["log"]).read()  # the traceback is in the task log
    # the same through the CLI, as JSON
    p = subprocess.run([sys.executable, "-m", "climb_hpc.cli", "status", f"run_dir={tmp_path}", "format=json"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(p.stdout)["stages"][0]["failed"] == 1


def test_preempted_local_task_resumes(tmp_path):
    """SIGUSR2 to a local task: it saves, exits, is restarted and resumes where it stopped."""
    cfg = make_cfg(tmp_path, "pipeline=selftest", "until=counter", "selftest.tasks=1", "selftest.counter_tasks=1",
                   "selftest.steps=30", "selftest.step_s=0.1")
    th = threading.Thread(target=run_pipeline, args=(cfg,))
    th.start()
    state = tmp_path / "counter" / "state_00000.json"
    deadline = time.time() + 60
    while time.time() < deadline and (read_json(state, {}) or {}).get("step", 0) < 6:
        time.sleep(0.05)
    pids = subprocess.run(["pgrep", "-f", f"climb_hpc.task {tmp_path} counter 0"], capture_output=True,
                          text=True).stdout.split()
    assert pids, "the counter task process is not running"
    os.kill(int(pids[0]), signal.SIGUSR2)
    th.join(120)
    result = read_json(tmp_path / "counter" / "result_00000.json")
    assert result["acc"] == counter_value(30, 0)
    assert len(result["starts"]) == 2 and result["starts"][1] >= 6  # resumed, did not restart


def test_debug_executor_runs_in_process(tmp_path):
    cfg = make_cfg(tmp_path, "pipeline=selftest", "cluster=debug", "until=counter", "selftest.tasks=3",
                   "selftest.steps=3", "selftest.step_s=0")
    run_pipeline(cfg)
    assert RunDir(tmp_path).stage_complete("counter")


def test_task_records_its_resource_usage(tmp_path):
    """Each local task process leaves logs/<stage>/task_<t>.usage.json: how it ended, its peak RSS, bytes read."""
    run = tmp_path / "run"
    cfg = make_cfg(run, "pipeline.stages=[ingest]", "corpus.builtin.docs_per_domain=20")
    run_pipeline(cfg)
    rd = RunDir(run)
    plan = read_json(run / "ingest" / "plan.json")
    n = len(plan["tasks"])
    assert n >= 2
    for t, spec in enumerate(plan["tasks"]):
        u = read_json(run / "logs" / "ingest" / f"task_{t:05d}.usage.json")
        assert (u["stage"], u["task"], u["rank"], u["outcome"]) == ("ingest", t, 0, "done")
        assert 10 << 20 < u["max_rss_bytes"] < 64 << 30  # a Python process with pyarrow, not a unit mix-up
        assert 0 < u["wall_seconds"] < 600 and u["user_seconds"] >= 0
        if "rchar" in u:  # Linux: it read at least its input file
            assert u["rchar"] >= os.path.getsize(spec["path"]) and u["read_bytes"] >= 0
    assert rd.stage_complete("ingest")
    # a failing task records how it ended too (every attempt overwrites it: the last one's)
    cfg = make_cfg(tmp_path / "noop", "pipeline=selftest", "until=noop", "selftest.tasks=1", "selftest.fail_tasks=[0]",
                   "cluster.max_retries=0")
    with pytest.raises(StageFailed):
        run_pipeline(cfg)
    assert read_json(tmp_path / "noop" / "logs" / "noop" / "task_00000.usage.json")["outcome"] == "failed"
