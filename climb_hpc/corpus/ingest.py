"""Stage ``ingest``: input JSONL/Parquet files -> Parquet doc shards, bad records -> quarantine.

Layout under ``<run_dir>/ingest/``::

    plan.json                        the tasks (written once by prepare, reused on resume)
    builtin/<domain>.jsonl           the built-in corpus, when ``corpus.paths`` is empty
    docs/shard_{task:05d}.parquet    id: string, text: string, source: string (null), n_chars: int64
    quarantine/shard_{task:05d}.jsonl  one JSON object per rejected record (file, line|row, reason, ...)
    stats/shard_{task:05d}.json      per-task counts
    id_hashes/shard_{task:05d}.npy   sorted uint64 hashes of the ids written (finalize's duplicate check)
    summary.json                     totals, per-reason and per-source counts, shard list (finalize)

One task per input file, per ~``chunk_mb`` byte range of a plain JSONL file (ranges end on a
newline), per group of row groups of a big Parquet file; a compressed file is one task. Shards are in
plan order (sorted input files, then chunks), rows in input order, so the corpus order is
deterministic and :func:`doc_shard_paths` / :func:`iter_doc_shards` give it to later stages.

Decisions worth knowing:

* Accounting: every record of the input (a JSONL line, a Parquet row) is either written or
  quarantined, once. ``docs_in == docs_written + docs_quarantined`` is checked in each task and again
  in finalize, which also checks the counts against the plan (line counts of split files, Parquet row
  counts), the shard row counts and the quarantine line counts. Blank lines count as records and are
  quarantined as ``blank_line`` so that the identity holds for ``wc -l``.
* Quarantine reasons: ``blank_line``, ``non_utf8`` (bytes that are not UTF-8, or a lone surrogate
  from a ``\\ud800`` escape), ``bad_json``, ``not_object``, ``missing_text`` (no field, or null),
  ``text_not_string``, ``empty_text`` (empty or whitespace only), ``bad_id`` / ``bad_source`` (a list
  or object where a string is expected), ``duplicate_id``.
* Ids: the ``id_field`` value (strings as they are, numbers as decimal strings). A record without
  one (missing, null or "") gets ``<key>:<line>`` (JSONL, 1-based line) or ``<key>:row<row>``
  (Parquet, 0-based row), where ``<key>`` is ``<folder name>/<path inside it>`` for a file found in a
  folder of ``corpus.paths`` and the file name for a file given directly (keys are checked unique).
  Generated ids are thus unique by construction and stable across chunk sizes and reruns.
* Duplicate ids: the id must be unique in the corpus (later stages key on it). Within a task a
  repeated id is quarantined as ``duplicate_id`` (the first occurrence, in input order, is kept).
  Across tasks, dropping a row would mean rewriting a finished shard (breaking "a task overwrites
  only its own outputs" and costing a pass over the data), so finalize instead fails with the
  offending ids if any id is in two shards. It never holds the ids: each task writes the sorted
  64-bit hashes of its ids (``id_hashes/``), finalize merges them a hash range at a time within a
  fixed memory budget and checks the matches against the ids of just the shards involved, so the
  check is exact (:mod:`climb_hpc.corpus.dedup`: 1 GiB, 8 bytes a doc read). Inputs with such ids
  need deduplicating, or ``corpus.id_field: null`` to use the generated ids. Generated ids cannot
  collide across tasks, so the default corpus never fails here.
* ``source``: always a column, so every shard has the same schema; null where the input has no
  ``source_field`` (for example a Parquet file without that column). Summaries count null as
  ``"<none>"``.
* ``n_chars`` is ``len(text)`` in Unicode code points. Texts are stored as they are (not stripped).
* Damaged input files (a truncated or corrupt ``.gz``/``.zst``, a plain JSONL file whose last line
  was cut, a Parquet file with a bad footer or row group; see ``readers.py`` for how each is found):
  ``corpus.damaged_files: fail`` (the default) fails the task with an InputError naming the file and
  where (byte offset or row group), so no output and no marker are written. With ``quarantine`` the
  task keeps the whole records read before the damage and stops reading there: the records after it
  in that task, and the cut one, are lost. (Corruption inside a .gz member / .zst frame may be
  noticed only at its checksum, after some altered records were read: the error says so.) The damage itself counts as ONE record in ``docs_in``
  that is quarantined with reason ``damaged_file`` (one quarantine line: file, offset or row group,
  error), whatever it cost, so ``docs_in == docs_written + docs_quarantined`` still holds and the
  quarantine file still has ``docs_quarantined`` lines. What it cost is in the task's stats under
  ``damaged`` (file, where, error, ``records_lost`` and ``bytes_unread`` where known): the check
  against the plan's count becomes ``records read + records_lost == planned`` (records read =
  ``docs_in - 1``; skipped when either is unknown, as for a compressed file). finalize lists the
  damaged files in ``summary.json`` (``damaged_files``) and prints a warning saying what was lost.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from climb_hpc.corpus.builtin import write_builtin_corpus
from climb_hpc.corpus.dedup import count_hashes, cross_shard_duplicates, hashes_of_shard, write_hashes
from climb_hpc.corpus.readers import DamagedFile, check_unchanged, discover_inputs, iter_records, plan_file
from climb_hpc.errors import ConfigError, InputError
from climb_hpc.estimate import Inputs, Ledger, Work, rate
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage
from climb_hpc.validate import CHOICES

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "ingest"
PLAN_VERSION = 1
NO_SOURCE = "<none>"
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("n_chars", pa.int64())])
REASONS = (
    "blank_line",
    "non_utf8",
    "bad_json",
    "not_object",
    "missing_text",
    "text_not_string",
    "empty_text",
    "bad_id",
    "bad_source",
    "duplicate_id",
    "damaged_file",
)
DAMAGED_FILES = ("fail", "quarantine")  # corpus.damaged_files
FLUSH_CHARS = 64 << 20  # also flush a row group after this many characters of text


@dataclass(frozen=True)
class Fields:
    text: str
    id: Optional[str]
    source: Optional[str]

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.text, self.id, self.source) if c]


# ---------------------------------------------------------------- paths


@dataclass(frozen=True)
class Outputs:
    """What ingest writes under ``<run_dir>/ingest/`` (the layout in the module docstring)."""

    dir: Path

    @property
    def plan(self) -> Path:
        return self.dir / "plan.json"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def builtin(self) -> Path:
        return self.dir / "builtin"

    @property
    def docs(self) -> Path:
        return self.dir / "docs"

    def shard(self, task: int) -> Path:
        return self.docs / f"shard_{task:05d}.parquet"

    def quarantine(self, task: int) -> Path:
        return self.dir / "quarantine" / f"shard_{task:05d}.jsonl"

    def stats(self, task: int) -> Path:
        return self.dir / "stats" / f"shard_{task:05d}.json"

    def id_hashes(self, task: int) -> Path:
        return self.dir / "id_hashes" / f"shard_{task:05d}.npy"


def outputs(run_dir: RunDir) -> Outputs:
    return Outputs(run_dir.path / NAME)


def shard_path(run_dir: RunDir, task: int) -> Path:
    return outputs(run_dir).shard(task)


def quarantine_path(run_dir: RunDir, task: int) -> Path:
    return outputs(run_dir).quarantine(task)


def stats_path(run_dir: RunDir, task: int) -> Path:
    return outputs(run_dir).stats(task)


def hashes_path(run_dir: RunDir, task: int) -> Path:
    return outputs(run_dir).id_hashes(task)


def plan_path(run_dir: RunDir) -> Path:
    return outputs(run_dir).plan


def summary_path(run_dir: RunDir) -> Path:
    return outputs(run_dir).summary


# ---------------------------------------------------------------- config


def _fields(c: DictConfig) -> Fields:
    if not c.get("text_field"):
        raise ConfigError("corpus.text_field must name the field holding the document text")
    return Fields(text=str(c.text_field), id=c.get("id_field") or None, source=c.get("source_field") or None)


def _number(c: DictConfig, key: str, default: float, kind: type, low: int = 0) -> Any:
    """``corpus.<key>`` as a finite float > 0 (``kind=float``) or an int >= ``low``, or a ConfigError."""
    value = c.get(key, default)
    try:
        x = kind(value)
        ok = (x > 0 if kind is float else x >= low) and math.isfinite(x) and not isinstance(value, bool)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        what = "a positive number" if kind is float else f"an integer >= {low}"
        raise ConfigError(f"corpus.{key} must be {what}, got {value!r}; fix it in the config or on the command line")
    return x


def _task_options(c: DictConfig) -> dict[str, Any]:
    """The settings :func:`ingest_task` takes from ``corpus``, checked."""
    compression, choices = str(c.compression), CHOICES["corpus.compression"]
    if compression not in choices:
        raise ConfigError(f"corpus.compression={compression!r}: choose one of {', '.join(choices)}")
    return {
        "excerpt_chars": _number(c, "quarantine_excerpt_chars", 200, int, 0),
        "compression": compression,
        "rows_per_group": _number(c, "rows_per_group", 10000, int, 1),
        "damaged_files": _damaged_files(c),
    }


def _damaged_files(c: DictConfig) -> str:
    policy = str(c.damaged_files)
    if policy not in DAMAGED_FILES:
        raise ConfigError(f"corpus.damaged_files={policy!r}: choose fail or quarantine")
    return policy


def _input_paths(c: DictConfig) -> list[str]:
    paths = c.get("paths") or []
    return [str(paths)] if isinstance(paths, str) else [str(p) for p in paths]


def _plan_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings a plan depends on; a stored plan made with other settings is refused."""
    c = cfg.corpus
    chunk_mb = _number(c, "chunk_mb", 64, float)
    settings: dict[str, Any] = {"paths": _input_paths(c), "chunk_mb": chunk_mb}
    if not settings["paths"]:
        b = c.get("builtin") or {}
        seed = b.get("seed")
        settings["builtin"] = {
            "docs_per_domain": int(b.docs_per_domain),
            "seed": int(cfg.seed if seed is None else seed),
        }
    return json.loads(json.dumps(settings))


