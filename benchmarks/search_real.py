"""A real mixture search: CLIMB against random search, RegMix and the uniform mixture, with tiny proxies on
the real corpus, the target being math word problems held out from training.

    python benchmarks/search_real.py [--seeds 0 1 2] [--budget 12] [--tokens 100000] [--target jsonl|lm_eval]
                                     [--strategies climb regmix random] [--strategy-budget climb_plus=8]
                                     [--clusters runs/bench_clusters/clusters] [--work runs/bench_search]

* clusters: the embedding clusters of ``benchmarks/cluster_quality.py`` over ../shared/data/corpus (run
  that first; its refine output is copied), else one cluster per source domain.
* target:   LM loss on the math documents that the proxies never train on (``proxy.holdout_fraction``
  holds out documents by a hash of their id in every cluster), written to a JSONL (``target.kind=jsonl``).
  ``--target lm_eval``: lm-evaluation-harness accuracy (higher is better) on the HellaSwag-shaped continuation
  tasks that ``climb-hpc build-tasks`` writes from the same held-out documents (one a domain, averaged,
  ``--limit`` items each, a seeded sample), scored in the trial's process (``target=lm_eval``).
* each (strategy, seed) is a full ``search`` stage run with the same budget, proxy and seed, on the local
  executor; the uniform mixture is measured once a seed with the same proxy. Lower is better (jsonl), higher
  is better (lm_eval).

Prints the best measured target per strategy and seed, the means, and a last line
``real_search: climb=… regmix=… random=… uniform=…`` and, for lm_eval, the mean seconds a trial spent scoring.
Goal: CLIMB better than uniform and random on average.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from climb_hpc.config import compose  # noqa: E402
from climb_hpc.rundir import RunDir, read_json  # noqa: E402

STRATEGIES = ("climb", "regmix", "random")  # also climb_plus (not by default)


def target_overrides(work: Path, corpus: Path, a: argparse.Namespace) -> list[str]:
    """jsonl: the held-out math docs' LM loss. lm_eval: the continuation tasks built from the held-out docs."""
    if a.target == "jsonl":
        return ["target.kind=jsonl", f"target.path={work / 'math_heldout.jsonl'}", "target.max_tokens=30000"]
    from climb_hpc.evaltasks import build
    from climb_hpc.evaltasks import target_overrides as lm_eval_overrides

    manifest = build(corpus, work / "tasks", a.holdout, seed=0, items=None, kinds=("cont",))
    print("target: lm-eval tasks " + ", ".join(f"{n} ({t['items']} items)" for n, t in manifest["tasks"].items())
          + f" from held-out docs -> {work / 'tasks'}; {a.limit} a task scored", flush=True)
    return [*lm_eval_overrides(manifest, work / "tasks"), f"target.limit={a.limit}"]


def base_overrides(work: Path, corpus: Path, a: argparse.Namespace) -> list[str]:
    return [f"corpus.paths=[{corpus}]", "progress=false", "cluster=local", f"proxy.tokens={a.tokens}", "proxy.cpus=1",
            f"proxy.holdout_fraction={a.holdout}", *target_overrides(work, corpus, a),
            "target.cluster_losses=false", f"search.budget={a.budget}",
            "pipeline.stages=[ingest,refine,tokenize,search]"]


def eval_seconds(run: Path) -> list[float]:
    """The seconds each trial of a run spent scoring its lm_eval target (its metrics.json)."""
    out = []
    for f in sorted((run / "proxy").rglob("metrics.json")):
        s = (read_json(f) or {}).get("target", {}).get("seconds")
        if s is not None:
            out.append(float(s))
    return out


def prepare(work: Path, clusters_run: Path, corpus: Path, overrides: list[str], holdout: float) -> Path:
    """A tokenized run with the clusters of ``clusters_run`` (or the sources), and the held-out math JSONL."""
    from climb_hpc.corpus import iter_doc_shards
    from climb_hpc.pipeline import run_pipeline
    from climb_hpc.proxy.sampler import heldout_mask

    base = work / "base"
    if (base / "tokenize" / "summary.json").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    cfg = compose([f"run_dir={base}", *overrides, "cluster=debug", "pipeline.stages=[ingest,refine,tokenize]"])
    if (clusters_run / "refine" / "doc_clusters.parquet").exists():
        print(f"clusters: copied from {clusters_run} (embedding + k-means + refine)", flush=True)
        base.mkdir(parents=True)
        for d in ("ingest", "refine"):
            shutil.copytree(clusters_run / d, base / d)
        RunDir(base).save_config(cfg)
        for stage in ("ingest", "refine"):
            src = clusters_run / "_done" / stage
            shutil.copytree(src, base / "_done" / stage)
    else:
        print(f"clusters: {clusters_run} has none (run benchmarks/cluster_quality.py); one cluster a source",
              flush=True)
        cfg = compose([f"run_dir={base}", *overrides, "cluster=debug", "pipeline.stages=[ingest,refine,tokenize]",
                       "clusters.refine.from_field=source"])
    run_pipeline(cfg)
    rows = [r for _, t in iter_doc_shards(RunDir(base), ["id", "text", "source"]) for r in t.to_pylist()]
    math_docs = [r for r in rows if r["source"] == "math"]
    held = heldout_mask([r["id"] for r in math_docs], holdout)
    with open(work / "math_heldout.jsonl", "w") as f:
        for r, h in zip(math_docs, held, strict=True):
            if h:
                f.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
    print(f"target: {int(held.sum())} held-out math docs -> {work / 'math_heldout.jsonl'}", flush=True)
    return base


