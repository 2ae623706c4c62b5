"""The scheduler against the REAL local Slurm (hpc/local-slurm.sh): arrays, throttle, splitting,
resume, requeue, preemption, multi-node, reservations, option validation. No mocks."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from climb_hpc.config import ConfigError
from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.selftest import counter_value
from tests.conftest import ROOT, SLURM, make_cfg

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]


def jobs_of(run: Path, stage: str) -> dict[int, str]:
    return {int(t): j for t, j in read_json(run / "_jobs" / f"{stage}.json", default={}).items()}


def scripts_of(run: Path, stage: str) -> list[str]:
    return [p.read_text() for p in sorted((run / "logs" / stage / "slurm").glob("*_submission.sh"), key=lambda p: p.stat().st_mtime)]


def sacct(job: str, fields: str = "JobID,State") -> list[list[str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", fields], capture_output=True, text=True).stdout
    return [ln.split("|") for ln in out.splitlines() if ln]


def test_array_of_24_with_throttle_2_is_one_array(tmp_path):
    run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=24",
                          "cluster.array_parallelism=2", "cluster.tasks_per_element=1"))
    assert RunDir(tmp_path).done_tasks("noop") == set(range(24))
    jobs = jobs_of(tmp_path, "noop")
    assert len({j.split("_")[0] for j in jobs.values()}) == 1  # ONE array
    assert sorted(int(j.split("_")[1]) for j in jobs.values()) == list(range(24))
    (script,) = scripts_of(tmp_path, "noop")
    assert "#SBATCH --array=0-23%2" in script
    # every log is reachable by task number
    assert all((tmp_path / "logs" / "noop" / f"task_{t:05d}.log").exists() for t in range(24))


def test_array_larger_than_max_array_size_is_split_and_chained(tmp_path):
    run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=10",
                          "cluster.max_array_size=4", "cluster.array_parallelism=2", "cluster.tasks_per_element=1"))
    assert RunDir(tmp_path).done_tasks("noop") == set(range(10))
    arrays = sorted({j.split("_")[0] for j in jobs_of(tmp_path, "noop").values()}, key=int)
    assert len(arrays) == 3
    scripts = scripts_of(tmp_path, "noop")
    assert sorted(re.search(r"--array=(\S+)", s).group(1) for s in scripts) == ["0-1%2", "0-3%2", "0-3%2"]
    assert sum(f"--dependency=afterany:{arrays[0]}" in s for s in scripts) == 1
    assert sum(f"--dependency=afterany:{arrays[1]}" in s for s in scripts) == 1


def test_relaunch_submits_only_unfinished_tasks(tmp_path):
    cfg = make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=6", "cluster.tasks_per_element=1")
    run_pipeline(cfg)
    rd = RunDir(tmp_path)
    first = jobs_of(tmp_path, "noop")
    rd.clear_stage("noop")
    for t in (0, 2, 3, 5):
        rd.mark_done("noop", t)
    (r,) = run_pipeline(cfg)
    assert r.ran == 2 and rd.done_tasks("noop") == set(range(6))
    second = jobs_of(tmp_path, "noop")
    assert {t for t in range(6) if second[t] != first[t]} == {1, 4}  # only those were submitted again
    assert "#SBATCH --array=0-1%2" in scripts_of(tmp_path, "noop")[-1]


def _wait_for_step(state: Path, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (read_json(state, default={}) or {}).get("step", 0) >= step:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{state} never reached step {step}")


def test_requeued_and_preempted_tasks_resume_to_the_same_result(tmp_path):
    """Task 0 is requeued by `scontrol requeue` (killed: resumes from its last periodic checkpoint);
    task 1 gets the preemption signal USR2 (saves at once, requeues itself). Both must end with
    exactly the uninterrupted result, and must have resumed rather than restarted."""
    steps = 40
    cfg = make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=counter", "selftest.tasks=1",
                   "selftest.counter_tasks=2", f"selftest.steps={steps}", "selftest.step_s=0.4",
                   "selftest.ckpt_every=5")
    th = threading.Thread(target=run_pipeline, args=(cfg,))
    th.start()
    for t in (0, 1):
        _wait_for_step(tmp_path / "counter" / f"state_{t:05d}.json", 8)
    jobs = jobs_of(tmp_path, "counter")
    subprocess.run(["scontrol", "requeue", jobs[0]], check=True)
    subprocess.run(["scancel", "--signal=USR2", jobs[1]], check=True)
    th.join(400)
    assert not th.is_alive()
    for t in (0, 1):
        result = read_json(tmp_path / "counter" / f"result_{t:05d}.json")
        assert result["acc"] == counter_value(steps, t), f"task {t}"
        assert len(result["starts"]) == 2 and result["starts"][1] >= 5, f"task {t} restarted: {result['starts']}"
    restarts = {t: read_json(tmp_path / "_done" / "counter" / f"{t:05d}")["restarts"] for t in (0, 1)}
    assert restarts == {0: 1, 1: 1}  # the same Slurm job, requeued once each


def test_two_node_job_has_two_nodes_ranks_and_a_working_rendezvous(tmp_path):
    run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "selftest.tasks=1", "selftest.steps=1",
                          "selftest.step_s=0", "selftest.counter_tasks=1"))
    res = read_json(tmp_path / "dist" / "result_00000.json")
    assert res["world_size"] == 2 and res["all_reduce"] == 3.0  # gloo all_reduce of 1 + 2
    ranks = sorted(res["ranks"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["node"] for r in ranks} == {"node1", "node2"}
    assert ranks[0]["master"] == ranks[1]["master"] and ranks[0]["master"].startswith("node1:")


def test_job_runs_inside_reservation(tmp_path):
    name = f"climbtest{uuid.uuid4().hex[:6]}"
    subprocess.run(["scontrol", "create", "reservation", f"ReservationName={name}", "StartTime=now",
                    "Duration=10", "Users=root", "Nodes=ALL", "Flags=IGNORE_JOBS"], check=True, capture_output=True)
    try:
        run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=3",
                              f"cluster.reservation={name}"))
        assert RunDir(tmp_path).done_tasks("noop") == {0, 1, 2}  # the whole machine is reserved: it ran inside
        for job in jobs_of(tmp_path, "noop").values():
            out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
            assert f"Reservation={name}" in out
    finally:
        for _ in range(30):
            if subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True).returncode == 0:
                break
            time.sleep(1)


@pytest.mark.parametrize("override, message", [
    ("cluster.partition=nope", "invalid partition"),
    ("cluster.reservation=no_such_resv", "eservation"),
    ("cluster.partition='debug;touch /tmp/pwned'", "not a valid Slurm partition"),
    ("+cluster.extra_sbatch.comment='a b;c'", "may not contain spaces"),
    ("+cluster.extra_sbatch.array=0-3", "sets --array itself"),
    ("cluster.signal_delay_s=7200", "not shorter than the time limit"),
])
def test_bad_slurm_option_fails_before_submitting(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=noop", override))
    assert not (tmp_path / "_jobs").exists() and not list((tmp_path / "logs").rglob("*_submission.sh"))


def test_dry_run_writes_the_script_and_submits_nothing(tmp_path):
    run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "selftest.tasks=5", "dry_run=true",
                          "cluster.partition=debug", "cluster.reservation=maint", "+cluster.extra_sbatch.comment=hi"))
    script = (tmp_path / "sbatch" / "noop.sbatch").read_text()
    for line in ("#SBATCH --array=0-4%5", "#SBATCH --partition=debug", "#SBATCH --reservation=maint",
                 "#SBATCH --comment=hi", "#SBATCH --signal=USR2@90", "submitit.core._submit"):
        assert line in script
    assert not (tmp_path / "_jobs").exists() and not RunDir(tmp_path).done_tasks("noop")


def test_restarted_controller_reattaches_to_running_array(tmp_path):
    """A controller killed mid-stage (as a preempted controller job would be) leaves its array running;
    started again, it waits for those jobs instead of submitting the tasks twice."""
    args = [sys.executable, "-m", "climb_hpc.cli", "run", f"run_dir={tmp_path}", "pipeline=selftest", "until=counter",
            "cluster=slurm", "cluster.poll_s=0.5", "progress=false", "selftest.tasks=1", "selftest.counter_tasks=2",
            "selftest.steps=25", "selftest.step_s=0.4"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_step(tmp_path / "counter" / "state_00000.json", 3)
    finally:
        first.kill()
        first.wait()
    submitted = jobs_of(tmp_path, "counter")
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "re-attached to 2 task(s)" in second.stderr
    assert jobs_of(tmp_path, "counter") == submitted  # nothing submitted again
    for t in (0, 1):
        assert read_json(tmp_path / "counter" / f"result_{t:05d}.json")["starts"] == [0]  # ran once, uninterrupted


@pytest.mark.slow
def test_task_longer_than_its_time_limit_is_requeued_and_finishes(tmp_path):
    """50 s of work under a 1-minute limit whose USR2 comes 45 s early: the task checkpoints on the
    signal, submitit counts a timeout and requeues it, and it finishes with the exact result."""
    steps = 100
    run_pipeline(make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=counter", "selftest.tasks=1",
                          "selftest.counter_tasks=1", f"selftest.steps={steps}", "selftest.step_s=0.5",
                          "cluster.time_min=1", "cluster.signal_delay_s=45", "cluster.max_num_timeout=3"))
    result = read_json(tmp_path / "counter" / "result_00000.json")
    assert result["acc"] == counter_value(steps, 0)
    assert len(result["starts"]) >= 2 and result["starts"][1] > 0
    assert read_json(tmp_path / "_done" / "counter" / "00000")["restarts"] >= 1


def test_cluster_profile_dgx_h100_32n_dry_run(tmp_path):
    """The 32-node profile composes into a valid script (dry run: no 'batch' partition here)."""
    run_pipeline(make_cfg(tmp_path, "cluster=dgx_h100_32n", "cluster.account=llm", "+cluster.stage_resources.ingest.mem_gb=1.5",
                          "dry_run=true", "corpus.builtin.docs_per_domain=5"))
    script = (tmp_path / "sbatch" / "ingest.sbatch").read_text()
    for line in ("#SBATCH --partition=batch", "#SBATCH --account=llm", "#SBATCH --mem=1536MB",
                 "#SBATCH --time=120", "#SBATCH --cpus-per-task=4", "#SBATCH --signal=USR2@300"):
        assert line in script


def test_dgx_h100_32n_distill_is_one_job_of_32_nodes_x_8_gpus(tmp_path):
    """Distillation under the 32-node profile: one task, srun over 32 nodes x 8 ranks, a GPU a rank."""
    from climb_hpc.rundir import RunDir
    from climb_hpc.scheduler import make_executor
    from climb_hpc.stage import get_stage, stage_resources

    # distill reads the outputs of earlier stages, so a dry run of the pipeline stops before it: ask the
    # executor for the distill job's script directly
    cfg = make_cfg(tmp_path, "cluster=dgx_h100_32n", "dry_run=true")
    stage = get_stage("distill")
    assert make_executor(cfg, RunDir(tmp_path)).run_tasks(stage, [0], stage_resources(cfg, stage)) == "dry_run"
    script = (tmp_path / "sbatch" / "distill.sbatch").read_text()
    for line in ("#SBATCH --nodes=32", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --time=2880", "#SBATCH --signal=USR2@300", "srun"):
        assert line in script, line


def test_real_preemption_by_a_higher_priority_partition(tmp_path):
    """An exclusive 2-node job in partition `urgent` preempts our task in `debug`: Slurm sends the
    task its USR2, it saves and requeues itself, and ends with the uninterrupted result."""
    steps = 40
    cfg = make_cfg(tmp_path, *SLURM, "pipeline=selftest", "until=counter", "selftest.tasks=1",
                   "selftest.counter_tasks=1", f"selftest.steps={steps}", "selftest.step_s=0.4",
                   "selftest.ckpt_every=1000")  # no periodic checkpoints: only the signal saves
    th = threading.Thread(target=run_pipeline, args=(cfg,))
    th.start()
    state = tmp_path / "counter" / "state_00000.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:  # the task has started ...
        time.sleep(0.2)
    time.sleep(2)  # ... and is some steps in
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-N2", "--exclusive", "-o", "/dev/null",
                             "--wrap=sleep 2"], capture_output=True, text=True, check=True).stdout.strip()
    th.join(300)
    assert not th.is_alive()
    result = read_json(tmp_path / "counter" / "result_00000.json")
    assert result["acc"] == counter_value(steps, 0)
    assert len(result["starts"]) == 2 and result["starts"][1] > 0  # saved on the signal, then resumed
    assert sacct(urgent)[0][1] == "COMPLETED"