# ---------------------------------------------------------------- plan


def load_plan(run_dir: RunDir) -> dict[str, Any]:
    plan = read_json(plan_path(run_dir))
    if plan is None:
        raise FileNotFoundError(f"{plan_path(run_dir)} is missing: the ingest stage has not been planned")
    return plan


def prepare(cfg: DictConfig, run_dir: RunDir) -> None:
    """Plan the tasks once (the built-in corpus is written here when ``corpus.paths`` is empty). A stored
    plan is reused when the settings match, so a resumed run sees the same tasks; otherwise refused."""
    settings = _plan_settings(cfg)
    _fields(cfg.corpus)  # config errors before any task runs
    damaged_files = _task_options(cfg.corpus)["damaged_files"]
    stored = read_json(plan_path(run_dir))
    if stored is not None:
        if stored.get("settings") != settings:
            raise ConfigError(
                f"{plan_path(run_dir)} was planned with corpus settings {stored.get('settings')}, but the "
                f"config now says {settings}. Use a new run folder for a different corpus."
            )
        return
    atomic_write_json(plan_path(run_dir), make_plan(settings, run_dir, damaged_files))


def num_tasks(cfg: DictConfig, run_dir: RunDir) -> int:
    return len(load_plan(run_dir)["tasks"])


def make_plan(settings: dict[str, Any], run_dir: RunDir, damaged_files: str = "fail") -> dict[str, Any]:
    """The tasks of the corpus. An unreadable Parquet file fails here, or is planned as one task that
    reports it damaged with ``damaged_files="quarantine"``."""
    paths = settings["paths"]
    if not paths:
        b = settings["builtin"]
        out = outputs(run_dir).builtin
        write_builtin_corpus(out, b["docs_per_domain"], b["seed"])
        paths = [str(out)]
    chunk_bytes = max(1, int(settings["chunk_mb"] * (1 << 20)))
    tasks: list[dict[str, Any]] = []
    for path, key in discover_inputs(paths):
        for spec in plan_file(path, key, chunk_bytes, damaged_files):
            tasks.append({"task": len(tasks), **spec})
    return {"version": PLAN_VERSION, "settings": settings, "tasks": tasks}


