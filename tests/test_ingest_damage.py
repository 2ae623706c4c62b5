"""Stage ``ingest`` on damaged and odd inputs: truncation and corruption of every format, symlinks.

Each class of damage is tested with several instances. By default (``corpus.damaged_files=fail``)
the task raises an InputError that names the file and where (compressed byte offset, byte offset of
the cut line, Parquet row group) and leaves no output; with ``quarantine`` the records before the
damage are kept (compared with the intact file's first records), ``summary.json`` lists the damaged
file and ``docs_in == docs_written + docs_quarantined`` still holds.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from climb_hpc.corpus import readers
from climb_hpc.corpus.ingest import STAGE, make_plan, plan_path, stats_path
from climb_hpc.corpus.readers import discover_inputs, iter_records
from climb_hpc.errors import ConfigError, InputError, UserError
from climb_hpc.pipeline import prepare_stage
from climb_hpc.rundir import RunDir, read_json
from tests.test_ingest import docs, make_cfg, quarantine, run_stage

_rng = random.Random(0)
_WORDS = ["".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(2, 9))) for _ in range(3000)]
INTACT = [{"id": f"d{i}", "text": " ".join(_rng.choices(_WORDS, k=_rng.randint(5, 40)))} for i in range(2000)]
JSONL = b"".join(json.dumps(r).encode() + b"\n" for r in INTACT)  # ~340 kB: several 64 KiB pieces compressed
HALF = JSONL.index(b"\n", len(JSONL) // 2) + 1  # a line boundary near the middle


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes, checksum: bool = False) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=checksum).compress(data)


def flip(data: bytes, pos: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 0xFF
    return bytes(out)


def decodable(data: bytes, name: str) -> bytes:
    """What a reader that takes the end of the input for the end of the data gets from it."""
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    out = []
    while data:  # gzip members, as far as they go
        d = zlib.decompressobj(wbits=31)
        out.append(d.decompress(data))
        data = d.unused_data if d.eof else b""
    return b"".join(out)


def whole_records(data: bytes, name: str) -> list[dict]:
    """The intact file's first records, as many as the compressed ``data`` holds whole."""
    return INTACT[: decodable(data, name).count(b"\n")]


# ---------------------------------------------------------------- the two modes


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    src = (tmp_path / name).resolve()
    src.write_bytes(data)
    return src


def assert_fails(src: Path, tmp_path: Path, *where: str) -> str:
    """Default mode: an InputError naming the file and ``where``; the task left no shard, quarantine or stats."""
    run_dir = RunDir(tmp_path / "fail")
    cfg = make_cfg(paths=[str(src)])
    with pytest.raises(InputError) as e:
        for t in range(prepare_stage(cfg, run_dir, STAGE)[0]):
            STAGE.run(cfg, run_dir, t)
    msg = str(e.value)
    assert str(src) in msg and "\n" not in msg, msg
    assert "corpus.damaged_files=quarantine" in msg, msg
    for w in where:
        assert w in msg, (w, msg)
    left = [p for p in (run_dir.path / "ingest").rglob("*") if p.is_file() and p.name != "plan.json"]
    assert left == [], left
    return msg


def quarantined(src: Path, tmp_path: Path, **corpus) -> tuple[list[dict], dict]:
    """Quarantine mode, with a good file after the damaged one: (the damaged file's kept docs, its damage)."""
    good = write(tmp_path, "zz_good.jsonl", b"".join(b'{"id": "g%d", "text": "good %d"}\n' % (i, i) for i in range(5)))
    run_dir = RunDir(tmp_path / "quarantine")
    summary = run_stage(make_cfg(paths=[str(src), str(good)], damaged_files="quarantine", **corpus), run_dir)
    assert summary["docs_in"] == summary["docs_written"] + summary["docs_quarantined"]
    assert summary["quarantined_by_reason"]["damaged_file"] == 1
    (damage,) = summary["damaged_files"]
    assert damage["file"] == str(src) and damage["error"] and damage["where"]
    (q,) = [r for r in quarantine(run_dir) if r["reason"] == "damaged_file"]
    assert q["file"] == str(src) and damage["error"] in q["detail"]
    n_tasks = len(read_json(plan_path(run_dir))["tasks"])
    assert [s["damaged"] for t in range(n_tasks) if (s := read_json(stats_path(run_dir, t)))["damaged"]] == [damage]
    rows = docs(run_dir)
    assert [r["id"] for r in rows if r["id"].startswith("g")] == [f"g{i}" for i in range(5)]  # the stage went on
    return [{"id": r["id"], "text": r["text"]} for r in rows if not r["id"].startswith("g")], damage


