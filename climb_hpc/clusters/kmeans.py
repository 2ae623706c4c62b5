"""Stage ``kmeans``: fit K_init centroids on a seeded sample of the embeddings with faiss. One task.

Outputs under ``<run_dir>/kmeans/``::

    centroids.npy    [K, dim] float32, the fitted centroids (not re-normalised: means of unit vectors)
    summary.json     k, k_init, n_docs, sample_size, dim, objective (sum of squared L2 distances of the
                     sample to its centroids), inertia per sampled doc, iterations, gpu, seconds

K rule: ``K = min(k_init, max(2, n // min_points_per_centroid), n)``, n = the docs in the sample. faiss warns under 39
training points a centroid; on a small corpus the paper's 1000 would cut topics into near-singletons,
which neither Ward merging nor quality means can use. Seeds: the sample and faiss's own seed derive
from ``(cfg.seed, "kmeans")``. Thread count is fixed by config so reruns give bit-identical centroids.

The sample is whole Zarr chunks (``embed.chunk_rows`` rows, the store's unit of reading): a seeded choice
of chunks until they hold ``sample_size`` rows, then a seeded choice of that many rows within them
(:func:`sample_rows`). Uniform rows would touch nearly every chunk (1e6 rows of 1e9 in 1024-row chunks hit
~63% of them: ~1.3 TB read at paper scale for 4 GB kept); whole chunks read about the sample itself
(``sample_size + chunk_rows`` rows at most). The price is a cluster sample: rows of one chunk are
neighbours in corpus order (often one source), so the sample has ~``sample_size / chunk_rows``
independent draws (~1000 at the paper's sizes) rather than ``sample_size``; k-means fits centroids to
the sampled docs either way. Memory: the sample in float32 plus ``RUN_CHUNKS`` chunks in float16.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from climb_hpc.clusters import import_faiss
from climb_hpc.embed import load_layout, open_embeddings
from climb_hpc.estimate import Inputs, Ledger, Work
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage, stage_resources

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "kmeans"


def clusters_cfg(cfg: DictConfig, section: str) -> DictConfig:
    """``cfg.clusters.<section>``, with a clear error when the config group is missing."""
    c = cfg.get("clusters")
    if c is None or c.get(section) is None:
        raise ValueError(f"no clusters.{section} config: add `- clusters: default` to the defaults of configs/config.yaml")
    return c[section]


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and a purpose (stage, task): stable across processes and hosts."""
    h = hashlib.sha256(":".join(map(str, (int(seed), *parts))).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def choose_k(n_docs: int, k_init: int, min_points_per_centroid: int) -> int:
    """The number of centroids for ``n_docs`` documents (see the module docstring)."""
    if n_docs < 1:
        raise ValueError("kmeans: no documents")
    k = min(int(k_init), max(2, n_docs // max(1, int(min_points_per_centroid))))
    return max(1, min(k, n_docs))


def sample_rows(n_docs: int, sample_size: int, seed: int, chunk_rows: int = 1) -> np.ndarray:
    """Sorted row indices of the sample (all rows when it covers them): a seeded choice of whole
    ``chunk_rows``-row chunks holding at least ``sample_size`` rows, then ``sample_size`` rows among theirs.

    Same arguments, same rows. Chunks are drawn uniformly without replacement, then rows uniformly among
    theirs (only the last chunk cut short makes this not quite uniform over rows)."""
    if sample_size >= n_docs:
        return np.arange(n_docs)
    c = max(1, int(chunk_rows))
    rng = np.random.default_rng(seed)
    order = rng.permutation(-(-n_docs // c))
    sizes = np.minimum(c, n_docs - order * c)
    take = int(np.searchsorted(np.cumsum(sizes), sample_size)) + 1  # chunks until they hold the sample
    chosen = np.sort(order[:take])
    rows = (chosen[:, None] * c + np.arange(c)[None, :]).ravel()
    rows = rows[rows < n_docs]
    if len(rows) > sample_size:
        rows = np.sort(rng.choice(rows, size=int(sample_size), replace=False))
    return rows


#: the most adjacent chunks :func:`read_sample` reads in one call (bounds its buffer)
RUN_CHUNKS = 64


def chunk_runs(rows: np.ndarray, chunk_rows: int, n_docs: int, max_chunks: int = RUN_CHUNKS) -> list[tuple[int, int]]:
    """The row ranges [a, b) of the whole chunks holding ``rows`` (sorted), up to ``max_chunks`` adjacent
    chunks merged into one range: what :func:`read_sample` reads."""
    c = max(1, int(chunk_rows))
    chunks = np.unique(rows // c)
    if not len(chunks):
        return []
    # a new range where chunks are not adjacent or the current range is full
    starts = [0]
    for i in range(1, len(chunks)):
        if chunks[i] != chunks[i - 1] + 1 or i - starts[-1] >= max_chunks:
            starts.append(i)
    ends = [*starts[1:], len(chunks)]
    return [(int(chunks[s]) * c, min(n_docs, (int(chunks[e - 1]) + 1) * c)) for s, e in zip(starts, ends, strict=True)]


def read_sample(rd: RunDir, rows: np.ndarray) -> np.ndarray:
    """The sampled embedding rows as float32, reading only the chunks that hold them (each once)."""
    arr = open_embeddings(rd)
    n = arr.shape[0]
    if len(rows) == n:
        return np.ascontiguousarray(arr[:], dtype=np.float32)
    out = np.empty((len(rows), arr.shape[1]), dtype=np.float32)
    done = 0
    for a, b in chunk_runs(rows, arr.chunks[0], n):
        local = rows[done:np.searchsorted(rows, b)] - a
        out[done:done + len(local)] = np.asarray(arr[a:b])[local]
        done += len(local)
    return out


def use_gpu(setting: Any) -> bool:
    """``auto``: a GPU when faiss sees one (faiss-gpu build and a device); ``true`` insists on one."""
    faiss = import_faiss()

    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if str(setting).lower() == "auto":
        return n > 0
    want = bool(setting) if not isinstance(setting, str) else setting.lower() in ("true", "1", "yes")
    if want and n == 0:
        raise RuntimeError("clusters.kmeans.gpu=true but faiss sees no GPU (faiss-cpu build or no device)")
    return want


def task_threads(cfg: DictConfig, section: str, stage: Stage) -> int:
    """faiss OpenMP threads: ``clusters.<section>.threads``, else the task's CPUs (overrides included)."""
    import os

    t = clusters_cfg(cfg, section).get("threads")
    n = int(t) if t else stage_resources(cfg, stage).cpus
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(n, usable))


def fit(x: np.ndarray, k: int, *, niter: int, nredo: int, seed: int, gpu: bool,
        min_points_per_centroid: int, max_points_per_centroid: int | None) -> tuple[np.ndarray, float, list[float]]:
    """faiss k-means on ``x`` [n, d] float32 -> (centroids [k, d], final objective, objective per iteration)."""
    faiss = import_faiss()

    km = faiss.Kmeans(x.shape[1], k, niter=int(niter), nredo=int(nredo), seed=int(seed), gpu=gpu, verbose=False,
                      min_points_per_centroid=int(min_points_per_centroid),
                      max_points_per_centroid=int(max_points_per_centroid or max(1, len(x))))
    km.train(x)
    objective = [float(o) for o in km.obj]
    return np.asarray(km.centroids, dtype=np.float32), objective[-1], objective


# ---------------------------------------------------------------- paths


@dataclass(frozen=True)
class Outputs:
    """What kmeans writes under ``<run_dir>/kmeans/``."""

    dir: Path

    @property
    def centroids(self) -> Path:
        return self.dir / "centroids.npy"  # float32 [K, dim]

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def centroids_path(rd: RunDir) -> Path:
    return outputs(rd).centroids


def summary_path(rd: RunDir) -> Path:
    return outputs(rd).summary


def load_centroids(rd: RunDir) -> np.ndarray:
    p = centroids_path(rd)
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: run the kmeans stage first")
    return np.load(p)


# ---------------------------------------------------------------- the stage


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    load_layout(rd)  # fail early in the controller when embed has not run
    return 1


def resources(cfg: DictConfig) -> Resources:
    return Resources.from_config(clusters_cfg(cfg, NAME))


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    faiss = import_faiss()

    if task != 0:
        raise IndexError(f"kmeans has 1 task; there is no task {task}")
    t0 = time.perf_counter()
    k_cfg = clusters_cfg(cfg, NAME)
    layout = load_layout(rd)
    n, dim = int(layout["n_docs"]), int(layout["dim"])
    seed = derive_seed(int(cfg.seed), NAME)
    rows = sample_rows(n, int(k_cfg.sample_size), seed, int(layout["chunk_rows"]))
    k = choose_k(len(rows), int(k_cfg.k_init), int(k_cfg.min_points_per_centroid))  # faiss trains on the sample
    x = read_sample(rd, rows)
    if not np.isfinite(x).all():
        raise RuntimeError("kmeans: the embeddings hold non-finite values")
    t_read = time.perf_counter() - t0
    gpu = use_gpu(k_cfg.gpu)
    threads = task_threads(cfg, NAME, STAGE)
    faiss.omp_set_num_threads(threads)
    t1 = time.perf_counter()
    centroids, objective, history = fit(
        x, k, niter=k_cfg.niter, nredo=k_cfg.nredo, seed=seed, gpu=gpu,
        min_points_per_centroid=k_cfg.min_points_per_centroid, max_points_per_centroid=k_cfg.get("max_points_per_centroid"))
    t_fit = time.perf_counter() - t1
    with atomic_path(centroids_path(rd)) as tmp, open(tmp, "wb") as f:
        np.save(f, centroids)
    summary = {
        "k": k, "k_init": int(k_cfg.k_init), "n_docs": n, "dim": dim, "sample_size": int(len(rows)),
        "seed": seed, "sample_chunk_rows": int(layout["chunk_rows"]), "niter": int(k_cfg.niter), "nredo": int(k_cfg.nredo), "gpu": gpu, "threads": threads,
        "objective": objective, "inertia_per_doc": objective / max(1, len(rows)),
        "objective_history": history, "read_seconds": round(t_read, 4), "fit_seconds": round(t_fit, 4),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    atomic_write_json(summary_path(rd), summary)
    print(f"kmeans: K={k} (k_init {k_cfg.k_init}) on {len(rows)} of {n} docs, dim {dim}, "
          f"inertia/doc {summary['inertia_per_doc']:.4f}, fit {t_fit:.2f} s on {'GPU' if gpu else f'CPU x{threads}'}",
          flush=True)


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    c = load_centroids(rd)
    s = read_json(summary_path(rd), default={})
    if c.shape != (s.get("k"), s.get("dim")) or not np.isfinite(c).all():
        raise RuntimeError(f"kmeans: {centroids_path(rd)} has shape {c.shape}, the summary says ({s.get('k')}, "
                           f"{s.get('dim')}), or holds non-finite values; rerun the stage")


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate_k(cfg: DictConfig, x: Inputs, led: Ledger) -> tuple[int, int]:
    """(docs k-means fits on, K) for the plan's corpus, as :func:`run` chooses them."""
    k = clusters_cfg(cfg, NAME)
    n = int(led.use("k-means sample", int(min(int(k.sample_size), x.docs)), "min(clusters.kmeans.sample_size, docs)"))
    kk = led.use("K", choose_k(n, int(k.k_init), int(k.min_points_per_centroid)),
                 "clusters.kmeans.k_init (capped at sample / min_points_per_centroid)")
    return n, int(kk)


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Lloyd iterations: 2 x n x K x dim FLOP each, ``niter`` x ``nredo`` of them; the sample and the centroids
    in float32 in memory."""
    from climb_hpc.embed.stage import encoder_size

    _, dim = encoder_size(cfg, led)
    n, k = estimate_k(cfg, x, led)
    km = clusters_cfg(cfg, NAME)
    return Work("k-means", [1], flop=2.0 * n * k * dim * int(km.niter) * int(km.nredo), mem_gb=4 * (n + k) * dim / 1e9)


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, finalize=finalize,
              reads=lambda cfg: ("embed",), outputs=outputs, estimate=estimate)
