"""Stage ``mix``: the chosen mixture -> ``mixture.json`` and the mixed dataset at a token budget.

The mixture is the search's best measured one (``search/result.json``) unless ``mix.weights`` gives
one. Cluster c gets ``weight_c x mix.tokens`` tokens of whole documents: its training documents
(held-out ones excluded, as in the proxy trials) in a seeded random order, taking another pass in a
new order when the cluster runs out (``epochs`` in the summary says how often a small cluster
repeats). One task per cluster with weight > 0 writes its part; finalize interleaves every chosen
document in one seeded shuffled order::

    <run>/mixture.json               weights, where they came from, tokens and epochs per cluster
    mix/parts/cluster_{c:05d}.bin    (+ .idx.parquet) a task's documents (each + EOS)
    mix/tokens.bin                   the mixed dataset: flat token ids (tokenize's dtype), doc + EOS ...
    mix/index.parquet                id, cluster, epoch, offset, n_tokens of each document in tokens.bin
    mix/summary.json                 dtype, eos id, vocab, tokens and docs per cluster
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from climb_hpc.config import ConfigError, section
from climb_hpc.estimate import Inputs, Ledger, Work, rate
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "mix"
log = logging.getLogger("climb_hpc")
INDEX = pa.schema([("id", pa.string()), ("cluster", pa.int64()), ("epoch", pa.int64()), ("offset", pa.int64()),
                   ("n_tokens", pa.int64())])


@dataclass(frozen=True)
class Outputs:
    """What mix writes (the layout above): ``mixture.json`` in the run folder, the rest under ``mix/``."""

    dir: Path
    mixture: Path

    @property
    def tokens(self) -> Path:
        return self.dir / "tokens.bin"

    @property
    def index(self) -> Path:
        return self.dir / "index.parquet"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def part(self, c: int) -> Path:
        """A task's part, without suffix: ``.bin`` and ``.idx.parquet``."""
        return self.dir / "parts" / f"cluster_{c:05d}"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME, rd.path / "mixture.json")


def mix_dir(rd: RunDir) -> Path:
    return outputs(rd).dir


def mixture_path(rd: RunDir) -> Path:
    return outputs(rd).mixture


def _m(cfg: DictConfig) -> DictConfig:
    return section(cfg, "mix")


def chosen_weights(cfg: DictConfig, rd: RunDir) -> tuple[dict[int, float], str, Optional[dict[str, Any]]]:
    """(cluster -> weight, where it came from, the tokenizer they were searched with when known):
    ``mix.weights`` if set, else ``mix.weights_from`` (another run's mixture.json or search/result.json), else
    this run's search's best measured mixture."""
    from climb_hpc.proxy.sampler import normalize_weights

    m = _m(cfg)
    if m.weights:
        given = m.weights
        return normalize_weights(OmegaConf.to_container(given) if isinstance(given, DictConfig) else given), "config", None
    if m.weights_from:
        path = Path(str(m.weights_from)).expanduser().resolve()
        doc = read_json(path)
        weights = (doc or {}).get("best", {}).get("weights") if "best" in (doc or {}) else (doc or {}).get("weights")
        if not isinstance(weights, dict) or not weights:
            raise ConfigError(f"mix.weights_from={path}: no mixture weights there (expected a run's mixture.json "
                              "or search/result.json)")
        return normalize_weights(weights), str(path), doc.get("tokenizer")
    from climb_hpc.search.stage import outputs as search_outputs

    result = read_json(search_outputs(rd).result)
    if result is None:
        raise ConfigError("mix: no mixture: run the search stage first, or give one with mix.weights={0: 0.5, 3: 0.5}")
    return normalize_weights(result["best"]["weights"]), "search", result.get("tokenizer")


def tokenizer_warning(searched: Optional[dict[str, Any]], data: dict[str, Any]) -> Optional[str]:
    """A warning when the weights were searched on data of another tokenizer than the data they mix."""
    from climb_hpc.corpus.tokenizer import identity_text

    if searched is None or searched == data:
        return None
    return (f"the mixture weights were searched on data of another tokenizer ({identity_text(searched)}) than the "
            f"data they mix ({identity_text(data)}): the clusters' token shares, and so the best weights, may differ")


