"""Does the data path scale? The stages ingest -> quality -> kmeans -> assign -> refine -> tokenize -> mix (-> export)
over synthetic corpora of N, 4N and 16N short documents on the local executor (issue 18): per stage, the wall time a
million documents, the controller's peak RSS, the largest task's peak RSS and the bytes a task reads, and how each
grows from N to 16N.

    .venv/bin/python benchmarks/scale_data_path.py --n 20000 --out /tmp/scale_after.json     # this checkout
    git worktree add /tmp/before <older commit>
    .venv/bin/python benchmarks/scale_data_path.py --n 20000 --code /tmp/before --label before --out /tmp/scale_before.json
    .venv/bin/python benchmarks/scale_data_path.py --table /tmp/scale_before.json /tmp/scale_after.json

* corpus: ``--docs-per-file`` (5000) documents a JSONL file, so that ingest's and tokenize's task count grows with N
  while a task's input stays fixed; a document is 20-80 words drawn mostly from one of 8 topic vocabularies (one of
  them advertising, which quality/refine prune) plus common words; written once under ``--work`` and reused;
* embed is not measured: this script writes the embeddings itself through the store API (``climb_hpc.embed.store``:
  layout, Zarr array, ``write_rows``, ``write_ids``), a ``--dim``-wide unit vector a document around its topic's
  centre, and completes the stage as a hand launch does (``pipeline.hand_launch`` prepare / finalize, the task
  markers in between);
* every other stage runs as its own controller process (``compose_for_run`` + ``run_pipeline`` with ``until=<stage>``
  of the checkout given by ``--code``, ``cluster=local``, ``preflight=skip``), so that its peak RSS
  (``VmHWM`` of that process, its task subprocesses excluded) is the stage's alone, as are its bytes read (``rchar``
  less what its tasks recorded: Linux adds a reaped child's reads to its parent's); the search is skipped:
  ``mix.weights`` gives every final cluster the same weight, and ``mix.tokens`` is ``--mix-tokens-per-doc`` x the
  corpus, so that the mixture grows with it; ``export`` runs when the code registers a stage of that name;
* a task's peak RSS (``VmHWM``) and bytes read come from ``logs/<stage>/task_*.usage.json``, which every task process
  of the local executor writes when it ends (``climb_hpc.execute.record_usage``; absent in code before it: shown as -).
  Bytes read is ``rchar`` (every read() call, the ~20 MB of Python imports included; pages of a numpy memmap are
  not counted); "a task" is the stage's largest.

Cheap settings throughout (heuristic raters, k-means ``--k`` centroids and 10 iterations, a 1024-token BPE trained on
5000 docs): the point is how the costs grow, not their size. The table ends with the ratios 16N / N (and 4N / N); the
last line reads ``scale: controller_rss x<r> bytes_per_task x<r> wall_per_doc x<r> (16N vs N)``: the worst stage's
ratio of the controller's peak RSS and of a task's bytes read, and the ratio of the whole path's wall time a document.
Goals (issue 18): controller RSS within 1.25x, bytes a task flat, wall a document flat within +-20 %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "quality", "kmeans", "assign", "refine", "tokenize", "mix", "export")
TOPICS = 8  # topic 7 is advertising
CORPUS_VERSION = 1
MB = 1 << 20


# ---------------------------------------------------------------- the synthetic corpus


def _vocab(rng: Any, n: int, syllables: list[str]) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables, size=int(rng.integers(2, 4)))))
    return sorted(words)


def write_corpus(folder: Path, n_docs: int, docs_per_file: int, seed: int = 0) -> Path:
    """``n_docs`` JSONL records (id, text, source) in files of ``docs_per_file``; kept when complete."""
    import numpy as np

    done = folder / "_complete.json"
    want = {"version": CORPUS_VERSION, "n_docs": n_docs, "docs_per_file": docs_per_file, "seed": seed}
    if done.exists() and json.loads(done.read_text()) == want:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.glob("*.jsonl"):
        p.unlink()
    rng = np.random.default_rng(seed)
    syl = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    common = ("the a of and to in is that for with as on by this from which are was it be at an or has "
              "its can more also when into such these other than their most over after between both each").split()
    topics = [_vocab(rng, 150, syl) for _ in range(TOPICS - 1)]
    ads = ("buy now cheap offer discount deal free shipping click here www.bestdeals.com order today limited sale "
           "price save best bonus win").split() + _vocab(rng, 30, syl)
    vocabs = [np.array(v) for v in (*topics, ads)]
    common_a = np.array(common)
    for f in range(math.ceil(n_docs / docs_per_file)):
        a, b = f * docs_per_file, min(n_docs, (f + 1) * docs_per_file)
        r = np.random.default_rng([seed, f])
        topic = r.integers(0, TOPICS, size=b - a)
        lengths = r.integers(20, 81, size=b - a)
        lines = []
        for i, (t, n) in enumerate(zip(topic, lengths, strict=True)):
            own = vocabs[t][r.integers(0, len(vocabs[t]), size=n)]
            words = np.where(r.random(n) < 0.3, common_a[r.integers(0, len(common_a), size=n)], own).tolist()
            sentences = [" ".join(words[j:j + 10]).capitalize() + "." for j in range(0, n, 10)]
            lines.append(json.dumps({"id": f"d{a + i:09d}", "text": " ".join(sentences), "source": f"topic{t}"}))
        (folder / f"part_{f:05d}.jsonl").write_text("\n".join(lines) + "\n")
    done.write_text(json.dumps(want))
    return folder


# ---------------------------------------------------------------- workers (run with --code's climb_hpc)


def _usage() -> dict[str, Any]:
    """This controller process alone: CPU time without its children, peak RSS as VmHWM (``ru_maxrss`` would start
    at the RSS of the process that forked it). Its ``rchar`` includes the tasks it reaped: see ``run_scale``."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status").read_text().splitlines()
    peak = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"max_rss_bytes": peak, "user_seconds": ru.ru_utime, "system_seconds": ru.ru_stime,
            "rchar_with_tasks": int(io["rchar"])}


