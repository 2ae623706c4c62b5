"""The sbatch scripts in slurm/ launched BY HAND on the REAL local Slurm, as the README's worked examples do:
the controller as a requeueable job (a small real run; requeued mid-stage, it re-attaches and submits
nothing twice), and the embed stage as one hand-launched array (prepare, array, finalize) that ends with
exactly the controller's embeddings. (slurm/distill_32n.sbatch: tests/test_minitron.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from climb_hpc.embed import load_id_to_row
from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.selftest import counter_value
from tests.conftest import ROOT, make_cfg


def on_slurm(fn):
    return pytest.mark.slurm(pytest.mark.usefixtures("slurm")(fn))


#: The built-in corpus at 40 docs a domain; 3 embed tasks (96 rows each, the last 88); short sequences.
SMALL = ("corpus.builtin.docs_per_domain=40", "embed.rows_per_shard=96", "embed.chunk_rows=32",
         "embed.max_length=64", "embed.cpus=1", "tokenize.vocab_size=600", "tokenize.batch_size=16")


def env() -> dict[str, str]:
    """The environment sbatch passes on: this venv (CLIMB_HPC_VENV) and this checkout first on the path."""
    return {**os.environ, "CLIMB_HPC_VENV": sys.prefix,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def sbatch(*args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=env())
    return out.stdout.strip().split(";")[0]


def in_queue(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", job.split("_")[0]], capture_output=True, text=True)
    return bool(out.stdout.split())


def wait_gone(job: str, what: Path, timeout: float = 600) -> None:
    """Until the job (all of an array) has left the queue; the log's tail if it takes too long."""
    deadline = time.time() + timeout
    while in_queue(job):
        if time.time() > deadline:
            raise TimeoutError(f"job {job} still queued after {timeout} s:\n{_tail(what)}")
        time.sleep(1)


def _tail(path: Path) -> str:
    return path.read_text()[-4000:] if path.exists() else f"({path} does not exist)"


def sacct_states(job: str) -> dict[str, str]:
    for _ in range(20):  # accounting lags a moment behind the queue
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job.split("_")[0]],
                             capture_output=True, text=True).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        if states and all(s not in ("PENDING", "RUNNING", "REQUEUED") for s in states.values()):
            return states
        time.sleep(1)
    return states


def status(run: Path) -> dict[str, dict]:
    p = subprocess.run([sys.executable, "-m", "climb_hpc.cli", "status", f"run_dir={run}", "format=json"],
                       capture_output=True, text=True, check=True, cwd=ROOT, env=env())
    return {r["stage"]: r for r in json.loads(p.stdout)["stages"]}


def jobs_of(run: Path, stage: str) -> dict[str, str]:
    return read_json(run / "_jobs" / f"{stage}.json", default={})


def _zarr(path: Path) -> np.ndarray:
    import zarr

    return zarr.open_array(str(path), mode="r")[:]


# ---------------------------------------------------------------- slurm/controller.sbatch


@pytest.fixture(scope="module")
def controller_run(tmp_path_factory, request) -> Path:
    """`sbatch slurm/controller.sbatch run_dir=RUN ... until=tokenize`: the controller job runs ingest .. tokenize
    on the local Slurm, each stage one array, and ends COMPLETED."""
    request.getfixturevalue("slurm")
    base = tmp_path_factory.mktemp("controller")
    run = base / "run"
    t0 = time.time()
    job = sbatch(f"--output={base}/controller-%j.log", "--mem=1G", "slurm/controller.sbatch",
                 f"run_dir={run}", "until=tokenize", "cluster.poll_s=0.5", *SMALL)
    try:
        wait_gone(job, base / f"controller-{job}.log")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    print(f"controller.sbatch, ingest .. tokenize: {time.time() - t0:.1f} s")
    log = _tail(base / f"controller-{job}.log")
    assert sacct_states(job) == {job: "COMPLETED"}, log
    head = (base / f"controller-{job}.log").read_text()  # the header is its first line: longer than the tail
    assert f"controller job {job} (restart 0)" in head and "run folder:" in log
    return run