# ---------------------------------------------------------------- class: truncated gz / zst

CUTS = [5, 0.01, 0.3, 0.5, 0.7, 0.99, -1]  # 5: inside the header; -1: only the last byte (trailer / checksum)


def _cut(data: bytes, at: float) -> bytes:
    return data[: int(at)] if at >= 1 or at < 0 else data[: int(len(data) * at)]


@pytest.mark.parametrize("at", CUTS)
@pytest.mark.parametrize(
    "name,data",
    [
        ("t.jsonl.gz", gz(JSONL)),
        ("t.jsonl.zst", zst(JSONL)),
        ("t.ndjson.zst", zst(JSONL, checksum=True)),
        ("two.jsonl.gz", gz(JSONL[:HALF]) + gz(JSONL[HALF:])),  # the cuts past the middle are in the 2nd member
        ("two.jsonl.zst", zst(JSONL[:HALF]) + zst(JSONL[HALF:])),
    ],
)
def test_truncated_compressed_file(tmp_path: Path, name: str, data: bytes, at: float) -> None:
    cut = _cut(data, at)
    src = write(tmp_path, name, cut)
    msg = assert_fails(src, tmp_path, "truncated", f"compressed byte {len(cut)}, the end of the file")
    assert ("member" if name.endswith(".gz") else "frame") in msg
    kept, damage = quarantined(src, tmp_path)
    assert kept == whole_records(cut, name)  # every whole record before the cut, in order, nothing else
    assert damage["offset"] == len(cut) and damage["records_lost"] is None


@pytest.mark.parametrize("name", ["e.jsonl.gz", "e.jsonl.zst"])
def test_empty_compressed_file_is_truncated(tmp_path: Path, name: str) -> None:
    assert_fails(write(tmp_path, name, b""), tmp_path, "empty", "compressed byte 0")


# ---------------------------------------------------------------- class: corrupt gz / zst