def worker_stage(run_dir: str, stage: str, overrides: list[str], out: str) -> None:
    """One controller: the pipeline up to ``stage`` (the earlier stages are complete and skipped)."""
    import logging

    from climb_hpc.config import compose_for_run
    from climb_hpc.pipeline import run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.time()
    cfg = compose_for_run([f"run_dir={run_dir}", f"until={stage}", *overrides])
    results = run_pipeline(cfg)
    r = next(r for r in results if r.name == stage)
    Path(out).write_text(json.dumps({"stage": stage, "seconds": r.seconds, "tasks": r.num_tasks, "ran": r.ran,
                                     "process_seconds": time.time() - t0, **_usage()}))


def worker_embed(run_dir: str, dim: int, out: str) -> None:
    """The embed stage without an encoder: unit vectors around each topic's centre, through the store API."""
    import numpy as np

    from climb_hpc.embed import store
    from climb_hpc.pipeline import hand_launch
    from climb_hpc.rundir import RunDir, atomic_write_json

    t0 = time.time()
    rd = RunDir(run_dir)
    n = hand_launch(run_dir, "embed", "prepare")
    layout = store.load_layout(rd)
    centres = np.random.default_rng(1).standard_normal((TOPICS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for t, (a, b) in enumerate(layout["tasks"]):
        table = store.read_rows(rd, layout, a, b, columns=("id", "source"))
        topic = np.array([int(s[5:]) for s in table.column("source").to_pylist()])
        x = centres[topic] + 0.6 * np.random.default_rng([2, t]).standard_normal((b - a, dim)).astype(np.float32) / math.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.write_rows(store.store_path(rd), layout, a, b, x)
        store.write_ids(store.ids_path(rd, t), table.column("id").combine_chunks(), a)
        atomic_write_json(store.stats_path(rd, t), {"task": t, "rows": [a, b], "docs": b - a, "tokens": 0,
                                                    "padded_tokens": 0, "seconds": 0.0, "encoder": {"device": "synthetic"}})
        rd.mark_done("embed", t, seconds=0.0)
    hand_launch(run_dir, "embed", "finalize")
    Path(out).write_text(json.dumps({"stage": "embed", "tasks": n, "seconds": time.time() - t0}))


def worker_registry(out: str) -> None:
    from climb_hpc.stage import REGISTRY

    Path(out).write_text(json.dumps(sorted(REGISTRY)))


# ---------------------------------------------------------------- driving the workers


def _worker(code: Path, args: list[str], log: Path) -> dict[str, Any]:
    out = log.with_suffix(".json")
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "ab") as f:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *args, str(out)], cwd=code,
                           env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"worker {args[:2]} failed (rc {p.returncode}); {log}:\n{tail}")
    return json.loads(out.read_text())


