"""The pure part of the CLIMB mixture search: sampler, predictor, strategies, and a replay on real RegMix data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from climb_hpc.search.candidates import apply_cap, sample_candidates
from climb_hpc.search.predictor import Predictor
from climb_hpc.search.strategies import (
    STRATEGIES,
    climb,
    climb_plus,
    farthest_points,
    plus_rounds,
    random_search,
    regmix,
    split_budget,
)

REGMIX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "regmix"
PRIOR = np.array([0.30, 0.25, 0.15, 0.10, 0.08, 0.06, 0.04, 0.02])


# --- sampler ---------------------------------------------------------------------------------------------------------

def test_sampler_rows_are_mixtures_within_caps() -> None:
    x = sample_candidates(PRIOR, 400, np.random.default_rng(0), min_weight=0.01, max_ratio=3.0)
    assert x.shape == (400, PRIOR.size)
    assert np.allclose(x.sum(axis=1), 1.0) and (x >= 0).all()
    assert (x <= 3.0 * PRIOR + 1e-9).all(), "a cluster exceeds max_ratio x its token share"
    assert ((x == 0) | (x >= 0.01 - 1e-12)).all(), "a non-zero weight below min_weight survived"
    assert (x == 0).any(), "small concentrations should give some sparse rows"


def test_sampler_keeps_zero_share_clusters_at_zero() -> None:
    prior = np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    x = sample_candidates(prior, 200, np.random.default_rng(1))
    assert (x[:, [1, 4]] == 0).all()
    assert np.allclose(x.sum(axis=1), 1.0)


def test_sampler_dedup_and_determinism() -> None:
    tol = 0.3
    x = sample_candidates(PRIOR, 60, np.random.default_rng(2), dedup_tol=tol)
    d = np.abs(x[:, None, :] - x[None, :, :]).sum(axis=2)
    assert (d[~np.eye(len(x), dtype=bool)] > tol).all(), "near-duplicates were kept"
    assert np.array_equal(x, sample_candidates(PRIOR, 60, np.random.default_rng(2), dedup_tol=tol))
    assert not np.array_equal(x, sample_candidates(PRIOR, 60, np.random.default_rng(3), dedup_tol=tol))


def test_sampler_dedup_refills_tight_draws() -> None:
    # large concentration: rows crowd the centre (without dedup, several pairs lie within L1 0.02 of each
    # other); dedup drops those and refills, still returning n rows
    loose = sample_candidates(PRIOR, 20, np.random.default_rng(4), concentrations=(1e3,), dedup_tol=0.0)
    d = np.abs(loose[:, None, :] - loose[None, :, :]).sum(axis=2)
    assert (d[~np.eye(20, dtype=bool)] <= 0.02).any()
    x = sample_candidates(PRIOR, 20, np.random.default_rng(4), concentrations=(1e3,), dedup_tol=0.02)
    d = np.abs(x[:, None, :] - x[None, :, :]).sum(axis=2)
    assert len(x) == 20 and (d[~np.eye(20, dtype=bool)] > 0.02).all()
    with pytest.raises(RuntimeError):
        sample_candidates(PRIOR, 20, np.random.default_rng(4), concentrations=(1e5,), dedup_tol=0.05)


def test_apply_cap_redistributes_and_rejects_impossible_rows() -> None:
    cap = np.array([0.2, 0.5, 0.5])
    w = apply_cap(np.array([0.6, 0.3, 0.1]), cap)
    assert w is not None and np.isclose(w.sum(), 1.0) and (w <= cap + 1e-12).all() and np.isclose(w[0], 0.2)
    assert apply_cap(np.array([0.7, 0.3, 0.0]), cap) is None  # support {0, 1} can hold at most 0.7


# --- predictor -------------------------------------------------------------------------------------------------------

def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(6), n)
    return x, x @ np.array([3.0, -2.0, 1.0, 0.5, -1.0, 0.0]) + 0.02 * rng.standard_normal(n)


def test_predictor_learns_planted_linear_target() -> None:
    x, y = planted(150, 0)
    pred = Predictor(seed=0)
    report = pred.fit(x, y)
    assert report["spearman"] is not None and report["spearman"] > 0.8, report
    xt, yt = planted(300, 1)
    from scipy.stats import spearmanr

    assert spearmanr(pred.predict(xt), yt)[0] > 0.8


def test_predictor_deterministic_and_round_trips(tmp_path: Path) -> None:
    x, y = planted(80, 2)
    a, b = Predictor(seed=5), Predictor(seed=5)
    assert a.fit(x, y) == b.fit(x, y)
    assert np.array_equal(a.predict(x), b.predict(x))
    a.save(tmp_path / "predictor.txt")
    loaded = Predictor.load(tmp_path / "predictor.txt")
    assert np.allclose(loaded.predict(x), a.predict(x))
    assert loaded.report == a.report and loaded.kwargs == a.kwargs


def test_predictor_few_rows_fits_without_split() -> None:
    x, y = planted(8, 3)
    report = Predictor().fit(x, y)
    assert report["spearman"] is None and "without early stopping" in report["note"]


# --- strategies ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    return sample_candidates(PRIOR, 300, np.random.default_rng(10))


def smooth(pool: np.ndarray) -> np.ndarray:
    """A smooth target with its optimum at an interior mixture (lower is better)."""
    centre = np.array([0.05, 0.1, 0.3, 0.2, 0.15, 0.1, 0.05, 0.05])
    return ((pool - centre) ** 2).sum(axis=1) + 0.3 * pool[:, 2] * pool[:, 3]


class Recorder:
    def __init__(self, y: np.ndarray) -> None:
        self.y, self.calls = y, []

    def __call__(self, indices: list[int]) -> list[float]:
        self.calls.append(list(indices))
        return [float(self.y[i]) for i in indices]


@pytest.mark.parametrize("budget", [48, 112])
def test_split_budget_sums(budget: int) -> None:
    assert sum(split_budget(budget)) == budget
    assert split_budget(112) == [64, 32, 16] and split_budget(48) == [27, 14, 7]
    assert all(sum(split_budget(b, (3, 1))) == b for b in range(0, 50))


def test_climb_budget_rounds_and_no_retries(pool: np.ndarray) -> None:
    ev = Recorder(smooth(pool))
    res = climb(pool, ev, 48, seed=0)
    assert [len(c) for c in ev.calls] == [27, 14, 7], "one evaluate call per round, sized by split_budget"
    assert len(res.indices) == 48 == len(set(res.indices)), "a candidate was tried twice"
    assert res.rounds == [1] * 27 + [2] * 14 + [3] * 7
    assert res.best_value == min(res.values) and res.values[res.indices.index(res.best_index)] == res.best_value
    assert [r["round"] for r in res.reports] == [1, 2, 3] and len(res.reports[2]["predicted"]) == 7


def test_climb_last_round_measures_predictors_best(pool: np.ndarray) -> None:
    y = smooth(pool)
    res = climb(pool, Recorder(y), 48, seed=3)
    last = [i for i, r in zip(res.indices, res.rounds, strict=True) if r == 3]
    assert res.predicted_best_index in last
    before = [i for i, r in zip(res.indices, res.rounds, strict=True) if r < 3]
    untried = np.setdiff1d(np.arange(len(pool)), before)
    pred = Predictor(seed=3 * 1000 + 3)  # the strategy's seed rule for round 3
    pred.fit(pool[before], y[before])
    scores = pred.predict(pool[untried])
    assert np.isclose(pred.predict(pool[[res.predicted_best_index]])[0], scores.min())


def test_climb_deterministic_and_resumable(pool: np.ndarray) -> None:
    y = smooth(pool)
    a = climb(pool, Recorder(y), 48, seed=7)
    b = climb(pool, Recorder(y), 48, seed=7)
    assert a.indices == b.indices and a.values == b.values and a.predicted_best_index == b.predicted_best_index
    assert climb(pool, Recorder(y), 48, seed=8).indices != a.indices
    cache = dict(zip(a.indices, a.values, strict=True))  # a resumed search answers finished trials from its run folder
    c = climb(pool, lambda idx: [cache[i] for i in idx], 48, seed=7)
    assert c.indices == a.indices
    d = climb(pool, Recorder(-y), 48, seed=7, direction="higher")
    assert d.indices == a.indices and d.best_index == a.best_index


def test_climb_beats_random_on_smooth_target(pool: np.ndarray) -> None:
    y = smooth(pool)
    regret = {s: np.mean([STRATEGIES[s](pool, Recorder(y), 40, seed=k).best_value - y.min() for k in range(4)])
              for s in ("climb", "random")}
    assert regret["climb"] < regret["random"], regret


def test_regmix_and_random_budgets(pool: np.ndarray) -> None:
    y = smooth(pool)
    ev = Recorder(y)
    res = regmix(pool, ev, 30, seed=1)
    assert [len(c) for c in ev.calls] == [29, 1] and len(set(res.indices)) == 30
    assert res.indices[-1] == res.predicted_best_index and res.best_value == min(res.values)
    ev = Recorder(y)
    res = random_search(pool, ev, 25, seed=1)
    assert [len(c) for c in ev.calls] == [25] and len(set(res.indices)) == 25 and res.predicted_best_index is None
    with pytest.raises(ValueError):
        random_search(pool, Recorder(y), len(pool) + 1, seed=0)


def test_climb_plus_rounds_space_filling_first_round_and_greedy_rest(pool: np.ndarray) -> None:
    y = smooth(pool)
    ev = Recorder(y)
    res = climb_plus(pool, ev, 28, seed=0, first_fraction=0.6, rounds=8)
    assert [len(c) for c in ev.calls] == plus_rounds(28, 0.6, 8) == [17, 2, 2, 2, 2, 1, 1, 1]
    assert len(res.indices) == 28 == len(set(res.indices)), "a candidate was tried twice"
    first = ev.calls[0]
    assert first == farthest_points(pool, np.arange(len(pool)), 17, np.random.default_rng(0))
    # farthest points: each pick is the untried candidate farthest (L1) from the picks before it
    for k in range(2, 17):
        d = np.abs(pool[:, None, :] - pool[first[:k]][None]).sum(-1).min(1)
        assert np.isclose(d[first[k]], d.max())
    spread = lambda idx: np.abs(pool[idx][:, None] - pool[idx][None]).sum(-1).mean()  # noqa: E731
    rand = [spread(np.random.default_rng(k).choice(len(pool), 17, replace=False)) for k in range(20)]
    assert spread(first) > max(rand), "the first round should cover the pool better than random draws"
    # each later round is the refit predictor's best untried candidates, best first
    tried = list(first)
    for r, picks in enumerate(ev.calls[1:], start=2):
        pred = Predictor(seed=0 * 1000 + r)
        pred.fit(pool[tried], y[tried])
        untried = np.setdiff1d(np.arange(len(pool)), tried)
        best = np.sort(pred.predict(pool[untried]))[:len(picks)]
        assert np.allclose(np.sort(pred.predict(pool[picks])), best), f"round {r} is not the predicted best"
        tried += picks


def test_climb_plus_deterministic_resumable_and_beats_random(pool: np.ndarray) -> None:
    y = smooth(pool)
    a = climb_plus(pool, Recorder(y), 28, seed=7)
    assert a.indices == climb_plus(pool, Recorder(y), 28, seed=7).indices
    assert climb_plus(pool, Recorder(y), 28, seed=8).indices != a.indices
    cache = dict(zip(a.indices, a.values, strict=True))
    assert climb_plus(pool, lambda idx: [cache[i] for i in idx], 28, seed=7).indices == a.indices
    assert climb_plus(pool, Recorder(-y), 28, seed=7, direction="higher").indices == a.indices
    failed = climb_plus(pool, lambda idx: [float("nan") if i % 3 == 0 else float(y[i]) for i in idx], 28, seed=7)
    assert len(failed.indices) == 28 and np.isfinite(failed.best_value)
    regret = {s: np.mean([STRATEGIES[s](pool, Recorder(y), 24, seed=k).best_value - y.min() for k in range(4)])
              for s in ("climb_plus", "random")}
    assert regret["climb_plus"] < regret["random"], regret
    assert plus_rounds(0) == [] and plus_rounds(2) == [2] and sum(plus_rounds(5)) == 5
    assert all(sum(plus_rounds(b, f, n)) == b for b in range(0, 60) for f in (0.1, 0.6, 1.0) for n in (1, 3, 8))


# --- real data -------------------------------------------------------------------------------------------------------

def load_replay():
    spec = importlib.util.spec_from_file_location("search_replay", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "search_replay.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replay_cli_missing_data_exits_2(tmp_path: Path) -> None:
    assert load_replay().main(["--mixtures", str(tmp_path / "none.csv"), "--losses", str(tmp_path / "none.csv")]) == 2


def test_climb_on_real_regmix_data() -> None:
    if not (REGMIX / "train_mixture_1m.csv").is_file():
        pytest.skip(f"real RegMix data not found at {REGMIX} (../shared/data/regmix beside the repository)")
    replay = load_replay()
    pool, losses, names = replay.load(REGMIX / "train_mixture_1m.csv", REGMIX / "train_pile_loss_1m.csv")
    assert pool.shape == (512, 17) and losses.shape == (512, 13) and np.allclose(pool.sum(axis=1), 1, atol=0.01)
    for t in (names.index("arxiv"), names.index("pile_cc")):
        y = losses[:, t]
        regret = {s: np.mean([STRATEGIES[s](pool, Recorder(y), 48, seed=k).best_value - y.min() for k in range(3)])
                  for s in ("climb", "random")}
        assert regret["climb"] < 0.02 and regret["climb"] < regret["random"], (names[t], regret)
