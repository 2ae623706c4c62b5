"""Stage ``refine``: prune initial clusters by quality, merge the survivors with Ward linkage. One task.

Outputs under ``<run_dir>/refine/``::

    clusters.json          pruning mode, thresholds, merge settings, doc counts, the final clusters
                           (id, member initial clusters, size, mean scores) and every initial cluster
                           (size, mean scores, kept or why pruned, final cluster)
    doc_clusters.parquet   id: string, cluster: int32 (-1: pruned), one row per document in row order

Pruning: with ``quality/quality.zarr`` (float32 [n_docs, n_axes], higher = better, rows as the embeddings;
its ``axes`` attribute names the columns, its ``range`` the scale: 0-5, or -1..5 for NVIDIA's CLIMB
classifiers) each initial cluster's mean per axis is compared with ``clusters.refine.thresholds``; a
cluster is pruned when any thresholded axis mean is below its threshold, or it has fewer than
``min_size`` docs (empty clusters always go). Without quality scores pruning is skipped (a warning,
and ``"pruning": "skipped: no quality scores"``); ``prune: false`` keeps every non-empty cluster.

Merging: scipy ``linkage(centroids, method="ward")`` over the surviving centroids (one observation
each, as in the paper), cut with ``fcluster(criterion="distance", t=merge_distance)``, or into at most
``target_clusters`` clusters (``criterion="maxclust"``) when that is set. Scale of the cut: scipy's Ward
height of a merge of groups A and B is ``sqrt(2|A||B|/(|A|+|B|)) * ||mean(A) - mean(B)||``, so it grows
with the square root of the group sizes, so the top of the dendrogram scales ~sqrt(K): more centroids,
more clusters at the same t. Measured on the 5-domain real corpus (MiniLM, unit vectors, centroid norms
~0.8-0.9; final clusters at t=1.5 / purity / homogeneity against the source):

    30k docs, K=250: 10 / 0.978 / 0.926     K=781 (the K rule): 24-27 / 0.975-0.981 / 0.92-0.93
              K=1000: 32 / 0.978 / 0.926    (top merge heights ~6, ~10, ~12 for K = 250, 781, 1000)
    5k docs,  K=128: 6 / 0.970-0.979 / 0.914-0.939 over seeds 0-3 (one other faiss seed: 0.90 / 0.85;
                     5 domains in 6 clusters is tight)
              K=1000: 54 / 0.968 / 0.924 -> over 40, hence ``max_clusters``

So the paper's literal t=1.5 is kept as the default: at the K rule's sizes it gives 5-40 clusters here;
``max_clusters`` (default 40) re-cuts a distance cut that leaves more (large K on a small corpus), and
``target_clusters`` fixes the count outright.

Final ids: ordered by size (docs) descending, then by the smallest member initial cluster id, so
they do not depend on scipy's label order.

Memory (paper scale: 1e9 docs, where the whole id column alone passes Arrow's 2 GiB string offsets and
the old in-memory refine held ~100 GB): the task streams. Pass 1 reads ``assign/assignments.zarr`` and
``quality/quality.zarr`` a block of whole Zarr shards (~1 Mi rows, :func:`climb_hpc.embed.store.block_rows`)
at a time and adds per-cluster counts and score sums; the linkage sees only the K centroids. Pass 2 reads
each ingest shard's ``id`` column ``MAX_GROUP_ROWS`` rows at a time, maps their initial clusters to final
ones and writes that piece as one row group of ``doc_clusters.parquet``. So the task holds about
``block x (4 + 4 x n_axes + 16)`` bytes (~40 MB) in pass 1 and ``MAX_GROUP_ROWS`` ids (+ their int32) in
pass 2, plus O(K^2) for the linkage: independent of the corpus size (given ids of bounded length).

``doc_clusters.parquet`` row groups never straddle two ingest shards: one a shard, or several of at most
``MAX_GROUP_ROWS`` rows for a bigger shard, so a reader of one shard's rows (tokenize) can pick its row
groups from the row-group metadata alone. Column statistics are kept for ``cluster`` only (min/max of
the ids would only grow the footer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from climb_hpc.clusters.assign import array_path as assign_array_path
from climb_hpc.clusters.kmeans import clusters_cfg, load_centroids
from climb_hpc.embed import load_layout
from climb_hpc.embed.store import block_rows, iter_row_blocks
from climb_hpc.estimate import Inputs, Ledger, Work, rate
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "refine"
log = logging.getLogger("climb_hpc")
DEFAULT_AXES = ("quality", "advertisement", "informational", "educational")
DOC_SCHEMA = pa.schema([("id", pa.string()), ("cluster", pa.int32())])
NO_SCORES = "skipped: no quality scores"
#: the most rows one row group of doc_clusters.parquet holds (and the most ids pass 2 holds at a time)
MAX_GROUP_ROWS = 1 << 20


@dataclass(frozen=True)
class Outputs:
    """What refine writes under ``<run_dir>/refine/`` (described above)."""

    dir: Path

    @property
    def clusters(self) -> Path:
        return self.dir / "clusters.json"

    @property
    def doc_clusters(self) -> Path:
        return self.dir / "doc_clusters.parquet"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def quality_path(rd: RunDir) -> Path:
    from climb_hpc.clusters.quality import store_path

    return store_path(rd)


def clusters_path(rd: RunDir) -> Path:
    return outputs(rd).clusters


def doc_clusters_path(rd: RunDir) -> Path:
    return outputs(rd).doc_clusters


# ---------------------------------------------------------------- pure logic (tested on hand-built data)


def cluster_means(labels: np.ndarray, k: int, scores: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sizes [k] int64, mean score per cluster and axis [k, n_axes] float64; NaN for empty clusters)."""
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    if scores is None:
        return sizes, np.zeros((k, 0))
    sums = np.stack([np.bincount(labels, weights=scores[:, j].astype(np.float64), minlength=k)
                     for j in range(scores.shape[1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / sizes[:, None]
    return sizes, means


def prune_reasons(sizes: np.ndarray, means: np.ndarray, axes: Sequence[str],
                  thresholds: Mapping[str, Optional[float]], min_size: int = 1, prune: bool = True) -> list[Optional[str]]:
    """Per initial cluster: None (kept) or why it is pruned ("empty", "size 3 < 5", "quality 2.41 < 3.0")."""
    unknown = set(k for k, v in thresholds.items() if v is not None) - set(axes)
    if prune and means.shape[1] and unknown:
        raise ValueError(f"clusters.refine.thresholds names axes {sorted(unknown)} that the scores lack ({list(axes)})")
    reasons: list[Optional[str]] = []
    for c, n in enumerate(sizes):
        if n == 0:
            reasons.append("empty")
            continue
        why = []
        if prune and n < min_size:
            why.append(f"size {int(n)} < {min_size}")
        if prune:
            for j, axis in enumerate(axes[: means.shape[1]]):
                t = thresholds.get(axis)
                if t is not None and means[c, j] < float(t):
                    why.append(f"{axis} {means[c, j]:.2f} < {float(t)}")
        reasons.append("; ".join(why) or None)
    return reasons


def merge(centroids: np.ndarray, method: str = "ward", distance: float = 1.5,
          target_clusters: Optional[int] = None, max_clusters: Optional[int] = None) -> np.ndarray:
    """Flat cluster label (1..m, scipy's order) of each centroid after hierarchical merging.

    Cut at height ``distance``; or into ``target_clusters`` when given; a distance cut that leaves
    more than ``max_clusters`` clusters is re-cut into ``max_clusters`` (Ward heights grow with the
    number of centroids, see the module docstring)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(centroids) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(centroids) == 1:
        return np.ones(1, dtype=np.int64)
    z = linkage(np.asarray(centroids, dtype=np.float64), method=method)
    if target_clusters:
        return fcluster(z, t=int(target_clusters), criterion="maxclust")
    groups = fcluster(z, t=float(distance), criterion="distance")
    if max_clusters and groups.max() > int(max_clusters):
        groups = fcluster(z, t=int(max_clusters), criterion="maxclust")
    return groups


def final_ids(groups: np.ndarray, members: np.ndarray, sizes: np.ndarray) -> dict[int, list[int]]:
    """Final id -> sorted member initial clusters; ids by total size desc, then smallest member."""
    by_group: dict[int, list[int]] = {}
    for g, m in zip(groups.tolist(), members.tolist(), strict=True):
        by_group.setdefault(int(g), []).append(int(m))
    ordered = sorted((sorted(ms) for ms in by_group.values()), key=lambda ms: (-int(sizes[ms].sum()), ms[0]))
    return dict(enumerate(ordered))


def plan_clusters(centroids: np.ndarray, sizes: np.ndarray, means: np.ndarray, *, axes: Sequence[str],
                  thresholds: Mapping[str, Optional[float]], prune: bool = True, min_size: int = 1,
                  method: str = "ward", distance: float = 1.5, target_clusters: Optional[int] = None,
                  max_clusters: Optional[int] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Initial cluster -> final cluster (int32 [k], -1 pruned) and the description written to clusters.json,
    from the per-cluster sizes and mean scores alone (``means`` has 0 columns without scores): K-sized, so
    the documents themselves are only ever streamed."""
    k = len(centroids)
    reasons = prune_reasons(sizes, means, axes, thresholds, min_size, prune and means.shape[1] > 0)
    kept = np.array([r is None for r in reasons], dtype=bool)
    members = np.flatnonzero(kept)
    groups = merge(centroids[members], method, distance, target_clusters, max_clusters)
    finals = final_ids(groups, members, sizes)
    initial_to_final = np.full(k, -1, dtype=np.int32)
    for f, ms in finals.items():
        initial_to_final[ms] = f
    n_docs, n_kept = int(sizes.sum()), int(sizes[kept].sum())
    used_axes = list(axes[: means.shape[1]])

    def mean_scores(ms: Sequence[int]) -> dict[str, float]:
        w = sizes[list(ms)]
        if not used_axes or w.sum() == 0:
            return {}
        return {a: round(float((means[list(ms), j] * w).sum() / w.sum()), 4) for j, a in enumerate(used_axes)}

    info = {
        "n_docs": n_docs, "kept_docs": n_kept, "pruned_docs": n_docs - n_kept,
        "initial_clusters": k, "kept_initial_clusters": int(kept.sum()), "final_clusters": len(finals),
        "clusters": [{"id": f, "members": ms, "size": int(sizes[ms].sum()), "mean_scores": mean_scores(ms)}
                     for f, ms in finals.items()],
        "initial": [{"id": c, "size": int(sizes[c]), "mean_scores": mean_scores([c]) if sizes[c] else {},
                     "final": int(initial_to_final[c]), "pruned": reasons[c]} for c in range(k)],
    }
    return initial_to_final, info


def refine(centroids: np.ndarray, labels: np.ndarray, scores: Optional[np.ndarray], *, axes: Sequence[str],
           thresholds: Mapping[str, Optional[float]], prune: bool = True, min_size: int = 1, method: str = "ward",
           distance: float = 1.5, target_clusters: Optional[int] = None,
           max_clusters: Optional[int] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Doc -> final cluster (-1 pruned) and the description, for labels and scores in memory (the stage streams
    the same steps: :func:`stream_cluster_means`, :func:`plan_clusters`, :func:`write_refined`)."""
    sizes, means = cluster_means(labels, len(centroids), scores)
    initial_to_final, info = plan_clusters(
        centroids, sizes, means, axes=axes, thresholds=thresholds, prune=prune and scores is not None,
        min_size=min_size, method=method, distance=distance, target_clusters=target_clusters,
        max_clusters=max_clusters)
    doc_cluster = initial_to_final[labels]
    n_kept = int((doc_cluster >= 0).sum())
    if n_kept != info["kept_docs"] or len(labels) != info["n_docs"]:
        raise RuntimeError(f"refine: kept {n_kept} + pruned {len(labels) - n_kept} docs != {info['n_docs']}")
    return doc_cluster, info


def stream_cluster_means(labels: Any, scores: Any, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cluster_means` over per-row arrays (Zarr) read ``block`` rows at a time: the counts and float64
    score sums are K-sized, so memory is one block whatever the corpus size."""
    n_axes = 0 if scores is None else (1 if scores.ndim == 1 else scores.shape[1])
    sizes = np.zeros(k, dtype=np.int64)
    sums = np.zeros((k, n_axes))
    for a, lab in iter_row_blocks(labels, block):
        if len(lab) and (lab.min() < 0 or lab.max() >= k):
            raise RuntimeError(f"refine: assignments in rows [{a}, {a + len(lab)}) lie outside [0, {k}); "
                               "rerun assign")
        sizes += np.bincount(lab, minlength=k)
        if scores is not None:
            sc = np.asarray(scores[a:a + len(lab)], dtype=np.float32).reshape(len(lab), n_axes)
            if not np.isfinite(sc).all():
                raise RuntimeError(f"refine: non-finite quality scores in rows [{a}, {a + len(lab)}) "
                                   "(unscored rows?); rerun the quality stage")
            for j in range(n_axes):
                sums[:, j] += np.bincount(lab, weights=sc[:, j].astype(np.float64), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sizes, sums / sizes[:, None]


# ---------------------------------------------------------------- run folder I/O


def open_scores(rd: RunDir, n_docs: int, axes: Sequence[str]) -> tuple[Any, list[str]]:
    """quality/quality.zarr opened (not read: :func:`stream_cluster_means` streams it) and its axis names, or
    (None, []) when absent.

    Axis names come from the array's ``axes`` / ``columns`` / ``raters`` attribute when it has one, else
    from ``clusters.refine.axes`` (the quality stage's documented column order)."""
    import zarr

    p = quality_path(rd)
    if not p.exists():
        return None, []
    arr = zarr.open_array(str(p), mode="r")
    n_axes = 1 if arr.ndim == 1 else arr.shape[1]
    if arr.shape[0] != n_docs:
        raise RuntimeError(f"{p} has {arr.shape[0]} rows, the embeddings {n_docs}: quality and embed disagree")
    attrs = dict(arr.attrs)
    names = next((list(attrs[k]) for k in ("axes", "columns", "raters") if k in attrs), None)
    names = names if names and len(names) == n_axes else list(axes)[:n_axes]
    if len(names) < n_axes:
        names += [f"axis_{j}" for j in range(len(names), n_axes)]
    return arr, names


def score_range(scores: Any) -> Optional[list[float]]:
    """The scores' [lowest, highest] as the quality store records it (``range`` attribute; 0-5 when a store
    lacks it), or None without scores."""
    if scores is None:
        return None
    r = dict(scores.attrs).get("range")
    return [float(r[0]), float(r[1])] if r and len(r) == 2 else [0.0, 5.0]


@contextmanager
def doc_clusters_writer(path: Path) -> Iterator[Callable[[pa.Array, np.ndarray], None]]:
    """``write(ids, cluster)`` appends one row group to ``path`` (renamed into place when the block ends).

    Callers keep a row group within one ingest shard and under ``MAX_GROUP_ROWS`` rows (see the module
    docstring)."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, DOC_SCHEMA, write_statistics=["cluster"]) as out:

        def write(ids: pa.Array, cluster: np.ndarray) -> None:
            if len(ids) != len(cluster):
                raise ValueError(f"refine: {len(ids)} ids for {len(cluster)} clusters")
            if len(ids):
                table = pa.Table.from_arrays([ids.cast(pa.string()), pa.array(np.asarray(cluster, np.int32))],
                                             schema=DOC_SCHEMA)
                out.write_table(table, row_group_size=len(ids))

        yield write


def write_doc_clusters(path: Path, ids: pa.Array, cluster: np.ndarray) -> None:
    """doc_clusters.parquet from ids and clusters in memory (tests, small corpora), ``MAX_GROUP_ROWS`` a group."""
    step = MAX_GROUP_ROWS
    with doc_clusters_writer(path) as write:
        for s in range(0, len(ids), step):
            write(ids.slice(s, step), cluster[s:s + step])


def iter_shard_pieces(rd: RunDir, columns: Sequence[str], max_rows: Optional[int] = None,
                      ) -> Iterator[tuple[int, int, pa.RecordBatch]]:
    """``(shard index, first corpus row, batch)`` over the ingest shards in corpus order, each batch at most
    ``max_rows`` (default ``MAX_GROUP_ROWS``) rows of one shard: what a row group of doc_clusters.parquet holds."""
    from climb_hpc.corpus.ingest import doc_shard_paths

    max_rows = int(max_rows or MAX_GROUP_ROWS)
    start = 0
    for i, path in enumerate(doc_shard_paths(rd)):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=max_rows, columns=list(columns)):
            yield i, start, batch
            start += batch.num_rows


def write_refined(rd: RunDir, layout: dict[str, Any], labels: Any, initial_to_final: np.ndarray,
                  max_rows: Optional[int] = None) -> int:
    """Pass 2: doc_clusters.parquet, one piece of an ingest shard at a time; returns the kept docs.

    The ids come from the ingest shards (the embed layout's rows, checked shard by shard), the initial
    clusters from ``labels`` (assign/assignments.zarr) at the same rows."""
    shards = layout["doc_shards"]
    kept = rows = 0
    with doc_clusters_writer(doc_clusters_path(rd)) as write:
        for i, start, batch in iter_shard_pieces(rd, ["id"], max_rows):
            if i >= len(shards) or not shards[i]["offset"] <= start < shards[i]["offset"] + shards[i]["rows"]:
                raise RuntimeError(f"refine: ingest shard {i} does not match the embed layout (rows from {start}); "
                                   "ingest changed after embed: use a new run folder")
            cluster = initial_to_final[np.asarray(labels[start:start + batch.num_rows])]
            write(batch.column(0), cluster)
            kept += int((cluster >= 0).sum())
            rows = start + batch.num_rows
    if rows != layout["n_docs"]:
        raise RuntimeError(f"refine: the ingest shards hold {rows} docs, the embed layout {layout['n_docs']}")
    return kept


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    return 1


def resources(cfg: DictConfig) -> Resources:
    return Resources.from_config(clusters_cfg(cfg, NAME))


def reads(cfg: DictConfig) -> tuple[str, ...]:
    if clusters_cfg(cfg, NAME).from_field:
        return ("ingest",)
    quality = ("quality",) if "quality" in cfg.pipeline.stages else ()  # without it, pruning is skipped
    return ("embed", *quality, "kmeans", "assign")


def run_from_field(rd: RunDir, field: str) -> None:
    """The clusters are the values of a document field (``clusters.refine.from_field``): nothing is pruned.

    Two streaming passes over the ingest shards (:mod:`climb_hpc.clusters.labels`): the distinct values,
    then each piece's clusters, written as it is read."""
    from climb_hpc.clusters.labels import field_clusters, field_values

    t0 = time.perf_counter()
    labels = field_values(rd, field)
    sizes = np.zeros(len(labels), dtype=np.int64)
    with doc_clusters_writer(doc_clusters_path(rd)) as write:
        for _, _, batch in iter_shard_pieces(rd, ["id", field]):
            cluster = field_clusters(batch.column(1), labels)
            write(batch.column(0), cluster)
            sizes += np.bincount(cluster, minlength=len(labels))
    n = int(sizes.sum())
    info = {"pruning": f"none: clusters are the values of the docs' {field!r} field", "from_field": field,
            "n_docs": n, "kept_docs": n, "pruned_docs": 0, "initial_clusters": len(labels),
            "kept_initial_clusters": len(labels), "final_clusters": len(labels),
            "clusters": [{"id": i, "label": v, "members": [i], "size": int(sizes[i]), "mean_scores": {}}
                         for i, v in enumerate(labels)],
            "seconds": round(time.perf_counter() - t0, 4)}
    atomic_write_json(clusters_path(rd), info)
    print(f"refine: {len(labels)} clusters from the docs' {field!r} field ({', '.join(map(str, labels[:10]))})",
          flush=True)


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    if task != 0:
        raise IndexError(f"refine has 1 task; there is no task {task}")
    t0 = time.perf_counter()
    r = clusters_cfg(cfg, NAME)
    if r.from_field:
        run_from_field(rd, str(r.from_field))
        return
    import zarr

    layout = load_layout(rd)
    centroids = load_centroids(rd)
    labels = zarr.open_array(str(assign_array_path(rd, "assignments")), mode="r")
    if labels.shape[0] != layout["n_docs"]:
        raise RuntimeError(f"refine: {labels.shape[0]} assignments for {layout['n_docs']} docs")
    scores, axes = open_scores(rd, layout["n_docs"], list(r.get("axes") or DEFAULT_AXES))
    prune = bool(r.prune)
    if scores is None:
        mode = NO_SCORES
        log.warning("refine: %s not found (no quality stage in this pipeline): pruning skipped", quality_path(rd))
    else:
        mode = "applied" if prune else "disabled"
    thresholds = OmegaConf.to_container(r.get("thresholds") or {}, resolve=True)
    target = r.get("target_clusters")
    cap = r.get("max_clusters")
    sizes, means = stream_cluster_means(labels, scores, len(centroids), block_rows(layout["rows_per_shard"]))
    initial_to_final, info = plan_clusters(
        centroids, sizes, means, axes=axes, thresholds=thresholds,  # type: ignore[arg-type]
        prune=prune and scores is not None, min_size=int(r.min_size), method=str(r.linkage),
        distance=float(r.merge_distance), target_clusters=int(target) if target else None,
        max_clusters=int(cap) if cap else None)
    kept = write_refined(rd, layout, labels, initial_to_final)
    if kept != info["kept_docs"] or info["n_docs"] != layout["n_docs"]:
        raise RuntimeError(f"refine: wrote {kept} kept docs, the clusters hold {info['kept_docs']} of {info['n_docs']}")
    info = {"pruning": mode, "axes": axes, "range": score_range(scores),
            "thresholds": thresholds if scores is not None else {},
            "min_size": int(r.min_size),
            "merge": {"linkage": str(r.linkage), "criterion": "maxclust" if target else "distance",
                      "t": int(target) if target else float(r.merge_distance),
                      "max_clusters": int(cap) if cap and not target else None},
            **info, "seconds": round(time.perf_counter() - t0, 4)}
    atomic_write_json(clusters_path(rd), info)
    print(f"refine: {info['initial_clusters']} initial clusters, {info['kept_initial_clusters']} kept (pruning "
          f"{mode}) -> {info['final_clusters']} final; docs kept {info['kept_docs']}, pruned {info['pruned_docs']}",
          flush=True)


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """Docs in = kept + pruned, and doc_clusters.parquet covers every row in order."""
    from climb_hpc.corpus import ingest

    info = read_json(clusters_path(rd))
    meta = pq.read_metadata(doc_clusters_path(rd))
    if info is not None and info.get("from_field"):
        n = read_json(ingest.summary_path(rd))["docs_written"]
    else:
        n = load_layout(rd)["n_docs"]
    if info is None or info["kept_docs"] + info["pruned_docs"] != n or meta.num_rows != n:
        raise RuntimeError(f"refine: outputs do not cover the {n} docs; rerun the stage")


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """One task streams every doc's quality and cluster and writes doc_clusters.parquet; its memory is a block
    of rows and a row group of ids (the module docstring), not the corpus."""
    return Work("rows (CPU)", [1], core_s=x.docs / rate(cfg, x, "refine_docs_s", led, "docs/s a core"))


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, finalize=finalize, reads=reads,
              outputs=outputs, estimate=estimate)