def task_usage(run: Path, stage: str) -> dict[str, Any]:
    """The stage's task processes (``logs/<stage>/task_*.usage.json``): the largest peak RSS and bytes read."""
    recs = [json.loads(p.read_text()) for p in sorted((run / "logs" / stage).glob("task_*.usage.json"))]
    if not recs:
        return {"task_records": 0}
    return {"task_records": len(recs),
            "task_max_rss_bytes": max(r["max_rss_bytes"] for r in recs),
            "task_max_rchar": max(r.get("rchar", 0) for r in recs),
            "task_mean_rchar": sum(r.get("rchar", 0) for r in recs) / len(recs),
            "task_max_read_bytes": max(r.get("read_bytes", 0) for r in recs),
            "task_sum_rchar": sum(r.get("rchar", 0) for r in recs),
            "task_wall_seconds": sum(r["wall_seconds"] for r in recs),
            "task_cpu_seconds": sum(r.get("user_seconds", 0) + r.get("system_seconds", 0) for r in recs)}


def settings(a: argparse.Namespace, n_docs: int) -> list[str]:
    return ["cluster=local", f"cluster.cpus={a.cpus}", "progress=false", "preflight=skip", "seed=0",
            f"corpus.paths=[{a.work / f'corpus_{n_docs}_{a.docs_per_file}'}]", f"embed.dim={a.dim}",
            "quality.raters=heuristic", f"clusters.kmeans.k_init={a.k}", "clusters.kmeans.niter=10",
            "clusters.kmeans.gpu=false", f"clusters.kmeans.sample_size={a.n}",  # fixed, as 1e6 is beside 1e9 docs
            "tokenize.vocab_size=1024", "tokenize.train_sample_docs=5000",
            f"mix.tokens={a.mix_tokens_per_doc * n_docs}"]


def run_scale(a: argparse.Namespace, scale: int, stages: list[str]) -> dict[str, Any]:
    n_docs = scale * a.n
    t0 = time.time()
    write_corpus(a.work / f"corpus_{n_docs}_{a.docs_per_file}", n_docs, a.docs_per_file)
    print(f"  {n_docs:,} docs: corpus ready ({time.time() - t0:.0f} s)", flush=True)
    run = a.work / f"run_{a.label}_{n_docs}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    run.mkdir(parents=True)
    log = run.parent / f"{run.name}.log"
    log.unlink(missing_ok=True)
    over = settings(a, n_docs)
    pipe = ["ingest", "embed", *[s for s in stages if s != "ingest"]]
    over.append(f"pipeline.stages=[{','.join(pipe)}]")
    code = a.code.resolve()
    rows: dict[str, Any] = {}
    for stage in stages:
        extra: list[str] = []
        if stage in ("mix", "export"):  # the clusters are known once refine has run
            extra = [weights_override(run)]
            if "export" in stages:  # code with the blend: materialise it too (an array), and export to Parquet
                extra += ["mix.materialize=true", f"mix.export.out={run / 'export_parquet'}"]
        if stage == "quality":  # embed first, outside the measurement
            e = _worker(code, ["embed", str(run), str(a.dim)], log.with_name(f"{run.name}.embed.log"))
            print(f"  {n_docs:,} docs: embeddings written ({e['tasks']} tasks, {e['seconds']:.1f} s)", flush=True)
        r = _worker(code, ["stage", str(run), stage, json.dumps(over + extra)], log.with_name(f"{run.name}.{stage}.log"))
        r.update(task_usage(run, stage))
        if r.get("task_records") == r["ran"]:  # /proc/self/io counts the reaped tasks' reads as the controller's
            r["rchar"] = max(0, r["rchar_with_tasks"] - r["task_sum_rchar"])
        rows[stage] = r
        print(f"  {n_docs:,} docs: {stage:<9} {r['seconds']:7.1f} s  {r['tasks']:>4} tasks  controller "
              f"{r['max_rss_bytes'] / MB:6.0f} MB  task {_mb(r.get('task_max_rss_bytes'))} MB  read a task "
              f"{_mb(r.get('task_max_rchar'))} MB", flush=True)
    if not a.keep:
        import shutil

        shutil.rmtree(run, ignore_errors=True)
    return {"n_docs": n_docs, "stages": rows}