@on_slurm
def test_controller_job_runs_a_small_real_run_to_the_end(controller_run):
    every = status(controller_run)
    first = ["ingest", "embed", "quality", "kmeans", "assign", "refine", "tokenize"]
    assert list(every)[:7] == first and not any(s["complete"] or s["done"] for k, s in every.items() if k not in first)
    stages = {k: every[k] for k in first}  # until=tokenize: the later stages of the default pipeline wait
    assert all(s["complete"] and s["failed"] == 0 and s["done"] == s["total"] for s in stages.values()), stages
    assert stages["embed"]["total"] == 3 and _zarr(controller_run / "embed" / "embeddings.zarr").shape == (280, 384)
    cfg = RunDir(controller_run).load_config()
    assert cfg.cluster.executor == "slurm" and cfg.until == "tokenize"
    for stage in stages:  # every task ran as an element of its stage's one array
        jobs = jobs_of(controller_run, stage)
        assert len(jobs) == stages[stage]["total"] and len({j.split("_")[0] for j in jobs.values()}) == 1


def _wait_step(state: Path, step: int, job: str, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while (read_json(state, default={}) or {}).get("step", 0) < step:
        assert time.time() < deadline and in_queue(job), f"{state} never reached step {step}:\n{_tail(log)}"
        time.sleep(0.3)


@on_slurm
@pytest.mark.slow
def test_requeued_controller_job_reattaches_and_submits_nothing_twice(tmp_path):
    """The controller job is requeued twice while its `counter` array runs: once it requeues itself on the
    time-limit signal (`B:USR1`, sent here by hand), once by `scontrol requeue` (an admin, a preemption). Each
    restart re-attaches to the running array (the job ids in _jobs/counter.json); the tasks run exactly once,
    uninterrupted, and the run completes."""
    run, log = tmp_path / "run", tmp_path / "controller.log"
    steps = 160
    job = sbatch(f"--output={log}", "--mem=1G", "slurm/controller.sbatch", f"run_dir={run}", "pipeline=selftest",
                 "until=counter", "cluster.poll_s=0.5", "selftest.tasks=3", "selftest.counter_tasks=2",
                 f"selftest.steps={steps}", "selftest.step_s=0.4", "selftest.ckpt_every=10")
    state = run / "counter" / "state_00000.json"
    try:
        _wait_step(state, 5, job, log)
        submitted = {s: jobs_of(run, s) for s in ("noop", "counter")}
        assert len(submitted["noop"]) == 3 and len(submitted["counter"]) == 2
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)  # the time-limit signal
        deadline = time.time() + 300
        while "re-attached to 2 task(s)" not in _tail(log):
            assert time.time() < deadline and in_queue(job), _tail(log)
            time.sleep(0.5)
        first = read_json(state)["step"]
        _wait_step(state, first + 3, job, log)
        subprocess.run(["scontrol", "requeue", job], check=True)  # an admin or a preemption
        wait_gone(job, log)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
        for j in {j.split("_")[0] for j in jobs_of(run, "counter").values()}:
            subprocess.run(["scancel", j], capture_output=True)
    text = log.read_text()
    assert sacct_states(job) == {job: "COMPLETED"}, text[-4000:]
    assert "requeueing at" in text  # the script requeued itself on USR1
    assert f"controller job {job} (restart 1)" in text and f"controller job {job} (restart 2)" in text
    assert text.count("re-attached to 2 task(s)") == 2, text[-4000:]
    assert {s: jobs_of(run, s) for s in ("noop", "counter")} == submitted  # nothing submitted twice
    assert len(list((run / "logs" / "counter" / "slurm").glob("*_submission.sh"))) == 1
    for t in (0, 1):  # each task ran once, from step 0 to the end, while its controller came and went
        assert read_json(run / "counter" / f"result_{t:05d}.json") == {"acc": counter_value(steps, t), "steps": steps,
                                                                       "starts": [0]}
    stages = status(run)
    assert stages["noop"]["complete"] and stages["counter"]["complete"] and not stages["dist"]["complete"]


# ---------------------------------------------------------------- slurm/embed_array.sbatch