def run_one(base: Path, work: Path, overrides: list[str], strategy: str, seed: int, uniform: bool,
            budget: int | None = None) -> dict:
    from climb_hpc.pipeline import run_pipeline

    run = work / f"{strategy}_s{seed}"
    if not (run / "search" / "result.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run, ignore=shutil.ignore_patterns("proxy", "search", "mix", "logs"))
        cfg = compose([f"run_dir={run}", *overrides, f"seed={seed}", f"search.strategy={strategy}",
                       f"search.references={'[uniform]' if uniform else '[]'}",
                       *([f"search.budget={budget}"] if budget is not None else [])])
        RunDir(run).save_config(cfg)
        run_pipeline(cfg)
    return read_json(run / "search" / "result.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--holdout", type=float, default=0.05)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--strategy-budget", nargs="*", default=[], metavar="STRATEGY=N",
                    help="a budget of its own for a strategy, e.g. climb_plus=8 (the others keep --budget)")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "corpus")
    ap.add_argument("--clusters", type=Path, default=ROOT / "runs" / "bench_clusters" / "clusters")
    ap.add_argument("--work", type=Path, default=None,
                    help="default runs/bench_search (jsonl), runs/bench_search_lm_eval (lm_eval)")
    ap.add_argument("--target", choices=("jsonl", "lm_eval"), default="jsonl")
    ap.add_argument("--limit", type=int, default=100, help="lm_eval: items a task (a seeded sample)")
    a = ap.parse_args()
    a.work = a.work or ROOT / "runs" / ("bench_search" if a.target == "jsonl" else "bench_search_lm_eval")
    logging.basicConfig(level=logging.WARNING)
    if not a.corpus.exists():
        print(f"{a.corpus} is missing: this benchmark needs ../shared/data/corpus")
        return 2
    own = {k: int(v) for k, v in (x.split("=", 1) for x in a.strategy_budget)}
    a.work.mkdir(parents=True, exist_ok=True)
    overrides = base_overrides(a.work.resolve(), a.corpus.resolve(), a)
    if not (a.clusters.resolve() / "refine" / "doc_clusters.parquet").exists():
        overrides.append("clusters.refine.from_field=source")  # every run's config: refine reads no embeddings
    base = prepare(a.work.resolve(), a.clusters.resolve(), a.corpus.resolve(), overrides, a.holdout)
    n_clusters = len(read_json(base / "tokenize" / "summary.json")["clusters"])
    print(f"{n_clusters} clusters; budget {a.budget} trials a search; {a.tokens:,} tokens a trial; "
          f"seeds {a.seeds}", flush=True)
    table: dict[str, list[float]] = {s: [] for s in [*a.strategies, "uniform"]}
    better = (lambda x, y: x > y) if a.target == "lm_eval" else (lambda x, y: x < y)
    seconds: list[float] = []
    for seed in a.seeds:
        for k, strategy in enumerate(a.strategies):
            r = run_one(base, a.work.resolve(), overrides, strategy, seed, uniform=k == 0,
                        budget=own.get(strategy))
            table[strategy].append(r["best"]["value"])
            if k == 0:
                table["uniform"].append(r["references"]["uniform"]["value"])
            print(f"seed {seed} {strategy:7s} best measured {r['best']['value']:.4f}", flush=True)
            seconds += eval_seconds(a.work.resolve() / f"{strategy}_s{seed}")
        print(f"seed {seed} uniform {table['uniform'][-1]:.4f}", flush=True)
    print(f"\n{'strategy':9s} " + " ".join(f"{'seed ' + str(s):>10s}" for s in a.seeds) + f" {'mean':>10s}")
    for name, vals in table.items():
        print(f"{name:9s} " + " ".join(f"{v:10.4f}" for v in vals) + f" {statistics.mean(vals):10.4f}")
    if "climb" in table:
        wins = {s: sum(better(c, v) for c, v in zip(table["climb"], table[s], strict=True)) for s in table if s != "climb"}
        print("climb beats " + ", ".join(f"{s} in {w}/{len(a.seeds)} seeds" for s, w in wins.items()))
    if seconds:
        print(f"lm_eval scoring: {statistics.mean(seconds):.2f} s a trial (mean of {len(seconds)}, "
              f"max {max(seconds):.2f} s)")
    print("real_search: " + " ".join(f"{n}={statistics.mean(v):.4f}" for n, v in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
