"""The search's answer (search.final, climb_hpc/search/final.py): the fresh candidate sampler's constraints, the
final predictor's argmax over a fresh sample, its held-out error, what result.json records, what mix takes, and
the replay benchmark's --final."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from climb_hpc.rundir import RunDir, atomic_write_json
from climb_hpc.search.candidates import sample_batch, sample_candidates
from climb_hpc.search.final import NO_PREDICTOR, final_answer, fit_final, predictor_argmax
from climb_hpc.search.predictor import Predictor
from tests.conftest import make_cfg
from tests.test_search_strategies import REGMIX, load_replay

#: token shares with a zero-share cluster and one whose cap (4 x 0.002) is below min_weight (0.01)
SHARES = np.array([0.4, 0.3, 0.15, 0.098, 0.05, 0.002, 0.0])
SHARES = SHARES / SHARES.sum()
SAMPLER = {"temperature": 0.5, "concentrations": [0.1, 0.3, 1.0, 3.0, 10.0], "min_weight": 0.01, "max_ratio": 4.0}


def _check_constraints(x: np.ndarray, shares: np.ndarray, min_weight: float, max_ratio: float) -> None:
    cap = max_ratio * shares
    assert np.allclose(x.sum(axis=1), 1.0, atol=1e-12)
    assert (x >= 0).all() and (x <= cap * (1 + 1e-9)).all()  # none above max_ratio x its share
    small = (x > 0) & (x < min_weight)
    assert np.allclose(x[small], np.broadcast_to(cap, x.shape)[small])  # below min_weight only where capped there
    assert (x[:, shares == 0] == 0).all()


def test_fresh_candidates_meet_the_pool_constraints_and_follow_its_distribution() -> None:
    x = sample_batch(SHARES, 20000, np.random.default_rng(3), **SAMPLER)
    assert x.shape == (20000, 7)
    _check_constraints(x, SHARES, 0.01, 4.0)
    assert ((x[:, 5] > 0) & (x[:, 5] < 0.01)).any()  # the cap forced a small weight somewhere: the test saw it
    assert np.array_equal(x, sample_batch(SHARES, 20000, np.random.default_rng(3), **SAMPLER))  # seeded
    pool = sample_candidates(SHARES, 2000, np.random.default_rng(4), **SAMPLER)
    assert np.allclose(x.mean(axis=0), pool.mean(axis=0), atol=0.01)  # same sampler, without the O(n^2) dedup
    assert np.allclose((x > 0).mean(axis=0), (pool > 0).mean(axis=0), atol=0.03)
    tight = sample_batch(SHARES, 5000, np.random.default_rng(5), **{**SAMPLER, "max_ratio": 1.5, "min_weight": 0.05})
    _check_constraints(tight, SHARES, 0.05, 1.5)
    with pytest.raises(ValueError, match="max_ratio"):
        sample_batch(SHARES, 10, np.random.default_rng(0), max_ratio=0.5)


def test_predictor_reports_heldout_mae_and_rmse() -> None:
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(4), size=60)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.01 * rng.normal(size=60)
    rep = Predictor(seed=1).fit(X, y)
    assert rep["n_holdout"] == 12 and 0 < rep["mae"] <= rep["rmse"] < np.std(y)  # beats predicting the mean
    assert rep["spearman"] > 0.8
    few = Predictor(seed=1).fit(X[:6], y[:6])
    assert few["mae"] is None and few["rmse"] is None and few["spearman"] is None


def _target(x: np.ndarray) -> np.ndarray:
    """Lower is better, and more of cluster 2 is better: the optimum lies at cluster 2's cap."""
    return 3.0 - x[:, 2] + 0.1 * x[:, 0]


def test_predictor_argmax_leaves_the_measured_pool_for_a_better_predicted_fresh_candidate() -> None:
    pool = sample_candidates(SHARES, 400, np.random.default_rng(0), **SAMPLER)
    measured = pool[pool[:, 2] < 0.15][:40]  # every trial is poor in cluster 2
    pred, rep = fit_final(measured, _target(measured), "lower", seed=0)
    assert rep["n_rows"] == 40 and rep["mae"] is not None
    fresh = [sample_batch(SHARES, 3000, np.random.default_rng(9), **SAMPLER) for _ in range(2)]
    pick = predictor_argmax(pred, "lower", measured, np.ones(len(measured), dtype=bool), fresh)
    allx = np.concatenate([measured, *fresh])
    scores = pred.predict(allx)
    assert pick.pool_index is None and pick.sample_index == int(np.argmin(scores)) - len(measured)
    assert np.array_equal(pick.weights, allx[int(np.argmin(scores))]) and pick.predicted == pytest.approx(scores.min())
    assert pick.weights[2] > measured[:, 2].max()  # outside the measured range, towards the true optimum
    assert _target(pick.weights[None])[0] < _target(measured).min()
    # higher is better: the same fit on -value picks the same mixture, and reports the predicted value unsigned
    pred_h, _ = fit_final(measured, -_target(measured), "higher", seed=0)
    pick_h = predictor_argmax(pred_h, "higher", measured, np.ones(len(measured), dtype=bool), fresh)
    assert np.array_equal(pick_h.weights, pick.weights) and pick_h.predicted == pytest.approx(-pick.predicted)
    # without a fresh sample the answer stays in the pool; ties there go to a measured row
    flat = predictor_argmax(pred, "lower", measured, np.ones(len(measured), dtype=bool))
    assert flat.pool_index is not None and flat.sample_index is None


