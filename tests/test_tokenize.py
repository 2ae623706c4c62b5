"""Stage ``tokenize``: token stores per cluster round-trip, counts match doc_clusters, determinism, dtype.

The run is the built-in corpus at 10 docs a domain (70 docs, 7 ingest shards = 7 tasks). The test writes
``refine/doc_clusters.parquet`` itself: cluster = index of the doc's source among the sorted sources,
with every 7th doc pruned (-1).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from climb_hpc.corpus import iter_doc_shards
from climb_hpc.corpus.tokenize import (
    cluster_ids,
    cluster_parts,
    cluster_stores,
    outputs,
    read_rows,
    store_ids,
    summary_path,
    tokenizer_dir,
)
from climb_hpc.corpus.tokenizer import token_dtype
from climb_hpc.pipeline import run_pipeline
from climb_hpc.proxy.sampler import heldout_mask
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import make_cfg, plant_refine

SMALL = ("corpus.builtin.docs_per_domain=10", "pipeline.stages=[ingest,refine,tokenize]", "clusters.refine.from_field=source",
         "tokenize.vocab_size=600",
         "tokenize.train_sample_docs=40", "tokenize.batch_size=4", "proxy.holdout_fraction=0.25")


def _docs(run: Path) -> list[dict]:
    return [r for _, t in iter_doc_shards(RunDir(run), ["id", "text", "source"]) for r in t.to_pylist()]


def _tokenized_run(run: Path, *extra: str) -> Path:
    cfg = make_cfg(run, "cluster=debug", *SMALL, *extra)
    run_pipeline(make_cfg(run, "cluster=debug", *SMALL, *extra, "until=ingest"))
    docs = _docs(run)
    sources = sorted({d["source"] for d in docs})
    clusters = [-1 if i % 7 == 3 else sources.index(d["source"]) for i, d in enumerate(docs)]
    plant_refine(run, [d["id"] for d in docs], clusters)
    run_pipeline(cfg)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _tokenized_run(tmp_path_factory.mktemp("tok"))


def _megatron(prefix):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(str(prefix))


def _stores(rd: RunDir):
    """(cluster, split, part, prefix) of every store the summary lists."""
    s = read_json(summary_path(rd))
    for c, v in s["clusters"].items():
        for t, splits in v["parts"].items():
            for split, n in splits.items():
                if n["docs"]:
                    yield int(c), split, int(t), outputs(rd).store(int(t), int(c), split)


def test_megatron_reads_every_store_and_its_tokens_are_the_tokenizers(run):
    """megatron-core's own IndexedDataset opens each store; document i is the run tokenizer's ids of the
    text of side-table id i, then EOS; the split is the id hash's; docs stay in corpus order."""
    from transformers import AutoTokenizer

    rd = RunDir(run)
    s = read_json(summary_path(rd))
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir(rd)), local_files_only=True)
    assert s["dtype"] == "uint16" and s["vocab_size"] == len(hf) <= 600 and s["eos_id"] == hf.eos_token_id
    corpus = _docs(run)
    docs = {d["id"]: d["text"] for d in corpus}
    checked, held = 0, 0
    for c, split, t, prefix in _stores(rd):
        ds = _megatron(prefix)
        side = store_ids(prefix)
        assert len(ds) == side.num_rows == s["clusters"][str(c)]["parts"][str(t)][split]["docs"]
        assert ds.index.dtype == np.uint16
        assert list(heldout_mask(side.column("id").to_pylist(), 0.25)) == [split == "heldout"] * len(ds)
        for i, (doc_id, row) in enumerate(zip(side.column("id").to_pylist(), side.column("row").to_pylist(), strict=True)):
            assert corpus[row]["id"] == doc_id  # the side table's row is the corpus row
            want = hf(docs[doc_id], add_special_tokens=False)["input_ids"] + [s["eos_id"]]
            assert ds[i].tolist() == want
            assert hf.decode(want[:-1]) == docs[doc_id]  # byte-level BPE: exact
            checked += 1
        assert (np.diff(side.column("row").to_numpy()) > 0).all()  # corpus order within a store
        held += len(ds) if split == "heldout" else 0
    assert checked == s["docs"] == 60 and 0 < held == sum(v["heldout_docs"] for v in s["clusters"].values()) < 30


