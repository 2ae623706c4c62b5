"""Memory of the corpus-wide steps of issue 18 at N and 4N documents: it should not grow with N.

Measures, on a synthetic run folder (ingest shards, an embed layout and embeddings, quality scores, k-means
centroids and assignments, built here without the encoder or the raters), the peak memory of:

    ingest finalize     (the cross-shard duplicate check: per-task id hash files, merged a range at a time)
    quality finalize    (a reduction of the tasks' score summaries)
    assign finalize     (a reduction of the tasks' cluster counts)
    kmeans sample read  (whole chunks: the sample, not the array)
    refine task         (two streaming passes; doc_clusters.parquet a row group a shard)

Small budgets stand in for a real run's (``--block-rows``, ``--group-rows``, ``--dedup-mib``) so that the
streaming loops run several times at N already; a step's peak should then be the same at 4N (quality's and
assign's grow with the task count only: their summaries are O(tasks)).

Peak = tracemalloc's peak (Python and NumPy buffers) + the Arrow pool's peak, for that call alone; and the
process's ru_maxrss growth during the step; each step runs in a fresh process.

    python benchmarks/controller_memory.py --docs 100000          # N and 4N; prints a table and JSON lines
    python benchmarks/controller_memory.py --docs 2000 --factor 2  # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from climb_hpc.clusters import assign, kmeans, quality, refine  # noqa: E402
from climb_hpc.clusters.raters import AXES  # noqa: E402
from climb_hpc.config import compose  # noqa: E402
from climb_hpc.corpus import dedup, ingest  # noqa: E402
from climb_hpc.corpus.dedup import write_hashes  # noqa: E402
from climb_hpc.embed import store  # noqa: E402
from climb_hpc.rundir import RunDir, atomic_write_json  # noqa: E402

SOURCES = ("news", "code", "fiction")
SAMPLE = 4000  # the k-means sample, the same at N and 4N (a run's is clusters.kmeans.sample_size)


def shard_sizes(n_docs: int, n_shards: int, seed: int) -> list[int]:
    """Uneven shard sizes adding up to ``n_docs`` (each >= 1)."""
    w = np.random.default_rng(seed).uniform(0.3, 1.7, n_shards)
    sizes = np.maximum(1, np.floor(w / w.sum() * n_docs).astype(int))
    sizes[-1] += n_docs - sizes.sum()
    return sizes.tolist()


def write_ingest(rd: RunDir, sizes: list[int], duplicate: bool = False) -> list[tuple[str, int]]:
    """Doc shards (id, text, source, n_chars), their stats-free plan and id hashes; ``duplicate`` repeats
    the first shard's first id as the last shard's last id."""
    out, start = [], 0
    tasks = []
    for t, n in enumerate(sizes):
        rows = np.arange(start, start + n)
        ids = [f"doc-{r:010d}" for r in rows]
        if duplicate and t == len(sizes) - 1:
            ids[-1] = "doc-0000000000"
        texts = [f"document {r} about {SOURCES[r % 3]} and more words" for r in rows]
        table = pa.table({"id": ids, "text": texts, "source": [SOURCES[r % 3] for r in rows],
                          "n_chars": [len(x) for x in texts]}, schema=ingest.SCHEMA)
        path = ingest.shard_path(rd, t)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=10000)
        write_hashes(ingest.hashes_path(rd, t), ids)
        out.append((path.name, n))
        tasks.append({"task": t})
        start += n
    atomic_write_json(ingest.plan_path(rd), {"tasks": tasks, "settings": {}})
    return out


def fake_ingest_stats(rd: RunDir, sizes: list[int]) -> None:
    """The stats and quarantine files a real ingest task writes, so that ingest's finalize runs."""
    plan = json.loads(ingest.plan_path(rd).read_text())
    for t, n in enumerate(sizes):
        spec = {"task": t, "path": f"in/{t}.jsonl", "key": f"{t}.jsonl", "format": "jsonl", "compression": None,
                "n_lines": n}
        plan["tasks"][t] = spec
        ingest.quarantine_path(rd, t).parent.mkdir(parents=True, exist_ok=True)
        ingest.quarantine_path(rd, t).write_text("")
        atomic_write_json(ingest.stats_path(rd, t), {
            "task": t, "spec": spec, "docs_in": n, "docs_written": n, "docs_quarantined": 0,
            "quarantined_by_reason": {}, "docs_by_source": {}, "chars_written": 0, "damaged": None})
    atomic_write_json(ingest.plan_path(rd), plan)