def plan(cfg: DictConfig, rd: RunDir) -> dict[str, Any]:
    """Tokens per cluster from the weights and ``mix.tokens``; written once to ``mixture.json``."""
    from climb_hpc.corpus.tokenize import cluster_ids, data_tokenizer

    weights, source, searched = chosen_weights(cfg, rd)
    data = data_tokenizer(rd)
    warning = tokenizer_warning(searched, data)
    if warning:
        log.warning("mix: %s", warning)
    unknown = sorted(set(weights) - set(cluster_ids(rd)))
    if unknown:
        raise ConfigError(f"mix: the mixture weights clusters {unknown} that this run does not have")
    budget = int(_m(cfg).tokens)
    from climb_hpc.proxy.sampler import exact_counts

    clusters = sorted(c for c, w in weights.items() if w > 0)
    want = exact_counts(np.array([weights[c] for c in clusters]), budget)
    p = {"weights": {str(c): weights[c] for c in sorted(weights)}, "source": source, "tokens": budget,
         "holdout_fraction": float(cfg.proxy.holdout_fraction), "seed": _seed(cfg),
         "clusters": {str(c): {"tokens_target": int(t)} for c, t in zip(clusters, want, strict=True)},
         "tokenizer": data, **({"warnings": [warning]} if warning else {})}
    stored = read_json(mixture_path(rd))
    if stored is not None:
        same = {k: stored.get(k) for k in ("weights", "tokens", "holdout_fraction", "seed")}
        if same != {k: p[k] for k in same}:
            raise RuntimeError(f"{mixture_path(rd)} was planned with another mixture or budget; use a new run folder "
                               f"or remove it, {mix_dir(rd)} and {rd.marker_dir(NAME)}")
        return stored
    atomic_write_json(mixture_path(rd), p)
    return p


def _seed(cfg: DictConfig) -> int:
    s = _m(cfg).get("seed")
    return int(cfg.seed if s is None else s)


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    plan(cfg, rd)


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    p = read_json(mixture_path(rd))
    if p is None:
        raise FileNotFoundError(f"{mixture_path(rd)} is missing: the mix stage has not been prepared")
    return len(p["clusters"])


def reads(cfg: DictConfig) -> tuple[str, ...]:
    """The token stores, and the search's result unless ``mix.weights`` / ``weights_from`` give the mixture."""
    m = _m(cfg)
    return ("tokenize",) if m.weights or m.weights_from else ("tokenize", "search")


