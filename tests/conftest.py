"""Shared fixtures. Slurm tests use the REAL local Slurm (`bash hpc/local-slurm.sh start`); with CI=true
a missing Slurm fails the run instead of skipping."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from climb_hpc.config import compose

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def slurm_problem() -> str | None:
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed: {e}"
    if p.returncode != 0:
        return f"sinfo failed: {p.stderr.strip()}"
    usable = [ln for ln in p.stdout.splitlines() if ln.split()[-1] in ("idle", "mixed", "allocated", "completing")]
    if len({ln.split()[0] for ln in usable}) < 2:
        return f"need 2 usable Slurm nodes, sinfo says: {p.stdout.strip()!r}"
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    problem = slurm_problem()
    if problem:
        msg = f"local Slurm not usable ({problem}); start it with: bash hpc/local-slurm.sh start"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def make_cfg(run_dir: Path, *overrides: str):
    return compose([f"run_dir={run_dir}", "progress=false", *overrides])


SLURM = ("cluster=slurm", "cluster.poll_s=0.5")


#: The built-in corpus at 40 docs a domain, tokenized with a 600-token BPE (tests/test_proxy.py, test_search.py)
#: (one cluster a source domain: clusters.refine.from_field, no embedding or k-means)
TOKENIZED = ("corpus.builtin.docs_per_domain=40", "tokenize.vocab_size=600", "tokenize.batch_size=16",
             "clusters.refine.from_field=source", "proxy.holdout_fraction=0.1")
#: A 2-layer, 64-wide Llama proxy: a step is ~30 ms on one thread
SMALL_PROXY = ("proxy.model.hidden_size=64", "proxy.model.intermediate_size=128", "proxy.model.num_hidden_layers=2",
               "proxy.model.num_attention_heads=2", "proxy.model.num_key_value_heads=1", "proxy.model.head_dim=32",
               "proxy.seq_len=128", "proxy.batch_size=8", "proxy.cpus=1", "proxy.holdout_fraction=0.1",
               "proxy.optim.warmup=10", "target.max_tokens=20000")


def tokenized_run(run: Path) -> Path:
    """Ingest + tokenize the small built-in corpus with one cluster a true domain (7 clusters): refine takes
    them from the docs' source field (clusters.refine.from_field), so no embedding or clustering is needed."""
    from climb_hpc.pipeline import run_pipeline

    run_pipeline(make_cfg(run, "cluster=debug", *TOKENIZED, "pipeline.stages=[ingest,refine,tokenize]"))
    return run


def plant_refine(run: Path, ids: list[str], clusters: list[int]) -> None:
    """Play the refine stage: write its outputs (any clusters, -1 = pruned) and mark it complete."""
    import numpy as np
    import pyarrow as pa

    from climb_hpc.clusters.refine import clusters_path, doc_clusters_path, write_doc_clusters
    from climb_hpc.rundir import RunDir, atomic_write_json

    rd = RunDir(run)
    write_doc_clusters(doc_clusters_path(rd), pa.array(ids, pa.string()), np.asarray(clusters))
    atomic_write_json(clusters_path(rd), {"clusters": sorted(set(clusters) - {-1}), "planted": True})
    rd.mark_stage_complete("refine")


def clone_run(src: Path, dst: Path, *overrides: str):
    """A copy of a tokenized run whose saved config carries these (proxy, target, search...) settings."""
    import shutil

    from climb_hpc.rundir import RunDir

    shutil.copytree(src, dst)
    cfg = make_cfg(dst, *TOKENIZED, *SMALL_PROXY, *overrides)
    RunDir(dst).save_config(cfg)
    return cfg


def wait_for_lines(path: Path, n: int, timeout: float = 240) -> None:
    """Block until the file has ``n`` lines (a training log reaching a step), or raise."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{path} never reached {n} lines")
