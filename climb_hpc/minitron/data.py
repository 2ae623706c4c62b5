"""Training windows for the Minitron phases, planned up front from the seed.

A phase trains on windows of ``seq_len + 1`` tokens. Sequence ``i`` of the plan is fixed by the seed,
and optimizer step ``s`` uses sequences ``[s * G, (s + 1) * G)`` (G = global batch): rank ``r`` takes
micro-batch ``m`` at ``s * G + (m * world + r) * micro``. The data position is thus the step number;
a resumed run needs no sampler state.

Sources: the mixture (the default): the clusters' training stores sampled at the mixture's weights, as
a trainer reads the blend the mix stage writes, with no copy of the data; or a given store (a Megatron
``PREFIX.bin`` + ``.idx``, a flat ``.bin`` of the run's token dtype, or a folder of them: the
materialised mix or one with ``tokens.bin`` + ``summary.json``), or a JSONL file tokenized with the run's
tokenizer; and, for the tiny teacher's pretraining, every cluster at its natural share. Validation is
held out: the clusters' held-out documents (tokenize's ``heldout`` stores), or the tail of a given
source (never drawn for training).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

import numpy as np

from climb_hpc.rundir import read_json

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir


class Plan(Protocol):
    def __len__(self) -> int: ...

    def sequences(self, first: int, count: int) -> np.ndarray: ...


class TokenWindows:
    """``num_sequences`` windows of ``seq_len + 1`` tokens of ``tokens[:end]`` at seeded uniform starts."""

    def __init__(self, tokens: np.ndarray, seq_len: int, num_sequences: int, seed: int, end: Optional[int] = None):
        self.tokens, self.seq_len = tokens, int(seq_len)
        end = len(tokens) if end is None else int(end)
        if end < self.seq_len + 1:
            raise ValueError(f"{end} training tokens cannot fill one window of {self.seq_len + 1}")
        rng = np.random.default_rng([int(seed), zlib.crc32(b"minitron-windows")])
        self.start = rng.integers(0, end - self.seq_len, size=int(num_sequences))

    def __len__(self) -> int:
        return len(self.start)

    def sequences(self, first: int, count: int) -> np.ndarray:
        if first < 0 or first + count > len(self):
            raise IndexError(f"sequences [{first}, {first + count}) of a plan of {len(self)}")
        n = self.seq_len + 1
        return np.stack([np.asarray(self.tokens[a:a + n], dtype=np.int64) for a in self.start[first:first + count]])


@dataclass
class PhaseData:
    train: Plan
    val: np.ndarray  # [n, seq_len + 1] int64: the validation windows
    source: str
    train_tokens: int  # tokens the training windows are drawn from


def micro_batch(plan: Plan, step: int, micro_index: int, rank: int, world: int, micro: int,
                global_batch: int) -> np.ndarray:
    """The ``micro_index``-th micro-batch of rank ``rank`` at optimizer step ``step`` (0-based)."""
    return plan.sequences(step * global_batch + (micro_index * world + rank) * micro, micro)


def val_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows covering ``tokens`` (the remainder is dropped)."""
    n = seq_len + 1
    k = len(tokens) // n
    return np.asarray(tokens[:k * n], dtype=np.int64).reshape(k, n)