# ---------------------------------------------------------------- one task


def _as_str(v: Any) -> Any:
    """A field value as str, None, or a ``(reason_suffix, detail)`` tuple when it cannot be one."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):  # Parquet binary columns
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError as e:
            return ("non_utf8", f"{e.reason} at byte {e.start}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return ("bad", f"{type(v).__name__}, not a string")


def _utf8_ok(s: str) -> bool:
    """False for strings with lone surrogates (from JSON escapes), which UTF-8 cannot encode."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check(
    obj: dict, fields: Fields
) -> tuple[Optional[tuple[str, Optional[str], Optional[str]]], Optional[tuple[str, str]]]:
    """``((text, id or None, source or None), None)`` for a good record, ``(None, (reason, detail))``."""
    text = obj.get(fields.text)
    if text is None:
        return None, (
            "missing_text",
            f"no {fields.text!r} field" if fields.text not in obj else f"{fields.text!r} is null",
        )
    if isinstance(text, bytes):
        text = _as_str(text)
        if isinstance(text, tuple):
            return None, text
    if not isinstance(text, str):
        return None, ("text_not_string", f"{fields.text!r} is {type(text).__name__}")
    if not text.strip():
        return None, ("empty_text", "empty or whitespace-only text")
    doc_id = source = None
    if fields.id:
        doc_id = _as_str(obj.get(fields.id))
        if isinstance(doc_id, tuple):
            return None, ("non_utf8" if doc_id[0] == "non_utf8" else "bad_id", f"{fields.id!r}: {doc_id[1]}")
    if fields.source:
        source = _as_str(obj.get(fields.source))
        if isinstance(source, tuple):
            return None, ("non_utf8" if source[0] == "non_utf8" else "bad_source", f"{fields.source!r}: {source[1]}")
    for s in (text, doc_id, source):
        if s and not _utf8_ok(s):
            return None, ("non_utf8", "lone surrogate (invalid \\u escape)")
    return (text, doc_id or None, source), None