def weights_override(run: Path) -> str:
    """mix.weights: every final cluster of refine the same weight."""
    info = json.loads((run / "refine" / "clusters.json").read_text())
    ids = [c["id"] for c in info["clusters"]]
    return "mix.weights={" + ",".join(f"{c}:{1 / len(ids):.6f}" for c in ids) + "}"


# ---------------------------------------------------------------- the table


def _mb(x: Optional[float]) -> str:
    return f"{x / MB:6.0f}" if x else "     -"


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return b / a if a and b else None


def per_mdoc(r: dict[str, Any], n_docs: int) -> float:
    return r["seconds"] / n_docs * 1e6


def cpu_seconds(r: dict[str, Any]) -> float:
    """The controller's CPU time and its tasks' (when they recorded it): steadier than wall time on a busy machine."""
    return r["user_seconds"] + r["system_seconds"] + r.get("task_cpu_seconds", 0.0)


#: Stages whose single task reads a column of every document by design (issue 18 asks refine to stream within a
#: memory bound, not to split): shown in the table, left out of the headline bytes_per_task.
WHOLE_CORPUS_TASKS = ("refine",)


def ratios(res: dict[str, Any], scale: str) -> dict[str, Any]:
    """Per stage and overall: the ratio of scale ``scale`` to scale 1."""
    base, big = res["runs"]["1"], res["runs"][scale]
    out: dict[str, Any] = {"stages": {}}
    for s, r1 in base["stages"].items():
        rk = big["stages"].get(s)
        if rk is None:
            continue
        out["stages"][s] = {
            "wall_per_doc": _ratio(per_mdoc(r1, base["n_docs"]), per_mdoc(rk, big["n_docs"])),
            "cpu_per_doc": _ratio(cpu_seconds(r1) / base["n_docs"], cpu_seconds(rk) / big["n_docs"]),
            "controller_rss": _ratio(r1["max_rss_bytes"], rk["max_rss_bytes"]),
            "task_rss": _ratio(r1.get("task_max_rss_bytes"), rk.get("task_max_rss_bytes")),
            "bytes_per_task": _ratio(r1.get("task_max_rchar"), rk.get("task_max_rchar")),
        }
    total = [sum(r["seconds"] for r in x["stages"].values()) / x["n_docs"] for x in (base, big)]
    cpu = [sum(cpu_seconds(r) for r in x["stages"].values()) / x["n_docs"] for x in (base, big)]

    def worst(k: str, skip: tuple[str, ...] = ()) -> Optional[float]:
        v = [x[k] for s, x in out["stages"].items() if x[k] is not None and s not in skip]
        return max(v) if v else None

    out.update(controller_rss=worst("controller_rss"), bytes_per_task=worst("bytes_per_task", WHOLE_CORPUS_TASKS),
               task_rss=worst("task_rss"), wall_per_doc=_ratio(total[0], total[1]), cpu_per_doc=_ratio(cpu[0], cpu[1]))
    return out


def _x(v: Optional[float]) -> str:
    return f"x{v:.2f}" if v is not None else "-"


