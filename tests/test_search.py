"""The search and mix stages on a small tokenized run (7 planted clusters, 2-layer proxies of a few steps):
the CLIMB loop's rounds and bookkeeping, resume after the controller is killed mid-search (same result as
an uninterrupted search, finished trials not rerun), baselines, and the mixed dataset."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from climb_hpc.corpus.tokenize import cluster_stores, store_ids
from climb_hpc.pipeline import run_pipeline, status
from climb_hpc.proxy.sampler import heldout_mask
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.search.mix import outputs as mix_outputs
from tests.conftest import ROOT, SMALL_PROXY, TOKENIZED, clone_run, tokenized_run

SEARCH = ("pipeline.stages=[ingest,refine,tokenize,search,mix]", "proxy.tokens=4096", "search.strategy=climb", "search.budget=7",
          "search.pool_size=300", "mix.tokens=30000")


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    return tokenized_run(tmp_path_factory.mktemp("search") / "run")


def _metrics_mtimes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted((run / "proxy").rglob("metrics.json"))}


def test_climb_search_rounds_bookkeeping_and_rerun_does_nothing(tokenized, tmp_path):
    cfg = clone_run(tokenized, tmp_path / "run", "cluster=local", *SEARCH)
    run_pipeline(cfg)
    run = Path(cfg.run_dir)
    r = read_json(run / "search" / "result.json")
    trials = r["trials"]
    assert [t["round"] for t in trials] == [1] * 4 + [2] * 2 + [3]  # 7 = 4:2:1
    assert len({t["pool_index"] for t in trials}) == 7  # a configuration is never run twice
    assert r["predicted_best"]["round"] == 3  # the predictor's pick is measured in the last round
    assert all(t["predicted"] is None for t in trials[:4]) and all(t["predicted"] is not None for t in trials[4:])
    best = min(trials, key=lambda t: t["value"])
    assert r["direction"] == "lower" and r["best"] == best  # the best MEASURED one
    pick = r["predictor_pick"]  # the final predictor's argmax over the pool + 100k fresh mixtures (search.final)
    assert pick["candidates"] == 300 + 100000 and abs(sum(pick["weights"].values()) - 1) < 1e-9
    assert pick["measured"] == (pick["source"] == "pool" and pick["pool_index"] in {t["pool_index"] for t in trials})
    assert r["final_predictor"]["n_rows"] == 7 and {"spearman", "mae", "rmse"} <= set(r["final_predictor"])
    assert r["final"] == {"choice": "best_measured", "weights": best["weights"]}  # the default
    assert set(r["references"]) == {"uniform", "natural"}
    assert all((run / "search" / f"predictor{k}.txt").exists() for k in ("", "_r2", "_r3"))  # each round's kept
    assert all((run / "report" / f).exists() for f in ("final_weights.png", "predicted_vs_measured.png",
                                                        "mixture_map.png"))
    assert np.load(run / "search" / "pool.npy").shape == (300, 7)
    mixture = read_json(run / "mixture.json")
    assert mixture["source"] == "search" and mixture["weights"] == r["final"]["weights"]
    before = _metrics_mtimes(run)
    assert len(before) == 9  # 7 trials + 2 references
    search = next(r for r in status(RunDir(run)) if r["stage"] == "search")  # the search's rounds, counted
    assert search["complete"] and search["done"] == search["total"] == 9 and search["failed"] == 0
    assert [p["stage"] for p in search["parts"] if "climb_r" in p["stage"]] == [f"proxy/climb_r{k}" for k in (1, 2, 3)]
    results = run_pipeline(cfg)
    assert [x.ran for x in results] == [0, 0, 0, 0, 0] and _metrics_mtimes(run) == before  # refine is a stage now


def _controller(run: Path, *overrides: str) -> subprocess.Popen:
    """``climb-hpc run`` with the overrides the run was made with (as a user resumes: the same command)."""
    args = [f"run_dir={run}", "progress=false", *TOKENIZED, *SMALL_PROXY, *overrides]
    return subprocess.Popen([sys.executable, "-m", "climb_hpc.cli", "run", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def test_killed_search_resumes_where_it_stopped_and_matches_an_uninterrupted_one(tokenized, tmp_path):
    """The controller (and its trial processes) is SIGKILLed once round 2 is under way; a relaunch replays round
    1 from the run folder, finishes round 2 and 3, and ends with exactly the uninterrupted search's result."""
    ref = clone_run(tokenized, tmp_path / "ref", "cluster=local", *SEARCH)
    run_pipeline(ref)
    cfg = clone_run(tokenized, tmp_path / "cut", "cluster=local", *SEARCH)
    run = Path(cfg.run_dir)
    p = _controller(run, "cluster=local", *SEARCH)
    deadline = time.time() + 300
    while not list((run / "proxy").glob("climb_r2/trial_*/train_log.jsonl")):
        assert time.time() < deadline and p.poll() is None, "round 2 never started"
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "search" / "result.json").exists()
    round1 = {k: v for k, v in _metrics_mtimes(run).items() if "climb_r1" in k}
    assert len(round1) == 4
    search = next(r for r in status(RunDir(run)) if r["stage"] == "search")  # not "0 0 0 waiting"
    parts = {p["stage"]: p for p in search["parts"]}
    assert not search["complete"] and search["done"] >= 4
    assert parts["proxy/climb_r1"]["complete"] and parts["proxy/climb_r1"]["done"] == 4
    shown = subprocess.run([sys.executable, "-m", "climb_hpc.cli", "status", f"run_dir={run}"], capture_output=True,
                           text=True, cwd=ROOT).stdout
    assert re.search(r"^  proxy/climb_r1\s+4\s+4\s+0  complete$", shown, re.M), shown
    run_pipeline(cfg)
    assert {k: v for k, v in _metrics_mtimes(run).items() if "climb_r1" in k} == round1  # not rerun
    a, b = read_json(Path(ref.run_dir) / "search" / "result.json"), read_json(run / "search" / "result.json")
    assert a["trials"] == b["trials"] and a["best"] == b["best"] and a["references"] == b["references"]
    assert a["predictor_pick"] == b["predictor_pick"] and a["final"] == b["final"]  # the same answer on resume