class _ShardWriter:
    """Buffers docs and writes them as row groups of a Parquet file."""

    def __init__(self, path: Path, compression: str, rows_per_group: int):
        self.writer = pq.ParquetWriter(path, SCHEMA, compression=compression)
        self.rows_per_group = rows_per_group
        self.cols: tuple[list, list, list, list] = ([], [], [], [])
        self.chars = 0

    def add(self, doc_id: str, text: str, source: Optional[str]) -> None:
        ids, texts, sources, n_chars = self.cols
        ids.append(doc_id)
        texts.append(text)
        sources.append(source)
        n_chars.append(len(text))
        self.chars += len(text)
        if len(ids) >= self.rows_per_group or self.chars >= FLUSH_CHARS:
            self.flush()

    def flush(self) -> None:
        if self.cols[0]:
            arrays = [pa.array(col, type=f.type) for col, f in zip(self.cols, SCHEMA, strict=True)]
            self.writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA), row_group_size=len(self.cols[0]))
        self.cols, self.chars = ([], [], [], []), 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _excerpt(raw: Optional[bytes], obj: Optional[dict], limit: int) -> str:
    if raw is not None:
        s = raw[: 4 * limit + 4].decode("utf-8", "backslashreplace")
    else:
        s = json.dumps(
            obj,
            ensure_ascii=False,
            default=lambda o: o.decode("utf-8", "backslashreplace") if isinstance(o, bytes) else repr(o),
        )
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates -> visible escapes
    return s if len(s) <= limit else s[:limit] + "..."


