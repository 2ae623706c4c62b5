"""The embedding store: ``embed/embeddings.zarr``, a float16 [n_docs, dim] Zarr v3 array with sharding.

Rows are documents in corpus order: global row ``r`` is the r-th document of the concatenation of the
ingest doc shards in plan order. The unit of writing is a Zarr shard of ``rows_per_shard`` rows (inner
chunks of ``chunk_rows`` rows are the unit of reading). Every partial-shard write is a
read-modify-write of the whole shard file, so two writers in one shard silently lose rows; hence:

* the controller creates the array once (``ensure_array``); tasks never create or resize it;
* a task owns the rows ``[a, b)`` of ``shards_per_task`` whole shards (``a`` and ``b`` on shard
  boundaries, except ``b = n_docs`` for the last, partial shard, owned by the last task alone), and
  writes them with one assignment after deleting its own shard files (so a damaged file left by a
  killed attempt is never read back).

``layout.json`` records the layout: n_docs, dim, shard and chunk rows, the row offset of each ingest
shard and each task's row range. Later stages find rows by id in the tasks' ``ids/task_*.parquet``
(id, row; :func:`load_id_to_row` reads them in order): never merged into one corpus-sized file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from climb_hpc.rundir import atomic_path, read_json

if TYPE_CHECKING:
    import zarr

    from climb_hpc.rundir import RunDir

NAME = "embed"
LAYOUT_VERSION = 1
DTYPE = "float16"
IDS_SCHEMA = pa.schema([("id", pa.string()), ("row", pa.int64())])


# ---------------------------------------------------------------- paths


@dataclass(frozen=True)
class Outputs:
    """What embed writes under ``<run_dir>/embed/``."""

    dir: Path

    @property
    def store(self) -> Path:
        return self.dir / "embeddings.zarr"

    @property
    def layout(self) -> Path:
        return self.dir / "layout.json"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def ids(self, task: int) -> Path:
        return self.dir / "ids" / f"task_{task:05d}.parquet"

    def stats(self, task: int) -> Path:
        return self.dir / "stats" / f"task_{task:05d}.json"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def embed_dir(rd: RunDir) -> Path:
    return outputs(rd).dir


def store_path(rd: RunDir) -> Path:
    return outputs(rd).store


def layout_path(rd: RunDir) -> Path:
    return outputs(rd).layout


def ids_path(rd: RunDir, task: int) -> Path:
    return outputs(rd).ids(task)


def stats_path(rd: RunDir, task: int) -> Path:
    return outputs(rd).stats(task)


def summary_path(rd: RunDir) -> Path:
    return outputs(rd).summary


# ---------------------------------------------------------------- layout


def make_layout(doc_shards: Sequence[tuple[str, int]], dim: int, rows_per_shard: int, chunk_rows: int,
                shards_per_task: int, encoder: dict[str, Any]) -> dict[str, Any]:
    """The row layout: which rows each ingest shard holds and which rows (whole Zarr shards) each task owns."""
    R, C, S = int(rows_per_shard), int(chunk_rows), int(shards_per_task)
    if R < 1 or C < 1 or S < 1:
        raise ValueError(f"embed.rows_per_shard ({R}), embed.chunk_rows ({C}) and embed.shards_per_task ({S}) must be >= 1")
    if R % C:
        raise ValueError(f"embed.chunk_rows ({C}) must divide embed.rows_per_shard ({R}): Zarr inner chunks tile a shard")
    if dim < 1:
        raise ValueError(f"embedding width must be >= 1, got {dim}")
    offsets, n = [], 0
    for name, rows in doc_shards:
        offsets.append({"path": name, "rows": int(rows), "offset": n})
        n += int(rows)
    if n == 0:
        raise RuntimeError("embed: the ingest shards hold no documents")
    per_task = R * S
    tasks = [[a, min(n, a + per_task)] for a in range(0, n, per_task)]
    return {
        "version": LAYOUT_VERSION,
        "n_docs": n,
        "dim": int(dim),
        "dtype": DTYPE,
        "rows_per_shard": R,
        "chunk_rows": C,
        "shards_per_task": S,
        "rows_per_task": per_task,
        "n_shards": math.ceil(n / R),
        "doc_shards": offsets,
        "tasks": tasks,
        "encoder": encoder,
    }


def load_layout(rd: RunDir) -> dict[str, Any]:
    layout = read_json(layout_path(rd))
    if layout is None:
        raise FileNotFoundError(f"{layout_path(rd)} is missing: the embed stage has not been planned")
    return layout


def layout_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# ---------------------------------------------------------------- the array


def ensure_array(path: Path, layout: dict[str, Any]) -> zarr.Array:
    """Create the array once (atomically: a folder renamed into place); check an existing one matches."""
    import zarr

    n, d, R, C = layout["n_docs"], layout["dim"], layout["rows_per_shard"], layout["chunk_rows"]
    if path.exists():
        try:
            arr = zarr.open_array(str(path), mode="r")
        except Exception as e:  # any failure to open means the folder is not our array
            raise RuntimeError(f"{path} exists but is not a readable Zarr array ({e}); remove it to rebuild "
                               "the embeddings (and clear the embed markers: rm -r <run_dir>/_done/embed)") from None
        want = {"shape": (n, d), "dtype": np.dtype(DTYPE), "shards": (R, d), "chunks": (C, d)}
        have = {"shape": tuple(arr.shape), "dtype": arr.dtype, "shards": tuple(arr.shards or ()),
                "chunks": tuple(arr.chunks)}
        if have != want:
            diff = ", ".join(f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k])
            raise RuntimeError(
                f"{path} exists with another layout ({diff}). It was made for another corpus or other "
                "embed settings; use a new run folder, or remove it and rm -r <run_dir>/_done/embed to re-embed.")
        return arr
    with atomic_path(path) as tmp:
        zarr.create_array(store=str(tmp), shape=(n, d), chunks=(C, d), shards=(R, d), dtype=DTYPE, fill_value=0,
                          zarr_format=3, dimension_names=("doc", "dim"),
                          attributes={"model": layout["encoder"].get("model"), "layout": "layout.json",
                                      "rows": "corpus order of the ingest shards; ids in ids/task_*.parquet"})
    return zarr.open_array(str(path), mode="r")


def shard_files(path: Path, arr: zarr.Array, a: int, b: int) -> list[Path]:
    """The files of the Zarr shards covering rows [a, b)."""
    R = arr.shards[0]
    return [path / arr.metadata.encode_chunk_key((s, 0)) for s in range(a // R, math.ceil(b / R))]


def write_rows(path: Path, layout: dict[str, Any], a: int, b: int, values: np.ndarray) -> None:
    """Write rows [a, b) — whole shards that no other task touches — replacing whatever was there."""
    import zarr

    R, n = layout["rows_per_shard"], layout["n_docs"]
    if a % R or (b % R and b != n) or not 0 <= a < b <= n:
        raise ValueError(f"rows [{a}, {b}) are not whole shards of {R} rows (n_docs {n}): refusing a shared-shard write")
    if values.shape != (b - a, layout["dim"]):
        raise ValueError(f"rows [{a}, {b}): got values of shape {values.shape}, want {(b - a, layout['dim'])}")
    arr = zarr.open_array(str(path), mode="r+")
    for f in shard_files(path, arr, a, b):  # a killed attempt may have left a damaged shard: never read it back
        f.unlink(missing_ok=True)
    arr[a:b] = values.astype(np.float16, copy=False)


def read_rows(rd: RunDir, layout: dict[str, Any], a: int, b: int, columns: Sequence[str] = ("id", "text")) -> pa.Table:
    """Rows [a, b) of the corpus (they may span ingest shards), reading only the row groups needed."""
    from climb_hpc.corpus.ingest import outputs as ingest_outputs

    docs = ingest_outputs(rd).docs
    parts = []
    for shard in layout["doc_shards"]:
        lo, hi = shard["offset"], shard["offset"] + shard["rows"]
        if hi <= a or lo >= b:
            continue
        pf = pq.ParquetFile(docs / shard["path"])
        if pf.metadata.num_rows != shard["rows"]:
            raise RuntimeError(f"ingest shard {shard['path']} has {pf.metadata.num_rows} rows, the embed layout says "
                               f"{shard['rows']}: ingest changed after embed was planned; use a new run folder")
        s, e = max(a, lo) - lo, min(b, hi) - lo  # local rows wanted
        groups, first, pos = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if pos + rows > s and pos < e:
                groups.append(g)
                first = pos if first is None else first
            pos += rows
        t = pf.read_row_groups(groups, columns=list(columns))
        parts.append(t.slice(s - first, e - s))
    table = pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})
    if table.num_rows != b - a:
        raise RuntimeError(f"embed: read {table.num_rows} docs for rows [{a}, {b})")
    return table


def write_ids(path: Path, ids: pa.Array, a: int) -> None:
    rows = pa.array(np.arange(a, a + len(ids), dtype=np.int64))
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_arrays([ids.cast(pa.string()), rows], schema=IDS_SCHEMA), tmp)


# ---------------------------------------------------------------- for later stages


def open_embeddings(rd: RunDir, mode: str = "r") -> zarr.Array:
    """The embeddings [n_docs, dim] float16, rows in corpus order (ids: :func:`load_id_to_row`)."""
    import zarr

    return zarr.open_array(str(store_path(rd)), mode=mode)


#: rows a streaming reader holds at a time (1 Mi rows: 16 MiB of float32 [n, 4] scores)
BLOCK_ROWS = 1 << 20


def block_rows(rows_per_shard: int, target: int | None = None) -> int:
    """Whole Zarr shards adding up to about ``target`` (default ``BLOCK_ROWS``) rows, at least one shard: a
    block never splits a shard, so each shard file is read once."""
    R = max(1, int(rows_per_shard))
    return R * max(1, int(target or BLOCK_ROWS) // R)


def iter_row_blocks(arr: Any, block: int, a: int = 0, b: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, arr[start:start + block])`` over rows [a, b) of a Zarr (or NumPy) array, in order.

    Streaming readers of per-row arrays use this so that their memory is one block, not the array."""
    end = arr.shape[0] if b is None else int(b)
    for s in range(int(a), end, int(block)):
        yield s, np.asarray(arr[s:min(end, s + int(block))])


def load_id_to_row(rd: RunDir) -> pa.Table:
    """(id, row) for every document, rows 0..n_docs-1 in order: the tasks' id files one after the other
    (corpus-sized: for tests and small runs; a task reads its own file)."""
    return pa.concat_tables(pq.read_table(ids_path(rd, t)) for t in range(len(load_layout(rd)["tasks"])))
