"""Training sequences drawn from the per-cluster token stores in a mixture's proportions.

A cluster's *training stream* is its training documents (each followed by EOS) in corpus order: its
``train`` token stores from tokenize, one after the other. A training sequence is a window of ``seq_len + 1`` tokens of one
cluster's stream, starting at a uniform random position (wrapping at the end). The whole plan (which
cluster and which start for sequence i) is fixed up front from the seed, so the data position of a
trial is just the number of sequences consumed: resuming needs no sampler state.

Sequence counts per cluster are exact (largest remainder of ``weight x n``), not multinomial draws:
two trials that differ only in their mixture differ only by it, which keeps trial noise down. A
zero weight gets zero sequences. Held-out documents are chosen by a hash of the document id, once, by
tokenize (which stores them apart), so every trial, seed and round holds out the same ones; the targets
score on them.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from climb_hpc.corpus.heldout import heldout_mask  # noqa: F401 (where callers find it)

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir


@dataclass
class ClusterStream:
    """The token stream of one cluster's selected documents, as contiguous runs of token arrays."""

    cluster: int
    arrays: list[np.ndarray]  # token arrays (memmaps) the runs lie in
    run_array: np.ndarray  # int64: the array each run lies in
    run_start: np.ndarray  # int64: where each run starts in its array
    run_cum: np.ndarray    # int64, len(runs) + 1: stream position where each run starts; [-1] = total

    @property
    def total(self) -> int:
        return int(self.run_cum[-1])

    @classmethod
    def from_spans(cls, cluster: int, tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> ClusterStream:
        """Spans (doc + EOS) of one array in file order; adjacent spans are merged so a window is one or two slices."""
        starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        if len(starts) == 0:
            return cls(cluster, [tokens], starts, starts, np.zeros(1, np.int64))
        new_run = np.ones(len(starts), dtype=bool)
        new_run[1:] = starts[1:] != starts[:-1] + lengths[:-1]
        run_idx = np.cumsum(new_run) - 1
        run_len = np.bincount(run_idx, weights=lengths).astype(np.int64)
        first = starts[new_run]
        return cls(cluster, [tokens], np.zeros(len(first), np.int64), first, np.concatenate([[0], np.cumsum(run_len)]))

    @classmethod
    def from_parts(cls, cluster: int, parts: list[np.ndarray]) -> ClusterStream:
        """Whole token arrays (a cluster's stores) one after the other."""
        parts = [p for p in parts if len(p)]
        n = np.array([len(p) for p in parts], np.int64)
        return cls(cluster, parts, np.arange(len(parts), dtype=np.int64), np.zeros(len(parts), np.int64),
                   np.concatenate([[0], np.cumsum(n)]).astype(np.int64))

    def window(self, pos: int, n: int) -> np.ndarray:
        """``n`` tokens of the stream from position ``pos``, wrapping around at its end."""
        out = np.empty(n, dtype=np.int64)
        got, total = 0, self.total
        pos %= total
        while got < n:
            r = int(np.searchsorted(self.run_cum, pos, side="right")) - 1
            offset = pos - int(self.run_cum[r])
            take = min(n - got, int(self.run_cum[r + 1]) - pos)
            a = int(self.run_start[r]) + offset
            out[got:got + take] = self.arrays[int(self.run_array[r])][a:a + take]
            got += take
            pos = (pos + take) % total
        return out


def stored_holdout(rd: RunDir, fraction: Optional[float] = None) -> float:
    """The held-out fraction tokenize split the stores by; a different ``fraction`` asked for is an error
    (the split is made once, when tokenizing)."""
    from climb_hpc.corpus.tokenize import load_summary

    stored = float(load_summary(rd)["holdout_fraction"])
    if fraction is not None and abs(float(fraction) - stored) > 1e-12:
        raise ValueError(f"the token stores hold out {stored} of the documents (proxy.holdout_fraction when tokenize "
                         f"ran), not {fraction}: set it back, or tokenize again in a new run folder")
    return stored


def training_streams(rd: RunDir, clusters: list[int], holdout_fraction: Optional[float] = None
                     ) -> dict[int, ClusterStream]:
    """The training stream of each cluster in ``clusters``: its ``train`` stores, in corpus order."""
    from climb_hpc.corpus.tokenize import cluster_stores

    stored_holdout(rd, holdout_fraction)
    return {c: ClusterStream.from_parts(c, [s.tokens for s in cluster_stores(rd, c, "train")]) for c in clusters}


def exact_counts(weights: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``weights * n`` (largest remainder); zeros stay zero."""
    want = weights * n
    counts = np.floor(want).astype(np.int64)
    rest = n - int(counts.sum())
    if rest:
        order = np.argsort(-(want - counts), kind="stable")
        counts[order[:rest]] += 1
    return counts


def normalize_weights(weights: Mapping[Union[int, str], float]) -> dict[int, float]:
    """Cluster id -> weight summing to 1; negative, non-finite or all-zero weights are errors."""
    w = {int(k): float(v) for k, v in weights.items()}
    bad = {k: v for k, v in w.items() if not np.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"mixture weights must be finite and >= 0; got {bad}")
    total = sum(w.values())
    if total <= 0:
        raise ValueError("mixture weights are all zero")
    return {k: v / total for k, v in sorted(w.items())}


class MixtureSampler:
    """``num_sequences`` windows of ``seq_len + 1`` tokens, drawn per the mixture, fixed by ``seed``."""

    def __init__(self, streams: Mapping[int, ClusterStream], weights: Mapping[Union[int, str], float],
                 seq_len: int, num_sequences: int, seed: int):
        w = normalize_weights(weights)
        missing = sorted(c for c, v in w.items() if v > 0 and (c not in streams or streams[c].total == 0))
        if missing:
            raise ValueError(f"mixture puts weight on clusters {missing} that have no training tokens "
                             f"(known clusters: {sorted(streams)})")
        self.streams = streams
        self.seq_len = int(seq_len)
        self.clusters = np.array(sorted(w), dtype=np.int64)
        self.counts = exact_counts(np.array([w[int(c)] for c in self.clusters]), int(num_sequences))
        rng = np.random.default_rng([int(seed), zlib.crc32(b"proxy-sampler")])
        self.cluster_of = rng.permutation(np.repeat(self.clusters, self.counts))
        self.start = np.zeros(len(self.cluster_of), dtype=np.int64)
        for c in self.clusters[self.counts > 0]:
            sel = self.cluster_of == c
            self.start[sel] = rng.integers(0, streams[int(c)].total, size=int(sel.sum()))

    def __len__(self) -> int:
        return len(self.cluster_of)

    def sequences(self, first: int, count: int) -> np.ndarray:
        """Sequences ``first .. first + count - 1`` as an int64 array [count, seq_len + 1]."""
        if first < 0 or first + count > len(self):
            raise IndexError(f"sequences [{first}, {first + count}) of a plan of {len(self)}")
        return np.stack([self.streams[int(self.cluster_of[i])].window(int(self.start[i]), self.seq_len + 1)
                         for i in range(first, first + count)])
