"""Issue 18: the corpus-wide steps stream or reduce per-task summaries, with the results of the in-memory code.

A synthetic run folder (benchmarks/controller_memory.py: 3000 docs in 7 uneven ingest shards, 16-d
embeddings in 64-row chunks, quality scores, 12 centroids and the assign stage's arrays) stands in for
ingest ... assign. Blocks and row groups are shrunk so that every streaming loop runs many times.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

from benchmarks.controller_memory import build_run, config
from climb_hpc.clusters import assign, kmeans, quality, refine
from climb_hpc.clusters.labels import field_values
from climb_hpc.corpus import dedup, ingest
from climb_hpc.embed import store
from climb_hpc.errors import InputError
from climb_hpc.rundir import RunDir, read_json

N_DOCS = 3000


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> RunDir:
    return build_run(tmp_path_factory.mktemp("ctrl") / "run", N_DOCS, n_shards=7, rows_per_shard=256, chunk_rows=64)


@pytest.fixture
def run(synthetic, tmp_path) -> RunDir:
    """A private copy of the synthetic run."""
    shutil.copytree(synthetic.path, tmp_path / "run")
    return RunDir(tmp_path / "run")


def _ids(rd: RunDir) -> pa.Array:
    return pa.chunked_array([pq.read_table(p, columns=["id"]).column("id") for p in ingest.doc_shard_paths(rd)])


def _shard_rows(rd: RunDir) -> list[int]:
    return [pq.read_metadata(p).num_rows for p in ingest.doc_shard_paths(rd)]


def _check_row_groups(path: Path, shard_rows: list[int], max_rows: int) -> int:
    """Every row group lies inside one ingest shard and holds at most ``max_rows`` rows; returns their count."""
    meta = pq.read_metadata(path)
    bounds = np.cumsum([0, *shard_rows])
    start = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        shard = int(np.searchsorted(bounds, start, side="right")) - 1
        assert 0 < n <= max_rows and start + n <= bounds[shard + 1], (g, start, n)
        start += n
    assert start == bounds[-1]
    return meta.num_row_groups


# ---------------------------------------------------------------- refine


def test_refine_streams_and_matches_the_in_memory_refine(run, monkeypatch):
    monkeypatch.setattr(store, "BLOCK_ROWS", 300)  # -> blocks of 256 rows (whole shards): 12 of them
    monkeypatch.setattr(refine, "MAX_GROUP_ROWS", 200)  # shards of 200-700 rows -> several groups each
    cfg = config(run)
    refine.run(cfg, run, 0)
    refine.finalize(cfg, run)
    # the old semantics: everything in memory, refine(), ids from id order = corpus order
    r = cfg.clusters.refine
    labels = zarr.open_array(str(assign.array_path(run, "assignments")), mode="r")[:]
    scores = quality.open_quality(run)[:]
    doc, info = refine.refine(kmeans.load_centroids(run), labels, scores, axes=list(r.axes),
                              thresholds=dict(r.thresholds), min_size=int(r.min_size), method=str(r.linkage),
                              distance=float(r.merge_distance))
    table = pq.read_table(refine.doc_clusters_path(run))
    assert table.schema.equals(refine.DOC_SCHEMA)
    assert table.column("id").equals(_ids(run))
    assert np.array_equal(table.column("cluster").to_numpy(), doc)
    got = read_json(refine.clusters_path(run))
    assert {k: got[k] for k in info} == json.loads(json.dumps(info))
    assert 0 < info["pruned_docs"] < N_DOCS and info["final_clusters"] >= 2  # the test prunes and merges
    assert _check_row_groups(refine.doc_clusters_path(run), _shard_rows(run), 200) > len(_shard_rows(run))


def test_refine_from_field_streams(run, monkeypatch):
    monkeypatch.setattr(refine, "MAX_GROUP_ROWS", 500)
    cfg = config(run, "clusters.refine.from_field=source")
    refine.run(cfg, run, 0)
    table = pq.read_table(refine.doc_clusters_path(run))
    sources = pa.chunked_array([pq.read_table(p, columns=["source"]).column("source")
                                for p in ingest.doc_shard_paths(run)]).to_pylist()
    values = sorted(set(sources))  # the old semantics: index among the sorted values
    assert table.column("id").equals(_ids(run))
    assert table.column("cluster").to_pylist() == [values.index(s) for s in sources]
    info = read_json(refine.clusters_path(run))
    assert [c["label"] for c in info["clusters"]] == values and info["n_docs"] == N_DOCS
    _check_row_groups(refine.doc_clusters_path(run), _shard_rows(run), 500)
    with pytest.raises(InputError, match="no .source_x. column"):
        field_values(run, "source_x")


# ---------------------------------------------------------------- quality and assign finalize


def _old_quality_summary(x: np.ndarray) -> dict:
    from climb_hpc.clusters.raters import AXES

    def axes(v: np.ndarray) -> dict:
        return dict(zip(AXES, np.round(v, 4).tolist(), strict=True))

    return {"mean": axes(x.mean(0)), "min": axes(x.min(0)), "max": axes(x.max(0)), "frac_ge_3": axes((x >= 3).mean(0))}


def test_quality_finalize_reduces_task_summaries(run):
    cfg = config(run)
    quality.finalize(cfg, run)
    new = read_json(quality.summary_path(run))
    old = _old_quality_summary(quality.open_quality(run)[:])
    for key in ("min", "max", "frac_ge_3"):
        assert new[key] == old[key]
    assert new["mean"] == pytest.approx(old["mean"], abs=1e-4)  # float64 sums vs a float32 mean
    # stats from before the summaries: each task summarised from its own rows, same result
    for t in range(quality.num_tasks(cfg, run)):
        s = read_json(quality.stats_path(run, t))
        del s["scores"]
        quality.stats_path(run, t).write_text(json.dumps(s))
    quality.finalize(cfg, run)
    assert read_json(quality.summary_path(run)) == new
    # a row never written (NaN) fails, as before
    arr = zarr.open_array(str(quality.store_path(run)), mode="r+")
    arr[5] = np.nan
    with pytest.raises(RuntimeError, match="never written"):
        quality.finalize(cfg, run)


def test_assign_finalize_reduces_task_summaries(run):
    cfg = config(run)
    assign.finalize(cfg, run)
    new = read_json(assign.summary_path(run))
    labels, dist = assign.open_assignments(run)
    sizes = np.bincount(labels, minlength=len(kmeans.load_centroids(run)))
    assert new["n_docs"] == N_DOCS and new["size_min"] == sizes.min() and new["size_max"] == sizes.max()
    assert new["size_median"] == float(np.median(sizes)) and new["empty_clusters"] == int((sizes == 0).sum())
    assert new["mean_distance"] == pytest.approx(float(dist.mean()), rel=1e-6)
    for t in range(assign.num_tasks(cfg, run)):  # stats from before the summaries
        s = read_json(assign.stats_path(run, t))
        for k in ("sizes", "distance_sum", "bad"):
            del s[k]
        assign.stats_path(run, t).write_text(json.dumps(s))
    assign.finalize(cfg, run)
    assert read_json(assign.summary_path(run)) == new
    arr = zarr.open_array(str(assign.array_path(run, "distances")), mode="r+")
    arr[7] = np.nan
    with pytest.raises(RuntimeError, match="lack a cluster"):
        assign.finalize(cfg, run)


# ---------------------------------------------------------------- k-means sample


class CountingStore(WrapperStore):
    """Records each byte range read from a shard file (Zarr's sharding reads a chunk as one range)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.ranges: list[tuple[str, object]] = []

    async def get(self, key, prototype, byte_range=None):
        out = await self._store.get(key, prototype, byte_range)
        if key.startswith("c/") and type(byte_range).__name__ == "RangeByteRequest":
            self.ranges.append((key, byte_range))
        return out


def test_kmeans_sample_is_whole_chunks_and_reads_only_them(synthetic, monkeypatch):
    layout = store.load_layout(synthetic)
    n, c = layout["n_docs"], layout["chunk_rows"]
    rows = kmeans.sample_rows(n, 500, 7, c)
    assert np.array_equal(rows, kmeans.sample_rows(n, 500, 7, c))  # same seed, same sample
    assert not np.array_equal(rows, kmeans.sample_rows(n, 500, 8, c))
    assert len(rows) == 500 and len(np.unique(rows)) == 500 and np.all(np.diff(rows) > 0)
    chunks = np.unique(rows // c)
    assert len(chunks) == -(-500 // c) or len(chunks) == -(-500 // c) + 1  # as many chunks as the sample needs
    counting = CountingStore(LocalStore(str(store.store_path(synthetic)), read_only=True))
    monkeypatch.setattr(kmeans, "open_embeddings", lambda rd: zarr.open_array(store=counting, mode="r"))
    x = kmeans.read_sample(synthetic, rows)
    assert np.array_equal(x, store.open_embeddings(synthetic)[:][rows].astype(np.float32))
    # one range read per chosen chunk, from the shard files holding them: nothing else
    assert len(counting.ranges) == len(chunks)
    shards = {f"c/{int(ch) * c // layout['rows_per_shard']}/0" for ch in chunks}
    assert {k for k, _ in counting.ranges} == shards
    assert len(chunks) * c < n / 4  # and far fewer rows than the array (uniform rows would touch every chunk)


def test_chunk_runs_merge_adjacent_chunks_up_to_a_cap():
    rows = np.array([0, 5, 17, 40, 41, 70])
    assert kmeans.chunk_runs(rows, 10, 75) == [(0, 20), (40, 50), (70, 75)]
    assert kmeans.chunk_runs(rows, 10, 75, max_chunks=1) == [(0, 10), (10, 20), (40, 50), (70, 75)]
    assert kmeans.sample_rows(50, 80, 0, 16).tolist() == list(range(50))


# ---------------------------------------------------------------- ingest duplicate check


def _hash_paths(rd: RunDir) -> tuple[list[Path], list[Path]]:
    n = len(ingest.load_plan(rd)["tasks"])
    return [ingest.hashes_path(rd, t) for t in range(n)], [ingest.shard_path(rd, t) for t in range(n)]


def test_ingest_finalize_passes_unique_ids_with_a_small_budget(run, monkeypatch):
    monkeypatch.setattr(dedup, "BUDGET_BYTES", 4096)  # ~250 ids a range: 12 ranges
    seen, matches = [], dedup.range_matches
    monkeypatch.setattr(dedup, "range_matches", lambda paths, lo, hi: seen.append(hi - lo) or matches(paths, lo, hi))
    ingest.finalize(config(run), run)
    assert len(seen) == 12 and sum(seen) == 1 << 64
    assert read_json(ingest.summary_path(run))["docs_written"] == N_DOCS


def test_duplicate_across_shards_found_in_every_range_split(tmp_path):
    rd = build_run(tmp_path / "dup", 2000, n_shards=5, duplicate=True, with_quality=False)
    hashes, shards = _hash_paths(rd)
    for budget in (1 << 30, 4096, 100):
        n, shown, capped = dedup.cross_shard_duplicates(hashes, shards, budget_bytes=budget)
        assert (n, capped) == (1, False) and shown == ["'doc-0000000000' in shard_00000.parquet, shard_00004.parquet"]
    with pytest.raises(InputError, match="1 ids appear in more than one shard, e.g. 'doc-0000000000'"):
        ingest.finalize(config(rd), rd)


def test_hash_collisions_are_not_duplicates(tmp_path, monkeypatch):
    """With a hash of 4 values every shard collides with every other; only the real duplicate is reported."""
    weak = lambda ids: np.fromiter((sum(i.encode()) % 4 for i in ids), dtype=np.uint64)  # noqa: E731
    monkeypatch.setattr(dedup, "id_hashes", weak)
    rd = build_run(tmp_path / "weak", 400, n_shards=4, duplicate=True, with_quality=False)
    hashes, shards = _hash_paths(rd)
    assert dedup.cross_shard_duplicates(hashes, shards, budget_bytes=64)[:2] == (
        1, ["'doc-0000000000' in shard_00000.parquet, shard_00003.parquet"])
    clean = build_run(tmp_path / "weak_clean", 400, n_shards=4, with_quality=False)
    assert dedup.cross_shard_duplicates(*_hash_paths(clean)) == (0, [], False)
    assert dedup.cross_shard_duplicates(hashes, shards, max_candidates=1)[2] is True  # counted past the cap


def test_missing_hash_files_are_made_from_the_shards(run):
    """A run folder ingested before the hash files existed: finalize hashes each shard's ids itself."""
    hashes, _ = _hash_paths(run)
    before = [np.load(p) for p in hashes]
    for p in hashes:
        p.unlink()
    ingest.finalize(config(run), run)
    assert all(np.array_equal(np.load(p), b) for p, b in zip(hashes, before, strict=True))


def test_ingest_task_writes_sorted_hashes_of_its_written_ids(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "b", "text": "x"}\n{"id": "a", "text": "y"}\n{"id": "b", "text": "again"}\n\n')
    rd = RunDir(tmp_path / "r")
    cfg = config(rd, f"corpus.paths=[{src}]")
    ingest.prepare(cfg, rd)
    ingest.run(cfg, rd, 0)
    h = np.load(ingest.hashes_path(rd, 0))
    assert np.array_equal(h, np.sort(dedup.id_hashes(["a", "b"])))  # the written ids, not the quarantined
