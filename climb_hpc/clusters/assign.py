"""Stage ``assign``: every document's nearest k-means centroid and its L2 distance. An array over the
embed layout's tasks (same row ranges, i.e. whole Zarr shards).

Outputs under ``<run_dir>/assign/``::

    assignments.zarr/        int32 [n_docs], the initial cluster of each row (corpus order)
    distances.zarr/          float32 [n_docs], the L2 distance to that centroid
    stats/task_{t:05d}.json  rows, seconds, and what finalize sums: ``sizes`` (docs per cluster, K ints),
                             ``distance_sum`` (float64), ``bad`` (rows without a cluster or a finite distance)
    summary.json             n_docs, k, cluster size min / median / max, empty clusters, mean distance

finalize reduces the tasks' summaries: O(tasks x K), never the 1e9-row arrays (8 GB at paper scale). A task
whose stats lack them (made before they existed) is summarised from its own rows of the two arrays.

Both arrays use the embed layout's shard and chunk rows and are created once by the controller
(``prepare``); a task writes exactly the rows of its embed task — whole shards nobody else writes
(the rule of ``climb_hpc/embed/store.py``), deleting its shard files first so a killed attempt's damaged
file is never read back.

Search: ``faiss.IndexFlatL2`` (exact). The embeddings are unit vectors but the centroids are means of
unit vectors, shorter than 1, so inner product would prefer long centroids over near ones; L2 is the
k-means objective itself. The distance reported is ``sqrt`` of faiss's squared L2.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from climb_hpc.clusters import import_faiss
from climb_hpc.clusters.kmeans import clusters_cfg, load_centroids, task_threads
from climb_hpc.embed import load_layout, open_embeddings
from climb_hpc.estimate import Inputs, Ledger, Work
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    import zarr

    from climb_hpc.rundir import RunDir

NAME = "assign"
ARRAYS = {"assignments": "int32", "distances": "float32"}


@dataclass(frozen=True)
class Outputs:
    """What assign writes under ``<run_dir>/assign/``."""

    dir: Path

    @property
    def assignments(self) -> Path:
        return self.array("assignments")

    @property
    def distances(self) -> Path:
        return self.array("distances")

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def array(self, name: str) -> Path:
        return self.dir / f"{name}.zarr"

    def stats(self, task: int) -> Path:
        return self.dir / "stats" / f"task_{task:05d}.json"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def array_path(rd: RunDir, name: str) -> Path:
    return outputs(rd).array(name)


def stats_path(rd: RunDir, task: int) -> Path:
    return outputs(rd).stats(task)


def summary_path(rd: RunDir) -> Path:
    return outputs(rd).summary


def open_assignments(rd: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """(assignments int32 [n_docs], distances float32 [n_docs]) in corpus row order."""
    import zarr

    return tuple(zarr.open_array(str(array_path(rd, k)), mode="r")[:] for k in ARRAYS)  # type: ignore[return-value]


# ---------------------------------------------------------------- 1-d arrays sharded like the embeddings


def ensure_rows_array(path: Path, n: int, rows_per_shard: int, chunk_rows: int, dtype: str) -> zarr.Array:
    """Create a 1-d [n] array with the embed layout's shards once (atomically); check an existing one."""
    import zarr

    want = {"shape": (n,), "dtype": np.dtype(dtype), "shards": (rows_per_shard,), "chunks": (chunk_rows,)}
    if path.exists():
        arr = zarr.open_array(str(path), mode="r")
        have = {"shape": tuple(arr.shape), "dtype": arr.dtype, "shards": tuple(arr.shards or ()), "chunks": tuple(arr.chunks)}
        if have != want:
            raise RuntimeError(f"{path} exists with another layout ({have} != {want}): the embeddings changed. "
                               f"Remove it and rm -r <run_dir>/_done/{NAME} to reassign.")
        return arr
    with atomic_path(path) as tmp:
        zarr.create_array(store=str(tmp), shape=(n,), chunks=(chunk_rows,), shards=(rows_per_shard,), dtype=dtype,
                          fill_value=-1 if np.dtype(dtype).kind == "i" else np.nan, zarr_format=3,
                          dimension_names=("doc",), attributes={"rows": "corpus order, as embed/embeddings.zarr"})
    return zarr.open_array(str(path), mode="r")


