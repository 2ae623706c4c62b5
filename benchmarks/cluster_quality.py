"""Cluster quality on a real corpus: ingest -> embed -> kmeans -> assign -> refine, scored against ``source``.

    python benchmarks/cluster_quality.py [--data ../shared/data/corpus] [--docs-per-source N]
                                         [--embed-dtype bfloat16] [--work runs/bench_clusters]
                                         [--seed 0] [--repeat] [override ...]

The pipeline never sees ``source`` (clustering reads only the embeddings); it is read back from the
ingest shards for scoring only. Prints purity, homogeneity, NMI, ARI and the final cluster count of
``refine/doc_clusters.parquet`` (pruned docs, cluster -1, are left out of the scores and counted apart).

Embedding dominates (~9 min for 30k docs on 2 CPU cores), so the embedded run (ingest + embed) is cached
under ``--work`` per (docs per source, dtype, data) and every clustering run starts from a copy of it:
changing a ``clusters.*`` override re-clusters without re-embedding. Extra arguments are Hydra overrides
for the clustering run (e.g. ``clusters.refine.merge_distance=1.0``). ``--repeat`` clusters twice with the
same seed and checks the final clusters are identical. ``--quality`` adds the ``quality`` stage, so
refine prunes low-quality clusters (their docs are left out of the scores and counted as pruned).

Goal (issue): purity >= 0.95, homogeneity >= 0.9, between 5 and 40 final clusters.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from climb_hpc.config import compose
from climb_hpc.corpus import iter_doc_shards
from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_STAGES = "[ingest,embed,kmeans,assign,refine]"


def make_subsample(data: Path, per_source: int | None, out: Path) -> Path:
    """``per_source`` lines of each ``*.jsonl`` file, evenly strided over the file (None: the whole folder)."""
    files = sorted(data.rglob("*.jsonl"))
    if not files:
        sys.exit(f"no *.jsonl files in {data}")
    if per_source is None:
        return data
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for p in files:
            lines = p.read_text().splitlines(keepends=True)
            idx = np.linspace(0, len(lines), num=min(per_source, len(lines)), endpoint=False).astype(int)
            f.writelines(lines[i] if lines[i].endswith("\n") else lines[i] + "\n" for i in idx)
    return out


def embedded_run(data: Path, per_source: int | None, dtype: str | None, work: Path, seed: int) -> Path:
    """A run folder holding ingest + embed of the (sub)corpus, built once and reused."""
    key = hashlib.sha1(f"{data.resolve()}|{per_source}|{dtype}|{seed}".encode()).hexdigest()[:8]
    run = work / f"embedded_{per_source or 'all'}_{dtype or 'auto'}_{key}"
    if (run / "_done" / "embed" / "_stage").exists():
        print(f"embedded run: reusing {run}", flush=True)
        return run
    corpus = make_subsample(data, per_source, work / f"subsample_{key}.jsonl")
    over = [f"run_dir={run}", f"corpus.paths=[{corpus}]", "pipeline.stages=[ingest,embed]", f"seed={seed}",
            "progress=false"]
    if dtype:
        over.append(f"embed.dtype={dtype}")
    t0 = time.time()
    run_pipeline(compose(over))
    print(f"embedded run: {run} in {time.time() - t0:.0f} s", flush=True)
    return run


def cluster_run(embedded: Path, out: Path, seed: int, overrides: list[str], quality: bool = False) -> Path:
    """Copy the embedded run's ingest + embed state into ``out`` and run the clustering stages there."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for d in ("ingest", "embed", "_done/ingest", "_done/embed"):
        shutil.copytree(embedded / d, out / d)
    saved = RunDir(embedded).load_config()
    stages = CLUSTER_STAGES.replace("embed,", "embed,quality,") if quality else CLUSTER_STAGES
    over = [f"run_dir={out}", f"corpus.paths=[{','.join(saved.corpus.paths)}]", f"pipeline.stages={stages}",
            f"seed={seed}", "progress=false", f"embed.dtype={saved.embed.dtype}", *overrides]
    t0 = time.time()
    run_pipeline(compose(over))
    print(f"clustering: {time.time() - t0:.1f} s", flush=True)
    return out


def scores(run: Path) -> dict:
    """Purity, homogeneity, NMI, ARI of the final clusters against ``source`` (kept documents only)."""
    from sklearn import metrics

    from climb_hpc.clusters.metrics import purity

    rd = RunDir(run)
    dc = pq.read_table(run / "refine" / "doc_clusters.parquet")
    ids, sources = [], []
    for _, t in iter_doc_shards(rd, ["id", "source"]):  # corpus row order, as doc_clusters
        ids += t.column("id").to_pylist()
        sources += t.column("source").to_pylist()
    if ids != dc.column("id").to_pylist():
        raise RuntimeError("doc_clusters.parquet is not in corpus row order")
    labels = np.asarray(dc.column("cluster").to_numpy())
    src = np.asarray(sources, dtype=object)
    kept = labels >= 0
    y, c = src[kept], labels[kept]
    per_source = {s: int((src == s).sum()) for s in sorted(set(sources))}
    return {
        "docs": len(labels), "kept": int(kept.sum()), "pruned": int((~kept).sum()), "per_source": per_source,
        "clusters": int(len(np.unique(c))), "initial_clusters": read_json(run / "kmeans" / "summary.json")["k"],
        "purity": round(purity(y, c), 4),
        "homogeneity": round(float(metrics.homogeneity_score(y, c)), 4),
        "completeness": round(float(metrics.completeness_score(y, c)), 4),
        "nmi": round(float(metrics.normalized_mutual_info_score(y, c)), 4),
        "ari": round(float(metrics.adjusted_rand_score(y, c)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "corpus")
    ap.add_argument("--docs-per-source", type=int, default=None, help="subsample: docs a source file (default all)")
    ap.add_argument("--embed-dtype", default=None, help="embed.dtype (bfloat16 is ~1.6x faster on CPU)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_clusters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", action="store_true", help="cluster twice and check the results are identical")
    ap.add_argument("--quality", action="store_true", help="run the quality stage too: refine prunes by its scores")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the clustering run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    embedded = embedded_run(args.data, args.docs_per_source, args.embed_dtype, args.work, args.seed)
    run = cluster_run(embedded, args.work / "clusters", args.seed, args.overrides, args.quality)
    s = scores(run)
    print(f"docs {s['docs']} (per source {s['per_source']}), kept {s['kept']}, pruned {s['pruned']}")
    print(f"initial clusters {s['initial_clusters']} -> final clusters {s['clusters']}")
    print(f"purity {s['purity']:.4f}  homogeneity {s['homogeneity']:.4f}  completeness {s['completeness']:.4f}  "
          f"NMI {s['nmi']:.4f}  ARI {s['ari']:.4f}")
    ok = s["purity"] >= 0.95 and s["homogeneity"] >= 0.9 and 5 <= s["clusters"] <= 40
    print(f"goal (purity >= 0.95, homogeneity >= 0.9, 5-40 clusters): {'MET' if ok else 'NOT MET'}")
    if args.repeat:
        again = cluster_run(embedded, args.work / "clusters_repeat", args.seed, args.overrides, args.quality)
        same = pq.read_table(run / "refine" / "doc_clusters.parquet").equals(
            pq.read_table(again / "refine" / "doc_clusters.parquet"))
        print(f"same seed, same clusters: {same}")
        ok = ok and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
