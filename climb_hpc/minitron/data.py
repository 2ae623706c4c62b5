"""Training windows for the Minitron phases, planned up front from the seed.

A phase trains on windows of ``seq_len + 1`` tokens. Sequence ``i`` of the plan is fixed by the seed,
and optimizer step ``s`` uses sequences ``[s * G, (s + 1) * G)`` (G = global batch): rank ``r`` takes
micro-batch ``m`` at ``s * G + (m * world + r) * micro``. The data position is thus the step number;
a resumed run needs no sampler state.

Sources: the mixed dataset (``mix/tokens.bin``, the default), a token store (a ``.bin`` of the run's
token dtype, or a folder with ``tokens.bin`` + ``summary.json``), or a JSONL file tokenized with the
run's tokenizer; and, for the tiny teacher's pretraining, every cluster's token store. Validation is a
held-out slice: the tail of a flat token source (never drawn for training), or the held-out documents
of the clusters.
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


def load_tokens(rd: RunDir, path: Optional[str], text_field: str = "text") -> tuple[np.ndarray, str]:
    """(flat token ids, a description): the mixed dataset when ``path`` is None, else a store or JSONL."""
    if not path:  # the mixed dataset's tokens only: its document index is not needed here
        from climb_hpc.search.mix import outputs as mix_outputs

        mix = mix_outputs(rd)
        s = read_json(mix.summary)
        if s is None:
            raise FileNotFoundError(f"{mix.summary} is missing: the mix stage has not finished")
        return np.memmap(mix.tokens, dtype=s["dtype"], mode="r"), str(mix.tokens)
    p = Path(path)
    if p.is_dir():
        s = read_json(p / "summary.json")
        if s is None:
            raise FileNotFoundError(f"{p} is a folder without summary.json: give a token store or a JSONL file")
        return np.memmap(p / "tokens.bin", dtype=s["dtype"], mode="r"), str(p / "tokens.bin")
    if p.name.endswith(".jsonl"):
        return _jsonl_tokens(rd, p, text_field), str(p)
    if p.suffix == ".bin":
        return np.memmap(p, dtype=_run_tokens_dtype(rd), mode="r"), str(p)
    raise ValueError(f"data={path}: expected a token store (.bin or a folder with tokens.bin), or a .jsonl file")


def flat_data(rd: RunDir, path: Optional[str], seq_len: int, num_sequences: int, seed: int, val_tokens: int,
              text_field: str = "text") -> PhaseData:
    tokens, source = load_tokens(rd, path, text_field)
    end, val = split(tokens, val_tokens, seq_len)
    return PhaseData(TokenWindows(tokens, seq_len, num_sequences, seed, end), val, source, end)


def cluster_data(rd: RunDir, seq_len: int, num_sequences: int, seed: int, holdout: float,
                 val_tokens: int) -> PhaseData:
    """All clusters' training streams at their natural proportions; validation = their held-out documents."""
    from climb_hpc.corpus.tokenize import cluster_ids, load_cluster
    from climb_hpc.proxy.sampler import MixtureSampler, heldout_mask, training_streams

    clusters = cluster_ids(rd)
    streams = training_streams(rd, clusters, holdout)
    weights = {c: float(s.total) for c, s in streams.items()}
    held: list[np.ndarray] = []
    for c in clusters:
        tokens, index = load_cluster(rd, c)
        mask = heldout_mask(index.column("id").to_pylist(), holdout)
        for a, n in zip(index.column("offset").to_numpy()[mask], index.column("n_tokens").to_numpy()[mask] + 1,
                        strict=True):
            held.append(np.asarray(tokens[a:a + n], dtype=np.int64))
    order = np.random.default_rng([int(seed), zlib.crc32(b"minitron-val")]).permutation(len(held))
    val_tok = np.concatenate([held[i] for i in order]) if held else np.zeros(0, np.int64)  # clusters interleaved
    val = val_windows(val_tok[:int(val_tokens)], seq_len)
    if len(val) == 0:
        raise ValueError(f"no held-out validation window of {seq_len + 1} tokens (holdout_fraction={holdout})")
    sampler = MixtureSampler(streams, weights, seq_len, num_sequences, seed)
    return PhaseData(sampler, val, f"tokenize: {len(clusters)} clusters", int(sum(weights.values())))