def split(tokens: np.ndarray, val_tokens: int, seq_len: int) -> tuple[int, np.ndarray]:
    """(end of the training part, validation windows): the last ``val_tokens`` (at most 10 %) are held out."""
    val = min(int(val_tokens), len(tokens) // 10)
    if val < seq_len + 1:
        raise ValueError(f"{len(tokens)} tokens leave no validation window of {seq_len + 1} (val_tokens={val_tokens})")
    end = len(tokens) - val
    return end, val_windows(tokens[end:], seq_len)


def _run_tokens_dtype(rd: RunDir) -> str:
    from climb_hpc.corpus.tokenize import summary_path

    s = read_json(summary_path(rd))
    if s is None:
        raise FileNotFoundError(f"{summary_path(rd)} is missing: run the tokenize stage first")
    return str(s["dtype"])


def _jsonl_tokens(rd: RunDir, path: Path, text_field: str) -> np.ndarray:
    """Every record's ``text_field``, tokenized with the run's tokenizer, each followed by EOS."""
    from climb_hpc.corpus.tokenize import summary_path, tokenizer_dir
    from climb_hpc.corpus.tokenizer import load_fast

    tok, eos = load_fast(tokenizer_dir(rd)), int(read_json(summary_path(rd))["eos_id"])
    out: list[int] = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out += [*tok.encode(json.loads(line)[text_field]).ids, eos]
    return np.asarray(out, dtype=np.int64)


def _folder_tokens(p: Path) -> tuple[object, str]:
    from climb_hpc.corpus.store import Concat, Store

    prefixes = sorted(q.with_suffix("") for q in p.glob("*.idx"))
    if prefixes:
        return Concat(Store(q).tokens for q in prefixes), f"{p}: {len(prefixes)} store(s)"
    s = read_json(p / "summary.json")
    if s is None or not (p / "tokens.bin").exists():
        raise FileNotFoundError(f"{p} is a folder without Megatron stores (*.bin + *.idx) or tokens.bin + "
                                "summary.json: give a token store or a JSONL file")
    return np.memmap(p / "tokens.bin", dtype=s["dtype"], mode="r"), str(p / "tokens.bin")


def load_tokens(rd: RunDir, path: str, text_field: str = "text") -> tuple[np.ndarray, str]:
    """(flat token ids, a description) of a given source: a store (Megatron prefix, flat .bin, a folder of
    stores) or a JSONL file."""
    p = Path(path)
    if p.is_dir():
        return _folder_tokens(p)  # type: ignore[return-value]
    if p.name.endswith(".jsonl"):
        return _jsonl_tokens(rd, p, text_field), str(p)
    if p.suffix == ".bin" and p.with_suffix(".idx").exists():
        from climb_hpc.corpus.store import Store

        return Store(p.with_suffix("")).tokens, str(p)
    if p.suffix == ".bin":
        return np.memmap(p, dtype=_run_tokens_dtype(rd), mode="r"), str(p)
    raise ValueError(f"data={path}: expected a token store (.bin, a Megatron .bin + .idx, or a folder of them), "
                     "or a .jsonl file")


def mixture_weights(rd: RunDir) -> dict[int, float]:
    """The chosen mixture's weights (``mixture.json``, written by the mix stage)."""
    from climb_hpc.search.mix import mixture_path

    p = read_json(mixture_path(rd))
    if p is None:
        raise FileNotFoundError(f"{mixture_path(rd)} is missing: run the mix stage first, or give data=PATH")
    return {int(c): float(w) for c, w in p["weights"].items() if float(w) > 0}


def flat_data(rd: RunDir, path: Optional[str], seq_len: int, num_sequences: int, seed: int, val_tokens: int,
              text_field: str = "text") -> PhaseData:
    """The mixture (``path`` None: sampled from the blend, validation on the held-out documents), else a source."""
    if not path:
        return cluster_data(rd, seq_len, num_sequences, seed, None, val_tokens, mixture_weights(rd))
    tokens, source = load_tokens(rd, path, text_field)
    end, val = split(tokens, val_tokens, seq_len)
    return PhaseData(TokenWindows(tokens, seq_len, num_sequences, seed, end), val, source, end)


def mixture_plan(rd: RunDir, seq_len: int, num_sequences: int, seed: int) -> Plan:
    """Windows of the mixture's training documents at its weights (no validation)."""
    from climb_hpc.proxy.sampler import MixtureSampler, training_streams

    weights = mixture_weights(rd)
    return MixtureSampler(training_streams(rd, sorted(weights)), weights, seq_len, num_sequences, seed)


def heldout_tokens(rd: RunDir, clusters: list[int], max_tokens: int, seed: int) -> np.ndarray:
    """Up to ``max_tokens`` of the clusters' held-out documents (each + EOS), whole documents in one seeded
    order over all of them (clusters interleaved)."""
    from climb_hpc.corpus.tokenize import cluster_stores

    stores = [s for c in clusters for s in cluster_stores(rd, c, "heldout")]
    cum = np.concatenate([[0], np.cumsum([len(s) for s in stores])]).astype(np.int64)
    out, n = [], 0
    for g in np.random.default_rng([int(seed), zlib.crc32(b"minitron-val")]).permutation(int(cum[-1])):
        if n >= max_tokens:
            break
        k = int(np.searchsorted(cum, g, side="right")) - 1
        doc = stores[k].doc(int(g - cum[k])).astype(np.int64)
        out.append(doc)
        n += len(doc)
    return np.concatenate(out)[:max_tokens] if out else np.zeros(0, np.int64)


def cluster_data(rd: RunDir, seq_len: int, num_sequences: int, seed: int, holdout: Optional[float],
                 val_tokens: int, weights: Optional[dict[int, float]] = None) -> PhaseData:
    """Clusters' training streams at ``weights`` (None: every cluster at its natural share of tokens);
    validation = their held-out documents. ``holdout``: the fraction the caller expects the stores to hold
    out (None: whatever tokenize used)."""
    from climb_hpc.corpus.tokenize import cluster_ids
    from climb_hpc.proxy.sampler import MixtureSampler, stored_holdout, training_streams

    holdout = stored_holdout(rd, holdout)
    clusters = cluster_ids(rd) if weights is None else sorted(weights)
    streams = training_streams(rd, clusters)
    weights = {c: float(s.total) for c, s in streams.items()} if weights is None else weights
    val = val_windows(heldout_tokens(rd, clusters, int(val_tokens), seed), seq_len)
    if len(val) == 0:
        raise ValueError(f"no held-out validation window of {seq_len + 1} tokens (holdout_fraction={holdout})")
    sampler = MixtureSampler(streams, weights, seq_len, num_sequences, seed)
    train = int(sum(streams[c].total for c in clusters))
    return PhaseData(sampler, val, f"tokenize: {len(clusters)} clusters", train)