def _requeue_when_running(job: str, marker: Path, timeout: float = 300) -> float | None:
    """`scontrol requeue` the array element once it has run 2 s (a preemption); when, or None if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and not marker.exists():
        out = subprocess.run(["squeue", "-h", "-r", "-t", "R", "-o", "%i|%M", "-j", job.split("_")[0]],
                             capture_output=True, text=True).stdout
        running = dict(line.split("|") for line in out.split())  # job -> [hours:]minutes:seconds
        if job in running and sum(int(x) * 60 ** i for i, x in enumerate(reversed(running[job].split(":")))) >= 2:
            t = time.time()
            if subprocess.run(["scontrol", "requeue", job], capture_output=True).returncode == 0:
                return t
        time.sleep(0.5)
    return None


@on_slurm
def test_embed_array_launched_by_hand_matches_the_controllers_embeddings(controller_run, tmp_path):
    """ingest (any executor) -> `python -m climb_hpc.task RUN embed prepare` (prints N = 3) -> `sbatch --array=0-2
    slurm/embed_array.sbatch RUN` (element 1 requeued while it runs, as a preemption does) -> `sbatch
    --dependency=afterany:JOB ... RUN finalize`: the embeddings are bit-identical to those of the controller's
    own array, the stage is complete, and the controller goes on from there. Resubmitting the finished array
    changes nothing (tasks with a marker skip)."""
    from climb_hpc.task import main

    run = tmp_path / "run"
    run_pipeline(make_cfg(run, "cluster=debug", *SMALL, "until=ingest"))
    assert main([str(run), "tokenize", "prepare"]) == 2  # refused: the stages before it are not complete
    p = subprocess.run([sys.executable, "-m", "climb_hpc.task", str(run), "embed", "prepare"], capture_output=True,
                       text=True, cwd=ROOT, env=env())
    assert p.returncode == 0, p.stderr
    n = int(p.stdout)
    assert n == 3 and status(run)["embed"]["total"] == 3
    assert main([str(run), "embed", "finalize"]) == 1  # no task has run yet: names the 3 missing
    job = sbatch("--array=0-2%2", "--cpus-per-task=1", f"--output={tmp_path}/embed-%A_%a.log",
                 "slurm/embed_array.sbatch", str(run))
    fin = sbatch(f"--dependency=afterany:{job}", "--cpus-per-task=1", f"--output={tmp_path}/finalize-%j.log",
                 "slurm/embed_array.sbatch", str(run), "finalize")
    try:
        requeued_at = _requeue_when_running(f"{job}_1", run / "_done" / "embed" / "00001")
        wait_gone(fin, tmp_path / f"finalize-{fin}.log")
    finally:
        subprocess.run(["scancel", job, fin], capture_output=True)
    logs = "\n".join(_tail(p) for p in sorted(tmp_path.glob("*.log")))
    assert set(sacct_states(job).values()) == {"COMPLETED"} and sacct_states(fin) == {fin: "COMPLETED"}, logs
    rd = RunDir(run)
    assert rd.done_tasks("embed") == {0, 1, 2} and rd.stage_complete("embed"), logs
    if requeued_at is not None:  # requeued while it ran (as on preemption): it ran again from the start
        marker = read_json(run / "_done" / "embed" / "00001")
        assert marker["restarts"] == 1 or marker["finished"] < requeued_at, logs
        assert "(restart 1)" in _tail(tmp_path / f"embed-{job}_1.log")
    assert np.array_equal(_zarr(run / "embed" / "embeddings.zarr"), _zarr(controller_run / "embed" / "embeddings.zarr"))
    assert load_id_to_row(RunDir(run)).equals(load_id_to_row(RunDir(controller_run)))
    assert read_json(run / "embed" / "summary.json")["n_docs"] == 280
    # resubmitted whole, the finished array does nothing
    markers = {t: (run / "_done" / "embed" / f"{t:05d}").stat().st_mtime_ns for t in range(3)}
    again = sbatch("--array=0-2", "--cpus-per-task=1", f"--output={tmp_path}/again-%A_%a.log",
                   "slurm/embed_array.sbatch", str(run))
    wait_gone(again, tmp_path / f"again-{again}_0.log")
    assert set(sacct_states(again).values()) == {"COMPLETED"}
    assert {t: (run / "_done" / "embed" / f"{t:05d}").stat().st_mtime_ns for t in range(3)} == markers
    # the controller takes over with embed complete
    (r_ingest, r_embed, r_quality) = run_pipeline(make_cfg(run, "cluster=debug", *SMALL, "until=quality"))
    assert (r_ingest.ran, r_embed.ran) == (0, 0) and r_quality.ran == 3


def test_a_controller_stopped_while_submitting_records_the_array_first(tmp_path):
    """SIGTERM (a requeued controller job) or Ctrl-C between sbatch and the record of the job ids would leave
    an array the run folder does not know of, and the restart would submit its tasks again: the controller
    holds both signals back for that moment and takes them right after."""
    code = f"""
import os, signal, pathlib
from climb_hpc.scheduler.slurm import deferred_termination
with deferred_termination():
    os.kill(os.getpid(), signal.SIGTERM)
    pathlib.Path({str(tmp_path / "recorded")!r}).write_text("job ids")
pathlib.Path({str(tmp_path / "after")!r}).write_text("never")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGTERM, p.stderr
    assert (tmp_path / "recorded").read_text() == "job ids" and not (tmp_path / "after").exists()