def ingest_task(
    spec: dict[str, Any],
    fields: Fields,
    shard: Path,
    quarantine: Path,
    *,
    excerpt_chars: int = 200,
    compression: str = "zstd",
    rows_per_group: int = 10000,
    damaged_files: str = "fail",
    hashes: Optional[Path] = None,
) -> dict[str, Any]:
    """Read one task's records; write the doc shard and the quarantine file (atomically), and the sorted
    hashes of the ids written to ``hashes`` when given (finalize's cross-shard check); return stats.

    A damaged input raises :class:`DamagedFile` (nothing is written), or with
    ``damaged_files="quarantine"`` ends the task's records there (see the module docstring)."""
    t0 = time.perf_counter()
    jsonl = spec["format"] == "jsonl"
    unit, key = ("line" if jsonl else "row"), spec["key"]
    id_prefix = f"{key}:" if jsonl else f"{key}:row"
    reasons: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    seen: set[str] = set()
    docs_in = written = chars = 0
    number = spec["first_line"] if jsonl else spec["first_row"]  # of the record being read
    damaged: Optional[dict[str, Any]] = None
    with ExitStack() as stack:
        out = _ShardWriter(stack.enter_context(atomic_path(shard)), compression, rows_per_group)
        qf = stack.enter_context(open(stack.enter_context(atomic_path(quarantine)), "w", encoding="utf-8"))

        def reject(reason: str, detail: str, excerpt: str, **extra: Any) -> None:
            reasons[reason] += 1
            rec = {"file": spec["path"], unit: number, "reason": reason, "detail": detail, "excerpt": excerpt, **extra}
            qf.write(json.dumps(rec, ensure_ascii=False) + "\n")

        try:
            for number, obj, error, raw in iter_records(spec, fields.columns):
                docs_in += 1
                doc = None
                if error is None:
                    doc, error = _check(obj, fields)  # type: ignore[arg-type]
                if doc is not None:
                    text, doc_id, source = doc
                    doc_id = doc_id or f"{id_prefix}{number}"
                    if doc_id in seen:
                        doc, error = None, ("duplicate_id", f"id {doc_id!r} already seen in this task")
                    else:
                        seen.add(doc_id)
                        out.add(doc_id, text, source)
                        written += 1
                        chars += len(text)
                        sources[source if source is not None else NO_SOURCE] += 1
                if doc is None:
                    reject(*error, _excerpt(raw, obj, excerpt_chars))  # type: ignore[misc]
        except DamagedFile as e:
            if damaged_files != "quarantine":
                raise
            damaged = {"key": key, "task": spec["task"], **e.entry()}
            number = number + 1 if docs_in else number  # the first record not read
            docs_in += 1
            reject("damaged_file", f"{e.error} ({e.where})", "", offset=e.offset, row_group=e.row_group)
        out.close()
    if hashes is not None:
        write_hashes(hashes, seen)
    quarantined = sum(reasons.values())
    stats = {
        "task": spec["task"],
        "spec": spec,
        "docs_in": docs_in,
        "docs_written": written,
        "docs_quarantined": quarantined,
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "docs_by_source": dict(sorted(sources.items())),
        "chars_written": chars,
        "damaged": damaged,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    problems = _count_problems(stats)
    if problems:
        raise RuntimeError(f"ingest task {spec['task']} ({spec['path']}): " + "; ".join(problems))
    return stats


def _count_problems(stats: dict[str, Any]) -> list[str]:
    """What does not add up in a task's counts: in = written + quarantined, and the plan's count."""
    spec, damaged = stats["spec"], stats.get("damaged")
    problems = []
    if stats["docs_in"] != stats["docs_written"] + stats["docs_quarantined"]:
        problems.append(
            f"{stats['docs_in']} in != {stats['docs_written']} written + {stats['docs_quarantined']} quarantined"
        )
    expected = spec.get("n_lines") if spec["format"] == "jsonl" else spec.get("n_rows")
    read, lost = (stats["docs_in"] - 1, damaged["records_lost"]) if damaged else (stats["docs_in"], 0)
    if expected is not None and lost is not None and read + lost != expected:
        problems.append(f"{read} records read and {lost} lost to damage, but the plan counted {expected}")
    return problems


def run(cfg: DictConfig, run_dir: RunDir, task: int) -> None:
    c = cfg.corpus
    tasks = load_plan(run_dir)["tasks"]
    if not 0 <= task < len(tasks):
        raise IndexError(f"ingest has {len(tasks)} tasks; there is no task {task}")
    spec = tasks[task]
    check_unchanged(spec)
    stats = ingest_task(spec, _fields(c), shard_path(run_dir, task), quarantine_path(run_dir, task),
                        hashes=hashes_path(run_dir, task), **_task_options(c))
    atomic_write_json(stats_path(run_dir, task), stats)
    rate = stats["docs_in"] / max(stats["seconds"], 1e-9)
    print(
        f"ingest task {task} ({spec['key']}): {stats['docs_in']} in, {stats['docs_written']} written, "
        f"{stats['docs_quarantined']} quarantined {stats['quarantined_by_reason']} "
        f"in {stats['seconds']:.2f} s ({rate:,.0f} docs/s)",
        flush=True,
    )
    if stats["damaged"]:
        d = stats["damaged"]
        print(
            f"ingest task {task}: WARNING: {d['file']} is damaged ({d['error']}, {d['where']}); "
            f"read the {stats['docs_in'] - 1} records before it, {_lost(d)}",
            flush=True,
        )


# ---------------------------------------------------------------- finalize


def _task_stats(run_dir: RunDir, spec: dict[str, Any]) -> dict[str, Any]:
    """A task's stats, after checking them against the plan and against its output files."""
    t = spec["task"]
    stats = read_json(stats_path(run_dir, t))
    if stats is None:
        raise RuntimeError(f"ingest task {t} ({spec['path']}) has no stats file {stats_path(run_dir, t)}; did it run?")
    if stats["spec"] != spec:
        raise RuntimeError(f"ingest task {t}: its outputs were made from another plan; rerun the task")
    problems = _count_problems(stats)
    rows = pq.read_metadata(shard_path(run_dir, t)).num_rows
    if rows != stats["docs_written"]:
        problems.append(f"shard has {rows} rows, stats say {stats['docs_written']} written")
    with open(quarantine_path(run_dir, t), "rb") as f:
        q_lines = sum(1 for _ in f)
    if q_lines != stats["docs_quarantined"]:
        problems.append(f"quarantine has {q_lines} records, stats say {stats['docs_quarantined']}")
    hashes = hashes_path(run_dir, t)
    if not hashes.exists():  # a shard made before the hash files: hash its ids now (one shard in memory)
        hashes_of_shard(shard_path(run_dir, t), hashes)
    if count_hashes(hashes) != rows:
        problems.append(f"{hashes.name} has {count_hashes(hashes)} id hashes, the shard {rows} rows")
    if problems:
        raise RuntimeError(f"ingest task {t} ({spec['path']}): " + "; ".join(problems))
    return stats


def finalize(cfg: DictConfig, run_dir: RunDir) -> None:
    """Check every task's accounting and outputs, check ids are unique, write ``summary.json``."""
    plan = load_plan(run_dir)
    all_stats = [_task_stats(run_dir, spec) for spec in plan["tasks"]]
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    inputs: dict[str, dict[str, Any]] = {}
    for s in all_stats:
        for k in ("docs_in", "docs_written", "docs_quarantined", "chars_written"):
            totals[k] += s[k]
        reasons.update(s["quarantined_by_reason"])
        sources.update(s["docs_by_source"])
        spec = s["spec"]
        inp = inputs.setdefault(
            spec["key"],
            {
                "key": spec["key"],
                "path": spec["path"],
                "format": spec["format"],
                "compression": spec["compression"],
                "tasks": [],
                "docs_in": 0,
                "docs_written": 0,
            },
        )
        inp["tasks"].append(s["task"])
        inp["docs_in"] += s["docs_in"]
        inp["docs_written"] += s["docs_written"]
    if totals["docs_in"] != totals["docs_written"] + totals["docs_quarantined"]:
        raise RuntimeError(f"ingest: {dict(totals)} does not add up")
    if totals["docs_in"] == 0:
        raise InputError(f"ingest: the input holds no records (its {len(all_stats)} task(s) read empty files or "
                         "row groups); check corpus.paths")
    if totals["docs_written"] == 0:
        raise InputError(
            f"ingest: no document was written; all {totals['docs_in']} records were quarantined "
            f"({dict(reasons)}). Check corpus.text_field / corpus.paths and {quarantine_path(run_dir, 0).parent}"
        )
    shards = [shard_path(run_dir, s["task"]) for s in all_stats]
    n_dup, shown, capped = cross_shard_duplicates([hashes_path(run_dir, s["task"]) for s in all_stats], shards)
    if n_dup or capped:
        raise InputError(
            f"ingest: {'at least ' if capped else ''}{n_dup} ids appear in more than one shard, e.g. "
            f"{'; '.join(shown)}. Ids must be "
            "unique in the corpus: deduplicate the input, or set corpus.id_field=null to use "
            "generated ids (file + line)"
        )
    damaged = [s["damaged"] for s in all_stats if s.get("damaged")]
    base = outputs(run_dir).dir
    summary = {
        **{k: totals[k] for k in ("docs_in", "docs_written", "docs_quarantined", "chars_written")},
        "tasks": len(all_stats),
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "docs_by_source": dict(sorted(sources.items())),
        "fields": {
            "text": cfg.corpus.get("text_field"),
            "id": cfg.corpus.get("id_field"),
            "source": cfg.corpus.get("source_field"),
        },
        "builtin": "builtin" in plan["settings"],
        "inputs": list(inputs.values()),
        "damaged_files": damaged,
        "shards": [
            {
                "task": s["task"],
                "path": str(shard_path(run_dir, s["task"]).relative_to(base)),
                "docs": s["docs_written"],
                "quarantined": s["docs_quarantined"],
                "input": s["spec"]["key"],
            }
            for s in all_stats
        ],
    }
    atomic_write_json(summary_path(run_dir), summary)
    print(
        f"ingest: {summary['docs_in']} records, {summary['docs_written']} written, "
        f"{summary['docs_quarantined']} quarantined {summary['quarantined_by_reason']}; "
        f"sources {summary['docs_by_source']}",
        flush=True,
    )
    if damaged:
        print(
            f"ingest: WARNING: {len(damaged)} damaged input file(s) (corpus.damaged_files=quarantine), the records "
            "after the damage are not in the corpus: "
            + "; ".join(f"{d['file']} ({d['where']}: {d['error']}) {_lost(d)}" for d in damaged),
            flush=True,
        )


def _lost(damaged: dict[str, Any]) -> str:
    """'lost 12 records' / 'lost an unknown number of records', and the bytes that gave none."""
    n = damaged.get("records_lost")
    out = f"lost {n:,} record(s)" if n is not None else "lost an unknown number of records"
    unread = damaged.get("bytes_unread")
    return out + (f" ({unread:,} bytes unread)" if unread else "")


# ---------------------------------------------------------------- for later stages


def doc_shard_paths(run_dir: RunDir) -> list[Path]:
    """The doc shards in corpus order (plan order); raises if one is missing."""
    paths = [shard_path(run_dir, spec["task"]) for spec in load_plan(run_dir)["tasks"]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} ingest shards are missing, e.g. {missing[0]}; has ingest finished?")
    return paths


def iter_doc_shards(run_dir: RunDir, columns: Optional[Sequence[str]] = None) -> Iterator[tuple[int, pa.Table]]:
    """``(task, table)`` per shard, in corpus order; ``columns`` limits what is read."""
    for task, path in enumerate(doc_shard_paths(run_dir)):
        yield task, pq.read_table(path, columns=list(columns) if columns else None)


def iter_doc_batches(
    run_dir: RunDir, columns: Optional[Sequence[str]] = None, batch_size: int = 8192
) -> Iterator[pa.RecordBatch]:
    """The corpus as record batches in corpus order, without holding a whole shard in memory."""
    for path in doc_shard_paths(run_dir):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)


