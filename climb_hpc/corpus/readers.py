"""Finding input files, cutting them into tasks, and reading one task's records.

Supported inputs (by file name):

    *.jsonl, *.ndjson                     plain JSON Lines: split into byte-range chunks
    *.jsonl.gz, *.jsonl.zst (+ .ndjson)   compressed JSON Lines: one task per file
    *.parquet                             Parquet: split into groups of row groups

A task is a plain dict (it is stored in ``plan.json``), see :func:`plan_file`.
Line numbers are 1-based (as in an editor); Parquet row numbers are 0-based (as in pyarrow).

Damaged files: every format is read so that truncation and corruption are noticed, never taken for
the end of the data. Reading stops at the damage with :class:`DamagedFile` (an ``InputError``)
naming the file and where: the compressed byte offset for ``.gz``/``.zst``, the byte offset of the
cut line for plain JSONL, the row group for Parquet. What the stage does with it is ``ingest``'s
business (``corpus.damaged_files``); the records yielded before it are whole.

* gzip / zstd: :class:`CompressedLines` decompresses the file itself, 64 KiB at a time (read in
  1 MiB blocks). A file is one or more gzip members / zstd frames back to back (as ``cat a.gz
  b.gz`` makes). At the end of the file a member or frame that is not finished is truncation; a
  decompressor error (bad data, a CRC or length check, a zstd checksum) is corruption; bytes after
  the last member that do not begin another one are corruption (trailing garbage); an empty file
  holds no member and is truncation. gzip checks its CRC only at the end of a member and zstd its
  checksum only at the end of a frame (a frame written without a checksum is not checked at all),
  so corruption may be noticed only after damaged data has been decoded: the records before the
  error are kept as they decode (and go through the usual record checks; the error says which
  member/frame they came from unverified), the output of the 64 KiB piece in which the error is
  raised is lost.
* plain JSONL (and the text inside gz/zst): a last line without a final newline that is not a JSON
  object is a record cut off, so the file is truncated. A last line without a newline that *is* a
  JSON object is a whole record (many writers end the file that way) and is read as usual.
* Parquet: a file whose footer cannot be read (missing or bad: typically a truncated copy) is
  damaged as a whole (found when planning); a row group that fails to decode (a bad page header,
  compressed data or dictionary index, a page checksum where the writer wrote them) is named with its
  rows. Parquet has no checksum by default, so a changed byte in a page can go unnoticed: invalid
  UTF-8 in a string column then quarantines those rows as ``non_utf8``, as for JSONL.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from climb_hpc.errors import InputError, one_line

JSONL_SUFFIXES = (".jsonl", ".ndjson")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = "*.jsonl, *.ndjson (optionally .gz or .zst) and *.parquet"
BLOCK_BYTES = 1 << 20  # bytes read from a file at a time
PIECE_BYTES = 1 << 16  # compressed bytes given to a decompressor at a time (what a corrupt piece loses)
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, dropped from a file's first line

# A task's records: (number, fields, error, raw).
#   number: 1-based line (JSONL) or 0-based row (Parquet)
#   fields: the parsed JSON object / the wanted Parquet columns of the row; None on error
#   error:  None, or (reason, detail) for a line that is not a JSON object
#   raw:    the line's bytes (JSONL), None for Parquet (the excerpt is built from ``fields``)
Record = tuple[int, Optional[dict], Optional[tuple[str, str]], Optional[bytes]]


class DamagedFile(InputError):
    """An input file that is truncated or corrupt: reading stopped here.

    ``where`` says where in words; ``offset`` (bytes) or ``row_group`` locate it; ``records_lost``
    (records of the task not read, counting the cut one) and ``bytes_unread`` (bytes of the file from
    the damage on that gave no record; for gz/zst corruption, the bytes after the 64 KiB piece in
    which it was noticed) are None where unknown.
    """

    def __init__(
        self,
        path: Path | str,
        where: str,
        error: str,
        *,
        offset: Optional[int] = None,
        row_group: Optional[int] = None,
        records_lost: Optional[int] = None,
        bytes_unread: Optional[int] = None,
    ):
        self.path, self.where, self.error = str(path), where, one_line(error)
        self.offset, self.row_group = offset, row_group
        self.records_lost, self.bytes_unread = records_lost, bytes_unread
        super().__init__(
            f"input file {path} is damaged: {self.error} ({where}). Replace it with an intact copy, or set "
            "corpus.damaged_files=quarantine to keep the records before the damage and go on without the rest"
        )

    def entry(self) -> dict[str, Any]:
        """The damage as a JSON-able dict (ingest's stats and summary)."""
        keys = ("where", "error", "offset", "row_group", "records_lost", "bytes_unread")
        return {"file": self.path, **{k: getattr(self, k) for k in keys}}

    def __reduce__(self) -> tuple:  # picklable (an exception's args would be the message alone)
        return type(self), (self.path, self.where, self.error), self.__dict__


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


# ---------------------------------------------------------------- finding the files


def discover_inputs(paths: Sequence[str]) -> list[tuple[Path, str]]:
    """Expand files and folders into ``(absolute path, key)`` pairs, in a deterministic order.

    Folders are walked recursively, following symlinks (to files and to folders); their files are
    sorted by relative path; hidden files and folders (``.name``, e.g. temporaries of atomic writes)
    and unsupported suffixes are skipped. The key names a file in ids and reports: ``<folder
    name>/<relative path>`` for a file found in a folder (the path through the links, not the link
    target), the file name for a file given directly. Refused with an InputError: a path that does
    not exist, a broken symlink, a symlink loop, an unreadable file or folder, the same file reached
    twice (listed twice, or through two links, or a link and its target) and two files with one key.
    """
    found: list[tuple[Path, str]] = []
    for raw in paths:
        given = Path(os.path.expandvars(os.path.expanduser(str(raw))))
        try:
            p = given.resolve()
        except (RuntimeError, OSError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
            raise InputError(f"corpus.paths: cannot resolve {raw} (a symlink loop?): {e}; fix corpus.paths") from None
        if not p.exists():
            what = f"is a broken symlink (to {os.readlink(given)})" if given.is_symlink() else "does not exist"
            raise InputError(f"corpus.paths: input path {what}: {raw} (resolved: {p}); fix corpus.paths")
        if p.is_dir():
            found += [(f, f"{p.name}/{rel}") for f, rel in _walk(p)]
        elif file_format(p) is None:
            raise InputError(
                f"corpus.paths: unsupported input file {p}; supported: {SUPPORTED}. Rename it or drop it from corpus.paths"
            )
        else:
            found.append((p, p.name))
    if not found:
        raise InputError(
            f"corpus.paths: no input files ({SUPPORTED}) found in {list(paths)}; point corpus.paths at your data"
        )
    for path, _ in found:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:  # a name os.fsdecode kept as surrogate escapes: ids and reports carry it
            shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise InputError(f"corpus.paths: the file name {shown} is not valid UTF-8; rename it (document ids and "
                             "reports carry file names)") from None
    _check_files(found)
    return found


def _walk(root: Path) -> list[tuple[Path, str]]:
    """The supported files below ``root`` as ``(path, path relative to root)``, sorted by the latter.

    Symlinks are followed; a folder that is its own ancestor (by device and inode) is a loop."""
    out = []
    root_st = root.stat()
    stack = [(root, {(root_st.st_dev, root_st.st_ino): root})]
    while stack:
        folder, ancestors = stack.pop()
        for path in _list_folder(folder):
            st = _stat(path)
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    raise InputError(
                        f"corpus.paths: symlink loop: {path} leads back to {ancestors[ident]}, a folder that "
                        "contains it; remove the link or point it elsewhere"
                    )
                stack.append((path, {**ancestors, ident: path}))
            elif file_format(path) is not None:
                if not stat.S_ISREG(st.st_mode):
                    raise InputError(
                        f"corpus.paths: {path} is not a regular file; remove it or rename it to .{path.name}"
                    )
                out.append((path, path.relative_to(root).as_posix()))
    return sorted(out, key=lambda f: f[1])


def _list_folder(folder: Path) -> list[Path]:
    """The entries of a folder that are not hidden."""
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if not e.name.startswith(".")]
    except OSError as e:
        raise InputError(f"corpus.paths: cannot read folder {folder}: {e.strerror}; fix its permissions") from e


def _stat(path: Path) -> os.stat_result:
    """``stat`` through symlinks; a broken link or a link loop is an InputError."""
    try:
        return path.stat()
    except FileNotFoundError:
        if not path.is_symlink():
            raise InputError(f"corpus.paths: {path} vanished while its folder was listed; run again") from None
        raise InputError(
            f"corpus.paths: {path} is a broken symlink (to {os.readlink(path)}); fix or remove it "
            "(names starting with '.' are skipped)"
        ) from None
    except OSError as e:
        what = "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read: {e.strerror}"
        raise InputError(f"corpus.paths: {path} {what}; fix or remove it") from None


def _check_files(found: list[tuple[Path, str]]) -> None:
    """Every file readable, reached once, under a key of its own."""
    by_file: dict[tuple[int, int], Path] = {}
    by_key: dict[str, Path] = {}
    for path, key in found:
        st = path.stat()
        ident = (st.st_dev, st.st_ino)
        if ident in by_file:
            first = by_file[ident]
            if first == path:
                raise InputError(f"corpus.paths: {path} is listed twice (directly or through a folder); list it once")
            raise InputError(
                f"corpus.paths: {first} and {path} are the same file (through a symlink or hard link), so its "
                "documents would be ingested twice; remove one of the two paths or links"
            )
        if key in by_key:
            raise InputError(
                f"corpus.paths: {by_key[key]} and {path} have the same name {key!r}, which would make "
                "their documents' generated ids and reports ambiguous; rename a folder or a file"
            )
        if not os.access(path, os.R_OK):
            raise InputError(f"corpus.paths: cannot read {path} (permission denied); fix its permissions")
        by_file[ident], by_key[key] = path, path


# ---------------------------------------------------------------- planning


def plan_file(path: Path, key: str, chunk_bytes: int, damaged_files: str = "fail") -> list[dict[str, Any]]:
    """The tasks of one input file (at least one, even for an empty file).

    Every task has ``path, key, format, compression, size`` plus
      plain JSONL: ``start, end`` (byte range, ends on a newline), ``first_line``, ``n_lines``
      compressed:  ``first_line`` = 1, ``n_lines`` = None (unknown without decompressing)
      Parquet:     ``row_groups`` [a, b), ``first_row``, ``n_rows``
    A Parquet file whose footer cannot be read raises :class:`DamagedFile`, or with
    ``damaged_files="quarantine"`` gets one task without row groups (``n_rows`` None) that reports it.
    """
    fmt, compression = file_format(path)  # type: ignore[misc]
    base = {"path": str(path), "key": key, "format": fmt, "compression": compression, "size": path.stat().st_size}
    if fmt == "parquet":
        try:
            chunks = _plan_parquet(path, chunk_bytes)
        except DamagedFile:
            if damaged_files != "quarantine":
                raise
            chunks = [{"row_groups": [0, 0], "first_row": 0, "n_rows": None}]
        return [{**base, **c} for c in chunks]
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


def _read_through_newline(f: Any, block: int = 1 << 16) -> bytes:
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


def _parquet_file(path: Path) -> pq.ParquetFile:
    """The opened Parquet file (page checksums, where written, are checked); an unreadable footer is a
    :class:`DamagedFile`."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise DamagedFile(
            path,
            "its footer",
            f"not a readable Parquet file, its footer is missing or damaged (a truncated copy?): {e}",
            bytes_unread=path.stat().st_size,
        ) from e


def _plan_parquet(path: Path, chunk_bytes: int) -> list[dict[str, Any]]:
    """Consecutive row groups, grouped greedily up to ``chunk_bytes`` of compressed data each."""
    md = _parquet_file(path).metadata
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
        raise InputError(
            f"input file {path} is gone since the plan was made; put it back, or start a new run folder without it"
        )
    size = path.stat().st_size
    if size != task["size"]:
        raise InputError(
            f"input file {path} changed since the plan was made ({task['size']} -> {size} bytes); "
            "its byte ranges are no longer valid. Start a new run folder for changed data."
        )
    return path


def iter_records(task: dict[str, Any], fields: Sequence[str]) -> Iterator[Record]:
    """The records of one task, in input order. ``fields``: the columns wanted from Parquet.

    Raises :class:`DamagedFile` where the file turns out damaged, after the records before it."""
    if task["format"] == "parquet":
        return _iter_parquet(task, fields)
    return _iter_jsonl(task)


def _gzip_start(head: bytes) -> bool:
    return b"\x1f\x8b".startswith(head[:2])


def _zstd_start(head: bytes) -> bool:
    """A zstd frame (magic 28 b5 2f fd) or a skippable frame (magic 5? 2a 4d 18), from its first bytes."""
    return b"\x28\xb5\x2f\xfd".startswith(head) or (0x50 <= head[0] <= 0x5F and b"\x2a\x4d\x18".startswith(head[1:]))


def _codec(compression: str) -> tuple[str, Callable[[], Any], tuple[type[Exception], ...], Callable[[bytes], bool]]:
    """(what the file is made of, a new decompressor, its errors, could these first bytes begin one)."""
    if compression == "gzip":
        return "gzip member", lambda: zlib.decompressobj(wbits=31), (zlib.error,), _gzip_start
    import zstandard  # only needed for .zst inputs

    return "zstd frame", lambda: zstandard.ZstdDecompressor().decompressobj(), (zstandard.ZstdError,), _zstd_start


class DecompressedStream(io.RawIOBase):
    """A gzip or zstd file as a stream of its decompressed bytes; damage raises :class:`DamagedFile`.

    Read its lines through ``io.BufferedReader`` (see :func:`_open_lines`). The file is read in 1 MiB
    blocks and decompressed here ``piece_bytes`` at a time, one member (gzip) or frame (zstd) after
    another, so that memory stays at a piece's decompressed data, the end of the data is told from
    the end of the file (see the module docstring for what counts as damage), and corruption is
    located to a piece (whose output, decoded in the failing call, is lost).
    """

    def __init__(self, path: Path, compression: str, piece_bytes: Optional[int] = None):
        super().__init__()
        self.path, self.piece_bytes = path, piece_bytes or PIECE_BYTES
        self.unit, self.new, self.errors, self.starts_unit = _codec(compression)
        self._chunks = self._decompressed()
        self._pending = memoryview(b"")  # decompressed, not yet read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._chunks.close()  # closes the file
        super().close()

    def _decompressed(self) -> Iterator[bytes]:
        d = self.new()
        unit_start = pos = 0  # where the current member/frame begins; the bytes read so far
        head = b""  # its first bytes, to tell a member from trailing garbage
        with open(self.path, "rb", buffering=BLOCK_BYTES) as f:
            size = os.fstat(f.fileno()).st_size
            while piece := f.read(self.piece_bytes):
                piece_start, pos, data = pos, pos + len(piece), piece
                while data:
                    if len(head) < 4:
                        head = (head + data)[:4]
                        if not self.starts_unit(head):
                            where = f"compressed byte {unit_start}"
                            raise self._damage(self._not_a_unit(unit_start, size), where, unit_start, size - unit_start)
                    try:
                        out = d.decompress(data)
                    except self.errors as e:
                        error = (
                            f"corrupt data in the {self.unit} that starts at byte {unit_start}: {e} (the "
                            f"records decoded from it so far are unverified)"
                        )
                        raise self._damage(
                            error, f"compressed bytes {piece_start}-{pos}", piece_start, size - pos
                        ) from None
                    if out:
                        yield out
                    if not d.eof:
                        break
                    data = d.unused_data
                    d, unit_start, head = self.new(), pos - len(data), b""
        if head or size == 0:  # a member/frame has begun and not ended, or the file holds none
            error = f"truncated: the {self.unit} that starts at byte {unit_start} is cut off by the end of the file"
            if size == 0:
                error = f"truncated: the file is empty, not even one {self.unit}"
            raise self._damage(error, f"compressed byte {size}, the end of the file", size, None)

    def _not_a_unit(self, offset: int, size: int) -> str:
        if offset == 0:
            return f"not a {self.unit.split()[0]} file: it does not begin with a {self.unit}"
        return f"the {size - offset} bytes after the last complete {self.unit} are not a {self.unit} (trailing garbage)"

    def _damage(self, error: str, where: str, offset: int, bytes_unread: Optional[int]) -> DamagedFile:
        return DamagedFile(self.path, where, error, offset=offset, bytes_unread=bytes_unread)


def _open_lines(task: dict[str, Any]) -> tuple[io.BufferedIOBase, Optional[int]]:
    """A binary stream of the task's text positioned at its first line, and the byte count to read (None: all)."""
    path, compression = Path(task["path"]), task["compression"]
    if compression is not None:
        return io.BufferedReader(DecompressedStream(path, compression), BLOCK_BYTES), None
    f = open(path, "rb", buffering=BLOCK_BYTES)
    f.seek(task["start"])
    return f, task["end"] - task["start"]


def _iter_jsonl(task: dict[str, Any]) -> Iterator[Record]:
    """The lines of a task; a last line without newline that is not a JSON object is a DamagedFile."""
    path, compression = task["path"], task["compression"]
    stream, remaining = _open_lines(task)
    number, offset = task["first_line"], task.get("start", 0)  # offset: in the (uncompressed) text
    with stream:
        for line in stream:
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= len(line)
            size = len(line)
            if number == 1 and line.startswith(BOM):
                line = line[3:]
            record = _parse_line(number, line.rstrip(b"\r\n"))
            if record[1] is None and not line.endswith(b"\n"):
                kind = "" if compression is None else "uncompressed "
                raise DamagedFile(
                    path,
                    f"line {number}, {kind}byte {offset}",
                    "truncated: the last line has no final newline and is not a JSON object (a record cut off)",
                    offset=offset,
                    records_lost=1,
                    bytes_unread=size,
                )
            yield record
            number, offset = number + 1, offset + size
    if remaining:
        raise InputError(
            f"input file {path} ended at byte {offset} while being read (the plan expected "
            f"{task['end']}): it changed since the plan was made; start a new run folder for changed data"
        )


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
    except RecursionError:
        return number, None, ("bad_json", "nested too deeply to parse"), raw
    if not isinstance(obj, dict):
        return number, None, ("not_object", f"JSON {type(obj).__name__}, not an object"), raw
    return number, obj, None, raw


def _iter_parquet(task: dict[str, Any], fields: Sequence[str]) -> Iterator[Record]:
    path = Path(task["path"])
    pf = _parquet_file(path)
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
    for rg in range(a, b):
        rg_first, rg_rows = number, pf.metadata.row_group(rg).num_rows
        try:
            for batch in pf.iter_batches(batch_size=8192, row_groups=[rg], columns=columns):
                cols = [_to_python(batch.column(i)) for i in range(batch.num_columns)]
                for values in zip(*cols, strict=True):
                    yield number, dict(zip(columns, values, strict=True)), None, None
                    number += 1
        except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
            raise DamagedFile(
                path,
                f"row group {rg}, rows {rg_first}-{rg_first + rg_rows - 1}",
                f"row group {rg} cannot be decoded: {e}",
                row_group=rg,
                records_lost=task["first_row"] + task["n_rows"] - number,
            ) from e


def _to_python(col: pa.Array) -> list:
    """Column values as Python objects; binary columns stay bytes (decoded and checked later)."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    try:
        return col.to_pylist()
    except UnicodeDecodeError:  # invalid UTF-8 in a string column: bytes, so that the row is quarantined (non_utf8)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise
        return col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()).to_pylist()
