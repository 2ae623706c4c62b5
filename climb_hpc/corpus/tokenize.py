"""Stage ``tokenize``: kept documents -> per-cluster token stores in Megatron's indexed-dataset format.

Input: ``refine/doc_clusters.parquet`` (``id``, ``cluster``; -1 = pruned) in corpus order (the ingest
doc shards concatenated). Each task takes a contiguous run of ingest shards (at most ``tokenize.max_parts``
tasks) and writes, for every cluster it meets, one store of its training documents and one of its
held-out ones (``proxy.holdout_fraction``, by a hash of the id: decided here once, never again). Layout
under ``<run_dir>/tokenize/``::

    tokenizer/                        HF fast tokenizer (AutoTokenizer.from_pretrained loads it)
    plan.json                         settings, tokenizer (vocab, eos id, dtype), task -> ingest shards
    parts/part_{t:05d}/cluster_{c:05d}.{split}.bin / .idx
                                      a Megatron MMIDIDX store (megatron-core's IndexedDataset reads it):
                                      split = train | heldout; each document followed by EOS
    parts/part_{t:05d}/cluster_{c:05d}.{split}.ids.parquet
                                      id, row (corpus row) of each document, in store order
    parts/part_{t:05d}/stats.json     the task's docs and tokens per cluster and split
    summary.json                      dtype, vocab, eos id, tokens and docs per cluster, and per part

So a cluster is at most ``max_parts`` stores a split, written in parallel by the array, never merged:
trainers take them as a blend (the mix stage writes it). Tokens are Megatron's dtype: uint16 below 65500
ids, else int32. The controller (``prepare``) makes the tokenizer once: ``tokenize.tokenizer: null``
trains a byte-level BPE (``tokenize.vocab_size``, ``min_frequency``) on ``train_sample_docs`` kept
documents of a seeded sample of shards; a path copies that HF tokenizer (``local_files_only``). A task
reads the labels of its own rows only (Parquet row groups), and writes its part folder atomically (a
temp folder renamed), so a killed task leaves nothing half-written. The controller's finalize only
sums the tasks' stats.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from climb_hpc.config import section
from climb_hpc.corpus import doc_shard_paths, ingest
from climb_hpc.corpus import tokenizer as tk
from climb_hpc.corpus.store import Store, StoreWriter
from climb_hpc.estimate import Inputs, Ledger, Work, rate
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "tokenize"
PLAN_VERSION = 2
SPLITS = ("train", "heldout")
IDS_SCHEMA = pa.schema([("id", pa.string()), ("row", pa.int64())])


# ---------------------------------------------------------------- paths


@dataclass(frozen=True)
class Outputs:
    """What tokenize writes under ``<run_dir>/tokenize/`` (the layout above)."""

    dir: Path

    @property
    def tokenizer(self) -> Path:
        return self.dir / "tokenizer"

    @property
    def plan(self) -> Path:
        return self.dir / "plan.json"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def part(self, task: int) -> Path:
        return self.dir / "parts" / f"part_{task:05d}"

    def store(self, task: int, c: int, split: str) -> Path:
        """A store's prefix (``.bin``, ``.idx`` and ``.ids.parquet`` beside it)."""
        return self.part(task) / store_name(c, split)


def store_name(c: int, split: str) -> str:
    return f"cluster_{c:05d}.{split}"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def tok_dir(rd: RunDir) -> Path:
    return outputs(rd).dir


def tokenizer_dir(rd: RunDir) -> Path:
    return outputs(rd).tokenizer


def plan_path(rd: RunDir) -> Path:
    return outputs(rd).plan


def part_dir(rd: RunDir, task: int) -> Path:
    return outputs(rd).part(task)


def summary_path(rd: RunDir) -> Path:
    return outputs(rd).summary


def data_tokenizer(rd: RunDir) -> dict[str, Any]:
    """``{vocab_size, fingerprint}`` of the tokenizer this run's token stores are in (what a mixture searched on
    them carries, so that applying it to data of another tokenizer can be noticed)."""
    return tk.identity(tokenizer_dir(rd))


