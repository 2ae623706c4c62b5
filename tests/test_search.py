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

from climb_hpc.corpus.tokenize import load_cluster
from climb_hpc.pipeline import run_pipeline, status
from climb_hpc.proxy.sampler import heldout_mask
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.search.mix import load_mixed
from tests.conftest import ROOT, SMALL_PROXY, TOKENIZED, clone_run, tokenized_run

SEARCH = ("pipeline.stages=[ingest,refine,tokenize,search,mix]", "proxy.tokens=4096", "search.budget=7",
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
    assert set(r["references"]) == {"uniform", "natural"}
    assert all((run / "search" / f"predictor{k}.txt").exists() for k in ("", "_r2", "_r3"))  # each round's kept
    assert all((run / "report" / f).exists() for f in ("final_weights.png", "predicted_vs_measured.png",
                                                        "mixture_map.png"))
    assert np.load(run / "search" / "pool.npy").shape == (300, 7)
    mixture = read_json(run / "mixture.json")
    assert mixture["source"] == "search" and mixture["weights"] == best["weights"]
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


@pytest.mark.parametrize("strategy,rounds", [("random", [1] * 7), ("regmix", [1] * 6 + [2])])
def test_baselines_spend_the_same_budget(tokenized, tmp_path, strategy, rounds):
    cfg = clone_run(tokenized, tmp_path / "run", "cluster=debug", *SEARCH, f"search.strategy={strategy}",
                    "search.references=[]", "until=search")
    run_pipeline(cfg)
    r = read_json(Path(cfg.run_dir) / "search" / "result.json")
    assert r["strategy"] == strategy and [t["round"] for t in r["trials"]] == rounds
    assert len({t["pool_index"] for t in r["trials"]}) == 7 and r["references"] == {}
    assert r["best"]["value"] == min(t["value"] for t in r["trials"])


def test_mix_follows_the_weights_with_whole_held_in_documents(tokenized, tmp_path):
    cfg = clone_run(tokenized, tmp_path / "run", "cluster=debug", "pipeline.stages=[ingest,refine,tokenize,mix]",
                    "mix.weights={0: 0.6, 2: 0.4, 5: 0.0}", "mix.tokens=40000")
    run_pipeline(cfg)
    rd = RunDir(cfg.run_dir)
    tokens, index, summary = load_mixed(rd)
    assert set(summary["clusters"]) == {"0", "2"}  # a zero weight contributes nothing
    for c, share in (("0", 0.6), ("2", 0.4)):
        got = summary["clusters"][c]
        assert got["tokens_target"] == round(share * 40000)
        assert 0 <= got["tokens"] - got["tokens_target"] < 2000  # overshoot: less than the one crossing doc
    assert summary["tokens"] == len(tokens) == int((index.column("n_tokens").to_numpy() + 1).sum())
    assert summary["clusters"]["0"]["epochs"] == 2  # cluster 0 has ~16k held-in tokens: 24k takes 2 passes
    # every document is whole, EOS-terminated, from its cluster, and never a held-out one
    sources = {}
    for c in (0, 2):
        t, ix = load_cluster(rd, c)
        held = heldout_mask(ix.column("id").to_pylist(), float(cfg.proxy.holdout_fraction))
        for row, h in zip(ix.to_pylist(), held, strict=True):
            sources[row["id"]] = (c, h, np.asarray(t[row["offset"]: row["offset"] + row["n_tokens"] + 1]))
    for row in index.to_pylist():
        c, held, want = sources[row["id"]]
        assert c == row["cluster"] and not held
        assert (np.asarray(tokens[row["offset"]: row["offset"] + row["n_tokens"] + 1]) == want).all()
    assert len(set(index.column("cluster").to_pylist()[:20])) == 2  # interleaved, not blocked by cluster
    # deterministic: the same config gives the same bytes
    cfg2 = clone_run(tokenized, tmp_path / "run2", "cluster=debug", "pipeline.stages=[ingest,refine,tokenize,mix]",
                     "mix.weights={0: 0.6, 2: 0.4, 5: 0.0}", "mix.tokens=40000")
    run_pipeline(cfg2)
    assert (Path(cfg2.run_dir) / "mix" / "tokens.bin").read_bytes() == (Path(cfg.run_dir) / "mix" / "tokens.bin").read_bytes()
    assert pq.read_table(Path(cfg2.run_dir) / "mix" / "index.parquet").equals(index)
    assert json.loads((Path(cfg.run_dir) / "mixture.json").read_text())["source"] == "config"
