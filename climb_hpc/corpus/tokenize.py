"""Stage ``tokenize``: kept documents -> one flat token file per final cluster, with an index.

Input: ``refine/doc_clusters.parquet`` (``id``, ``cluster``; -1 = pruned) in corpus order (the ingest
doc shards concatenated). Layout under ``<run_dir>/tokenize/``::

    tokenizer/                        HF fast tokenizer (AutoTokenizer.from_pretrained loads it)
    plan.json                         settings, tokenizer (vocab, eos id, dtype), task -> ingest shard rows
    parts/task_{t:05d}/cluster_{c:05d}.bin   the task's tokens of cluster c (each doc + EOS)
    parts/task_{t:05d}/index.parquet  row, id, cluster, n_tokens of the task's kept docs, in row order
    cluster_{c:05d}.bin               flat token ids (finalize: parts merged in task order)
    cluster_{c:05d}.idx.parquet       id, row, offset, n_tokens: doc i = tokens[offset : offset + n_tokens],
                                      followed by the EOS id at offset + n_tokens
    summary.json                      dtype, vocab size, eos id, tokens and docs per cluster, tokens/s

The controller (``prepare``) makes the tokenizer once: ``tokenize.tokenizer: null`` trains a
byte-level BPE (``tokenize.vocab_size``, ``min_frequency``) on a seeded sample of
``train_sample_docs`` kept documents; a path copies that HF tokenizer (``local_files_only``). Tokens
are ``uint16`` when the vocabulary fits (<= 65536 ids), else ``uint32``. One task per ingest shard;
a task writes its part folder atomically (a temp folder renamed), so a killed task leaves nothing
half-written. Parts are kept after the merge (finalize can be rerun from them); delete
``tokenize/parts`` by hand once the stage is complete to halve the disk used.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig

from climb_hpc.config import section
from climb_hpc.corpus import doc_shard_paths, ingest
from climb_hpc.corpus import tokenizer as tk
from climb_hpc.estimate import Inputs, Ledger, Work, rate
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "tokenize"
PLAN_VERSION = 1
INDEX_SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("cluster", pa.int64()), ("n_tokens", pa.int64())])
CLUSTER_INDEX_SCHEMA = pa.schema([("id", pa.string()), ("row", pa.int64()), ("offset", pa.int64()),
                                  ("n_tokens", pa.int64())])


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
        return self.dir / "parts" / f"task_{task:05d}"

    def cluster_bin(self, c: int) -> Path:
        return self.dir / f"cluster_{c:05d}.bin"

    def cluster_index(self, c: int) -> Path:
        return self.dir / f"cluster_{c:05d}.idx.parquet"


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


def cluster_bin(rd: RunDir, c: int) -> Path:
    return outputs(rd).cluster_bin(c)


def cluster_index(rd: RunDir, c: int) -> Path:
    return outputs(rd).cluster_index(c)


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


def load_cluster(rd: RunDir, c: int) -> tuple[np.ndarray, pa.Table]:
    """(tokens as a read-only memmap, index table) of cluster ``c``."""
    s = read_json(summary_path(rd))
    if s is None:
        raise FileNotFoundError(f"{summary_path(rd)} is missing: the tokenize stage has not finished")
    tokens = np.memmap(cluster_bin(rd, c), dtype=s["dtype"], mode="r")
    return tokens, pq.read_table(cluster_index(rd, c))


# ---------------------------------------------------------------- config


def _t(cfg: DictConfig) -> DictConfig:
    return section(cfg, "tokenize")


def _settings(cfg: DictConfig) -> dict[str, Any]:
    from climb_hpc.corpus.identity import run_tokenizer

    t = _t(cfg)
    return {"tokenizer": run_tokenizer(cfg),  # the given checkpoint's when tokenize.tokenizer is unset
            "vocab_size": int(t.vocab_size), "min_frequency": int(t.min_frequency),
            "train_sample_docs": int(t.train_sample_docs), "seed": int(cfg.seed)}


def _clusters(rd: RunDir) -> pa.Table:
    p = doc_clusters_path(rd)
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: run the refine stage before tokenize")
    return pq.read_table(p, columns=["id", "cluster"])


# ---------------------------------------------------------------- controller side


def _shard_rows(rd: RunDir) -> list[dict[str, Any]]:
    out, n = [], 0
    for p in doc_shard_paths(rd):
        rows = pq.read_metadata(p).num_rows
        out.append({"shard": p.name, "offset": n, "rows": rows})
        n += rows
    return out


def _sample_texts(rd: RunDir, clusters: np.ndarray, shards: list[dict[str, Any]], k: int, seed: int) -> list[str]:
    """Texts of ``k`` kept docs drawn without replacement (seeded by run seed + stage), in corpus order."""
    kept = np.flatnonzero(clusters >= 0)
    rng = np.random.default_rng([seed, zlib.crc32(NAME.encode())])
    rows = np.sort(rng.choice(kept, size=min(k, len(kept)), replace=False)) if len(kept) else kept
    docs = ingest.outputs(rd).docs
    texts: list[str] = []
    for s in shards:
        local = rows[(rows >= s["offset"]) & (rows < s["offset"] + s["rows"])] - s["offset"]
        if len(local):
            col = pq.read_table(docs / s["shard"], columns=["text"]).column("text")
            texts.extend(col.take(pa.array(local)).to_pylist())
    return texts


def _make_tokenizer(rd: RunDir, settings: dict[str, Any], clusters: np.ndarray, shards: list[dict[str, Any]]) -> dict:
    with atomic_path(tokenizer_dir(rd)) as tmp:
        tmp.mkdir()
        if settings["tokenizer"]:
            extra = tk.save_pretrained_copy(settings["tokenizer"], tmp)
            source = {"kind": "pretrained", "path": settings["tokenizer"], **extra}
        else:
            texts = _sample_texts(rd, clusters, shards, settings["train_sample_docs"], settings["seed"])
            if not texts:
                raise RuntimeError("tokenize: no kept documents to train the tokenizer on (every doc is pruned)")
            t0 = time.perf_counter()
            tk.save_trained(tk.train_bpe(texts, settings["vocab_size"], settings["min_frequency"], len(texts)), tmp)
            source = {"kind": "bpe", "train_docs": len(texts), "train_seconds": round(time.perf_counter() - t0, 3)}
    return {**source, **tk.describe(tokenizer_dir(rd))}


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    """Make the tokenizer and plan one task per ingest shard, once (a stored plan is checked, not redone)."""
    settings = _settings(cfg)
    shards = _shard_rows(rd)
    table = _clusters(rd)
    n = sum(s["rows"] for s in shards)
    if table.num_rows != n:
        raise RuntimeError(f"{doc_clusters_path(rd)} has {table.num_rows} rows, the ingest shards {n}")
    stored = read_json(plan_path(rd))
    if stored is not None:
        if stored["settings"] != settings or stored["tasks"] != shards:
            raise RuntimeError(f"{plan_path(rd)} was planned with other settings or another corpus; use a new run "
                               f"folder, or remove {tok_dir(rd)} and {rd.marker_dir(NAME)}")
        return
    clusters = table.column("cluster").to_numpy()
    tokenizer = _make_tokenizer(rd, settings, clusters, shards)
    plan = {"version": PLAN_VERSION, "settings": settings, "tokenizer": tokenizer, "n_docs": n,
            "n_kept": int((clusters >= 0).sum()), "tasks": shards}
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


def tokenize_shard(rd: RunDir, plan: dict[str, Any], task: int, out: Path, batch_size: int) -> dict[str, int]:
    """Tokenize the kept docs of ingest shard ``task`` into ``out`` (a fresh folder); returns counts."""
    spec = plan["tasks"][task]
    a, b = spec["offset"], spec["offset"] + spec["rows"]
    docs = pq.read_table(ingest.outputs(rd).docs / spec["shard"], columns=["id", "text"])
    labels = _clusters(rd).slice(a, b - a)
    if docs.column("id").to_pylist() != labels.column("id").to_pylist():
        raise RuntimeError(f"tokenize task {task}: ids of {spec['shard']} differ from {doc_clusters_path(rd)} rows "
                           f"[{a}, {b}): the clusters were made for another corpus")
    clusters = labels.column("cluster").to_numpy()
    keep = np.flatnonzero(clusters >= 0)
    ids = docs.column("id").take(pa.array(keep)).to_pylist()
    texts = docs.column("text").take(pa.array(keep)).to_pylist()
    kc = clusters[keep]
    tok = tk.load_fast(tokenizer_dir(rd))
    dtype, eos = np.dtype(plan["tokenizer"]["dtype"]), plan["tokenizer"]["eos_id"]
    files: dict[int, Any] = {}
    lengths: list[int] = []
    try:
        for i in range(0, len(texts), batch_size):
            for k, enc in enumerate(tok.encode_batch(texts[i:i + batch_size], add_special_tokens=False), start=i):
                c = int(kc[k])
                if c not in files:
                    files[c] = open(out / f"cluster_{c:05d}.bin", "wb")  # noqa: SIM115 (closed below)
                ids_k = enc.ids
                files[c].write(np.asarray([*ids_k, eos], dtype=dtype).tobytes())
                lengths.append(len(ids_k))
    finally:
        for f in files.values():
            f.close()
    index = pa.Table.from_arrays([pa.array(a + keep, pa.int64()), pa.array(ids, pa.string()),
                                  pa.array(kc, pa.int64()), pa.array(lengths, pa.int64())], schema=INDEX_SCHEMA)
    pq.write_table(index, out / "index.parquet")
    return {"docs": len(ids), "pruned": int(len(clusters) - len(keep)), "tokens": int(sum(lengths)),
            "chars": int(sum(map(len, texts)))}


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    plan = load_plan(rd)
    if not 0 <= task < len(plan["tasks"]):
        raise IndexError(f"tokenize has {len(plan['tasks'])} tasks; there is no task {task}")
    t0 = time.perf_counter()
    with atomic_path(part_dir(rd, task)) as tmp:
        tmp.mkdir()
        counts = tokenize_shard(rd, plan, task, tmp, max(1, int(_t(cfg).batch_size)))
        secs = time.perf_counter() - t0
        stats = {"task": task, **counts, "seconds": round(secs, 4),
                 "tokens_per_s": round(counts["tokens"] / max(secs, 1e-9), 1)}
        atomic_write_json(tmp / "stats.json", stats)
    print(f"tokenize task {task}: {counts['docs']} docs, {counts['tokens']:,} tokens in {secs:.2f} s "
          f"({stats['tokens_per_s']:,.0f} tokens/s), {counts['pruned']} pruned docs skipped", flush=True)


# ---------------------------------------------------------------- finalize


def _merge_cluster(rd: RunDir, plan: dict[str, Any], c: int, indexes: list[pa.Table]) -> dict[str, int]:
    """Concatenate cluster c's parts in task order into cluster_c.bin and write its index."""
    itemsize = np.dtype(plan["tokenizer"]["dtype"]).itemsize
    parts = []
    with atomic_path(cluster_bin(rd, c)) as tmp, open(tmp, "wb") as out:
        for t, index in enumerate(indexes):
            mine = index.filter(pc.equal(index.column("cluster"), c))
            if mine.num_rows == 0:
                continue
            part = part_dir(rd, t) / f"cluster_{c:05d}.bin"
            n = mine.column("n_tokens").to_numpy()
            if part.stat().st_size != int((n + 1).sum()) * itemsize:
                raise RuntimeError(f"tokenize: {part} does not match its index; rerun task {t}")
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
            parts.append(mine)
    table = pa.concat_tables(parts)
    n = table.column("n_tokens").to_numpy()
    offsets = np.concatenate([[0], np.cumsum(n + 1)[:-1]]).astype(np.int64)
    idx = pa.Table.from_arrays([table.column("id"), table.column("row"), pa.array(offsets), table.column("n_tokens")],
                               schema=CLUSTER_INDEX_SCHEMA)
    with atomic_path(cluster_index(rd, c)) as tmp:
        pq.write_table(idx, tmp)
    return {"docs": int(len(n)), "tokens": int((n + 1).sum()), "doc_tokens": int(n.sum())}


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """Merge the parts per cluster (clusters in increasing id, parts in task order); write summary.json."""
    plan = load_plan(rd)
    indexes = [pq.read_table(part_dir(rd, t) / "index.parquet") for t in range(len(plan["tasks"]))]
    clusters = sorted({int(c) for ix in indexes for c in ix.column("cluster").to_pylist()})
    per = {c: _merge_cluster(rd, plan, c, indexes) for c in clusters}
    stats = [read_json(part_dir(rd, t) / "stats.json", default={}) for t in range(len(plan["tasks"]))]
    secs = sum(s.get("seconds", 0.0) for s in stats)
    doc_tokens = sum(p["doc_tokens"] for p in per.values())
    docs = sum(p["docs"] for p in per.values())
    if docs != plan["n_kept"]:
        raise RuntimeError(f"tokenize: {docs} docs in the cluster files, {plan['n_kept']} kept in doc_clusters")
    tok = plan["tokenizer"]
    summary = {
        "dtype": tok["dtype"], "vocab_size": tok["vocab_size"], "eos_id": tok["eos_id"], "eos_token": tok["eos_token"],
        "tokenizer": {k: v for k, v in tok.items() if k not in ("dtype", "vocab_size", "eos_id", "eos_token")},
        "tokenizer_dir": str(tokenizer_dir(rd).relative_to(rd.path)),
        "n_docs": plan["n_docs"], "docs": docs, "pruned_docs": plan["n_docs"] - plan["n_kept"],
        "tokens": sum(p["tokens"] for p in per.values()), "doc_tokens": doc_tokens,
        "clusters": {str(c): per[c] for c in clusters},
        "tokenize_seconds": round(secs, 3), "tokens_per_s": round(doc_tokens / max(secs, 1e-9), 1),
        "files": {"tokens": "cluster_{c:05d}.bin", "index": "cluster_{c:05d}.idx.parquet"},
    }
    atomic_write_json(summary_path(rd), summary)
    print("tokenize: " + json.dumps({k: summary[k] for k in ("dtype", "vocab_size", "docs", "tokens", "tokens_per_s")})
          + f", {len(clusters)} clusters", flush=True)


def cluster_ids(rd: RunDir) -> list[int]:
    """The clusters with a token file, in increasing order."""
    return sorted(int(c) for c in (read_json(summary_path(rd)) or {}).get("clusters", {}))


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """BPE encoding of every doc, one task an ingest shard, on the task's cores."""
    return Work("text (CPU)", [ingest.estimate_tasks(cfg, x, led)], threaded=True,
                core_s=x.tokens / rate(cfg, x, "tokenize_tokens_s", led, "tokens/s a core"))


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, prepare=prepare, finalize=finalize,
              reads=lambda cfg: ("ingest", "refine"), outputs=outputs, estimate=estimate)
