"""Ids in more than one ingest shard, found in bounded memory from per-task hash files.

Each ingest task writes the sorted 64-bit hashes of the ids it wrote (``ingest/id_hashes/shard_*.npy``,
8 bytes a doc, blake2b: the same on every host). finalize (:func:`cross_shard_duplicates`) splits the hash
space into ranges sized so that one range of all tasks' hashes fits ``budget_bytes``; for each range it
copies every task's slice of it (the files are sorted, so a slice is two binary searches of a memory map),
sorts them and looks for equal neighbours. A hash seen in two tasks is a candidate; candidates are then
checked against the ids themselves, read back from just the shards involved, so a hash collision of two
different ids (~3% likely somewhere in 1e9 ids) is never reported, and a real duplicate always is: the
check is exact.

Memory: ``budget_bytes`` (about 16 bytes an id of the range: the copies and their concatenation) plus
up to ``max_candidates`` candidates; files are opened one at a time (no map count limit at 1e5 tasks).
Reads: the hash files once (8 bytes a doc: 8 GB at 1e9 docs, against ~100 GB of id strings in memory for
the old ``value_counts``), and the id columns of the shards that hold a candidate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from climb_hpc.rundir import atomic_path

#: finalize's memory for one range of hashes
BUDGET_BYTES = 1 << 30
#: bytes a hash costs while its range is checked (its copy and its place in the concatenation)
BYTES_PER_ID = 16
#: hash matches kept for the check against the ids (past that they are only counted)
MAX_CANDIDATES = 100_000
SPACE = 1 << 64


def id_hashes(ids: Iterable[str]) -> np.ndarray:
    """uint64 hashes of ids (blake2b, 8 bytes, little-endian): stable across processes and hosts."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
         for i in ids),
        dtype=np.uint64,
    )


def _save_sorted(path: Path, h: np.ndarray) -> int:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.sort(h))
    return len(h)


def write_hashes(path: Path, ids: Iterable[str]) -> int:
    """Write the sorted hashes of ``ids`` to ``path`` (.npy, atomically); returns how many."""
    return _save_sorted(path, id_hashes(ids))


def hashes_of_shard(shard: Path, path: Path, batch_rows: int = 1 << 16) -> int:
    """The hash file of a doc shard made without one (before they existed), its ids read a batch at a time."""
    parts = [id_hashes(b.column(0).to_pylist())
             for b in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows, columns=["id"])]
    return _save_sorted(path, np.concatenate(parts) if parts else np.zeros(0, np.uint64))


def count_hashes(path: Path) -> int:
    """How many hashes a file holds (its header only)."""
    return int(np.load(path, mmap_mode="r").shape[0])


def hash_ranges(n_ids: int, budget_bytes: Optional[int] = None) -> list[tuple[int, int]]:
    """[lo, hi) ranges tiling the 64-bit hash space, enough of them that a range holds ~``budget_bytes``
    (default ``BUDGET_BYTES``) of ids."""
    k = max(1, -(-n_ids * BYTES_PER_ID // max(1, int(budget_bytes or BUDGET_BYTES))))
    bounds = [i * SPACE // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _slice(path: Path, lo: int, hi: int) -> np.ndarray:
    """A copy of the file's hashes in [lo, hi) (``hi`` may be 2**64), the file closed again."""
    h = np.load(path, mmap_mode="r")
    i = int(np.searchsorted(h, np.uint64(lo), side="left"))
    j = len(h) if hi >= SPACE else int(np.searchsorted(h, np.uint64(hi), side="left"))
    out = np.array(h[i:j])
    del h
    return out


def range_matches(hash_paths: Sequence[Path], lo: int, hi: int) -> dict[int, list[int]]:
    """Hash -> the tasks holding it, for hashes in [lo, hi) held by two or more tasks."""
    parts = [_slice(p, lo, hi) for p in hash_paths]
    x = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    del parts
    x.sort()
    dup = np.unique(x[1:][x[1:] == x[:-1]])
    del x
    if not len(dup):
        return {}
    owners: dict[int, list[int]] = {}
    for t, p in enumerate(hash_paths):  # only when there is a match: which tasks hold it
        s = _slice(p, lo, hi)
        for v in dup[np.isin(dup, s)].tolist():
            owners.setdefault(int(v), []).append(t)
    return {v: ts for v, ts in owners.items() if len(ts) > 1}  # one task twice: two of its ids collide


def confirm(candidates: dict[int, list[int]], shard_paths: Sequence[Path]) -> dict[str, list[str]]:
    """Id -> the shards holding it, for the candidates' ids that really are in two or more shards."""
    wanted = np.fromiter(candidates, dtype=np.uint64, count=len(candidates))
    where: dict[str, list[str]] = {}
    for t in sorted({t for ts in candidates.values() for t in ts}):
        for b in pq.ParquetFile(shard_paths[t]).iter_batches(batch_size=1 << 16, columns=["id"]):
            ids = b.column(0).to_pylist()
            for k in np.flatnonzero(np.isin(id_hashes(ids), wanted)).tolist():
                where.setdefault(ids[k], []).append(shard_paths[t].name)
    return {i: s for i, s in where.items() if len(s) > 1}


def cross_shard_duplicates(hash_paths: Sequence[Path], shard_paths: Sequence[Path], examples: int = 5,
                           budget_bytes: Optional[int] = None,
                           max_candidates: Optional[int] = None) -> tuple[int, list[str], bool]:
    """(ids found in more than one shard, a few of them with their shards, whether the count is a lower
    bound because more than ``max_candidates`` (default ``MAX_CANDIDATES``) hashes matched)."""
    max_candidates = int(max_candidates or MAX_CANDIDATES)
    n = sum(count_hashes(p) for p in hash_paths)
    candidates: dict[int, list[int]] = {}
    capped = False
    for lo, hi in hash_ranges(n, budget_bytes):
        for v, ts in range_matches(hash_paths, lo, hi).items():
            if len(candidates) >= max_candidates:
                capped = True
                break
            candidates[v] = ts
    dups = confirm(candidates, shard_paths) if candidates else {}
    shown = [f"{i!r} in {', '.join(s)}" for i, s in sorted(dups.items())[:examples]]
    return len(dups), shown, capped