def with_ratios(res: dict[str, Any]) -> dict[str, Any]:
    """``res`` with its ratios (recomputed from the runs: a saved file's may predate a metric)."""
    scales = sorted(res["runs"], key=int)
    return {**res, "ratios": {k: ratios(res, k) for k in scales[1:]} if "1" in res["runs"] else {}}


def print_table(res: dict[str, Any]) -> None:
    res = with_ratios(res)
    scales = sorted(res["runs"], key=int)
    print(f"\n{res['label']}: {res['code']}  N = {res['n']:,}, {res['settings']['docs_per_file']} docs a file, "
          f"dim {res['settings']['dim']}, k {res['settings']['k']}, {res['settings']['cpus']} CPUs")
    print(f"{'stage':<9} {'docs':>9} {'tasks':>5} {'wall s':>8} {'s/Mdoc':>8} {'cpu s/Mdoc':>10} {'ctrl MB':>8} "
          f"{'task MB':>8} {'read/task MB':>12} {'ctrl read MB':>12}")
    for s in STAGES:
        for k in scales:
            run = res["runs"][k]
            r = run["stages"].get(s)
            if r is None:
                continue
            print(f"{s:<9} {run['n_docs']:>9,} {r['tasks']:>5} {r['seconds']:>8.1f} {per_mdoc(r, run['n_docs']):>8.0f} "
                  f"{cpu_seconds(r) / run['n_docs'] * 1e6:>10.0f} {r['max_rss_bytes'] / MB:>8.0f} {_mb(r.get('task_max_rss_bytes')):>8} "
                  f"{_mb(r.get('task_max_rchar')):>12} {_mb(r.get('rchar')):>12}")
    for k in scales[1:]:
        rt = res["ratios"][k]
        print(f"\nratios {k}N / N: {'wall/doc':>9} {'cpu/doc':>9} {'ctrl RSS':>9} {'task RSS':>9} {'read/task':>9}")
        for s, v in rt["stages"].items():
            print(f"  {s:<14} {_x(v['wall_per_doc']):>9} {_x(v.get('cpu_per_doc')):>9} {_x(v['controller_rss']):>9} "
                  f"{_x(v['task_rss']):>9} {_x(v['bytes_per_task']):>9}")
        print(f"  {'all':<14} {_x(rt['wall_per_doc']):>9} {_x(rt.get('cpu_per_doc')):>9} {_x(rt['controller_rss']):>9} "
              f"{_x(rt['task_rss']):>9} {_x(rt['bytes_per_task']):>9}   (a doc: the whole path's; others: the worst stage's)")
    if res.get("skipped"):
        print(f"\nskipped: {', '.join(res['skipped'])} (not a stage of this code)")