def _planted_search(tmp_path: Path, final: str, seed: int = 0, n_fresh: int = 5000):
    """A run folder with tokenize's summary (the token shares) and its config: what the final step reads."""
    from climb_hpc.corpus.tokenize import summary_path

    run = tmp_path / f"run_{final}_{seed}"
    rd = RunDir(run)
    tokens = {str(c): {"tokens": int(s * 1e6)} for c, s in enumerate(SHARES[:6])}  # 6 clusters with tokens
    atomic_write_json(summary_path(rd), {"clusters": tokens})
    cfg = make_cfg(run, f"search.final={final}", f"search.final_candidates={n_fresh}", f"seed={seed}",
                   "search.pool_size=60")
    return cfg, rd


def _trials(pool: np.ndarray, clusters: list[int]) -> list[dict]:
    rows = sorted(np.argsort(pool[:, 2], kind="stable")[:30].tolist())  # the half of the pool poorest in cluster 2
    return [{"round": 1 + k // 10, "group": "g", "trial": k % 10, "pool_index": i,
             "weights": {str(c): float(w) for c, w in zip(clusters, pool[i], strict=True)},
             "value": float(_target(pool[[i]])[0])} for k, i in enumerate(rows)]


def test_final_step_records_both_picks_and_is_deterministic(tmp_path: Path) -> None:
    from climb_hpc.search.stage import _final_predictor, candidate_pool, outputs

    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg, rd = _planted_search(tmp_path / name, "predictor", seed)
        clusters = list(range(6))
        pool = candidate_pool(cfg, rd, clusters)
        trials = _trials(pool, clusters)
        report, pick = _final_predictor(cfg, rd, "lower", clusters, pool, trials)
        assert outputs(rd).predictor.is_file()
        runs[name] = (pool, trials, report, pick, outputs(rd).predictor)
    pool, trials, report, pick, _ = runs["a"]
    assert report["n_rows"] == 30 and report["n_holdout"] == 6 and report["mae"] is not None
    assert pick["measured"] is False and pick["value"] is None and pick["candidates"] == 60 + 5000
    assert pick["source"] == "fresh sample" and pick["pool_index"] is None
    measured_rows = pool[[t["pool_index"] for t in trials]]
    pred = Predictor.load(runs["a"][4])  # predictor.txt, fit on every trial (lower is better: on value)
    assert pick["predicted"] == pytest.approx(pred.predict(np.array([[pick["weights"][str(c)] for c in range(6)]]))[0])
    assert pick["predicted"] < pred.predict(pool).min()  # better predicted than every pool row, measured or not
    assert pred.predict(measured_rows).min() > pick["predicted"]
    assert pick["weights"]["2"] > max(t["weights"]["2"] for t in trials)
    assert abs(sum(pick["weights"].values()) - 1) < 1e-9
    assert runs["b"][3] == pick  # same seed, same values: the same pick (a resumed search replays to it)
    assert runs["c"][3]["weights"] != pick["weights"]  # another seed: another pool and fresh sample
    doc = {"best": min(trials, key=lambda t: t["value"]), "predictor_pick": pick}
    assert final_answer(doc, "predictor") == {"choice": "predictor", "weights": pick["weights"]}
    assert final_answer(doc, "best_measured") == {"choice": "best_measured", "weights": doc["best"]["weights"]}