def write_embed(rd: RunDir, doc_shards: list[tuple[str, int]], dim: int, rows_per_shard: int, chunk_rows: int,
                shards_per_task: int, centers: np.ndarray, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """layout.json and the embeddings: unit vectors near ``centers`` (a task's rows at a time); returns the
    layout and each row's center."""
    layout = store.make_layout(doc_shards, dim, rows_per_shard, chunk_rows, shards_per_task, {"model": "synthetic"})
    atomic_write_json(store.layout_path(rd), layout)
    store.ensure_array(store.store_path(rd), layout)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(centers), layout["n_docs"])
    for a, b in layout["tasks"]:
        x = centers[truth[a:b]] + 0.05 * rng.standard_normal((b - a, dim))
        store.write_rows(store.store_path(rd), layout, a, b, x / np.linalg.norm(x, axis=1, keepdims=True))
    return layout, truth


def write_quality(rd: RunDir, layout: dict[str, Any], truth: np.ndarray, seed: int) -> None:
    """Scores in [0, 5] (the docs of center 0 low: refine prunes them) and the stats a quality task writes."""
    q = quality.make_layout(layout, {"kind": "synthetic"}, list(AXES))
    atomic_write_json(quality.layout_path(rd), q)
    quality.ensure_array(quality.store_path(rd), q)
    rng = np.random.default_rng(seed)
    for t, (a, b) in enumerate(q["tasks"]):
        mean = np.where(truth[a:b] == 0, 1.5, 4.0)[:, None]
        x = np.clip(mean + rng.uniform(-1, 1, (b - a, 4)), 0, 5).astype(np.float32)
        quality.write_rows(quality.store_path(rd), q, a, b, x)
        atomic_write_json(quality.stats_path(rd, t), {"task": t, "rows": [a, b], "docs": b - a, "seconds": 0.0,
                                                      "scores": quality.score_summary(x)})


def write_clusters(rd: RunDir, layout: dict[str, Any], centers: np.ndarray) -> None:
    """k-means centroids (the centers) and the assign stage's arrays, by its own prepare and tasks."""
    kmeans.centroids_path(rd).parent.mkdir(parents=True, exist_ok=True)
    np.save(kmeans.centroids_path(rd), centers.astype(np.float32))
    atomic_write_json(kmeans.summary_path(rd), {"k": len(centers), "dim": centers.shape[1]})
    cfg = config(rd)
    assign.prepare(cfg, rd)
    for t in range(assign.num_tasks(cfg, rd)):
        assign.run(cfg, rd, t)


def config(rd: RunDir, *overrides: str) -> Any:
    return compose([f"run_dir={rd.path}", "progress=false", "clusters.kmeans.threads=1", "clusters.assign.cpus=1",
                    "clusters.refine.max_clusters=null", "clusters.refine.merge_distance=0.5", *overrides])


