"""Stage ``mix``: the chosen mixture -> ``mixture.json`` and a blend of the token stores that trainers read.

The mixture is the search's answer (``search/result.json``: the best measured mixture, or the final predictor's
pick, as ``search.final`` says) unless ``mix.weights`` gives one. Cluster c's weight is spread over its training stores (tokenize's ``train`` stores, held-out
documents excluded, as in the proxy trials) in proportion to their tokens, so that a trainer sampling
the blend by its weights draws each cluster's share of tokens::

    <run>/mixture.json               weights, where they came from; per cluster: tokens at mix.tokens, epochs
    mix/megatron_data_args.txt       "weight prefix" pairs: Megatron-LM --data-args-path (or --data-path $(cat ..))
    mix/blend.json, mix/blend.yaml   the same as NeMo's `paths` [w, prefix, ...] and Megatron-Bridge's
                                     blend [[prefixes], [weights]]
    mix/summary.json                 dtype, eos id, vocab, the blend's stores, tokens per cluster
    mix/data/shard_{t:05d}.bin/.idx  with mix.materialize=true only: the mixed dataset at mix.tokens as
                                     Megatron stores (+ .ids.parquet: id, cluster, epoch), one a task;
                                     mix/data/megatron_data_args.txt weighs them by their tokens

Nothing is copied unless ``mix.materialize`` is set: then task t takes, from every weighted cluster's
store of tokenize part t, whole documents up to that store's share of the cluster's tokens (a seeded
random order, repeated in a new order when a store runs out: ``epochs``), shuffles them together
(seeded) and writes shard t. The same selection gives the Parquet export (``climb_hpc.search.export``).
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
from climb_hpc.rundir import atomic_write, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.corpus.store import Store
    from climb_hpc.rundir import RunDir

NAME = "mix"
log = logging.getLogger("climb_hpc")
IDS = pa.schema([("id", pa.string()), ("cluster", pa.int64()), ("epoch", pa.int64())])


@dataclass(frozen=True)
class Outputs:
    """What mix writes (the layout above): ``mixture.json`` in the run folder, the rest under ``mix/``."""

    dir: Path
    mixture: Path

    @property
    def megatron(self) -> Path:
        return self.dir / "megatron_data_args.txt"

    @property
    def blend_json(self) -> Path:
        return self.dir / "blend.json"

    @property
    def blend_yaml(self) -> Path:
        return self.dir / "blend.yaml"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def shards_megatron(self) -> Path:
        """The materialised shards as a Megatron blend (weights: their tokens)."""
        return self.dir / "data" / "megatron_data_args.txt"

    def shard(self, t: int) -> Path:
        """A materialised shard's prefix (``.bin``, ``.idx``, ``.ids.parquet``)."""
        return self.dir / "data" / f"shard_{t:05d}"


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
    this run's search's answer under ``search.final`` (its best measured mixture, or its predictor's pick)."""
    from climb_hpc.proxy.sampler import normalize_weights

    m = _m(cfg)
    if m.weights:
        given = m.weights
        return normalize_weights(OmegaConf.to_container(given) if isinstance(given, DictConfig) else given), "config", None
    if m.weights_from:
        path = Path(str(m.weights_from)).expanduser().resolve()
        doc = read_json(path)
        weights = _answer(doc)["weights"] if "best" in (doc or {}) else (doc or {}).get("weights")
        if not isinstance(weights, dict) or not weights:
            raise ConfigError(f"mix.weights_from={path}: no mixture weights there (expected a run's mixture.json "
                              "or search/result.json)")
        return normalize_weights(weights), str(path), doc.get("tokenizer")
    from climb_hpc.search.stage import outputs as search_outputs

    result = read_json(search_outputs(rd).result)
    if result is None:
        raise ConfigError("mix: no mixture: run the search stage first, or give one with mix.weights={0: 0.5, 3: 0.5}")
    return normalize_weights(_answer(result, str(cfg.search.final))["weights"]), "search", result.get("tokenizer")


def _answer(result: dict[str, Any], choice: Optional[str] = None) -> dict[str, Any]:
    """A search result.json's answer under ``search.final=choice`` (None: the one it recorded); see
    ``climb_hpc.search.final.final_answer``."""
    from climb_hpc.search.final import final_answer

    try:
        return final_answer(result, choice)
    except ValueError as e:
        raise ConfigError(f"mix: {e}") from e


def tokenizer_warning(searched: Optional[dict[str, Any]], data: dict[str, Any]) -> Optional[str]:
    """A warning when the weights were searched on data of another tokenizer than the data they mix."""
    from climb_hpc.corpus.tokenizer import identity_text

    if searched is None or searched == data:
        return None
    return (f"the mixture weights were searched on data of another tokenizer ({identity_text(searched)}) than the "
            f"data they mix ({identity_text(data)}): the clusters' token shares, and so the best weights, may differ")


def train_tokens(rd: RunDir) -> dict[int, dict[int, int]]:
    """cluster -> {part: tokens (EOS included) of its train store there}, from tokenize's summary."""
    from climb_hpc.corpus.tokenize import load_summary

    out = {}
    for c, v in load_summary(rd)["clusters"].items():
        out[int(c)] = {int(t): int(p["train"]["tokens"]) for t, p in v["parts"].items() if p["train"]["docs"] > 0}
    return out


def plan(cfg: DictConfig, rd: RunDir) -> dict[str, Any]:
    """Tokens per cluster from the weights and ``mix.tokens``; written once to ``mixture.json``."""
    from climb_hpc.corpus.tokenize import cluster_ids, data_tokenizer
    from climb_hpc.proxy.sampler import exact_counts, stored_holdout

    weights, source, searched = chosen_weights(cfg, rd)
    data = data_tokenizer(rd)
    warning = tokenizer_warning(searched, data)
    if warning:
        log.warning("mix: %s", warning)
    unknown = sorted(set(weights) - set(cluster_ids(rd)))
    if unknown:
        raise ConfigError(f"mix: the mixture weights clusters {unknown} that this run does not have")
    have = train_tokens(rd)
    empty = sorted(c for c, w in weights.items() if w > 0 and not have.get(c))
    if empty:
        raise ConfigError(f"mix: the mixture weights clusters {empty} that have no training documents "
                          "(all held out or pruned)")
    budget = int(_m(cfg).tokens)
    clusters = sorted(c for c, w in weights.items() if w > 0)
    want = exact_counts(np.array([weights[c] for c in clusters]), budget)
    per = {}
    for c, t in zip(clusters, want, strict=True):
        total = sum(have[c].values())
        per[str(c)] = {"tokens_target": int(t), "train_tokens": total, "epochs": round(int(t) / total, 4)}
    p = {"weights": {str(c): weights[c] for c in sorted(weights)}, "source": source, "tokens": budget,
         "holdout_fraction": stored_holdout(rd, float(cfg.proxy.holdout_fraction)), "seed": _seed(cfg),
         "materialize": bool(_m(cfg).get("materialize")),
         "clusters": per, "tokenizer": data, **({"warnings": [warning]} if warning else {})}
    stored = read_json(mixture_path(rd))
    if stored is not None:
        same = {k: stored.get(k) for k in ("weights", "tokens", "holdout_fraction", "seed", "materialize")}
        if same != {k: p[k] for k in same}:
            raise RuntimeError(f"{mixture_path(rd)} was planned with another mixture or budget; use a new run folder "
                               f"or remove it, {mix_dir(rd)} and {rd.marker_dir(NAME)}")
        return stored
    atomic_write_json(mixture_path(rd), p)
    return p


def blend(rd: RunDir, weights: dict[str, float]) -> list[tuple[float, str]]:
    """(weight, absolute store prefix) pairs: a cluster's weight spread over its train stores by their tokens.
    The weights sum to 1; a trainer sampling by them draws each cluster's share of the tokens."""
    from climb_hpc.corpus.tokenize import outputs as tok_outputs

    have = train_tokens(rd)
    out = []
    for c in sorted(int(k) for k, w in weights.items() if float(w) > 0):
        total = sum(have[c].values())
        for t, n in sorted(have[c].items()):
            out.append((float(weights[str(c)]) * n / total, str(tok_outputs(rd).store(t, c, "train").resolve())))
    return out


def write_blend(rd: RunDir, pairs: list[tuple[float, str]]) -> None:
    """The blend in Megatron-LM's, NeMo's and Megatron-Bridge's spellings."""
    out = outputs(rd)
    atomic_write(out.megatron, "".join(f"{w!r} {p}\n" for w, p in pairs))
    flat: list[Any] = [x for w, p in pairs for x in (w, p)]
    atomic_write_json(out.blend_json, {"paths": flat, "blend": [[p for _, p in pairs], [w for w, _ in pairs]]})
    atomic_write(out.blend_yaml, OmegaConf.to_yaml(OmegaConf.create(
        {"paths": flat, "blend": [[p for _, p in pairs], [w for w, _ in pairs]]})))


def _seed(cfg: DictConfig) -> int:
    s = _m(cfg).get("seed")
    return int(cfg.seed if s is None else s)


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    p = plan(cfg, rd)
    mix_dir(rd).mkdir(parents=True, exist_ok=True)
    write_blend(rd, blend(rd, p["weights"]))


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    """One task a tokenize part when materialising, else none (the blend needs no copy)."""
    from climb_hpc.corpus.tokenize import load_summary

    p = read_json(mixture_path(rd))
    if p is None:
        raise FileNotFoundError(f"{mixture_path(rd)} is missing: the mix stage has not been prepared")
    return int(load_summary(rd)["parts"]) if p.get("materialize") else 0


def reads(cfg: DictConfig) -> tuple[str, ...]:
    """The token stores, and the search's result unless ``mix.weights`` / ``weights_from`` give the mixture."""
    m = _m(cfg)
    return ("tokenize",) if m.weights or m.weights_from else ("tokenize", "search")


def select_docs(n_tokens: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(doc indices, epoch of each): whole docs in seeded random order, passes repeated, until >= target tokens."""
    if target <= 0 or len(n_tokens) == 0:
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


@dataclass
class Picked:
    """Documents of one cluster's train store in tokenize part t, chosen for a budget."""

    cluster: int
    prefix: Path
    store: Store
    docs: np.ndarray    # indices into the store
    epochs: np.ndarray

    def doc_ids(self, columns: tuple[str, ...] = ("id",)) -> pa.Array:
        """The picked documents' ids (or another column of the store's side table), in ``docs`` order."""
        from climb_hpc.corpus.tokenize import store_ids

        return store_ids(self.prefix).column(columns[0]).take(pa.array(self.docs))


def part_targets(rd: RunDir, weights: dict[str, float], budget: int) -> dict[int, dict[int, int]]:
    """cluster -> {part: tokens wanted from its train store there}: the cluster's share of ``budget``
    (largest remainder), split over its stores by their tokens (largest remainder)."""
    from climb_hpc.proxy.sampler import exact_counts

    have = train_tokens(rd)
    clusters = sorted(int(c) for c, w in weights.items() if float(w) > 0)
    want = exact_counts(np.array([float(weights[str(c)]) for c in clusters]), int(budget))
    out = {}
    for c, n in zip(clusters, want, strict=True):
        parts = sorted(have[c])
        sizes = np.array([have[c][t] for t in parts], np.float64)
        out[c] = dict(zip(parts, map(int, exact_counts(sizes / sizes.sum(), int(n))), strict=True))
    return out


def pick_part(rd: RunDir, weights: dict[str, float], budget: int, seed: int, t: int) -> list[Picked]:
    """What part ``t`` contributes to the mixture at ``budget`` tokens, cluster by cluster (seeded per cluster
    and part, so every part is chosen independently, by its own task)."""
    from climb_hpc.corpus.store import Store
    from climb_hpc.corpus.tokenize import outputs as tok_outputs

    out = []
    for c, parts in part_targets(rd, weights, budget).items():
        if t not in parts:
            continue
        prefix = tok_outputs(rd).store(t, c, "train")
        store = Store(prefix)
        rng = np.random.default_rng([seed, zlib.crc32(NAME.encode()), c, t])
        docs, epochs = select_docs(store.lengths.astype(np.int64), parts[t], rng)
        out.append(Picked(c, prefix, store, docs, epochs))
    return out


def shuffled(picked: list[Picked], seed: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(which Picked, which of its docs) of part ``t``'s documents in one seeded order."""
    which = np.concatenate([np.full(len(p.docs), i) for i, p in enumerate(picked)]) if picked else np.zeros(0, int)
    k = np.concatenate([np.arange(len(p.docs)) for p in picked]) if picked else np.zeros(0, int)
    order = np.random.default_rng([seed, zlib.crc32(b"mix-order"), t]).permutation(len(which))
    return which[order], k[order]


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    """Materialise shard ``task``: part ``task``'s picks of every cluster, shuffled, as a Megatron store."""
    from climb_hpc.corpus.store import StoreWriter
    from climb_hpc.corpus.tokenize import load_summary

    p = read_json(mixture_path(rd))
    picked = pick_part(rd, p["weights"], p["tokens"], p["seed"], task)
    which, k = shuffled(picked, p["seed"], task)
    prefix = outputs(rd).shard(task)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if len(which) == 0:  # Megatron cannot open an empty store: a part with nothing chosen writes none
        atomic_write_json(Path(str(prefix) + ".stats.json"), {"docs": 0, "tokens": 0, "clusters": {}})
        print(f"mix task {task}: nothing chosen from this part", flush=True)
        return
    doc_ids = [pk.doc_ids().to_pylist() for pk in picked]
    ids, clusters, epochs, tokens = [], [], [], 0
    stem = prefix.parent / f".{prefix.name}.tmp"
    with StoreWriter(stem, np.dtype(load_summary(rd)["dtype"])) as w:
        for i, j in zip(which.tolist(), k.tolist(), strict=True):
            pk = picked[i]
            doc = pk.store.doc(int(pk.docs[j]))
            w.add(doc)
            tokens += len(doc)
            ids.append(doc_ids[i][j])
            clusters.append(pk.cluster)
            epochs.append(int(pk.epochs[j]))
    pq.write_table(pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(clusters, pa.int64()),
                                        pa.array(epochs, pa.int64())], schema=IDS), str(stem) + ".ids.parquet")
    for suffix in (".bin", ".ids.parquet", ".idx"):  # the index last: a store without it is not a store
        Path(str(stem) + suffix).replace(str(prefix) + suffix)
    atomic_write_json(Path(str(prefix) + ".stats.json"),
                      {"docs": len(ids), "tokens": tokens,
                       "clusters": {str(pk.cluster): {"docs": len(pk.docs), "tokens": int(pk.store.lengths[pk.docs].sum()),
                                                      "epochs": int(pk.epochs.max(initial=-1)) + 1} for pk in picked}})
    print(f"mix task {task}: {len(ids)} docs, {tokens:,} tokens from {len(picked)} cluster(s) -> {prefix}", flush=True)


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """summary.json: the blend, and the materialised shards' counts (a sum of the tasks' stats)."""
    from climb_hpc.corpus.tokenize import load_summary

    p = read_json(mixture_path(rd))
    s = load_summary(rd)
    pairs = blend(rd, p["weights"])
    per = {c: {"tokens_target": v["tokens_target"], "train_tokens": v["train_tokens"], "epochs": v["epochs"]}
           for c, v in p["clusters"].items()}
    summary = {"dtype": s["dtype"], "eos_id": s["eos_id"], "vocab_size": s["vocab_size"],
               "tokenizer_dir": s["tokenizer_dir"], "tokens_target": p["tokens"], "stores": len(pairs),
               "blend": {"megatron": outputs(rd).megatron.name, "json": outputs(rd).blend_json.name,
                         "yaml": outputs(rd).blend_yaml.name}}
    if p.get("materialize"):
        docs = tokens = 0
        written: dict[str, dict[str, int]] = {}
        shard_tokens: list[tuple[int, int]] = []
        for t in range(int(s["parts"])):
            st = read_json(Path(str(outputs(rd).shard(t)) + ".stats.json"))
            if st is None:
                raise RuntimeError(f"mix: shard {t} has no stats; rerun task {t}")
            shard_tokens.append((st["tokens"], t))
            docs, tokens = docs + st["docs"], tokens + st["tokens"]
            for c, v in st["clusters"].items():
                w = written.setdefault(c, {"docs": 0, "tokens": 0, "epochs": 0})
                w["docs"] += v["docs"]
                w["tokens"] += v["tokens"]
                w["epochs"] = max(w["epochs"], v["epochs"])
        for c, w in written.items():
            per[c].update({"docs": w["docs"], "tokens": w["tokens"], "passes": w["epochs"]})
        atomic_write(outputs(rd).shards_megatron, "".join(f"{n / max(tokens, 1)!r} {outputs(rd).shard(t).resolve()}\n"
                                                          for n, t in shard_tokens if n > 0))
        summary.update({"docs": docs, "tokens": tokens, "shards": int(s["parts"]),
                        "files": {"shards": "data/shard_{t:05d}", "format": "megatron MMIDIDX .bin/.idx"}})
    summary["clusters"] = per
    atomic_write_json(outputs(rd).summary, summary)
    atomic_write_json(mixture_path(rd), {**p, "clusters": {c: {**p["clusters"][c], **per[c]} for c in per}})
    what = (f"{summary['docs']:,} docs, {summary['tokens']:,} tokens in {summary['shards']} shard(s)"
            if p.get("materialize") else "nothing copied")
    print(f"mix: a blend of {len(pairs)} store(s) from {len(per)} cluster(s) -> {outputs(rd).megatron}; {what}",
          flush=True)


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """The blend costs nothing; with ``mix.materialize`` whole documents are copied into shards, one task a
    tokenize part."""
    if not _m(cfg).get("materialize"):  # the blend's files, written in prepare: about a second
        return Work("text (CPU)", [1], core_s=1.0)
    from climb_hpc.corpus import ingest

    parts = min(ingest.estimate_tasks(cfg, x, led), int(cfg.tokenize.max_parts))
    tokens = led.use("mixed tokens", float(_m(cfg).tokens), "mix.tokens")
    return Work("text (CPU)", [parts], core_s=tokens / rate(cfg, x, "mix_tokens_s", led, "tokens/s a core"))


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, prepare=prepare,
              resources=lambda cfg: Resources.from_config(_m(cfg)), finalize=finalize,
              reads=reads, outputs=outputs, estimate=estimate)
