"""Finding input files, cutting them into tasks, and reading one task's records.

Supported inputs (by file name):

    *.jsonl, *.ndjson                     plain JSON Lines: split into byte-range chunks
    *.jsonl.gz, *.jsonl.zst (+ .ndjson)   compressed JSON Lines: one task per file
    *.parquet                             Parquet: split into groups of row groups

A task is a plain dict (it is stored in ``plan.json``), see :func:`plan_file`.
Line numbers are 1-based (as in an editor); Parquet row numbers are 0-based (as in pyarrow).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

JSONL_SUFFIXES = (".jsonl", ".ndjson")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = "*.jsonl, *.ndjson (optionally .gz or .zst) and *.parquet"

# A task's records: (number, fields, error, raw).
#   number: 1-based line (JSONL) or 0-based row (Parquet)
#   fields: the parsed JSON object / the wanted Parquet columns of the row; None on error
#   error:  None, or (reason, detail) for a line that is not a JSON object
#   raw:    the line's bytes (JSONL), None for Parquet (the excerpt is built from ``fields``)
Record = tuple[int, Optional[dict], Optional[tuple[str, str]], Optional[bytes]]


def file_format(path: Path) -> Optional[tuple[str, Optional[str]]]:
    """``("jsonl"|"parquet", compression or None)`` from the file name, None if unsupported."""
    name = path.name.lower()
    suffix = Path(name).suffix
    if suffix in COMPRESSIONS:
        inner = Path(name[: -len(suffix)]).suffix
        return ("jsonl", COMPRESSIONS[suffix]) if inner in JSONL_SUFFIXES else None
    if suffix in JSONL_SUFFIXES:
        return ("jsonl", None)
    if suffix in PARQUET_SUFFIXES:
        return ("parquet", None)
    return None


def discover_inputs(paths: Sequence[str]) -> list[tuple[Path, str]]:
    """Expand files and folders into ``(absolute path, key)`` pairs, in a deterministic order.

    Folders are walked recursively; their files are sorted by relative path; hidden files and
    folders (``.name``, e.g. temporaries of atomic writes) and unsupported suffixes are skipped.
    The key names a file in ids and reports: ``<folder name>/<relative path>`` for a file found in a
    folder, the file name for a file given directly. Keys must be unique across the corpus.
    """
    found: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(os.path.expandvars(os.path.expanduser(str(raw)))).resolve()
        if not p.exists():
            raise FileNotFoundError(f"corpus.paths: input path does not exist: {raw} (resolved: {p})")
        if p.is_dir():
            files = [f for f in _walk(p) if file_format(f) is not None]
            found += [(f, f"{p.name}/{f.relative_to(p).as_posix()}") for f in files]
        elif file_format(p) is None:
            raise ValueError(f"corpus.paths: unsupported input file {p}; supported: {SUPPORTED}")
        else:
            found.append((p, p.name))
    if not found:
        raise FileNotFoundError(f"corpus.paths: no input files ({SUPPORTED}) found in {list(paths)}")
    _check_unique_keys(found)
    return found


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(out, key=lambda f: f.relative_to(root).as_posix())


def _check_unique_keys(found: list[tuple[Path, str]]) -> None:
    seen: dict[str, Path] = {}
    for path, key in found:
        if key in seen:
            if seen[key] == path:
                raise ValueError(f"corpus.paths: {path} is listed twice (directly or through a folder)")
            raise ValueError(
                f"corpus.paths: {seen[key]} and {path} have the same name {key!r}, which would make "
                "their documents' generated ids and reports ambiguous; rename a folder or a file"
            )
        seen[key] = path


# ---------------------------------------------------------------- planning


def plan_file(path: Path, key: str, chunk_bytes: int) -> list[dict[str, Any]]:
    """The tasks of one input file (at least one, even for an empty file).

    Every task has ``path, key, format, compression, size`` plus
      plain JSONL: ``start, end`` (byte range, ends on a newline), ``first_line``, ``n_lines``
      compressed:  ``first_line`` = 1, ``n_lines`` = None (unknown without decompressing)
      Parquet:     ``row_groups`` [a, b), ``first_row``, ``n_rows``
    """
    fmt, compression = file_format(path)  # type: ignore[misc]
    base = {"path": str(path), "key": key, "format": fmt, "compression": compression, "size": path.stat().st_size}
    if fmt == "parquet":
        return [{**base, **c} for c in _plan_parquet(path, chunk_bytes)]
    if compression is not None:
        return [{**base, "first_line": 1, "n_lines": None}]
    return [{**base, **c} for c in _plan_jsonl(path, chunk_bytes)]


def _plan_jsonl(path: Path, chunk_bytes: int) -> list[dict[str, Any]]:
    """Byte ranges of about ``chunk_bytes`` that end just after a newline (or at end of file).

    Each chunk's first line number is counted here, so that quarantine records and generated ids
    carry true line numbers. That costs one sequential read of the files that are split (files not
    bigger than one chunk are not read); the plan is persisted, so it is paid once per run.
    """
    size = path.stat().st_size
    if size <= chunk_bytes:
        return [{"start": 0, "end": size, "first_line": 1, "n_lines": None}]
    chunks = []
    start, first_line = 0, 1
    with open(path, "rb") as f:
        while start < size:
            f.seek(start)
            data = f.read(chunk_bytes)
            tail = _read_through_newline(f) if not data.endswith(b"\n") else b""
            end = start + len(data) + len(tail)
            newlines = data.count(b"\n") + tail.count(b"\n")
            ends_on_newline = (tail or data).endswith(b"\n")
            n_lines = newlines + (0 if ends_on_newline else 1)  # a last line without newline counts
            chunks.append({"start": start, "end": end, "first_line": first_line, "n_lines": n_lines})
            start, first_line = end, first_line + newlines
    return chunks


def _read_through_newline(f: io.BufferedReader, block: int = 1 << 16) -> bytes:
    """Read from the current position up to and including the next newline (or to end of file)."""
    parts = []
    while True:
        b = f.read(block)
        if not b:
            break
        i = b.find(b"\n")
        if i >= 0:
            parts.append(b[: i + 1])
            break
        parts.append(b)
    return b"".join(parts)


def _plan_parquet(path: Path, chunk_bytes: int) -> list[dict[str, Any]]:
    """Consecutive row groups, grouped greedily up to ``chunk_bytes`` of compressed data each."""
    md = pq.ParquetFile(path).metadata
    chunks: list[dict[str, Any]] = []
    first = row = acc_bytes = acc_rows = 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        rg_bytes = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        if i > first and acc_bytes + rg_bytes > chunk_bytes:
            chunks.append({"row_groups": [first, i], "first_row": row, "n_rows": acc_rows})
            first, row, acc_bytes, acc_rows = i, row + acc_rows, 0, 0
        acc_bytes += rg_bytes
        acc_rows += rg.num_rows
    chunks.append({"row_groups": [first, md.num_row_groups], "first_row": row, "n_rows": acc_rows})
    return chunks


# ---------------------------------------------------------------- reading


def check_unchanged(task: dict[str, Any]) -> Path:
    """The task's input path, after checking it still exists with the size it had when planned."""
    path = Path(task["path"])
    if not path.exists():
        raise FileNotFoundError(f"input file of this task is gone: {path}")
    size = path.stat().st_size
    if size != task["size"]:
        raise RuntimeError(
            f"input file {path} changed since the plan was made ({task['size']} -> {size} bytes); "
            "its byte ranges are no longer valid. Start a new run folder for changed data."
        )
    return path