def side_by_side(paths: list[Path]) -> dict[str, Any]:
    """Two (or more) saved results, stage by stage at the largest common scale, with their 16N / N ratios."""
    rs = [with_ratios(json.loads(Path(p).read_text())) for p in paths]
    top = str(max(set.intersection(*[set(map(int, r["runs"])) for r in rs])))
    names = ", ".join(f"{r['label']}: N = {r['n']:,}" for r in rs)
    print(f"\nat {top}N ({names}); ratios {top}N / N")
    head = " ".join(f"{r['label'][:10]:>10}" for r in rs)
    ratio = " ".join(f"{'ratio':>10}" for _ in rs)
    print(f"{'stage':<9} {'metric':<14} {head}   {ratio}")
    for s in STAGES:
        if not any(s in r["runs"][top]["stages"] for r in rs):
            continue
        for key, label, rkey in (("seconds", "wall s/Mdoc", "wall_per_doc"), ("cpu", "cpu s/Mdoc", "cpu_per_doc"),
                                 ("max_rss_bytes", "ctrl MB", "controller_rss"), ("task_max_rss_bytes", "task MB", "task_rss"),
                                 ("task_max_rchar", "read/task MB", "bytes_per_task")):
            vals, rats = [], []
            for r in rs:
                x = r["runs"][top]["stages"].get(s)
                rt = r["ratios"].get(top, {}).get("stages", {}).get(s, {})
                if x is None or (key != "cpu" and not x.get(key)):
                    vals.append("-")
                else:
                    n_docs = r["runs"][top]["n_docs"]
                    v = (per_mdoc(x, n_docs) if key == "seconds" else cpu_seconds(x) / n_docs * 1e6 if key == "cpu"
                         else x[key] / MB)
                    vals.append(f"{v:.0f}")
                rats.append(_x(rt.get(rkey)))
            print(f"{s:<9} {label:<14} {' '.join(f'{v:>10}' for v in vals)}   {' '.join(f'{v:>10}' for v in rats)}")
    for r in rs:
        rt = r["ratios"].get(top, {})
        print(f"{r['label']}: scale: controller_rss {_x(rt.get('controller_rss'))} bytes_per_task "
              f"{_x(rt.get('bytes_per_task'))} wall_per_doc {_x(rt.get('wall_per_doc'))} ({top}N vs N)")
    return {"results": rs}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "stage":
            worker_stage(rest[0], rest[1], json.loads(rest[2]), rest[3])
        elif kind == "embed":
            worker_embed(rest[0], int(rest[1]), rest[2])
        else:
            worker_registry(rest[0])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="N: the smallest corpus, in documents")
    ap.add_argument("--scales", default="1,4,16", help="corpus sizes in units of N (1 must be one of them)")
    ap.add_argument("--docs-per-file", type=int, default=5000, help="docs a JSONL file (an ingest task's input)")
    ap.add_argument("--dim", type=int, default=64, help="embedding width")
    ap.add_argument("--k", type=int, default=50, help="k-means centroids (clusters.kmeans.k_init)")
    ap.add_argument("--mix-tokens-per-doc", type=int, default=20, help="mix.tokens = this x the corpus's docs")
    ap.add_argument("--cpus", type=int, default=2, help="cluster.cpus: the local executor's CPU budget")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose climb_hpc runs the stages")
    ap.add_argument("--label", default=None, help="a name for the results (default: the --code folder's name)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/climb-scale"), help="corpora and run folders")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("--out", type=Path, help="save the results as JSON here")
    ap.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="only print saved results side by side")
    a = ap.parse_args()
    if a.table:
        if len(a.table) == 1:
            print_table(json.loads(a.table[0].read_text()))
        else:
            side_by_side(a.table)
        return
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    a.label = a.label or a.code.resolve().name
    scales = sorted(int(s) for s in a.scales.split(","))
    if 1 not in scales:
        ap.error("--scales must include 1")
    registry = _worker(a.code.resolve(), ["registry"], a.work / f"registry_{a.label}.log")
    stages = [s for s in STAGES if s != "export" or "export" in registry]
    skipped = [s for s in STAGES if s not in stages]
    for s in skipped:
        print(f"{s}: skipped (no stage named {s} in {a.code})", flush=True)
    res: dict[str, Any] = {"label": a.label, "code": str(a.code.resolve()), "n": a.n, "skipped": skipped,
                           "settings": {"docs_per_file": a.docs_per_file, "dim": a.dim, "k": a.k, "cpus": a.cpus,
                                        "mix_tokens_per_doc": a.mix_tokens_per_doc, "overrides": settings(a, a.n)},
                           "runs": {}, "ratios": {}}
    t0 = time.time()
    for k in scales:
        print(f"{a.label}: {k}N = {k * a.n:,} docs", flush=True)
        res["runs"][str(k)] = run_scale(a, k, stages)
        if a.out:  # what is done so far, should a larger scale not finish
            a.out.write_text(json.dumps(res, indent=1))
    for k in scales[1:]:
        res["ratios"][str(k)] = ratios(res, str(k))
    res["seconds"] = time.time() - t0
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
        print(f"saved {a.out}")
    print_table(res)
    top = str(scales[-1])
    rt = res["ratios"].get(top, {})
    print(f"scale: controller_rss {_x(rt.get('controller_rss'))} bytes_per_task {_x(rt.get('bytes_per_task'))} "
          f"wall_per_doc {_x(rt.get('wall_per_doc'))} ({top}N vs N)")


if __name__ == "__main__":
    main()