@pytest.mark.parametrize("strategy,rounds", [("random", [1] * 7), ("regmix", [1] * 6 + [2]),
                                             ("climb_plus", [1] * 4 + [2, 3, 4])])
def test_baselines_spend_the_same_budget(tokenized, tmp_path, strategy, rounds):
    cfg = clone_run(tokenized, tmp_path / "run", "cluster=debug", *SEARCH, f"search.strategy={strategy}",
                    "search.references=[]", "until=search")
    run_pipeline(cfg)
    r = read_json(Path(cfg.run_dir) / "search" / "result.json")
    assert r["strategy"] == strategy and [t["round"] for t in r["trials"]] == rounds
    assert len({t["pool_index"] for t in r["trials"]}) == 7 and r["references"] == {}
    assert r["best"]["value"] == min(t["value"] for t in r["trials"])


def _megatron(prefix):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset(str(prefix))


MIX = ("pipeline.stages=[ingest,refine,tokenize,mix]", "mix.weights={0: 0.6, 2: 0.4, 5: 0.0}", "mix.tokens=40000")


def test_mix_blend_opens_in_megatron_and_reproduces_the_token_shares(tokenized, tmp_path):
    """The blend's prefixes all open with megatron-core's IndexedDataset, hold only training documents
    of their cluster, and their weights add up to each cluster's weight (Megatron samples by them)."""
    cfg = clone_run(tokenized, tmp_path / "run", "cluster=debug", *MIX)
    run_pipeline(cfg)
    rd = RunDir(cfg.run_dir)
    out = mix_outputs(rd)
    words = out.megatron.read_text().split()
    pairs = [(float(w), p) for w, p in zip(words[::2], words[1::2], strict=True)]
    blend = read_json(out.blend_json)
    assert blend["paths"] == [x for w, p in pairs for x in (w, p)]
    assert blend["blend"] == [[p for _, p in pairs], [w for w, _ in pairs]]
    assert OmegaConf.to_container(OmegaConf.load(out.blend_yaml)) == blend
    assert abs(sum(w for w, _ in pairs) - 1) < 1e-9
    share: dict[int, float] = {}
    tokens: dict[int, int] = {}
    for w, prefix in pairs:
        ds = _megatron(prefix)  # opens
        c = int(Path(prefix).name.split("_")[1].split(".")[0])
        assert Path(prefix).name.endswith(".train") and Path(prefix).is_absolute()
        ids = store_ids(Path(prefix)).column("id").to_pylist()
        assert len(ids) == len(ds) and not heldout_mask(ids, float(cfg.proxy.holdout_fraction)).any()
        share[c] = share.get(c, 0.0) + w
        n = int(ds.sequence_lengths.sum())
        tokens[c] = tokens.get(c, 0) + n
        assert abs(w - {0: 0.6, 2: 0.4}[c] * n / sum(s.num_tokens for s in cluster_stores(rd, c, "train"))) < 1e-12
    assert set(share) == {0, 2}  # a zero weight contributes nothing
    for c, want in ((0, 0.6), (2, 0.4)):
        assert abs(share[c] - want) / want < 0.01
    m = read_json(out.mixture)
    assert m["clusters"]["0"]["tokens_target"] == 24000 and m["clusters"]["0"]["train_tokens"] == tokens[0]
    assert m["clusters"]["0"]["epochs"] > 1  # cluster 0 has ~16k training tokens: 24k takes more than a pass
    assert not (rd.path / "mix" / "data").exists()  # nothing copied unless materialize