def resources(cfg: DictConfig) -> Resources:
    """One core; memory for one chunk's row-group buffers and the id set of a task."""
    return Resources(cpus=1, mem_gb=4, time_min=60)


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate_tasks(cfg: DictConfig, x: Inputs, led: Ledger) -> int:
    """Ingest's tasks for the plan's corpus (tokenize has as many: one a shard): one a ``corpus.chunk_mb`` of plain
    JSONL; the built-in corpus is one file a domain, each smaller than a chunk."""
    if x.builtin:
        from climb_hpc.corpus.builtin import DOMAINS

        return int(led.use("ingest tasks", len(DOMAINS), "the built-in corpus: one file a domain"))
    bpt = led.use("bytes a token", float(cfg.plan.bytes_per_token), "plan.bytes_per_token")
    mb = led.use("ingest chunk", _number(cfg.corpus, "chunk_mb", 64, float),
                 "corpus.chunk_mb (plain JSONL; a compressed file is one task)", "MB")
    return max(1, math.ceil(x.tokens * bpt / (mb * 2**20)))


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Reading, checking and writing the corpus as Parquet: one Python thread a task, at a core's rate."""
    return Work("text (CPU)", [estimate_tasks(cfg, x, led)],
                core_s=x.tokens / rate(cfg, x, "ingest_tokens_s", led, "tokens/s a core"))


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, prepare=prepare, finalize=finalize,
              outputs=outputs, estimate=estimate)