def doc_clusters_path(rd: RunDir) -> Path:
    from climb_hpc.clusters.refine import doc_clusters_path

    return doc_clusters_path(rd)


# ---------------------------------------------------------------- reading back


def load_summary(rd: RunDir) -> dict[str, Any]:
    s = read_json(summary_path(rd))
    if s is None:
        raise FileNotFoundError(f"{summary_path(rd)} is missing: the tokenize stage has not finished")
    return s


def cluster_parts(rd: RunDir, c: int, split: str = "train") -> list[int]:
    """The parts (tasks) that hold documents of cluster ``c`` in ``split``, in corpus order."""
    parts = load_summary(rd)["clusters"][str(c)]["parts"]
    return sorted(int(t) for t, v in parts.items() if v[split]["docs"] > 0)


def cluster_stores(rd: RunDir, c: int, split: str = "train") -> list[Store]:
    """Cluster ``c``'s stores of ``split``, in corpus order (their documents, concatenated, are the
    cluster's documents of that split in corpus order)."""
    return [Store(outputs(rd).store(t, c, split)) for t in cluster_parts(rd, c, split)]


def store_ids(prefix: Path) -> pa.Table:
    """``id``, ``row`` of each document of the store at ``prefix``, in store order."""
    return pq.read_table(Path(str(prefix) + ".ids.parquet"))


def read_rows(path: Path, a: int, b: int, columns: list[str]) -> pa.Table:
    """Rows ``[a, b)`` of a Parquet file, reading only the row groups that hold them."""
    f = pq.ParquetFile(path)
    groups, first, start = [], None, 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if start < b and start + n > a:
            groups.append(g)
            first = start if first is None else first
        start += n
    if not groups:
        return pa.table({c: pa.array([], f.schema_arrow.field(c).type) for c in columns})
    return f.read_row_groups(groups, columns=columns).slice(a - first, b - a)


# ---------------------------------------------------------------- config


def _t(cfg: DictConfig) -> DictConfig:
    return section(cfg, "tokenize")


def _settings(cfg: DictConfig) -> dict[str, Any]:
    from climb_hpc.corpus.identity import run_tokenizer

    t = _t(cfg)
    return {"tokenizer": run_tokenizer(cfg),  # the given checkpoint's when tokenize.tokenizer is unset
            "vocab_size": int(t.vocab_size), "min_frequency": int(t.min_frequency),
            "train_sample_docs": int(t.train_sample_docs), "seed": int(cfg.seed),
            "max_parts": int(t.max_parts), "holdout_fraction": float(cfg.proxy.holdout_fraction)}


def _check_clusters(rd: RunDir, n: int) -> None:
    p = doc_clusters_path(rd)
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: run the refine stage before tokenize")
    rows = pq.read_metadata(p).num_rows
    if rows != n:
        raise RuntimeError(f"{p} has {rows} rows, the ingest shards {n}")


# ---------------------------------------------------------------- controller side


def _shard_rows(rd: RunDir) -> list[dict[str, Any]]:
    out, n = [], 0
    for p in doc_shard_paths(rd):
        rows = pq.read_metadata(p).num_rows
        out.append({"shard": p.name, "offset": n, "rows": rows})
        n += rows
    return out