@pytest.mark.parametrize(
    "name,data,pos",
    [
        ("c.jsonl.gz", gz(JSONL), 2),  # compression method in the header
        ("c.jsonl.gz", gz(JSONL), 3),  # header flags
        ("c.jsonl.gz", gz(JSONL), "middle"),  # deflate data: noticed by the CRC at the member's end
        ("c.jsonl.gz", gz(JSONL), -6),  # the CRC
        ("c.jsonl.gz", gz(JSONL), -2),  # ISIZE
        ("c2.jsonl.gz", gz(JSONL[:HALF]) + gz(JSONL[HALF:]), "middle"),
        ("c.jsonl.zst", zst(JSONL, checksum=True), 4),  # frame header
        ("c.jsonl.zst", zst(JSONL, checksum=True), "third"),
        ("c.jsonl.zst", zst(JSONL, checksum=True), "middle"),
        ("c.jsonl.zst", zst(JSONL, checksum=True), -2),  # the checksum
        ("c2.jsonl.zst", zst(JSONL[:HALF], True) + zst(JSONL[HALF:], True), "middle"),
    ],
)
def test_corrupt_compressed_file(tmp_path: Path, monkeypatch, name: str, data: bytes, pos) -> None:
    monkeypatch.setattr(readers, "PIECE_BYTES", 4096)  # corruption is located to a 4 KiB piece
    pos = {"middle": len(data) // 2, "third": len(data) // 3}.get(pos, pos) % len(data)
    src = write(tmp_path, name, flip(data, pos))
    msg = assert_fails(src, tmp_path, "corrupt data in the", "that starts at byte", "compressed bytes")
    start, end = map(int, re.search(r"compressed bytes (\d+)-(\d+)", msg).groups())
    assert start % 4096 == 0 and pos < end <= len(data)  # noticed in the piece of the damage or after it
    kept, damage = quarantined(src, tmp_path)
    before = whole_records(data[: pos // 4096 * 4096], name)  # the records of the pieces before the damage
    assert kept[: len(before)] == before
    assert damage["offset"] == start and damage["bytes_unread"] == len(data) - end


@pytest.mark.parametrize("garbage", [b"\n", b"\x00" * 8, b"trailing garbage", b"\x1f", b"\x28\xb5"])
@pytest.mark.parametrize("name,data", [("g.jsonl.gz", gz(JSONL)), ("g.jsonl.zst", zst(JSONL, checksum=True))])
def test_trailing_garbage(tmp_path: Path, name: str, data: bytes, garbage: bytes) -> None:
    src = write(tmp_path, name, data + garbage)
    magic = (b"\x1f\x8b" if name.endswith(".gz") else b"\x28\xb5\x2f\xfd").startswith(garbage)
    if magic:  # the start of another member / frame, cut off
        assert_fails(src, tmp_path, "truncated", f"compressed byte {len(data) + len(garbage)}")
    else:
        assert_fails(src, tmp_path, "trailing garbage", f"compressed byte {len(data)}")
    kept, _ = quarantined(src, tmp_path)
    assert kept == INTACT


def test_a_jsonl_file_that_is_not_compressed(tmp_path: Path) -> None:
    assert_fails(write(tmp_path, "plain.jsonl.gz", JSONL), tmp_path, "not a gzip file", "compressed byte 0")


# ---------------------------------------------------------------- class: good files still read whole


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


@pytest.mark.parametrize("piece", [1, 7, 4096, None])
@pytest.mark.parametrize(
    "name,data",
    [
        ("a.jsonl.gz", gz(JSONL)),
        ("a.jsonl.gz", gz(JSONL[:HALF]) + gz(b"") + gz(JSONL[HALF:])),  # an empty member between
        ("a.jsonl.zst", zst(JSONL, checksum=True)),
        ("a.jsonl.zst", zst(JSONL[:HALF]) + _skippable(b"meta") + zst(JSONL[HALF:])),
        ("crlf.jsonl.gz", gz(b"\xef\xbb\xbf" + JSONL.replace(b"\n", b"\r\n"))),  # BOM, CRLF
        ("nonl.jsonl.zst", zst(JSONL[:-1])),  # no final newline after a whole object
    ],
)
def test_good_compressed_files_read_whole_at_any_piece_size(
    tmp_path: Path, monkeypatch, name: str, data: bytes, piece
) -> None:
    if piece:
        monkeypatch.setattr(readers, "PIECE_BYTES", piece)
    src = write(tmp_path, name, data)
    (task,) = make_plan({"paths": [str(src)], "chunk_mb": 64}, RunDir(tmp_path / "run"))["tasks"]
    records = list(iter_records(task, ["text"]))
    assert [obj for _, obj, _, _ in records] == INTACT
    assert [n for n, *_ in records] == list(range(1, len(INTACT) + 1))


# ---------------------------------------------------------------- class: plain JSONL cut mid-record

LAST = JSONL.rindex(b"\n", 0, len(JSONL) - 1) + 1  # where the last line starts


@pytest.mark.parametrize(
    "cut_at",
    [len(JSONL) - 2, len(JSONL) - 10, LAST + 1, int(len(JSONL) * 0.5), int(len(JSONL) * 0.999), 1],
)
@pytest.mark.parametrize("chunk_mb", [64, 0.05])  # one task; several (the damage is in the last)
def test_plain_jsonl_cut_mid_record(tmp_path: Path, cut_at: int, chunk_mb: float) -> None:
    data = JSONL[:cut_at]
    assert not data.endswith(b"\n")
    line_start = data.rfind(b"\n") + 1
    n = data.count(b"\n")
    src = write(tmp_path, "cut.jsonl", data)
    if chunk_mb == 64:  # (split, the tasks before the last one succeed and keep their outputs)
        assert_fails(src, tmp_path, "truncated", f"line {n + 1}, byte {line_start}")
    kept, damage = quarantined(src, tmp_path, chunk_mb=chunk_mb)
    assert kept == INTACT[:n]
    assert damage["offset"] == line_start and damage["records_lost"] == 1
    assert damage["bytes_unread"] == len(data) - line_start


@pytest.mark.parametrize("name,data", [("c.jsonl.gz", gz(JSONL[:-5])), ("c.jsonl.zst", zst(JSONL[:-5]))])
def test_compressed_text_cut_mid_record(tmp_path: Path, name: str, data: bytes) -> None:
    """The container is whole, but the text in it ends inside a record."""
    assert_fails(write(tmp_path, name, data), tmp_path, f"line {len(INTACT)}, uncompressed byte {LAST}")


@pytest.mark.parametrize(
    "name,data",
    [("n.jsonl", JSONL[:-1]), ("n.ndjson", JSONL[:-1].replace(b"\n", b"\r\n")), ("n.jsonl.gz", gz(JSONL[:-1]))],
)
@pytest.mark.parametrize("chunk_mb", [64, 0.05])
def test_no_final_newline_after_a_whole_record_is_fine(tmp_path: Path, name: str, data: bytes, chunk_mb: float) -> None:
    src = write(tmp_path, name, data)
    summary = run_stage(make_cfg(paths=[str(src)], chunk_mb=chunk_mb), RunDir(tmp_path / "run"))
    assert summary["docs_written"] == summary["docs_in"] == len(INTACT) and summary["damaged_files"] == []
    assert [{"id": r["id"], "text": r["text"]} for r in docs(RunDir(tmp_path / "run"))] == INTACT


# ---------------------------------------------------------------- class: damaged Parquet

ROWS_PER_GROUP = 100


def parquet_bytes(tmp_path: Path, checksums: bool = False) -> bytes:
    rows = INTACT[: 3 * ROWS_PER_GROUP]
    path = tmp_path / "intact.parquet"
    pq.write_table(
        pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}),
        path,
        row_group_size=ROWS_PER_GROUP,
        write_page_checksum=checksums,
    )
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0.99, 0.5, 4, 0])  # fraction / bytes of the file left
def test_parquet_without_footer(tmp_path: Path, keep: float) -> None:
    data = parquet_bytes(tmp_path)
    src = write(tmp_path, "nofooter.parquet", data[: int(len(data) * keep) if keep < 1 else int(keep)])
    msg = assert_fails(src, tmp_path, "footer")
    assert "not a readable Parquet file" in msg
    kept, damage = quarantined(src, tmp_path)
    assert kept == [] and damage["records_lost"] is None and damage["where"] == "its footer"