def select_docs(n_tokens: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(doc indices, epoch of each): whole docs in seeded random order, passes repeated, until >= target tokens."""
    if target <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    per_pass = int(n_tokens.sum())
    full = target // per_pass
    picks, epochs = [], []
    for e in range(full):
        picks.append(rng.permutation(len(n_tokens)))
        epochs.append(np.full(len(n_tokens), e))
    rest = target - full * per_pass
    if rest > 0:
        order = rng.permutation(len(n_tokens))
        k = int(np.searchsorted(np.cumsum(n_tokens[order]), rest)) + 1  # the doc that crosses the target, included
        picks.append(order[:k])
        epochs.append(np.full(k, full))
    return np.concatenate(picks), np.concatenate(epochs)


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    from climb_hpc.corpus.tokenize import load_cluster
    from climb_hpc.proxy.sampler import heldout_mask

    p = read_json(mixture_path(rd))
    c = sorted(int(k) for k in p["clusters"])[task]
    tokens, index = load_cluster(rd, c)
    keep = np.flatnonzero(~heldout_mask(index.column("id").to_pylist(), p["holdout_fraction"]))
    n = index.column("n_tokens").to_numpy()[keep] + 1  # + EOS
    rng = np.random.default_rng([p["seed"], zlib.crc32(NAME.encode()), c])
    docs, epochs = select_docs(n, p["clusters"][str(c)]["tokens_target"], rng)
    rows = keep[docs]
    offsets = index.column("offset").to_numpy()[rows]
    lengths = n[docs]
    part = outputs(rd).part(c)
    with atomic_path(part.with_suffix(".bin")) as tmp, open(tmp, "wb") as f:
        for a, k in zip(offsets, lengths, strict=True):
            f.write(np.asarray(tokens[a:a + k]).tobytes())
    out_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    table = pa.Table.from_arrays([index.column("id").take(pa.array(rows)), pa.array(np.full(len(rows), c)),
                                  pa.array(epochs), pa.array(out_offsets.astype(np.int64)),
                                  pa.array((lengths - 1).astype(np.int64))], schema=INDEX)
    with atomic_path(part.with_suffix(".idx.parquet")) as tmp:
        pq.write_table(table, tmp)
    print(f"mix task {task}: cluster {c}: {len(rows)} docs, {int(lengths.sum()):,} tokens "
          f"(target {p['clusters'][str(c)]['tokens_target']:,}, {int(epochs.max(initial=-1)) + 1} pass(es))", flush=True)


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """Interleave every cluster's documents in one seeded order into ``mix/tokens.bin`` + ``index.parquet``."""
    from climb_hpc.corpus.tokenize import summary_path

    p = read_json(mixture_path(rd))
    s = read_json(summary_path(rd))
    dtype = np.dtype(s["dtype"])
    parts, tables = {}, []
    for c in sorted(int(k) for k in p["clusters"]):
        base = outputs(rd).part(c)
        parts[c] = np.memmap(base.with_suffix(".bin"), dtype=dtype, mode="r")
        tables.append(pq.read_table(base.with_suffix(".idx.parquet")))
    table = pa.concat_tables(tables)
    order = np.random.default_rng([p["seed"], zlib.crc32(b"mix-order")]).permutation(table.num_rows)
    cl = table.column("cluster").to_numpy()[order]
    src = table.column("offset").to_numpy()[order]
    n = table.column("n_tokens").to_numpy()[order] + 1
    with atomic_path(outputs(rd).tokens) as tmp, open(tmp, "wb") as f:
        for c, a, k in zip(cl, src, n, strict=True):
            f.write(np.asarray(parts[int(c)][a:a + k]).tobytes())
    out = table.take(pa.array(order)).set_column(3, "offset", pa.array(np.concatenate([[0], np.cumsum(n)[:-1]])))
    with atomic_path(outputs(rd).index) as tmp:
        pq.write_table(out, tmp)
    per = {}
    for c in sorted(parts):
        sel = cl == c
        per[str(c)] = {"docs": int(sel.sum()), "tokens": int(n[sel].sum()),
                       "tokens_target": p["clusters"][str(c)]["tokens_target"],
                       "epochs": int(table.column("epoch").to_numpy()[order][sel].max(initial=-1)) + 1}
    summary = {"dtype": s["dtype"], "eos_id": s["eos_id"], "vocab_size": s["vocab_size"], "docs": int(len(order)),
               "tokens": int(n.sum()), "tokens_target": p["tokens"], "clusters": per,
               "tokenizer_dir": s["tokenizer_dir"], "files": {"tokens": outputs(rd).tokens.name, "index": outputs(rd).index.name}}
    atomic_write_json(outputs(rd).summary, summary)
    atomic_write_json(mixture_path(rd), {**p, "clusters": {c: {**p["clusters"][c], **per[c]} for c in per}})
    print(f"mix: {summary['docs']:,} docs, {summary['tokens']:,} tokens (target {p['tokens']:,}) from "
          f"{len(per)} clusters -> {outputs(rd).tokens}", flush=True)


def load_mixed(rd: RunDir) -> tuple[np.ndarray, pa.Table, dict[str, Any]]:
    """(tokens memmap, index, summary) of the mixed dataset."""
    out = outputs(rd)
    s = read_json(out.summary)
    if s is None:
        raise FileNotFoundError(f"{out.summary} is missing: the mix stage has not finished")
    return np.memmap(out.tokens, dtype=s["dtype"], mode="r"), pq.read_table(out.index), s


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Gathering whole documents into mix/tokens.bin, one task a final cluster (an upper bound before refine ran)."""
    r = cfg.clusters.refine
    clusters = int(r.get("target_clusters") or r.get("max_clusters") or 40)
    led.use("final clusters", clusters, "clusters.refine.target_clusters or max_clusters (an upper bound)")
    tokens = led.use("mixed tokens", float(_m(cfg).tokens), "mix.tokens")
    return Work("text (CPU)", [clusters], core_s=tokens / rate(cfg, x, "mix_tokens_s", led, "tokens/s a core"))


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, prepare=prepare,
              resources=lambda cfg: Resources.from_config(_m(cfg)), finalize=finalize,
              reads=reads, outputs=outputs, estimate=estimate)