def _group(shards: list[dict[str, Any]], max_parts: int) -> list[list[dict[str, Any]]]:
    """Contiguous runs of shards, one a task: ``min(len(shards), max_parts)`` tasks of about equal shard counts."""
    k = max(1, min(len(shards), max_parts))
    bounds = [len(shards) * i // k for i in range(k + 1)]
    return [shards[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _sample_texts(rd: RunDir, shards: list[dict[str, Any]], k: int, seed: int) -> list[str]:
    """Texts of ``k`` kept docs: whole shards taken in a seeded order until they hold ``k`` kept docs, then
    ``k`` of those drawn without replacement (so the controller reads about ``k`` docs, not the corpus)."""
    rng = np.random.default_rng([seed, zlib.crc32(NAME.encode())])
    docs = ingest.outputs(rd).docs
    texts: list[str] = []
    for i in rng.permutation(len(shards)):
        s = shards[int(i)]
        labels = read_rows(doc_clusters_path(rd), s["offset"], s["offset"] + s["rows"], ["cluster"])
        keep = np.flatnonzero(labels.column("cluster").to_numpy() >= 0)
        if len(keep):
            texts.extend(pq.read_table(docs / s["shard"], columns=["text"]).column("text")
                         .take(pa.array(keep)).to_pylist())
        if len(texts) >= k:
            break
    if len(texts) > k:
        texts = [texts[i] for i in np.sort(rng.choice(len(texts), size=k, replace=False))]
    return texts


def _make_tokenizer(rd: RunDir, settings: dict[str, Any], shards: list[dict[str, Any]]) -> dict:
    with atomic_path(tokenizer_dir(rd)) as tmp:
        tmp.mkdir()
        if settings["tokenizer"]:
            extra = tk.save_pretrained_copy(settings["tokenizer"], tmp)
            source = {"kind": "pretrained", "path": settings["tokenizer"], **extra}
        else:
            texts = _sample_texts(rd, shards, settings["train_sample_docs"], settings["seed"])
            if not texts:
                raise RuntimeError("tokenize: no kept documents to train the tokenizer on (every doc is pruned)")
            t0 = time.perf_counter()
            tk.save_trained(tk.train_bpe(texts, settings["vocab_size"], settings["min_frequency"], len(texts)), tmp)
            source = {"kind": "bpe", "train_docs": len(texts), "train_seconds": round(time.perf_counter() - t0, 3)}
    return {**source, **tk.describe(tokenizer_dir(rd))}


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    """Make the tokenizer and plan the tasks (contiguous runs of ingest shards), once (a stored plan is
    checked, not redone). Reads Parquet footers and the tokenizer's sample only."""
    settings = _settings(cfg)
    shards = _shard_rows(rd)
    n = sum(s["rows"] for s in shards)
    _check_clusters(rd, n)
    tasks = [{"shards": g} for g in _group(shards, settings["max_parts"])]
    stored = read_json(plan_path(rd))
    if stored is not None:
        if stored.get("version") != PLAN_VERSION or stored["settings"] != settings or stored["tasks"] != tasks:
            raise RuntimeError(f"{plan_path(rd)} was planned with other settings or another corpus; use a new run "
                               f"folder, or remove {tok_dir(rd)} and {rd.marker_dir(NAME)}")
        return
    tokenizer = _make_tokenizer(rd, settings, shards)
    plan = {"version": PLAN_VERSION, "settings": settings, "tokenizer": tokenizer, "n_docs": n, "tasks": tasks}
    atomic_write_json(plan_path(rd), plan)


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    return len(load_plan(rd)["tasks"])


def resources(cfg: DictConfig) -> Resources:
    return Resources.from_config(_t(cfg))


def load_plan(rd: RunDir) -> dict[str, Any]:
    plan = read_json(plan_path(rd))
    if plan is None:
        raise FileNotFoundError(f"{plan_path(rd)} is missing: the tokenize stage has not been planned")
    return plan


# ---------------------------------------------------------------- a task


class _PartWriter:
    """The stores of one part: a store and an id table a (cluster, split), opened at its first document. Ids
    go to the table ``flush_docs`` at a time, so a task holds a batch of ids, not its part's."""

    flush_docs = 65536

    def __init__(self, out: Path, dtype: np.dtype):
        self.out, self.dtype = out, dtype
        self.writers: dict[tuple[int, str], StoreWriter] = {}
        self.tables: dict[tuple[int, str], pq.ParquetWriter] = {}
        self.ids: dict[tuple[int, str], tuple[list[str], list[int]]] = {}

    def add(self, c: int, split: str, doc_id: str, row: int, tokens: list[int]) -> None:
        key = (c, split)
        if key not in self.writers:
            self.writers[key] = StoreWriter(self.out / store_name(c, split), self.dtype)
            self.tables[key] = pq.ParquetWriter(self.out / f"{store_name(c, split)}.ids.parquet", IDS_SCHEMA)
            self.ids[key] = ([], [])
        self.writers[key].add(tokens)
        ids, rows = self.ids[key]
        ids.append(doc_id)
        rows.append(row)
        if len(ids) >= self.flush_docs:
            self._flush(key)

    def _flush(self, key: tuple[int, str]) -> None:
        ids, rows = self.ids[key]
        if ids:
            table = pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(rows, pa.int64())], schema=IDS_SCHEMA)
            self.tables[key].write_table(table)
        self.ids[key] = ([], [])

    def close(self) -> dict[str, dict[str, dict[str, int]]]:
        """Close every store; returns ``{cluster: {split: {docs, tokens}}}`` (tokens with EOS)."""
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for (c, split), w in sorted(self.writers.items()):
            w.close()
            self._flush((c, split))
            self.tables[(c, split)].close()
            per = counts.setdefault(str(c), {k: {"docs": 0, "tokens": 0} for k in SPLITS})
            per[split] = {"docs": len(w), "tokens": int(w.num_tokens)}
        return counts


def tokenize_part(rd: RunDir, plan: dict[str, Any], task: int, out: Path, batch_size: int) -> dict[str, Any]:
    """Tokenize the kept docs of task ``task``'s ingest shards into stores under ``out`` (a fresh folder)."""
    from climb_hpc.corpus.heldout import heldout_mask

    tok = tk.load_fast(tokenizer_dir(rd))
    dtype, eos = np.dtype(plan["tokenizer"]["dtype"]), plan["tokenizer"]["eos_id"]
    fraction = float(plan["settings"]["holdout_fraction"])
    writer = _PartWriter(out, dtype)
    docs = pruned = chars = 0
    try:
        for spec in plan["tasks"][task]["shards"]:
            a, b = spec["offset"], spec["offset"] + spec["rows"]
            table = pq.read_table(ingest.outputs(rd).docs / spec["shard"], columns=["id", "text"])
            labels = read_rows(doc_clusters_path(rd), a, b, ["id", "cluster"])
            if not table.column("id").equals(labels.column("id")):
                raise RuntimeError(f"tokenize task {task}: ids of {spec['shard']} differ from {doc_clusters_path(rd)} "
                                   f"rows [{a}, {b}): the clusters were made for another corpus")
            clusters = labels.column("cluster").to_numpy()
            keep = np.flatnonzero(clusters >= 0)
            ids = table.column("id").take(pa.array(keep)).to_pylist()
            texts = table.column("text").take(pa.array(keep)).to_pylist()
            held = heldout_mask(ids, fraction)
            for i in range(0, len(texts), batch_size):
                for k, enc in enumerate(tok.encode_batch(texts[i:i + batch_size], add_special_tokens=False), start=i):
                    writer.add(int(clusters[keep[k]]), SPLITS[int(held[k])], ids[k], a + int(keep[k]), [*enc.ids, eos])
            docs, pruned, chars = docs + len(keep), pruned + len(clusters) - len(keep), chars + sum(map(len, texts))
    finally:
        counts = writer.close()
    tokens = sum(v["tokens"] - v["docs"] for per in counts.values() for v in per.values())
    return {"docs": docs, "pruned": pruned, "tokens": tokens, "chars": chars, "clusters": counts}


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    plan = load_plan(rd)
    if not 0 <= task < len(plan["tasks"]):
        raise IndexError(f"tokenize has {len(plan['tasks'])} tasks; there is no task {task}")
    t0 = time.perf_counter()
    with atomic_path(part_dir(rd, task)) as tmp:
        tmp.mkdir()
        counts = tokenize_part(rd, plan, task, tmp, max(1, int(_t(cfg).batch_size)))
        secs = time.perf_counter() - t0
        stats = {"task": task, **counts, "seconds": round(secs, 4),
                 "tokens_per_s": round(counts["tokens"] / max(secs, 1e-9), 1)}
        atomic_write_json(tmp / "stats.json", stats)
    print(f"tokenize task {task}: {counts['docs']} docs, {counts['tokens']:,} tokens in {secs:.2f} s "
          f"({stats['tokens_per_s']:,.0f} tokens/s), {counts['pruned']} pruned docs skipped", flush=True)


# ---------------------------------------------------------------- finalize


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """Sum the tasks' stats into summary.json (no token is read or copied: the stores stay where tasks wrote them)."""
    plan = load_plan(rd)
    stats = []
    for t in range(len(plan["tasks"])):
        st = read_json(part_dir(rd, t) / "stats.json")
        if st is None:
            raise RuntimeError(f"tokenize: {part_dir(rd, t)}/stats.json is missing; rerun task {t}")
        stats.append(st)
    per: dict[str, dict[str, Any]] = {}
    for t, st in enumerate(stats):
        for c, splits in st["clusters"].items():
            p = per.setdefault(c, {"docs": 0, "tokens": 0, "doc_tokens": 0, "heldout_docs": 0, "heldout_tokens": 0,
                                   "parts": {}})
            p["parts"][str(t)] = splits
            for split, v in splits.items():
                p["docs"] += v["docs"]
                p["tokens"] += v["tokens"]
                p["doc_tokens"] += v["tokens"] - v["docs"]
                if split == "heldout":
                    p["heldout_docs"] += v["docs"]
                    p["heldout_tokens"] += v["tokens"]
    per = {c: per[c] for c in sorted(per, key=int)}
    docs, pruned = sum(s["docs"] for s in stats), sum(s["pruned"] for s in stats)
    if docs + pruned != plan["n_docs"]:
        raise RuntimeError(f"tokenize: the tasks saw {docs + pruned} docs, the plan has {plan['n_docs']}")
    secs = sum(s.get("seconds", 0.0) for s in stats)
    doc_tokens = sum(p["doc_tokens"] for p in per.values())
    tok = plan["tokenizer"]
    summary = {
        "dtype": tok["dtype"], "vocab_size": tok["vocab_size"], "eos_id": tok["eos_id"], "eos_token": tok["eos_token"],
        "tokenizer": {k: v for k, v in tok.items() if k not in ("dtype", "vocab_size", "eos_id", "eos_token")},
        "tokenizer_dir": str(tokenizer_dir(rd).relative_to(rd.path)),
        "n_docs": plan["n_docs"], "docs": docs, "pruned_docs": pruned,
        "holdout_fraction": plan["settings"]["holdout_fraction"], "parts": len(plan["tasks"]),
        "tokens": sum(p["tokens"] for p in per.values()), "doc_tokens": doc_tokens,
        "clusters": per,
        "tokenize_seconds": round(secs, 3), "tokens_per_s": round(doc_tokens / max(secs, 1e-9), 1),
        "files": {"store": "parts/part_{t:05d}/cluster_{c:05d}.{split}", "format": "megatron MMIDIDX .bin/.idx",
                  "ids": "<store>.ids.parquet"},
    }
    atomic_write_json(summary_path(rd), summary)
    print("tokenize: " + json.dumps({k: summary[k] for k in ("dtype", "vocab_size", "docs", "tokens", "tokens_per_s")})
          + f", {len(per)} clusters in {len(plan['tasks'])} part(s)", flush=True)


def cluster_ids(rd: RunDir) -> list[int]:
    """The clusters with documents, in increasing order."""
    return sorted(int(c) for c in (read_json(summary_path(rd)) or {}).get("clusters", {}))


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """BPE encoding of every doc, one task a run of ingest shards (at most ``tokenize.max_parts``), on its cores."""
    tasks = min(ingest.estimate_tasks(cfg, x, led), int(_t(cfg).max_parts))
    return Work("text (CPU)", [tasks], threaded=True,
                core_s=x.tokens / rate(cfg, x, "tokenize_tokens_s", led, "tokens/s a core"))


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, prepare=prepare, finalize=finalize,
              reads=lambda cfg: ("ingest", "refine"), outputs=outputs, estimate=estimate)
