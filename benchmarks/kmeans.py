"""k-means: faiss (what the ``kmeans`` stage runs) against scikit-learn, same vectors, same K, side by side.

    python benchmarks/kmeans.py [--run-dir RUN] [--synthetic] [--n 30000] [--dim 384] [--k K]
                                [--niter 20] [--threads 2] [--seed 0] [--repeats 1] [--no-lloyd]

Vectors: the embeddings of ``--run-dir`` (an embedded run folder), else ``--synthetic`` clustered unit
vectors (``--n`` x ``--dim`` around 50 random directions), else a slice of ../shared/data/corpus
embedded once by benchmarks/cluster_quality.py's cache (``--docs-per-source``, bfloat16).

K: ``--k``, else the stage's rule ``min(1000, max(2, n // 39))``.

Contenders (fit only; the model is timed from the float32 array in memory):

* faiss:      ``faiss.Kmeans(niter, nredo=1, seed)``, the stage's call (on a GPU when faiss sees one)
* minibatch:  ``sklearn.cluster.MiniBatchKMeans(K, random_state=seed)`` with its defaults (batch 1024,
              k-means++ init, early stopping), the usual "fast" scikit-learn choice
* minibatch_long: MiniBatchKMeans(batch_size=4096, max_iter=niter epochs, no early stopping): the
              mini-batch run that reaches faiss's inertia, for a time-to-equal-inertia comparison
* lloyd:      ``sklearn.cluster.KMeans(K, n_init=1, max_iter=niter, random_state=seed)``, for reference

Inertia is recomputed the same way for all (exact nearest centroid with faiss, sum of squared L2
distances over ALL vectors), so the numbers compare. Goal: faiss >= 10x faster than MiniBatchKMeans at
equal or lower inertia. Thread count is pinned for all (faiss OpenMP, threadpoolctl for scikit-learn).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def synthetic(n: int, dim: int, centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, dim)) / np.sqrt(dim) * np.sqrt(dim) / 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_vectors(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    from climb_hpc.embed import open_embeddings
    from climb_hpc.rundir import RunDir

    if args.synthetic:
        return synthetic(args.n, args.dim, 50, args.seed), f"synthetic {args.n} x {args.dim} unit vectors, 50 centers"
    run = args.run_dir
    if run is None:
        import cluster_quality

        run = cluster_quality.embedded_run(args.data, args.docs_per_source, "bfloat16", args.work, args.seed)
    x = open_embeddings(RunDir(run))[:].astype(np.float32)
    return x, f"embeddings of {run} ({x.shape[0]} x {x.shape[1]})"


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    from climb_hpc.clusters.assign import nearest

    _, d = nearest(x, centroids)
    return float((d.astype(np.float64) ** 2).sum())


def fit_faiss(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    from climb_hpc.clusters.kmeans import fit, use_gpu

    c, _, _ = fit(x, k, niter=niter, nredo=1, seed=seed, gpu=use_gpu("auto"), min_points_per_centroid=1,
                  max_points_per_centroid=None)
    return c


def fit_minibatch(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=k, random_state=seed).fit(x).cluster_centers_.astype(np.float32)


def fit_minibatch_long(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """MiniBatchKMeans run for ``niter`` full epochs of 4096-doc batches without early stopping: what it
    takes scikit-learn's mini-batch to reach faiss's inertia."""
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=k, batch_size=4096, max_iter=niter, max_no_improvement=None, tol=0.0,
                           random_state=seed).fit(x).cluster_centers_.astype(np.float32)


def fit_lloyd(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=seed).fit(x).cluster_centers_.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    import faiss
    from threadpoolctl import threadpool_limits

    from climb_hpc.clusters.kmeans import choose_k

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "corpus")
    ap.add_argument("--docs-per-source", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_clusters")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-lloyd", action="store_true", help="skip sklearn KMeans (slow at large n x K)")
    args = ap.parse_args(argv)

    x, what = load_vectors(args)
    k = args.k or choose_k(len(x), 1000, 39)
    faiss.omp_set_num_threads(args.threads)
    print(f"vectors: {what}; K={k}, niter={args.niter}, threads={args.threads}, faiss GPUs {faiss.get_num_gpus()}")
    contenders = {"faiss": fit_faiss, "minibatch": fit_minibatch, "minibatch_long": fit_minibatch_long}
    if not args.no_lloyd:
        contenders["lloyd"] = fit_lloyd
    res: dict[str, tuple[float, float]] = {}
    with threadpool_limits(limits=args.threads):
        for name, fn in contenders.items():
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                c = fn(x, k, args.niter, args.seed)
                times.append(time.perf_counter() - t0)
            res[name] = (statistics.median(times), inertia(x, c))
            print(f"  {name:14s} fit {res[name][0]:8.2f} s   inertia {res[name][1]:12.2f}   "
                  f"per doc {res[name][1] / len(x):.4f}", flush=True)
    ft, fi = res["faiss"]
    mt, mi = res["minibatch"]
    print(f"faiss vs MiniBatchKMeans: {mt / ft:.1f}x faster, inertia ratio {fi / mi:.4f} (faiss / minibatch)")
    bt, bi = res["minibatch_long"]
    print(f"faiss vs MiniBatchKMeans (batch 4096, {args.niter} epochs, no early stop): {bt / ft:.1f}x faster, "
          f"inertia ratio {fi / bi:.4f}")
    if "lloyd" in res:
        lt, li = res["lloyd"]
        print(f"faiss vs sklearn KMeans (Lloyd, same niter): {lt / ft:.1f}x faster, inertia ratio {fi / li:.4f}")
    ok = mt / ft >= 10 and fi <= mi * 1.0001
    print(f"goal (>= 10x faster than MiniBatchKMeans at equal or lower inertia): {'MET' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