def test_final_answer_falls_back_for_old_results_and_missing_predictor() -> None:
    best = {"weights": {"0": 0.5, "1": 0.5}, "value": 1.0}
    old = {"best": best, "final_predictor": None}  # a result.json written before search.final
    assert final_answer(old) == {"choice": "best_measured", "weights": best["weights"]}
    assert final_answer(old, "predictor") == {"choice": "best_measured", "weights": best["weights"],
                                             "note": NO_PREDICTOR}
    recorded = {"best": best, "predictor_pick": {"weights": {"0": 0.9, "1": 0.1}},
                "final": {"choice": "predictor", "weights": {"0": 0.9, "1": 0.1}}}
    assert final_answer(recorded) == recorded["final"]
    assert final_answer(recorded, "best_measured")["weights"] == best["weights"]
    with pytest.raises(ValueError, match="search.final"):
        final_answer(recorded, "median")


@pytest.mark.parametrize("final", ["predictor", "best_measured"])
def test_mix_takes_the_search_answer(tmp_path: Path, final: str) -> None:
    from climb_hpc.search.mix import chosen_weights
    from climb_hpc.search.stage import outputs

    best, pick = {"0": 0.5, "1": 0.5}, {"0": 0.8, "1": 0.2}
    doc = {"best": {"weights": best, "value": 1.0}, "predictor_pick": {"weights": pick, "measured": False},
           "final": {"choice": "predictor", "weights": pick}, "tokenizer": None}
    cfg = make_cfg(tmp_path / "run", f"search.final={final}")
    rd = RunDir(cfg.run_dir)
    atomic_write_json(outputs(rd).result, doc)
    weights, source, _ = chosen_weights(cfg, rd)
    assert source == "search" and weights == ({0: 0.8, 1: 0.2} if final == "predictor" else {0: 0.5, 1: 0.5})
    atomic_write_json(outputs(rd).result, {"best": {"weights": best, "value": 1.0}})  # written before search.final
    assert chosen_weights(cfg, rd)[0] == {0: 0.5, 1: 0.5}
    other = make_cfg(tmp_path / "other", f"mix.weights_from={outputs(rd).result.parent / 'given.json'}")
    atomic_write_json(outputs(rd).result.parent / "given.json", doc)  # another run's result: the answer it recorded
    assert chosen_weights(other, RunDir(other.run_dir))[0] == {0: 0.8, 1: 0.2}


def test_changing_search_final_resets_mix_not_the_search() -> None:
    from climb_hpc.pipeline import affected_stages

    old = make_cfg(Path("/tmp/unused"), "pipeline.stages=[ingest,refine,tokenize,search,mix]")
    new = make_cfg(Path("/tmp/unused"), "pipeline.stages=[ingest,refine,tokenize,search,mix]", "search.final=predictor")
    assert affected_stages(["search.final"], old, new) == ["mix"]
    assert affected_stages(["search.final_candidates"], old, new) == ["search", "mix"]


def test_replay_final_smoke() -> None:
    if not (REGMIX / "train_mixture_1m.csv").is_file():
        pytest.skip(f"real RegMix data not found at {REGMIX} (../shared/data/regmix beside the repository)")
    out = io.StringIO()
    with redirect_stdout(out):
        rc = load_replay().main(["--budget", "10", "--seeds", "1", "--strategies", "climb", "random",
                                 "--final", "predictor", "best_measured"])
    lines = out.getvalue().strip().splitlines()
    assert rc == 0
    num = r"(\d+\.\d{4})"
    assert re.fullmatch(rf"regret@10 climb={num} random={num} final=predictor", lines[-2]), lines[-2]
    assert re.fullmatch(rf"regret@10 climb={num} random={num} final=best_measured", lines[-1]), lines[-1]
    assert any(re.match(r"\s+climb\s+10\s+\d\.\d{4} \(0\.0000\)\s+\d\.\d{4} \(0\.0000\)$", x) for x in lines)


def test_run_summary_names_the_predictor_answer(tmp_path: Path) -> None:
    from climb_hpc.search.stage import outputs
    from climb_hpc.summary import mixture_lines

    rd = RunDir(tmp_path / "run")
    best, pick = {"0": 0.5, "1": 0.5}, {"0": 0.8, "1": 0.2}
    doc = {"best": {"weights": best, "value": 1.0}, "trials": [{}, {}], "direction": "lower",
           "predictor_pick": {"weights": pick, "measured": False, "predicted": 0.9, "value": None},
           "final": {"choice": "best_measured", "weights": best}}
    atomic_write_json(outputs(rd).result, doc)
    assert not any("answer" in line for line in mixture_lines(rd)), "best_measured: the best trial is the answer"
    doc["final"] = {"choice": "predictor", "weights": pick}
    atomic_write_json(outputs(rd).result, doc)
    line = [x for x in mixture_lines(rd) if "answer" in x]
    assert line and "c0: 0.80" in line[0] and "predicted 0.9000, not measured" in line[0]