def corrupt_row_group_1(tmp_path: Path, column: str, where: str, checksums: bool = False) -> Path:
    """The Parquet file with 16 bytes overwritten in row group 1's ``column`` chunk."""
    data = bytearray(parquet_bytes(tmp_path, checksums))
    chunk = pq.read_metadata(io.BytesIO(bytes(data))).row_group(1).column(["id", "text"].index(column))
    dictionary, page = chunk.dictionary_page_offset, chunk.data_page_offset
    end = dictionary + chunk.total_compressed_size
    at = {
        "dictionary header": dictionary + 2,
        "dictionary": (dictionary + page) // 2,
        "page header": page + 2,
        "page": (page + end) // 2,
    }[where]
    data[at : at + 16] = b"\xab" * 16
    return write(tmp_path, "badpage.parquet", bytes(data))


@pytest.mark.parametrize(
    "column,where,checksums",
    [
        ("id", "dictionary", False),  # snappy data
        ("id", "page", False),  # a dictionary index out of bounds
        ("text", "dictionary header", False),
        ("text", "page header", False),
        ("text", "dictionary", True),  # a page checksum
    ],
)
@pytest.mark.parametrize("chunk_mb", [64, 0.001])  # one task; one task a row group
def test_parquet_corrupt_page_in_middle_row_group(
    tmp_path: Path, column: str, where: str, checksums: bool, chunk_mb: float
) -> None:
    src = corrupt_row_group_1(tmp_path, column, where, checksums)
    if chunk_mb == 64:
        assert_fails(src, tmp_path, "row group 1, rows 100-199", "row group 1 cannot be decoded")
    kept, damage = quarantined(src, tmp_path, chunk_mb=chunk_mb)
    if chunk_mb == 64:  # the task stops at the damage: row groups 1 and 2 are lost
        assert kept == INTACT[:100] and damage["records_lost"] == 200
    else:  # row group 1 was a task of its own
        assert kept == INTACT[:100] + INTACT[200:300] and damage["records_lost"] == 100
    assert damage["row_group"] == 1


