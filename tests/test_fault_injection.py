"""Fault injection: the whole pipeline (ingest .. distill) on the REAL local Slurm while a seeded injector
strikes running jobs at random points:

* requeue: ``scontrol requeue`` (an admin, a node failure, a preemption after its grace time);
* preempt: ``scancel --signal=USR2`` (what Slurm sends job steps on preemption and before the time limit;
  it reaches the checkpointable tasks, which run under srun: they save, requeue themselves and resume);
* kill: ``scancel --signal=KILL`` (on Slurm 22.05 a cancel: SIGTERM, SIGKILL after KillWait; the job ends
  CANCELLED, is not requeued, and the controller resubmits the task: cluster.max_retries).

The run must end with exactly the outputs of a clean run on the local executor: the same documents
(none lost or duplicated), embeddings, clusters, doc -> cluster assignments, token stores, mixture and
bit-identical teacher and student weights. The clean reference runs at the same time (a
`climb-hpc run cluster=local` subprocess): the faulted run spends much of its extra time waiting for
Slurm to restart requeued jobs, so the two overlap well.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq
import pytest

from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import ROOT, SLURM, make_cfg

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm")]

STAGES = ["ingest", "embed", "quality", "kmeans", "assign", "refine", "tokenize", "search", "mix", "correct",
          "importance", "prune", "distill"]
#: Every stage, as small as it gets: 280 docs (7 domains), 3 embed tasks (96, 96, 88 docs), 3 final clusters, a 3-trial search
#: of 2-layer proxies, a 2-layer 64-wide teacher pretrained + corrected, pruned to 48 wide and distilled. The proxy
#: trials and the distillation (what a preemption can hit) are long enough, ~10 s or more on a quiet machine, for
#: the injector's 1-4 s ticks to find them running: at 4096 proxy tokens and 10240 distill tokens a fast run gave
#: no preemption a window and the test failed on the machine's speed, not on the code.
#: Threads are fixed by config (cpus: 1 a task), so the local executor and Slurm compute the same bits.
FULL = (
    f"pipeline.stages=[{','.join(STAGES)}]",
    "corpus.builtin.docs_per_domain=40",
    "embed.rows_per_shard=96", "embed.chunk_rows=32", "embed.max_length=64", "embed.cpus=1",
    "clusters.refine.target_clusters=3",
    "tokenize.vocab_size=600", "tokenize.batch_size=16",
    "proxy.model.hidden_size=64", "proxy.model.intermediate_size=128", "proxy.model.num_hidden_layers=2",
    "proxy.model.num_attention_heads=2", "proxy.model.num_key_value_heads=1", "proxy.model.head_dim=32",
    "proxy.seq_len=128", "proxy.batch_size=8", "proxy.cpus=1", "proxy.holdout_fraction=0.1",
    "proxy.optim.warmup=10", "target.max_tokens=20000", "proxy.tokens=16384",
    "search.budget=3", "search.proportions=[2,1]", "search.pool_size=300", "search.references=[]",
    "mix.tokens=30000",
    "minitron.teacher.model.hidden_size=64", "minitron.teacher.model.intermediate_size=192",
    "minitron.teacher.model.num_hidden_layers=2", "minitron.teacher.model.num_attention_heads=2",
    "minitron.teacher.model.num_key_value_heads=1", "minitron.teacher.model.head_dim=32",
    "minitron.teacher.pretrain_tokens=40960", "minitron.teacher.pretrain_lr=3e-3",
    "minitron.correct.tokens=10240", "minitron.correct.seq_len=64", "minitron.correct.micro_batch_size=4",
    "minitron.correct.global_batch_size=8", "minitron.correct.val_tokens=4000", "minitron.correct.cpus=1",
    "minitron.correct.ckpt_every=10", "minitron.correct.warmup=5",
    "minitron.importance.samples=32", "minitron.importance.seq_len=32", "minitron.importance.batch_size=8",
    "minitron.importance.cpus=1", "minitron.prune.cpus=1", "minitron.prune.hidden_size=48",
    "minitron.prune.intermediate_size=96",
    "minitron.distill.seq_len=64", "minitron.distill.micro_batch_size=4", "minitron.distill.global_batch_size=8",
    "minitron.distill.val_tokens=4000", "minitron.distill.cpus=1", "minitron.distill.lr=3e-3",
    "minitron.distill.tokens=40960", "minitron.distill.ckpt_every=10",
)
#: Stages whose tasks run under srun and save on the preemption signal (the others are requeued by Slurm
#: and rerun from the start when preempted: the signal goes to job steps only).
CHECKPOINTABLE = ("proxy/", "correct", "distill")
KINDS = ("requeue", "preempt", "kill")


# ---------------------------------------------------------------- the injector


@dataclass
class Fault:
    kind: str
    stage: str
    task: int
    job: str
    at: float  # seconds since the injector started
    running_s: int  # how long the job had been running
    restarts: int  # the job's Slurm restart count when hit
    hit: Optional[bool] = None  # the attempt that was hit did not finish the task (None: not known yet)


class Injector(threading.Thread):
    """Every 1-4 s (seeded), fault a running job of the run whose task has no marker yet, going through
    ``plan`` in order (an entry with no eligible job waits for the next tick; "kind@stage" waits for that
    stage). A requeue takes the youngest
    job: submitit ignores the SIGTERM of a requeue, so the task lives on for Slurm's KillWait (10 s here)
    and a task that finishes within it is not hit. A fault that missed is tried again (at most
    ``max_faults`` in all) until every kind has hit once. One fault a task: the retries always suffice."""

    def __init__(self, run_dir: Path, plan: list[str], seed: int = 0, max_faults: int = 10):
        super().__init__(daemon=True)
        self.run_dir, self.plan, self.max_faults = run_dir, list(plan), max_faults
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self.t0 = time.time()

    def jobs(self) -> dict[str, tuple[str, int]]:
        """Job id -> (stage, task) of every job the controller submitted for this run."""
        out = {}
        for f in (self.run_dir / "_jobs").rglob("*.json"):
            stage = str(f.relative_to(self.run_dir / "_jobs").with_suffix(""))
            for t, j in (read_json(f, default={}) or {}).items():
                out[j] = (stage, int(t))
        return out

    def running(self) -> list[tuple[str, int, str, int]]:
        """(stage, task, job, seconds running) of the run's RUNNING jobs whose task has no marker."""
        jobs = self.jobs()
        if not jobs:
            return []
        arrays = sorted({j.split("_")[0] for j in jobs})
        p = subprocess.run(["squeue", "-h", "-r", "-t", "R", "-o", "%i|%M", "-j", ",".join(arrays)],
                           capture_output=True, text=True, timeout=60)
        rd = RunDir(self.run_dir)
        out = []
        for line in p.stdout.split():
            job, used = line.split("|")
            if job in jobs and not rd.is_done(*jobs[job]):
                out.append((*jobs[job], job, _seconds(used)))
        return out

    def judge(self, final: bool = False) -> None:
        """A fault hit when the attempt it struck did not finish the task: a later attempt of the same job
        (its restart count went up) or another job (resubmitted after the kill) wrote the marker. None
        while the task has no marker yet or, during the run, its job is still queued (an attempt that
        outlived the fault may have written the marker, and the requeued one then rewrites it)."""
        jobs_now = {k: j for j, k in self.jobs().items()}
        queued = set() if final else _queued([f.job for f in self.faults])
        for f in self.faults:
            marker = read_json(self.run_dir / "_done" / f.stage / f"{f.task:05d}", default=None)
            if marker and f.job not in queued:
                f.hit = jobs_now.get((f.stage, f.task)) != f.job or int(marker.get("restarts", 0)) > f.restarts

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(1.0, 4.0)):
                self.judge()
                for kind in KINDS:  # a kind whose faults all missed is tried again
                    mine = [f for f in self.faults if f.kind == kind]
                    if (mine and all(f.hit is False for f in mine) and kind not in self.plan
                            and len(self.faults) + len(self.plan) < self.max_faults):
                        self.plan.append(kind)
                if not self.plan:
                    continue
                faulted = {(f.stage, f.task) for f in self.faults}
                # not in a job's first seconds: a USR2 that comes before submitit has installed its handler
                # kills the process (SIGUSR2's default action), a failure the retries absorb, not a preemption
                running = [r for r in self.running() if (r[0], r[1]) not in faulted and r[3] >= 3]
                reserved = {e.partition("@")[2] for e in self.plan} - {""}
                for entry in dict.fromkeys(self.plan):  # "kind" or "kind@stage": only that stage's jobs
                    kind, _, only = entry.partition("@")
                    targets = [r for r in running if (kind != "preempt" or r[0].startswith(CHECKPOINTABLE))
                               and (r[0] == only if only else r[0] not in reserved)]
                    if targets:
                        break
                else:
                    continue
                if kind == "requeue":
                    youngest = min(r[3] for r in targets)
                    targets = [r for r in targets if r[3] == youngest]
                stage, task, job, used = self.rng.choice(sorted(targets))
                restarts = _restarts(job)
                cmd = {"requeue": ["scontrol", "requeue", job], "preempt": ["scancel", "--signal=USR2", job],
                       "kill": ["scancel", "--signal=KILL", job]}[kind]
                if subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode != 0:
                    continue  # the job ended in between: try again next tick
                self.plan.remove(entry)
                self.faults.append(Fault(kind, stage, task, job, round(time.time() - self.t0, 1), used, restarts))
                print(f"[inject] {time.time() - self.t0:6.1f} s  {kind:<8} {stage}/{task} job {job} "
                      f"(running {used} s)", flush=True)
        except Exception as e:  # surfaced by the test
            self.errors.append(repr(e))


