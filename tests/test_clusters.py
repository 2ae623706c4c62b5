"""Stages ``kmeans``, ``assign``, ``refine``: the K rule, prune + merge logic on hand-built centroids,
deterministic clustering of the built-in corpus, purity, quality pruning, and assign on the local Slurm.

One small embedded run (built-in corpus, 15 docs x 7 domains = 105 docs, 32-row Zarr shards so assign
has 4 tasks) is made once per module; clustering runs start from copies of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from climb_hpc.clusters import kmeans, refine
from climb_hpc.clusters.assign import nearest, open_assignments
from climb_hpc.clusters.metrics import purity
from climb_hpc.corpus import iter_doc_shards
from climb_hpc.embed import load_id_to_row, open_embeddings
from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import SLURM, make_cfg

EMBED = ("corpus.builtin.docs_per_domain=15", "embed.rows_per_shard=32", "embed.chunk_rows=16", "embed.cpus=1")
CLUSTER = ("pipeline.stages=[ingest,embed,kmeans,assign,refine]", "clusters.kmeans.k_init=21",
           "clusters.kmeans.min_points_per_centroid=3", "clusters.kmeans.cpus=1",
           "clusters.refine.merge_distance=1.0")  # two built-in domains merge at 1.17 (Ward height)
N_DOCS, N_TASKS = 105, 4


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """ingest + embed of the small built-in corpus, once for the module."""
    run = tmp_path_factory.mktemp("clusters_embedded")
    run_pipeline(make_cfg(run, "cluster=debug", "pipeline.stages=[ingest,embed]", *EMBED))
    return run


def _cluster(embedded: Path, dest: Path, *overrides: str, cluster: str = "cluster=debug") -> Path:
    """Copy the embedded run to ``dest`` and run kmeans -> assign -> refine there (a new config: the copy
    keeps the ingest + embed outputs and markers, so only the clustering stages run)."""
    shutil.copytree(embedded, dest, ignore=shutil.ignore_patterns("config.yaml", "manifest.json"))
    run_pipeline(make_cfg(dest, cluster, *EMBED, *CLUSTER, *overrides))
    return dest


@pytest.fixture(scope="module")
def clustered(embedded, tmp_path_factory) -> Path:
    return _cluster(embedded, tmp_path_factory.mktemp("clusters") / "run")


def _sources(run: Path) -> list[str]:
    return [s for _, t in iter_doc_shards(RunDir(run), ["source"]) for s in t.column("source").to_pylist()]


def _doc_clusters(run: Path) -> np.ndarray:
    return pq.read_table(run / "refine" / "doc_clusters.parquet").column("cluster").to_numpy()


# ---------------------------------------------------------------- pure logic


def test_k_rule_and_seeds():
    assert kmeans.choose_k(30_000, 1000, 39) == 769
    assert kmeans.choose_k(10_000_000, 1000, 39) == 1000
    assert kmeans.choose_k(50, 1000, 39) == 2 and kmeans.choose_k(1, 1000, 39) == 1
    assert kmeans.derive_seed(0, "kmeans") == kmeans.derive_seed(0, "kmeans") != kmeans.derive_seed(1, "kmeans")
    a, b = kmeans.sample_rows(100, 10, 7), kmeans.sample_rows(100, 10, 7)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    assert np.array_equal(kmeans.sample_rows(5, 10, 7), np.arange(5))


def _groups(n_groups: int, per_group: int, dim: int = 16, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """``per_group`` centroids near each of ``n_groups`` orthogonal unit vectors."""
    rng = np.random.default_rng(seed)
    base = np.eye(dim)[:n_groups]
    return np.concatenate([b + noise * rng.standard_normal((per_group, dim)) for b in base]).astype(np.float32)


def test_ward_merges_tight_groups_and_orders_final_ids():
    c = _groups(3, 4)
    groups = refine.merge(c, "ward", 1.5)
    assert len(set(groups.tolist())) == 3
    assert all(len(set(groups[i * 4:(i + 1) * 4].tolist())) == 1 for i in range(3))
    # docs: group 2 biggest, then group 0, then group 1
    labels = np.repeat(np.arange(12), [1] * 4 + [1] * 4 + [5] * 4)
    labels = np.concatenate([labels, np.zeros(2, dtype=int)])  # group 0: 4 + 2 docs
    doc, info = refine.refine(c, labels, None, axes=(), thresholds={})
    assert [f["members"] for f in info["clusters"]] == [[8, 9, 10, 11], [0, 1, 2, 3], [4, 5, 6, 7]]
    assert [f["size"] for f in info["clusters"]] == [20, 6, 4]
    assert doc.tolist()[:4] == [1, 1, 1, 1] and (doc >= 0).all()
    assert len(set(refine.merge(c, "ward", 1.5, target_clusters=2).tolist())) == 2
    assert len(set(refine.merge(c, "ward", 1e-6).tolist())) == 12  # every centroid alone ...
    assert len(set(refine.merge(c, "ward", 1e-6, max_clusters=5).tolist())) == 5  # ... unless capped


def test_low_quality_cluster_is_pruned_and_docs_conserved():
    c = _groups(2, 3)  # 6 initial clusters in 2 groups
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, size=300)
    labels[:6] = np.arange(6)  # none empty
    scores = np.full((300, 4), 4.0, dtype=np.float32)
    scores[labels == 4, 0] = 1.5  # cluster 4: low overall quality
    scores[labels == 1, 2] = 0.5  # cluster 1: low on an axis without a threshold -> kept
    thresholds = {"quality": 3.0, "advertisement": 3.0, "informational": None, "educational": None}
    doc, info = refine.refine(c, labels, scores, axes=refine.DEFAULT_AXES, thresholds=thresholds)
    assert (doc[labels == 4] == -1).all() and (doc[labels != 4] >= 0).all()
    assert info["pruned_docs"] == int((labels == 4).sum()) and info["kept_docs"] + info["pruned_docs"] == 300
    assert info["initial"][4]["pruned"].startswith("quality 1.50 < 3.0") and info["initial"][1]["pruned"] is None
    assert info["final_clusters"] == 2 and sorted(m for f in info["clusters"] for m in f["members"]) == [0, 1, 2, 3, 5]
    # prune off, or an empty cluster
    doc, info = refine.refine(c, labels, scores, axes=refine.DEFAULT_AXES, thresholds=thresholds, prune=False)
    assert (doc >= 0).all() and info["pruned_docs"] == 0
    doc, info = refine.refine(c, labels[labels != 3], None, axes=(), thresholds={})
    assert info["initial"][3]["pruned"] == "empty" and info["kept_docs"] == int((labels != 3).sum())
    with pytest.raises(ValueError, match="lack"):
        refine.refine(c, labels, scores, axes=refine.DEFAULT_AXES, thresholds={"fluency": 3.0})


def test_nearest_is_exact_l2():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    c = rng.standard_normal((7, 8)).astype(np.float32)
    labels, dist = nearest(x, c, batch_rows=128)
    d = np.linalg.norm(x[:, None] - c[None], axis=2)
    assert np.array_equal(labels, d.argmin(1)) and np.allclose(dist, d.min(1), atol=1e-4)


# ---------------------------------------------------------------- the stages on the built-in corpus


def test_clustering_is_pure_and_conserves_docs(clustered):
    rd = RunDir(clustered)
    s = read_json(clustered / "kmeans" / "summary.json")
    assert s["k"] == 21 and s["sample_size"] == N_DOCS and s["objective"] > 0
    assert kmeans.load_centroids(rd).shape == (21, 384)
    labels, dist = open_assignments(rd)
    x = open_embeddings(rd)[:].astype(np.float32)
    d = np.linalg.norm(x[:, None] - kmeans.load_centroids(rd)[None], axis=2)
    assert labels.dtype == np.int32 and np.array_equal(labels, d.argmin(1)) and np.allclose(dist, d.min(1), atol=1e-4)
    arr = zarr.open_array(str(clustered / "assign" / "assignments.zarr"), mode="r")
    assert arr.shards == (32,) and arr.chunks == (16,)
    assert read_json(clustered / "manifest.json")["stages"]["assign"]["num_tasks"] == N_TASKS
    info = read_json(clustered / "refine" / "clusters.json")
    assert info["pruning"] == refine.NO_SCORES and info["pruned_docs"] == 0
    assert info["kept_docs"] + info["pruned_docs"] == N_DOCS == sum(f["size"] for f in info["clusters"])
    dc = pq.read_table(clustered / "refine" / "doc_clusters.parquet")
    assert dc.column_names == ["id", "cluster"] and dc.num_rows == N_DOCS
    assert dc.column("id").to_pylist() == load_id_to_row(RunDir(clustered)).column("id").to_pylist()
    p = purity(_sources(clustered), _doc_clusters(clustered))
    assert p >= 0.9, (p, info["final_clusters"])
    assert 5 <= info["final_clusters"] <= 40


def test_same_seed_same_clusters(embedded, clustered, tmp_path):
    again = _cluster(embedded, tmp_path / "again")
    a, b = RunDir(clustered), RunDir(again)
    assert np.array_equal(kmeans.load_centroids(a), kmeans.load_centroids(b))
    assert all(np.array_equal(x, y) for x, y in zip(open_assignments(a), open_assignments(b), strict=True))
    assert pq.read_table(clustered / "refine" / "doc_clusters.parquet").equals(
        pq.read_table(again / "refine" / "doc_clusters.parquet"))
    other = _cluster(embedded, tmp_path / "other", "seed=1", "clusters.refine.target_clusters=7",
                     "clusters.kmeans.sample_size=80")
    assert not np.array_equal(kmeans.load_centroids(a), kmeans.load_centroids(RunDir(other)))
    assert read_json(other / "kmeans" / "summary.json")["sample_size"] == 80
    info = read_json(other / "refine" / "clusters.json")
    assert info["final_clusters"] == 7 and info["merge"] == {"linkage": "ward", "criterion": "maxclust", "t": 7, "max_clusters": None}


def test_quality_scores_prune_a_domain(clustered, tmp_path):
    """A quality.zarr that scores one domain's docs low: its clusters are pruned, their docs get -1."""
    run = tmp_path / "run"
    shutil.copytree(clustered, run)
    src = np.array(_sources(run))
    q = np.full((N_DOCS, 4), 4.0, dtype=np.float32)
    q[src == "weather", 1] = 1.0  # ad-ridden weather pages
    arr = zarr.create_array(store=str(run / "quality" / "quality.zarr"), shape=q.shape, chunks=(32, 4), dtype="float32")
    arr[:] = q
    shutil.rmtree(run / "_done" / "refine")
    run_pipeline(make_cfg(run, "cluster=debug", *EMBED, *CLUSTER))
    info = read_json(run / "refine" / "clusters.json")
    doc = _doc_clusters(run)
    assert info["pruning"] == "applied" and info["kept_docs"] + info["pruned_docs"] == N_DOCS
    assert (doc[src == "weather"] == -1).mean() >= 0.9 and (doc[src != "weather"] >= 0).mean() >= 0.9
    assert info["pruned_docs"] == int((doc == -1).sum()) > 0
    assert all(f["mean_scores"]["advertisement"] >= 3.0 for f in info["clusters"])


@pytest.mark.slurm
def test_assign_on_slurm_matches_debug(slurm, clustered, tmp_path):
    """assign as one Slurm array (4 tasks) gives the same arrays as the in-process run."""
    run = tmp_path / "run"
    shutil.copytree(clustered, run)
    for d in ("assign", "refine", "_done/assign", "_done/refine"):
        shutil.rmtree(run / d)
    run_pipeline(make_cfg(run, *SLURM, *EMBED, *CLUSTER))
    assert len(list((run / "logs" / "assign").iterdir())) >= 1
    assert all(np.array_equal(x, y) for x, y in
               zip(open_assignments(RunDir(run)), open_assignments(RunDir(clustered)), strict=True))
    assert pq.read_table(run / "refine" / "doc_clusters.parquet").equals(
        pq.read_table(clustered / "refine" / "doc_clusters.parquet"))