def iter_records(task: dict[str, Any], fields: Sequence[str]) -> Iterator[Record]:
    """The records of one task, in input order. ``fields``: the columns wanted from Parquet."""
    if task["format"] == "parquet":
        return _iter_parquet(task, fields)
    return _iter_jsonl(task)


def _open_lines(task: dict[str, Any]) -> tuple[io.BufferedIOBase, Optional[int]]:
    """A binary stream positioned at the task's first line, and the byte count to read (None: all)."""
    path, compression = Path(task["path"]), task["compression"]
    if compression == "gzip":
        return gzip.open(path, "rb"), None  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard  # only needed for .zst inputs

        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20), None  # type: ignore[arg-type]
    f = open(path, "rb", buffering=1 << 20)
    f.seek(task["start"])
    return f, task["end"] - task["start"]


def _iter_jsonl(task: dict[str, Any]) -> Iterator[Record]:
    stream, remaining = _open_lines(task)
    number = task["first_line"]
    with stream:
        for line in stream:
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= len(line)
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # UTF-8 byte order mark
            yield _parse_line(number, line.rstrip(b"\r\n"))
            number += 1


def _parse_line(number: int, raw: bytes) -> Record:
    if not raw.strip():
        return number, None, ("blank_line", "empty or whitespace-only line"), raw
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return number, None, ("non_utf8", f"{e.reason} at byte {e.start}"), raw
    try:
        obj = json.loads(s)
    except ValueError as e:
        return number, None, ("bad_json", str(e)), raw
    if not isinstance(obj, dict):
        return number, None, ("not_object", f"JSON {type(obj).__name__}, not an object"), raw
    return number, obj, None, raw


def _iter_parquet(task: dict[str, Any], fields: Sequence[str]) -> Iterator[Record]:
    pf = pq.ParquetFile(task["path"])
    names = set(pf.schema_arrow.names)
    columns = [c for c in dict.fromkeys(fields) if c in names]
    a, b = task["row_groups"]
    number = task["first_row"]
    if b <= a:
        return
    if not columns:  # none of the wanted columns: every row is a record without fields
        for _ in range(task["n_rows"]):
            yield number, {}, None, None
            number += 1
        return
    for batch in pf.iter_batches(batch_size=8192, row_groups=list(range(a, b)), columns=columns):
        cols = [_to_python(batch.column(i)) for i in range(batch.num_columns)]
        for values in zip(*cols, strict=True):
            yield number, dict(zip(columns, values, strict=True)), None, None
            number += 1


def _to_python(col: pa.Array) -> list:
    """Column values as Python objects; binary columns stay bytes (decoded and checked later)."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.to_pylist()
