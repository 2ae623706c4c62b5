"""Stage ``ingest``: accounting, quarantine, chunking, Parquet, determinism, the built-in corpus."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from omegaconf import DictConfig, OmegaConf

from climb_hpc.corpus import doc_shard_paths, iter_doc_batches, iter_doc_shards
from climb_hpc.corpus.builtin import DOMAINS, MAX_CHARS, MIN_CHARS
from climb_hpc.corpus.ingest import STAGE, plan_path, quarantine_path, shard_path, stats_path, summary_path
from climb_hpc.errors import ConfigError, InputError
from climb_hpc.pipeline import prepare_stage
from climb_hpc.rundir import RunDir, read_json

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path("/work/shared/data/corpus")


def make_cfg(seed: int = 0, **corpus: Any) -> DictConfig:
    cfg = OmegaConf.create({"corpus": OmegaConf.load(ROOT / "configs/corpus/default.yaml"), "seed": seed})
    for k, v in corpus.items():
        OmegaConf.update(cfg, f"corpus.{k}", v, merge=False)
    return cfg


def run_stage(cfg: DictConfig, run_dir: RunDir) -> dict:
    n = prepare_stage(cfg, run_dir, STAGE)[0]
    for t in range(n):
        STAGE.run(cfg, run_dir, t)
        run_dir.mark_done("ingest", t)
    STAGE.finalize(cfg, run_dir)
    return read_json(summary_path(run_dir))


def docs(run_dir: RunDir) -> list[dict]:
    return [row for _, table in iter_doc_shards(run_dir) for row in table.to_pylist()]


def quarantine(run_dir: RunDir) -> list[dict]:
    n = len(read_json(plan_path(run_dir))["tasks"])
    return [json.loads(line) for t in range(n) for line in quarantine_path(run_dir, t).read_text().splitlines()]


# ---------------------------------------------------------------- bad lines and conservation

GOOD = 6
BAD_LINES: list[tuple[bytes, str]] = [  # (line, expected reason)
    (b'{"id": "a", "text": "not closed', "bad_json"),
    (b'{"id": "b", "text": "caf\xe9 au lait"}', "non_utf8"),
    (b'{"id": "c", "text": "lone \\ud800 surrogate"}', "non_utf8"),
    (b'{"id": "d", "text": "  \\n\\t  "}', "empty_text"),
    (b'{"id": "e", "text": ""}', "empty_text"),
    (b'{"id": "f", "body": "no text field"}', "missing_text"),
    (b'{"id": "g", "text": null}', "missing_text"),
    (b'{"id": "h", "text": 42}', "text_not_string"),
    (b'["an", "array"]', "not_object"),
    (b'"a string"', "not_object"),
    (b"   ", "blank_line"),
    (b'{"id": "good-1", "text": "same id again"}', "duplicate_id"),
    (b'{"id": ["x"], "text": "id is a list"}', "bad_id"),
]


def bad_jsonl_bytes() -> tuple[bytes, dict[int, str]]:
    """A JSONL file with GOOD good docs and BAD_LINES interleaved; returns (bytes, line -> reason)."""
    lines, reasons = [], {}
    good = [
        json.dumps({"id": f"good-{i}", "text": f"document {i} \u00e9t\u00e9 \u4e2d", "source": "web"}).encode()
        for i in range(GOOD - 2)
    ]
    good += [b'{"text": "no id: generated from file and line"}', b'{"id": 7, "text": "integer id", "source": "x"}']
    for i in range(max(len(good), len(BAD_LINES))):
        if i < len(good):
            lines.append(good[i])
        if i < len(BAD_LINES):
            lines.append(BAD_LINES[i][0])
            reasons[len(lines)] = BAD_LINES[i][1]
    return b"\n".join(lines) + b"\n", reasons


def write_compressed(path: Path, data: bytes) -> None:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    elif path.suffix == ".zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz", "bad.jsonl.zst"])
def test_bad_lines_are_quarantined_and_counted(tmp_path: Path, name: str) -> None:
    data, reasons = bad_jsonl_bytes()
    src = tmp_path / name
    write_compressed(src, data)
    run_dir = RunDir(tmp_path / "run")
    summary = run_stage(make_cfg(paths=[str(src)]), run_dir)

    n_lines = data.count(b"\n")
    assert summary["docs_in"] == n_lines == GOOD + len(BAD_LINES)
    assert summary["docs_written"] == GOOD
    assert summary["docs_written"] + summary["docs_quarantined"] == n_lines
    assert summary["quarantined_by_reason"] == dict(Counter(reasons.values()))
    assert summary["docs_by_source"] == {"web": GOOD - 2, "x": 1, "<none>": 1}

    q = quarantine(run_dir)
    assert {r["line"]: r["reason"] for r in q} == reasons
    assert all(r["file"] == str(src.resolve()) for r in q)
    excerpts = {r["excerpt"][:9]: r for r in q}
    assert "caf\\xe9" in excerpts['{"id": "b']["excerpt"] and excerpts['{"id": "b']["reason"] == "non_utf8"
    assert excerpts['{"id": "a']["reason"] == "bad_json" and excerpts['{"id": "a']["detail"].startswith("Unterminated")

    rows = docs(run_dir)
    assert [r["id"] for r in rows] == [f"good-{i}" for i in range(GOOD - 2)] + [f"{name}:9", "7"]
    assert rows[0]["text"] == "document 0 \u00e9t\u00e9 \u4e2d" and rows[0]["n_chars"] == len(rows[0]["text"])
    stats = read_json(stats_path(run_dir, 0))
    assert stats["docs_in"] == stats["docs_written"] + stats["docs_quarantined"] == n_lines


def test_quarantine_excerpt_is_truncated(tmp_path: Path) -> None:
    src = tmp_path / "long.jsonl"
    src.write_text('{"text": "ok"}\n' + '{"text": "' + "x" * 5000 + "\n")
    run_dir = RunDir(tmp_path / "run")
    run_stage(make_cfg(paths=[str(src)], quarantine_excerpt_chars=50), run_dir)
    (rec,) = quarantine(run_dir)
    assert rec["reason"] == "bad_json" and rec["line"] == 2 and len(rec["excerpt"]) <= 53


# ---------------------------------------------------------------- Parquet


def write_parquet(path: Path, n: int, with_source: bool, row_group_size: int = 10) -> None:
    cols: dict[str, list] = {"id": [f"p{i}" for i in range(n)], "text": [f"parquet doc {i}" for i in range(n)]}
    cols["text"][3] = "   "  # empty_text
    cols["text"][5] = None  # missing_text
    if with_source:
        cols["source"] = [f"s{i % 3}" for i in range(n)]
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)


@pytest.mark.parametrize("with_source", [True, False])
def test_parquet_input(tmp_path: Path, with_source: bool) -> None:
    src = tmp_path / "data" / "part.parquet"
    src.parent.mkdir()
    write_parquet(src, 35, with_source)
    run_dir = RunDir(tmp_path / "run")
    summary = run_stage(make_cfg(paths=[str(src.parent)]), run_dir)
    assert summary["docs_in"] == 35 and summary["docs_written"] == 33
    assert summary["quarantined_by_reason"] == {"empty_text": 1, "missing_text": 1}
    assert sorted((r["row"], r["reason"]) for r in quarantine(run_dir)) == [(3, "empty_text"), (5, "missing_text")]
    table = pq.read_table(shard_path(run_dir, 0))
    assert table.schema.names == ["id", "text", "source", "n_chars"]  # same schema for every shard
    expected = [f"s{i % 3}" for i in range(35) if i not in (3, 5)] if with_source else [None] * 33
    assert table.column("source").to_pylist() == expected
    assert table.column("id").to_pylist() == [f"p{i}" for i in range(35) if i not in (3, 5)]


def test_parquet_split_by_row_groups(tmp_path: Path) -> None:
    src = tmp_path / "big.parquet"
    write_parquet(src, 400, True, row_group_size=20)
    whole, split = RunDir(tmp_path / "whole"), RunDir(tmp_path / "split")
    run_stage(make_cfg(paths=[str(src)]), whole)
    summary = run_stage(make_cfg(paths=[str(src)], chunk_mb=0.0005), split)
    assert summary["tasks"] > 3
    assert docs(split) == docs(whole)
    assert quarantine(split) == quarantine(whole)


def test_parquet_without_id_column_gets_row_ids(tmp_path: Path) -> None:
    src = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"content": ["alpha", "beta"]}), src)
    run_dir = RunDir(tmp_path / "run")
    run_stage(make_cfg(paths=[str(src)], text_field="content"), run_dir)
    assert [r["id"] for r in docs(run_dir)] == ["noid.parquet:row0", "noid.parquet:row1"]


# ---------------------------------------------------------------- chunking


def test_chunked_jsonl_equals_single_task(tmp_path: Path) -> None:
    data, _ = bad_jsonl_bytes()
    lines = [
        json.dumps(
            {"id": f"d{i}", "text": ("w\u00f6rd " * (i % 97 + 1)).strip(), "source": f"s{i % 4}"}, ensure_ascii=False
        ).encode()
        for i in range(300)
    ]
    body = data + b"\n".join(lines) + b'\n{"text": "last line without newline"}'
    src = tmp_path / "big.jsonl"
    src.write_bytes(body)
    whole, split = RunDir(tmp_path / "whole"), RunDir(tmp_path / "split")
    s_whole = run_stage(make_cfg(paths=[str(src)]), whole)
    s_split = run_stage(make_cfg(paths=[str(src)], chunk_mb=0.001), split)

    assert s_whole["tasks"] == 1 and s_split["tasks"] > 20
    n_lines = body.count(b"\n") + 1
    assert s_split["docs_in"] == s_whole["docs_in"] == n_lines
    assert docs(split) == docs(whole)  # no doc lost or duplicated at chunk borders, same order, same ids
    assert quarantine(split) == quarantine(whole)  # same line numbers too
    assert docs(whole)[-1]["id"] == f"big.jsonl:{n_lines}"
    tasks = read_json(plan_path(split))["tasks"]
    assert tasks[0]["start"] == 0 and tasks[-1]["end"] == len(body)
    assert all(
        a["end"] == b["start"] and body[a["end"] - 1 : a["end"]] == b"\n"
        for a, b in zip(tasks[:-1], tasks[1:], strict=True)
    )


def test_rerun_overwrites_with_same_bytes(tmp_path: Path) -> None:
    data, _ = bad_jsonl_bytes()
    src = tmp_path / "in.jsonl"
    src.write_bytes(data * 3)  # duplicates across chunks would be caught; keep one chunk per copy
    cfg = make_cfg(paths=[str(src)])
    run_dir = RunDir(tmp_path / "run")
    assert prepare_stage(cfg, run_dir, STAGE)[0] == 1
    STAGE.run(cfg, run_dir, 0)
    first = shard_path(run_dir, 0).read_bytes(), quarantine_path(run_dir, 0).read_bytes()
    shard_path(run_dir, 0).write_bytes(b"garbage from a killed run")
    STAGE.run(cfg, run_dir, 0)
    assert (shard_path(run_dir, 0).read_bytes(), quarantine_path(run_dir, 0).read_bytes()) == first
    assert sorted(p.name for p in shard_path(run_dir, 0).parent.iterdir()) == ["shard_00000.parquet"]  # no temporaries


# ---------------------------------------------------------------- plan, errors, folders


def test_plan_is_reused_and_guarded(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "one"}\n')
    run_dir = RunDir(tmp_path / "run")
    assert prepare_stage(make_cfg(paths=[str(src)]), run_dir, STAGE)[0] == 1
    before = plan_path(run_dir).read_bytes()
    (tmp_path / "more.jsonl").write_text('{"text": "two"}\n')
    assert prepare_stage(make_cfg(paths=[str(src)]), run_dir, STAGE)[0] == 1
    assert plan_path(run_dir).read_bytes() == before
    with pytest.raises(ConfigError, match="planned with corpus settings"):
        prepare_stage(make_cfg(paths=[str(tmp_path)]), run_dir, STAGE)[0]
    src.write_text('{"text": "changed size"}\n')
    with pytest.raises(InputError, match="changed since the plan"):
        STAGE.run(make_cfg(paths=[str(src)]), run_dir, 0)


def test_missing_and_empty_inputs_fail_before_launch(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "x.jsonl"
    with pytest.raises(InputError, match=str(missing)):
        prepare_stage(make_cfg(paths=[str(missing)]), RunDir(tmp_path / "r1"), STAGE)[0]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("not an input")
    with pytest.raises(InputError, match="no input files"):
        prepare_stage(make_cfg(paths=[str(empty)]), RunDir(tmp_path / "r2"), STAGE)[0]
    assert not (tmp_path / "r1" / "ingest" / "plan.json").exists()


def test_folders_are_walked_recursively_and_sorted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for rel in ["b/z.jsonl", "a.jsonl.gz", "b/a/y.jsonl", ".hidden/h.jsonl", "b/.tmp.jsonl", "c.parquet"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / "b/z.jsonl").write_text('{"text": "z"}\n')
    (root / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    (root / "b/a/y.jsonl").write_text('{"text": "y"}\n')
    (root / ".hidden/h.jsonl").write_text('{"text": "hidden"}\n')
    (root / "b/.tmp.jsonl").write_text('{"text": "temporary"}\n')
    pq.write_table(pa.table({"text": ["c"]}), root / "c.parquet")
    run_dir = RunDir(tmp_path / "run")
    run_stage(make_cfg(paths=[str(root)]), run_dir)
    assert [r["text"] for r in docs(run_dir)] == ["a", "y", "z", "c"]
    assert [r["id"] for r in docs(run_dir)] == [
        "data/a.jsonl.gz:1",
        "data/b/a/y.jsonl:1",
        "data/b/z.jsonl:1",
        "data/c.parquet:row0",
    ]
    assert len(doc_shard_paths(run_dir)) == 4
    assert sum(b.num_rows for b in iter_doc_batches(run_dir, columns=["id"])) == 4


def test_duplicate_ids_across_shards_fail_finalize(tmp_path: Path) -> None:
    for name in ("one.jsonl", "two.jsonl"):
        (tmp_path / name).write_text('{"id": "same", "text": "x"}\n{"id": "' + name + '", "text": "y"}\n')
    with pytest.raises(InputError, match="'same' in shard_00000.parquet, shard_00001.parquet"):
        run_stage(make_cfg(paths=[str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")]), RunDir(tmp_path / "r"))
    # with generated ids the same files ingest fine
    summary = run_stage(
        make_cfg(paths=[str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl")], id_field=None),
        RunDir(tmp_path / "r2"),
    )
    assert summary["docs_written"] == 4


# ---------------------------------------------------------------- built-in corpus


def builtin_files(run_dir: RunDir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir.path / "ingest" / "builtin").iterdir())}


def test_builtin_corpus(tmp_path: Path) -> None:
    a, b, c, d = (RunDir(tmp_path / n) for n in "abcd")
    summary = run_stage(make_cfg(**{"builtin.docs_per_domain": 30, "builtin.seed": 1}), a)
    prepare_stage(make_cfg(**{"builtin.docs_per_domain": 30, "builtin.seed": 1}), b, STAGE)[0]
    prepare_stage(make_cfg(**{"builtin.docs_per_domain": 30, "builtin.seed": 2}), c, STAGE)[0]
    prepare_stage(make_cfg(seed=1, **{"builtin.docs_per_domain": 30}), d, STAGE)[0]  # seed null -> top-level seed

    assert len(DOMAINS) >= 5
    assert summary["builtin"] and summary["docs_by_source"] == {name: 30 for name in DOMAINS}
    assert summary["docs_quarantined"] == 0
    assert builtin_files(a) == builtin_files(b) == builtin_files(d)
    fa, fc = builtin_files(a), builtin_files(c)
    assert fa.keys() == fc.keys() and all(fa[k] != fc[k] for k in fa)
    rows = docs(a)
    assert all(MIN_CHARS <= r["n_chars"] <= MAX_CHARS for r in rows)
    assert len({r["text"] for r in rows}) == len(rows) and len({r["id"] for r in rows}) == len(rows)


def test_builtin_domains_are_distinct() -> None:
    """Crude proxy for 'an embedding model would cluster them': each domain has its own vocabulary."""
    from climb_hpc.corpus.builtin import generate

    vocab = {d: Counter(w for i in range(40) for w in generate(d, i, 0)["text"].lower().split()) for d in DOMAINS}
    for d, words in vocab.items():
        top = {w for w, _ in words.most_common(60)}
        others = set().union(*({w for w, _ in vocab[o].most_common(60)} for o in DOMAINS if o != d))
        assert len(top - others) >= 25, d


# ---------------------------------------------------------------- the real data


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real corpus not available at {REAL_DATA}")
def test_real_corpus(tmp_path: Path) -> None:
    files = sorted(REAL_DATA.rglob("*.jsonl"))
    n_lines = sum(f.read_bytes().count(b"\n") for f in files)
    run_dir = RunDir(tmp_path / "run")
    summary = run_stage(make_cfg(paths=[str(REAL_DATA)]), run_dir)
    assert summary["docs_in"] == n_lines
    assert summary["docs_written"] == n_lines and summary["docs_quarantined"] == 0
    assert set(summary["docs_by_source"]) == {"code", "fiction", "math", "news", "science"}
    assert sum(pq.read_metadata(p).num_rows for p in doc_shard_paths(run_dir)) == n_lines