def shard_files(path: Path, arr: zarr.Array, a: int, b: int) -> list[Path]:
    R = arr.shards[0]
    return [path / arr.metadata.encode_chunk_key((s,)) for s in range(a // R, math.ceil(b / R))]


def write_whole_shards(path: Path, a: int, b: int, values: np.ndarray) -> None:
    """Write rows [a, b) of a 1-d array; they must be whole shards (or end at n), owned by this task alone."""
    import zarr

    arr = zarr.open_array(str(path), mode="r+")
    R, n = arr.shards[0], arr.shape[0]
    if a % R or (b % R and b != n) or not 0 <= a < b <= n or values.shape != (b - a,):
        raise ValueError(f"{path}: rows [{a}, {b}) with values {values.shape} are not whole shards of {R} (n {n})")
    for f in shard_files(path, arr, a, b):
        f.unlink(missing_ok=True)
    arr[a:b] = values.astype(arr.dtype, copy=False)


# ---------------------------------------------------------------- search


def nearest(x: np.ndarray, centroids: np.ndarray, batch_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid int32, L2 distance float32) for each row of ``x``, exact search."""
    faiss = import_faiss()

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(x), dtype=np.int32)
    dist = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), batch_rows):
        d2, i = index.search(np.ascontiguousarray(x[s:s + batch_rows], dtype=np.float32), 1)
        labels[s:s + len(i)] = i[:, 0]
        dist[s:s + len(i)] = np.sqrt(np.maximum(d2[:, 0], 0.0))
    return labels, dist


# ---------------------------------------------------------------- the stage


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    """Create both arrays once, sharded like the embeddings (an existing one is checked)."""
    layout = load_layout(rd)
    for name, dtype in ARRAYS.items():
        ensure_rows_array(array_path(rd, name), layout["n_docs"], layout["rows_per_shard"], layout["chunk_rows"], dtype)


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    """One task per embed task."""
    return len(load_layout(rd)["tasks"])


def resources(cfg: DictConfig) -> Resources:
    return Resources.from_config(clusters_cfg(cfg, NAME))


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    faiss = import_faiss()

    t0 = time.perf_counter()
    layout = load_layout(rd)
    if not 0 <= task < len(layout["tasks"]):
        raise IndexError(f"assign has {len(layout['tasks'])} tasks; there is no task {task}")
    a, b = layout["tasks"][task]
    faiss.omp_set_num_threads(task_threads(cfg, NAME, STAGE))
    centroids = load_centroids(rd)
    x = open_embeddings(rd)[a:b]
    labels, dist = nearest(x, centroids, int(clusters_cfg(cfg, NAME).batch_rows))
    write_whole_shards(array_path(rd, "assignments"), a, b, labels)
    write_whole_shards(array_path(rd, "distances"), a, b, dist)
    secs = time.perf_counter() - t0
    atomic_write_json(stats_path(rd, task), {"task": task, "rows": [a, b], "k": len(centroids),
                                             "mean_distance": float(dist.mean()), "seconds": round(secs, 4),
                                             **rows_summary(labels, dist, len(centroids))})
    print(f"assign task {task}: rows [{a}, {b}) -> {len(np.unique(labels))} of {len(centroids)} clusters, "
          f"mean distance {dist.mean():.4f}, {secs:.2f} s", flush=True)


def rows_summary(labels: np.ndarray, dist: np.ndarray, k: int) -> dict[str, object]:
    """What finalize needs of some rows: docs per cluster, the float64 sum of distances, the bad rows (a
    label outside [0, k) or a non-finite distance); sums of these summarise the union of the rows."""
    ok = (labels >= 0) & (labels < k) & np.isfinite(dist)
    return {"sizes": np.bincount(labels[ok], minlength=k).astype(int).tolist(),
            "distance_sum": float(dist[ok].astype(np.float64).sum()), "bad": int((~ok).sum())}


def task_summary(rd: RunDir, t: int, rows: list[int], k: int) -> dict[str, object]:
    """Task ``t``'s summary from its stats, or from its rows of the arrays (stats from before summaries)."""
    import zarr

    stats = read_json(stats_path(rd, t))
    if stats is None:
        raise RuntimeError(f"assign task {t}: {stats_path(rd, t)} is missing; rerun it (rm its marker)")
    if "sizes" in stats and stats.get("rows") == rows and len(stats["sizes"]) == k:
        return stats
    a, b = rows
    labels, dist = (zarr.open_array(str(array_path(rd, name)), mode="r")[a:b] for name in ARRAYS)
    return rows_summary(labels, dist, k)


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """Check every row has a valid cluster and a finite distance; write summary.json.

    Memory: O(K) for the sums (plus one task's rows for a task without a summary)."""
    layout = load_layout(rd)
    k = len(load_centroids(rd))
    sizes, dist_sum, bad = np.zeros(k, dtype=np.int64), 0.0, 0
    for t, rows in enumerate(layout["tasks"]):
        s = task_summary(rd, t, rows, k)
        sizes += np.asarray(s["sizes"], dtype=np.int64)
        dist_sum += float(s["distance_sum"])
        bad += int(s["bad"])
    n = int(sizes.sum()) + bad
    if bad or n != layout["n_docs"]:
        raise RuntimeError(f"assign: {bad} rows lack a cluster or a distance, and the tasks cover {n} rows of "
                           f"{layout['n_docs']}; rerun the stage (rm -r {rd.marker_dir(NAME)})")
    summary = {"n_docs": n, "k": k, "tasks": len(layout["tasks"]),
               "size_min": int(sizes.min()), "size_median": float(np.median(sizes)), "size_max": int(sizes.max()),
               "empty_clusters": int((sizes == 0).sum()), "mean_distance": float(np.float32(dist_sum / max(1, n)))}
    atomic_write_json(summary_path(rd), summary)
    print(f"assign: {summary}", flush=True)


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Every doc against every centroid (2 x K x dim FLOP a doc), one task an embed task."""
    from climb_hpc.clusters.kmeans import estimate_k
    from climb_hpc.embed.stage import encoder_size, estimate_tasks

    _, dim = encoder_size(cfg, led)
    _, k = estimate_k(cfg, x, led)
    return Work("nearest centroid", [estimate_tasks(cfg, x, led)], flop=2.0 * x.docs * k * dim)


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, prepare=prepare, finalize=finalize,
              reads=lambda cfg: ("embed", "kmeans"), outputs=outputs, estimate=estimate)