def test_parquet_invalid_utf8_without_checksums_is_bad_records(tmp_path: Path) -> None:
    """Without page checksums a changed byte in the text dictionary decodes: its rows are non_utf8, not damage."""
    src = corrupt_row_group_1(tmp_path, "text", "dictionary")
    summary = run_stage(make_cfg(paths=[str(src)]), RunDir(tmp_path / "run"))
    assert summary["damaged_files"] == [] and summary["docs_in"] == 300
    assert set(summary["quarantined_by_reason"]) == {"non_utf8"}
    assert 0 < summary["docs_quarantined"] < 100


def test_summary_line_names_damaged_files(tmp_path: Path) -> None:
    from climb_hpc.corpus.ingest import summary_path
    from climb_hpc.summary import corpus_lines

    rd = RunDir(tmp_path)
    summary_path(rd).parent.mkdir()
    summary = {"docs_written": 9, "docs_quarantined": 1, "damaged_files": []}
    summary_path(rd).write_text(json.dumps(summary))
    assert "DAMAGED" not in corpus_lines(rd)[0]
    summary["damaged_files"] = [{"file": "a.jsonl.gz"}, {"file": "b.parquet"}]
    summary_path(rd).write_text(json.dumps(summary))
    assert "2 DAMAGED input file(s)" in corpus_lines(rd)[0]


# ---------------------------------------------------------------- the whole pipeline


@pytest.mark.parametrize("name", ["t.jsonl.gz", "nofooter.parquet"])  # fails in the task / when planning
def test_pipeline_stage_fails_without_marker(tmp_path: Path, name: str) -> None:
    from climb_hpc.pipeline import run_pipeline
    from tests.conftest import make_cfg as compose_cfg

    whole = gz(JSONL) if name.endswith(".gz") else parquet_bytes(tmp_path)
    src = write(tmp_path, name, whole[: len(whole) // 2])
    run = tmp_path / "run"
    cfg = compose_cfg(run, "cluster=debug", "pipeline.stages=[ingest]", f"corpus.paths=[{src}]")
    with pytest.raises(UserError) as e:  # the task's InputError, or the controller's wrapping of it
        run_pipeline(cfg)
    assert str(src) in str(e.value) and "is damaged" in str(e.value), e.value
    assert not (run / "_done" / "ingest" / "_stage").exists() and not (run / "_done" / "ingest" / "0").exists()
    assert not (run / "ingest" / "docs").exists() or not any((run / "ingest" / "docs").iterdir())


# ---------------------------------------------------------------- class: symlinks in corpus folders


def jsonl_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"text": text}) + "\n")
    return path


def test_symlinks_are_followed(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    jsonl_file(data / "real" / "a.jsonl", "a")
    jsonl_file(elsewhere / "sub" / "b.jsonl", "b")
    jsonl_file(elsewhere / "c.jsonl", "c")
    os.symlink(elsewhere / "sub", data / "linked")  # a folder
    os.symlink(elsewhere / "c.jsonl", data / "c.jsonl")  # a file
    os.symlink("real", data / "zz_rel")  # a relative link to a sibling: its file is reached twice
    with pytest.raises(InputError, match="same file"):
        discover_inputs([str(data)])
    (data / "zz_rel").unlink()
    found = discover_inputs([str(data)])
    assert [key for _, key in found] == ["data/c.jsonl", "data/linked/b.jsonl", "data/real/a.jsonl"]
    assert found[1][0] == data.resolve() / "linked" / "b.jsonl"  # the path through the link
    run_dir = RunDir(tmp_path / "run")
    run_stage(make_cfg(paths=[str(data)], id_field=None), run_dir)
    assert [(r["id"], r["text"]) for r in docs(run_dir)] == [
        ("data/c.jsonl:1", "c"),
        ("data/linked/b.jsonl:1", "b"),
        ("data/real/a.jsonl:1", "a"),
    ]


@pytest.mark.parametrize("loop", ["parent", "root", "cycle", "self"])
def test_symlink_loop(tmp_path: Path, loop: str) -> None:
    data = tmp_path / "data"
    jsonl_file(data / "a" / "x.jsonl", "x")
    (data / "b").mkdir()
    link = {
        "parent": data / "a" / "up",
        "root": data / "a" / "root",
        "cycle": data / "b" / "to_a",
        "self": data / "a" / "me",
    }[loop]
    target = {"parent": data / "a", "root": data, "cycle": data / "a", "self": link}[loop]
    os.symlink(target, link)
    if loop == "cycle":
        os.symlink(data / "b", data / "a" / "to_b")
    with pytest.raises(InputError, match="symlink loop") as e:
        discover_inputs([str(data)])
    assert str(data.resolve()) in str(e.value) and "\n" not in str(e.value)
    if loop == "self":  # given directly
        with pytest.raises(InputError, match=r"cannot resolve .* \(a symlink loop\?\)"):
            discover_inputs([str(link)])


@pytest.mark.parametrize("name", ["b.jsonl", "folder", "notes.txt"])
def test_broken_symlink(tmp_path: Path, name: str) -> None:
    data = tmp_path / "data"
    jsonl_file(data / "a.jsonl", "a")
    os.symlink(tmp_path / "gone", data / name)
    with pytest.raises(InputError, match=f"{re.escape(str(data.resolve() / name))} is a broken symlink"):
        discover_inputs([str(data)])
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "given.jsonl")  # given directly
    with pytest.raises(InputError, match="broken symlink"):
        discover_inputs([str(tmp_path / "given.jsonl")])


