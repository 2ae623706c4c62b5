"""The whole default pipeline through the CLI, as a user runs it: corpus -> clusters -> search -> mix ->
correct -> importance -> prune -> distill -> report, at small sizes; then the same command again, which
must resume and do nothing new."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from climb_hpc.config import compose
from climb_hpc.rundir import read_json
from tests.conftest import ROOT, SMALL_PROXY, TOKENIZED

#: The default pipeline, shrunk: 40 docs a domain, 7 proxy trials + 2 references, a 2-layer teacher.
SMALL_RUN = (
    *TOKENIZED, "clusters.refine.from_field=null", *SMALL_PROXY, "embed.cpus=1", "embed.max_length=64", "clusters.kmeans.min_points_per_centroid=10",
    "clusters.refine.target_clusters=5", "proxy.tokens=8192", "search.budget=7", "search.pool_size=300",
    "mix.tokens=40000",
    "minitron.teacher.model.hidden_size=64", "minitron.teacher.model.intermediate_size=192",
    "minitron.teacher.model.num_hidden_layers=3", "minitron.teacher.model.num_attention_heads=2",
    "minitron.teacher.model.num_key_value_heads=1", "minitron.teacher.model.head_dim=32",
    "minitron.teacher.pretrain_tokens=20480", "minitron.correct.tokens=8192", "minitron.correct.seq_len=64",
    "minitron.correct.micro_batch_size=8", "minitron.correct.val_tokens=2000", "minitron.correct.cpus=1",
    "minitron.importance.samples=64", "minitron.importance.seq_len=64", "minitron.importance.cpus=1",
    "minitron.prune.hidden_size=48", "minitron.prune.intermediate_size=96", "minitron.prune.cpus=1",
    "minitron.distill.tokens=8192", "minitron.distill.seq_len=64", "minitron.distill.micro_batch_size=8",
    "minitron.distill.val_tokens=2000", "minitron.distill.cpus=1",
)


def climb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "climb_hpc.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("e2e") / "run"
    p = climb("run", f"run_dir={run}", "progress=false", *SMALL_RUN)
    assert p.returncode == 0, p.stderr[-3000:]
    return run, p


def test_default_pipeline_is_the_whole_recipe():
    stages = list(compose([]).pipeline.stages)
    assert stages == ["ingest", "embed", "quality", "kmeans", "assign", "refine", "tokenize", "search", "mix",
                      "correct", "importance", "prune", "distill", "report"]


def test_whole_run_ends_with_a_summary_of_what_it_found(default_run):
    run, p = default_run
    for stage in compose([]).pipeline.stages:
        assert (run / "_done" / stage).is_dir(), stage
    out = p.stdout
    refine = read_json(run / "refine" / "clusters.json")
    assert f"clusters    {refine['final_clusters']} final" in out
    best = read_json(run / "search" / "result.json")["best"]
    assert f"= {best['value']:.4f}" in out and "vs uniform" in out
    pruned = read_json(run / "prune" / "summary.json")["params"]
    assert f"({pruned['ratio']:.0%})" in out
    student = read_json(run / "student" / "config.json")
    assert f"x {student['hidden_size']} wide" in out.split("student")[-1]
    assert f"report      {run / 'report.html'}" in out
    # the student really is the pruned model, distilled: same shape, different weights
    assert student["hidden_size"] == 48 and student["intermediate_size"] == 96
    assert (run / "student" / "model.safetensors").read_bytes() != \
        (run / "student_pruned" / "model.safetensors").read_bytes()


def test_running_again_resumes_and_does_nothing_new(default_run):
    run, _ = default_run
    markers = {p: p.stat().st_mtime_ns for p in (run / "_done").rglob("*") if p.is_file()}
    student = (run / "student" / "model.safetensors").stat().st_mtime_ns
    p = climb("run", f"run_dir={run}", "progress=false", *SMALL_RUN)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ran " not in p.stdout.split("run folder:")[1].split("\n\n")[0]
    assert p.stdout.count("already complete") == len(compose([]).pipeline.stages)
    assert {q: q.stat().st_mtime_ns for q in (run / "_done").rglob("*") if q.is_file()} == markers
    assert (run / "student" / "model.safetensors").stat().st_mtime_ns == student