def test_counts_per_cluster_match_doc_clusters(run):
    s = read_json(summary_path(RunDir(run)))
    dc = pq.read_table(run / "refine" / "doc_clusters.parquet").column("cluster").to_numpy()
    want = {str(c): int((dc == c).sum()) for c in sorted(set(dc.tolist()) - {-1})}
    assert {c: v["docs"] for c, v in s["clusters"].items()} == want and len(want) == 7
    assert s["pruned_docs"] == int((dc == -1).sum()) == 10 and s["n_docs"] == 70
    assert s["tokens"] == s["doc_tokens"] + s["docs"] and s["tokens_per_s"] > 0
    table = pq.read_table(run / "refine" / "doc_clusters.parquet")
    pruned = {i for i, c in zip(table.column("id").to_pylist(), dc.tolist(), strict=True) if c == -1}
    stored = {i for *_, prefix in _stores(RunDir(run)) for i in store_ids(prefix).column("id").to_pylist()}
    assert not pruned & stored and len(stored) == 60


def _digest(run: Path) -> dict[str, str]:
    tok = run / "tokenize"
    files = [*sorted((tok / "tokenizer").iterdir()), *sorted(tok.glob("parts/*/cluster_*"))]
    return {str(p.relative_to(tok)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_deterministic(run, tmp_path):
    again = _tokenized_run(tmp_path / "again")
    assert _digest(again) == _digest(run)  # same seed: same tokenizer files, same token bytes


def test_max_parts_groups_shards_and_keeps_the_documents(run, tmp_path):
    """max_parts=3: 7 ingest shards in 3 tasks; each cluster's stores, read in part order, hold the same
    documents and tokens as with one part a shard."""
    few = _tokenized_run(tmp_path / "few", "tokenize.max_parts=3")
    assert read_json(summary_path(RunDir(few)))["parts"] == 3 and read_json(summary_path(RunDir(run)))["parts"] == 7

    def streams(r: Path) -> dict:
        return {(c, split): np.concatenate([s.tokens for s in cluster_stores(RunDir(r), c, split)]).tolist()
                for c in cluster_ids(RunDir(r)) for split in ("train", "heldout") if cluster_parts(RunDir(r), c, split)}
    assert streams(few) == streams(run)


def test_read_rows_reads_only_the_row_groups_it_needs(tmp_path):
    import pyarrow as pa

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": np.arange(1000)}), path, row_group_size=100)
    assert read_rows(path, 250, 420, ["x"]).column("x").to_pylist() == list(range(250, 420))
    assert read_rows(path, 990, 1000, ["x"]).num_rows == 10 and read_rows(path, 5, 5, ["x"]).num_rows == 0


def test_store_maps_its_files_only_when_read(tmp_path):
    """A trial opens every train store of every cluster: a Store holds no open file until its tokens or its
    document bounds are read, and a training stream maps only the .bin."""
    import os

    from climb_hpc.corpus.store import Store, StoreWriter

    with StoreWriter(tmp_path / "s", np.uint16) as w:
        for i in range(5):
            w.add(np.arange(i + 2))
    before = len(os.listdir("/proc/self/fd"))
    stores = [Store(tmp_path / "s") for _ in range(50)]
    assert len(os.listdir("/proc/self/fd")) == before and len(stores[0]) == 5 and stores[0].num_tokens == 20
    assert stores[0].doc(4).tolist() == [0, 1, 2, 3, 4, 5] and stores[1].tokens[:2].tolist() == [0, 1]


def test_dtype_rule():
    """Megatron's: uint16 below 65500 ids, else int32 (its DType has no uint32)."""
    assert token_dtype(600) == token_dtype(65499) == "uint16"
    assert token_dtype(65500) == token_dtype(128_256) == "int32"