def build_run(path: Path, n_docs: int, *, n_shards: int = 12, dim: int = 16, rows_per_shard: int = 256,
              chunk_rows: int = 64, shards_per_task: int = 4, k: int = 12, seed: int = 0, with_quality: bool = True,
              duplicate: bool = False) -> RunDir:
    """A run folder with ingest, embed, (quality,) kmeans and assign outputs for ``n_docs`` synthetic docs."""
    rd = RunDir(path)
    sizes = shard_sizes(n_docs, n_shards, seed)
    doc_shards = write_ingest(rd, sizes, duplicate)
    fake_ingest_stats(rd, sizes)
    rng = np.random.default_rng(seed + 1)
    centers = rng.standard_normal((k, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    layout, truth = write_embed(rd, doc_shards, dim, rows_per_shard, chunk_rows, shards_per_task, centers, seed + 2)
    if with_quality:
        write_quality(rd, layout, truth, seed + 3)
    write_clusters(rd, layout, centers)
    return rd


STEPS: dict[str, Callable[[Any, RunDir], Any]] = {
    "ingest finalize": lambda cfg, rd: ingest.finalize(cfg, rd),
    "quality finalize": lambda cfg, rd: quality.finalize(cfg, rd),
    "assign finalize": lambda cfg, rd: assign.finalize(cfg, rd),
    "kmeans sample read": lambda cfg, rd: kmeans.read_sample(rd, kmeans.sample_rows(
        store.load_layout(rd)["n_docs"], int(cfg.clusters.kmeans.sample_size), 0, store.load_layout(rd)["chunk_rows"])),
    "refine task": lambda cfg, rd: refine.run(cfg, rd, 0),
}


def measure_step(step: str, run: Path, block_rows: int, group_rows: int, dedup_mib: float) -> dict[str, float]:
    """One step in this (fresh) process: tracemalloc's peak, the Arrow pool's peak, ru_maxrss, seconds."""
    import contextlib
    import io

    import scipy.cluster.hierarchy  # noqa: F401  imported before tracemalloc: module code is not the step's memory
    import zarr  # noqa: F401

    from climb_hpc.clusters import import_faiss

    import_faiss()
    rd = RunDir(run)
    n = store.load_layout(rd)["n_docs"]
    cfg = config(rd, f"clusters.kmeans.sample_size={min(n, SAMPLE)}")
    store.BLOCK_ROWS, refine.MAX_GROUP_ROWS = block_rows, group_rows
    dedup.BUDGET_BYTES = int(dedup_mib * 2**20)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        STEPS[step](cfg, rd)
    secs = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"python_mib": py_peak / 2**20, "arrow_mib": pa.default_memory_pool().max_memory() / 2**20,
            "maxrss_growth_mib": (rss - rss0) / 1024, "seconds": secs}


def run_step(step: str, run: Path, args: argparse.Namespace) -> dict[str, float]:
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--measure", step, "--run", str(run), "--block-rows",
                          str(args.block_rows), "--group-rows", str(args.group_rows), "--dedup-mib",
                          str(args.dedup_mib)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000, help="N (the second run has factor x N)")
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--block-rows", type=int, default=8192, help="refine's pass-1 block (1 Mi rows in a run)")
    ap.add_argument("--group-rows", type=int, default=4096, help="doc_clusters row group cap (1 Mi rows in a run)")
    ap.add_argument("--dedup-mib", type=float, default=1.0, help="ingest's duplicate-check budget (1024 in a run)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # one step, in a child process
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure_step(args.measure, args.run, args.block_rows, args.group_rows, args.dedup_mib)))
        return
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.docs, args.docs * args.factor):
            run = build_run(Path(tmp) / f"run_{n}", n, n_shards=max(4, n // 5000), rows_per_shard=1024,
                            chunk_rows=256, shards_per_task=8)
            results[n] = {step: run_step(step, run.path, args) for step in STEPS}
    small, big = results
    print(f"{'step':<20} {'N':>10} {'peak MiB':>9} {f'{args.factor}N':>10} {'peak MiB':>9} {'ratio':>6}")
    for step in results[small]:
        a, b = (results[n][step] for n in (small, big))
        pa_, pb = (m["python_mib"] + m["arrow_mib"] for m in (a, b))
        print(f"{step:<20} {small:>10} {pa_:>9.2f} {big:>10} {pb:>9.2f} {pb / max(pa_, 1e-9):>6.2f}")
    for n, steps in results.items():
        for step, m in steps.items():
            print(json.dumps({"docs": n, "step": step, **{k: round(v, 3) for k, v in m.items()}}))


if __name__ == "__main__":
    main()