@pytest.mark.parametrize("how", ["two links", "link and target", "hard link", "listed twice", "file and its folder"])
def test_one_file_reached_twice(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    a = jsonl_file(data / "a.jsonl", "a")
    paths = [str(data)]
    if how == "two links":
        a = a.rename(tmp_path / "a.jsonl")
        os.symlink(a, data / "l1.jsonl")
        os.symlink(a, data / "l2.jsonl")
    elif how == "link and target":
        os.symlink(a, data / "b.jsonl")
    elif how == "hard link":
        os.link(a, data / "b.jsonl")
    elif how == "listed twice":
        paths = [str(a), str(a)]
    else:
        paths = [str(data), str(a)]
    with pytest.raises(InputError, match="same file|listed twice") as e:
        discover_inputs(paths)
    assert str(data.resolve()) in str(e.value)


# ---------------------------------------------------------------- class: other input and config errors


def test_deeply_nested_json_is_a_bad_record(tmp_path: Path) -> None:
    src = write(tmp_path, "deep.jsonl", b'{"text": "ok"}\n' + b"[" * 100_000 + b"\n" + b'{"a": ' * 50_000 + b"\n")
    summary = run_stage(make_cfg(paths=[str(src)]), RunDir(tmp_path / "run"))
    assert summary["docs_written"] == 1 and summary["quarantined_by_reason"] == {"bad_json": 2}


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("chunk_mb", -1, "corpus.chunk_mb"),
        ("chunk_mb", 0, "corpus.chunk_mb"),
        ("chunk_mb", "abc", "corpus.chunk_mb"),
        ("chunk_mb", float("nan"), "corpus.chunk_mb"),
        ("damaged_files", "maybe", "corpus.damaged_files"),
        ("compression", "lzma", "corpus.compression"),
        ("rows_per_group", 0, "corpus.rows_per_group"),
        ("quarantine_excerpt_chars", -1, "corpus.quarantine_excerpt_chars"),
        ("text_field", None, "corpus.text_field"),
    ],
)
def test_bad_corpus_settings_fail_before_any_task(tmp_path: Path, key: str, value, fragment: str) -> None:
    src = write(tmp_path, "a.jsonl", JSONL[:200].rsplit(b"\n", 1)[0] + b"\n")
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        prepare_stage(make_cfg(paths=[str(src)], **{key: value}), run_dir, STAGE)[0]
    assert not (run_dir.path / "ingest" / "plan.json").exists()


def test_input_file_shrunk_while_read(tmp_path: Path) -> None:
    src = write(tmp_path, "a.jsonl", JSONL)
    (task,) = make_plan({"paths": [str(src)], "chunk_mb": 64}, RunDir(tmp_path / "run"))["tasks"]
    src.write_bytes(JSONL[:HALF])
    with pytest.raises(InputError, match="changed since the plan"):
        list(iter_records(task, ["text"]))
