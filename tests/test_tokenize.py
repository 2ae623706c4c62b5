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
from climb_hpc.corpus.tokenize import cluster_ids, load_cluster, summary_path, tokenizer_dir
from climb_hpc.corpus.tokenizer import token_dtype
from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import make_cfg, plant_refine

SMALL = ("corpus.builtin.docs_per_domain=10", "pipeline.stages=[ingest,refine,tokenize]", "clusters.refine.from_field=source",
         "tokenize.vocab_size=600",
         "tokenize.train_sample_docs=40", "tokenize.batch_size=4")


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


def test_token_store_round_trips(run):
    from transformers import AutoTokenizer

    rd = RunDir(run)
    s = read_json(summary_path(rd))
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir(rd)), local_files_only=True)
    assert s["dtype"] == "uint16" and s["vocab_size"] == len(hf) <= 600 and s["eos_id"] == hf.eos_token_id
    docs = {d["id"]: d["text"] for d in _docs(run)}
    checked = 0
    for c in cluster_ids(rd):
        tokens, index = load_cluster(rd, c)
        assert tokens.dtype == np.uint16
        assert len(tokens) == s["clusters"][str(c)]["tokens"] == int((index.column("n_tokens").to_numpy() + 1).sum())
        for r in index.to_pylist():
            ids = tokens[r["offset"]: r["offset"] + r["n_tokens"]]
            assert tokens[r["offset"] + r["n_tokens"]] == s["eos_id"] and s["eos_id"] not in ids
            assert hf.decode(ids.tolist()) == docs[r["id"]]  # byte-level BPE: exact
            checked += 1
        rows = index.column("row").to_numpy()
        assert (np.diff(rows) > 0).all()  # docs in corpus order within a cluster
    assert checked == s["docs"] == 60


def test_counts_per_cluster_match_doc_clusters(run):
    s = read_json(summary_path(RunDir(run)))
    dc = pq.read_table(run / "refine" / "doc_clusters.parquet").column("cluster").to_numpy()
    want = {str(c): int((dc == c).sum()) for c in sorted(set(dc.tolist()) - {-1})}
    assert {c: v["docs"] for c, v in s["clusters"].items()} == want and len(want) == 7
    assert s["pruned_docs"] == int((dc == -1).sum()) == 10 and s["n_docs"] == 70
    assert s["tokens"] == s["doc_tokens"] + s["docs"] and s["tokens_per_s"] > 0
    table = pq.read_table(run / "refine" / "doc_clusters.parquet")
    pruned = {i for i, c in zip(table.column("id").to_pylist(), dc.tolist(), strict=True) if c == -1}
    stored = {i for c in cluster_ids(RunDir(run)) for i in load_cluster(RunDir(run), c)[1].column("id").to_pylist()}
    assert not pruned & stored and len(stored) == 60


def _digest(run: Path) -> dict[str, str]:
    tok = run / "tokenize"
    files = [*sorted((tok / "tokenizer").iterdir()), *sorted(tok.glob("cluster_*"))]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_deterministic(run, tmp_path):
    again = _tokenized_run(tmp_path / "again")
    assert _digest(again) == _digest(run)  # same seed: same tokenizer files, same token bytes


def test_dtype_rule():
    assert token_dtype(600) == token_dtype(65536) == "uint16"
    assert token_dtype(65537) == token_dtype(151_936) == "uint32"


def test_given_hf_tokenizer(run, tmp_path):
    """tokenize.tokenizer=PATH uses that tokenizer (here: the one the first run trained)."""
    other = _tokenized_run(tmp_path / "given", f"tokenize.tokenizer={tokenizer_dir(RunDir(run))}")
    s = read_json(summary_path(RunDir(other)))
    assert s["tokenizer"]["kind"] == "pretrained"
    assert {k: v for k, v in _digest(other).items() if k.startswith("cluster_")} == \
        {k: v for k, v in _digest(run).items() if k.startswith("cluster_")}