def test_mix_materialize_writes_whole_training_documents_at_the_budget(tokenized, tmp_path):
    cfg = clone_run(tokenized, tmp_path / "run", "cluster=debug", *MIX, "mix.materialize=true")
    run_pipeline(cfg)
    rd = RunDir(cfg.run_dir)
    summary = read_json(mix_outputs(rd).summary)
    assert set(summary["clusters"]) == {"0", "2"}
    for c, share in (("0", 0.6), ("2", 0.4)):
        got = summary["clusters"][c]
        assert got["tokens_target"] == round(share * 40000)
        assert 0 <= got["tokens"] - got["tokens_target"] < 7 * 2000  # overshoot: at most one crossing doc a part
        assert abs(got["tokens"] / summary["tokens"] - share) / share < 0.05
    assert summary["clusters"]["0"]["passes"] >= 2
    # every document is whole, EOS-terminated, from its cluster, and never a held-out one
    sources = {}
    for c in (0, 2):
        for st in cluster_stores(rd, c, "train"):
            for i, doc_id in enumerate(store_ids(st.prefix).column("id").to_pylist()):
                sources[doc_id] = (c, st.doc(i))
    docs = 0
    for t in range(summary["shards"]):
        prefix = mix_outputs(rd).shard(t)
        if not Path(str(prefix) + ".idx").exists():
            assert read_json(Path(str(prefix) + ".stats.json"))["docs"] == 0  # nothing chosen in that part
            continue
        ds = _megatron(prefix)
        side = pq.read_table(str(prefix) + ".ids.parquet")
        assert len(ds) == side.num_rows
        for i, row in enumerate(side.to_pylist()):
            c, want = sources[row["id"]]
            assert c == row["cluster"] and np.array_equal(ds[i], want) and want[-1] == summary["eos_id"]
        docs += len(ds)
    assert docs == summary["docs"]
    # the shards as a Megatron blend too, weighted by their tokens
    words = (rd.path / "mix" / "data" / "megatron_data_args.txt").read_text().split()
    shards = {Path(p).name: float(w) for w, p in zip(words[::2], words[1::2], strict=True)}
    assert shards and all(_megatron(Path(rd.path / "mix" / "data" / n)) is not None for n in shards)
    assert abs(sum(shards.values()) - 1) < 1e-9
    # deterministic: the same config gives the same bytes
    cfg2 = clone_run(tokenized, tmp_path / "run2", "cluster=debug", *MIX, "mix.materialize=true")
    run_pipeline(cfg2)
    for t in range(summary["shards"]):
        for suffix in (".bin", ".idx", ".stats.json"):
            a, b = (Path(str(mix_outputs(RunDir(r)).shard(t)) + suffix) for r in (cfg.run_dir, cfg2.run_dir))
            assert a.exists() == b.exists() and (not a.exists() or a.read_bytes() == b.read_bytes())
    assert json.loads((Path(cfg.run_dir) / "mixture.json").read_text())["source"] == "config"


def test_export_parquet_is_read_by_datasets_and_holds_the_mixtures_documents(tokenized, tmp_path):
    """`climb-hpc export`: `datasets` reads the shards; the train rows are exactly the materialised mixture's
    documents (same seeded choice), with the ingest texts; the held-out rows are the weighted clusters'."""
    import datasets

    from climb_hpc.cli import main
    from climb_hpc.corpus import iter_doc_shards

    cfg = clone_run(tokenized, tmp_path / "run", "cluster=debug", *MIX, "mix.materialize=true")
    run_pipeline(cfg)
    out = tmp_path / "export"
    assert main(["export", f"run_dir={cfg.run_dir}", "format=parquet", f"out={out}", "cluster=local"]) == 0
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert set(ds.column_names) == {"id", "text", "cluster", "split", "epoch"}
    rd = RunDir(cfg.run_dir)
    mixed = []
    for t in range(read_json(mix_outputs(rd).summary)["shards"]):
        if Path(str(mix_outputs(rd).shard(t)) + ".ids.parquet").exists():
            mixed += pq.read_table(str(mix_outputs(rd).shard(t)) + ".ids.parquet").to_pylist()
    train = [r for r in ds if r["split"] == "train"]
    assert [(r["id"], r["cluster"], r["epoch"]) for r in train] == [(m["id"], m["cluster"], m["epoch"]) for m in mixed]
    texts = {r["id"]: r["text"] for _, tb in iter_doc_shards(rd, ["id", "text"]) for r in tb.to_pylist()}
    assert all(r["text"] == texts[r["id"]] for r in ds)
    held = {r["id"] for r in ds if r["split"] == "heldout"}
    want = {i for c in (0, 2) for st in cluster_stores(rd, c, "heldout")
            for i in store_ids(st.prefix).column("id").to_pylist()}
    assert held == want and held
    summary = read_json(rd.path / "export" / "summary.json")
    assert sum(v["train"] for v in summary["docs"].values()) == len(train)