def _seconds(used: str) -> int:
    """squeue's %M ([days-]hours:minutes:seconds, minutes:seconds) -> seconds."""
    days, _, hms = used.rpartition("-")
    parts = [int(x) for x in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _queued(jobs: list[str]) -> set[str]:
    if not jobs:
        return set()
    p = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted({j.split("_")[0] for j in jobs}))],
                       capture_output=True, text=True, timeout=60)
    return set(p.stdout.split())


def _restarts(job: str) -> int:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    for tok in out.split():
        if tok.startswith("Restarts="):
            return int(tok.split("=", 1)[1])
    return 0


def _final_job(run: Path, stage: str, task: int) -> str | None:
    return (read_json(run / "_jobs" / f"{stage}.json", default={}) or {}).get(str(task))


def _cancel_all(run: Path) -> None:
    jobs = sorted({j.split("_")[0] for f in (run / "_jobs").rglob("*.json")
                   for j in (read_json(f, default={}) or {}).values()})
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True)


# ---------------------------------------------------------------- comparing two runs


def _untimed(x):
    """A JSON document without wall-clock fields (seconds, rates, timestamps)."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items()
                if not (k.endswith(("seconds", "_s", "per_s")) or k in ("finished", "time", "elapsed"))}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def _zarr(path: Path) -> np.ndarray:
    import zarr

    return zarr.open_array(str(path), mode="r")[:]


def _doc_ids(run: Path) -> list[str]:
    return [i for p in sorted((run / "ingest" / "docs").glob("*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]


def assert_same_outputs(clean: Path, faulted: Path) -> list[str]:
    """Everything the pipeline computes, compared; returns what was compared."""
    compared = []
    ids, ref_ids = _doc_ids(faulted), _doc_ids(clean)
    assert len(ids) == len(set(ids)) == len(ref_ids) and set(ids) == set(ref_ids), "documents lost or duplicated"
    assert ids == ref_ids
    compared.append(f"ingest: {len(ids)} doc ids, unique, same order")
    for z in ("embed/embeddings.zarr", "quality/quality.zarr", "assign/assignments.zarr", "assign/distances.zarr"):
        a, b = _zarr(clean / z), _zarr(faulted / z)
        assert a.shape == b.shape and np.array_equal(a, b), z
        compared.append(f"{z} {list(a.shape)} bit-identical")
    assert (clean / "kmeans" / "centroids.npy").read_bytes() == (faulted / "kmeans" / "centroids.npy").read_bytes()
    assert _untimed(read_json(clean / "refine" / "clusters.json")) == _untimed(read_json(faulted / "refine" / "clusters.json"))
    assert pq.read_table(clean / "refine" / "doc_clusters.parquet").equals(pq.read_table(faulted / "refine" / "doc_clusters.parquet"))
    compared.append("kmeans/centroids.npy, refine/clusters.json, refine/doc_clusters.parquet (doc -> cluster)")
    s_clean, s_fault = read_json(clean / "tokenize" / "summary.json"), read_json(faulted / "tokenize" / "summary.json")
    assert _untimed(s_clean) == _untimed(s_fault)
    bins = sorted(str(p.relative_to(clean / "tokenize")) for p in (clean / "tokenize").glob("parts/*/cluster_*"))
    assert bins and bins == sorted(str(p.relative_to(faulted / "tokenize"))
                                   for p in (faulted / "tokenize").glob("parts/*/cluster_*"))
    for name in bins:  # the Megatron stores (.bin, .idx) and their id tables
        assert (clean / "tokenize" / name).read_bytes() == (faulted / "tokenize" / name).read_bytes(), name
    compared.append(f"tokenize: {s_clean['docs']} docs, {s_clean['tokens']} tokens, {len(bins)} token stores bit-identical")
    assert _untimed(read_json(clean / "search" / "result.json")) == _untimed(read_json(faulted / "search" / "result.json"))
    assert (clean / "mixture.json").read_bytes() == (faulted / "mixture.json").read_bytes()
    blends = [(r / "mix" / "megatron_data_args.txt").read_text().replace(str(r.resolve()), "RUN") for r in (clean, faulted)]
    assert blends[0] == blends[1] and blends[0].count("RUN/tokenize/parts/") >= 1
    compared.append("search/result.json (every trial's value), mixture.json, the blend mix/megatron_data_args.txt")
    for model in ("teacher", "student_pruned", "student"):
        assert (clean / model / "model.safetensors").read_bytes() == (faulted / model / "model.safetensors").read_bytes(), model
    compared.append("teacher/, student_pruned/, student/ model.safetensors bit-identical")
    return compared


# ---------------------------------------------------------------- the test


def test_faults_at_random_points_end_with_the_clean_runs_outputs(tmp_path):
    clean, faulted = tmp_path / "clean", tmp_path / "faulted"
    t0 = time.time()
    with open(tmp_path / "clean.log", "w") as log:
        ref = subprocess.Popen([sys.executable, "-m", "climb_hpc.cli", "run", f"run_dir={clean}", "progress=false",
                                "cluster=local", *FULL], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    cfg = make_cfg(faulted, *SLURM, *FULL, "cluster.max_retries=4")
    injector = Injector(faulted, seed=1, plan=["requeue", "kill", "preempt", "requeue", "preempt", "kill",
                                               "requeue@correct", "preempt@distill"])
    injector.start()
    try:
        run_pipeline(cfg)
        t_faulted = time.time() - t0
        ref.wait(600)
    finally:
        injector.stop.set()
        injector.join(60)
        _cancel_all(faulted)
        if ref.poll() is None:
            ref.kill()
            ref.wait()
    assert ref.returncode == 0, (tmp_path / "clean.log").read_text()[-3000:]
    t_clean = read_json(clean / "manifest.json")["stages"]["distill"]["completed"] - t0
    assert not injector.errors, injector.errors
    injector.judge(final=True)  # the run is over: every marker is final
    counts = {k: sum(f.kind == k for f in injector.faults) for k in KINDS}
    hits = {k: sum(f.kind == k and bool(f.hit) for f in injector.faults) for k in KINDS}
    print(f"\nfaults injected {counts}, of which hit a running task {hits}; clean run (local executor) "
          f"{t_clean:.1f} s, faulted run (Slurm) {t_faulted:.1f} s, side by side")
    for f in injector.faults:
        print(f"  {f.at:6.1f} s  {f.kind:<8} {f.stage}/{f.task} job {f.job} (running {f.running_s} s, "
              f"restarts {f.restarts}): {'hit' if f.hit else 'missed: that attempt finished the task'}")
    rd = RunDir(faulted)
    for stage in STAGES:
        assert rd.stage_complete(stage), stage
        assert not rd.failures(stage), (stage, rd.failures(stage))
    compared = assert_same_outputs(clean, faulted)
    print("identical: " + "; ".join(compared))
    # killed writers left temporaries; every one went when its task ran again (or its stage completed)
    leftovers = [p for p in faulted.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or "_tmp" in p.parts)]
    assert not leftovers, leftovers[:10]
    assert all(hits[k] >= 1 for k in KINDS), f"not every kind of fault hit a running task: {hits}"
