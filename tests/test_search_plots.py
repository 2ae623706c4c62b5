"""Search plots (climb_hpc.report.search_plots) on synthetic search results: fast, no network, no run dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from climb_hpc.report.search_plots import (
    FILES,
    pca_2d,
    plot_mixture_map,
    search_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pool(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


def _result(pool: np.ndarray, *, strategy: str = "climb", direction: str = "lower", predicted: bool = True,
            dominant: bool = False, kind: str = "heldout") -> dict[str, Any]:
    n, k = pool.shape
    clusters = list(range(k))
    shares = np.linspace(1.0, 2.0, k)
    shares = shares / shares.sum()

    def w(row: np.ndarray) -> dict[str, float]:
        return {str(c): float(x) for c, x in zip(clusters, row, strict=True)}

    trials, rounds, t_idx = [], [], 0
    for r, size in enumerate((4, 3, 2), start=1):
        for j in range(size):
            i = (7 * t_idx + 3) % n
            value = 3.0 + float(np.abs(pool[i] - shares).sum()) * (1 if direction == "lower" else -1)
            pred = value + 0.05 * ((-1) ** j) if (predicted and r > 1) else None
            trials.append({"round": r, "group": f"{strategy}_r{r}", "trial": j, "pool_index": i,
                           "weights": w(pool[i]), "value": value, "predicted": pred})
            t_idx += 1
        rounds.append({"round": r, "spearman": (None if r < 3 or not predicted else 0.71)})
    if dominant:
        row = np.full(k, 0.01 / max(k - 1, 1))
        row[0] = 0.99 if k > 1 else 1.0
        trials.append({"round": 3, "group": f"{strategy}_r3", "trial": 9, "pool_index": 0, "weights": w(row),
                       "value": 1.0 if direction == "lower" else 9.0, "predicted": None})
    pick = min if direction == "lower" else max
    best = pick(trials, key=lambda t: t["value"])
    return {
        "strategy": strategy, "direction": direction, "budget": len(trials),
        "target": {"kind": kind, "path": "bench.jsonl" if kind != "heldout" else None},
        "clusters": clusters, "token_shares": [float(x) for x in shares], "pool_size": n,
        "trials": trials, "rounds": rounds, "best": best,
        "predicted_best": best if predicted else None, "final_predictor": None,
        "references": {"uniform": {"weights": w(np.full(k, 1.0 / k)), "value": 3.5},
                       "natural": {"weights": w(shares), "value": 3.4}},
    }


def _write_run(tmp_path: Path, result: dict[str, Any], pool: np.ndarray | None) -> Path:
    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    (run / "search" / "result.json").write_text(json.dumps(result))
    if pool is not None:
        np.save(run / "search" / "pool.npy", pool)
    return run


def _check_pngs(paths: list[Path], expected_dir: Path) -> None:
    assert [p.name for p in paths] == list(FILES)
    for p in paths:
        assert p.parent == expected_dir and p.is_file()
        assert p.read_bytes()[:8] == PNG_MAGIC
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 600, (p.name, img.shape)
        assert float(img[..., :3].std()) > 0.02, f"{p.name} looks blank"


def test_search_plots_default_out_dir(tmp_path: Path) -> None:
    pool = _pool(200, 6)
    run = _write_run(tmp_path, _result(pool), pool)
    paths = search_plots(run)
    _check_pngs(paths, run / "report")
    assert imread(paths[0]).shape[:2] == (495, 770)  # (7, 4.5) in at 110 dpi


def test_search_plots_deterministic(tmp_path: Path) -> None:
    pool = _pool(150, 5)
    run = _write_run(tmp_path, _result(pool), pool)
    a = [p.read_bytes() for p in search_plots(run, tmp_path / "a")]
    b = [p.read_bytes() for p in search_plots(run, tmp_path / "b")]
    assert a == b


def test_random_strategy_without_predictions(tmp_path: Path) -> None:
    pool = _pool(120, 5, seed=1)
    run = _write_run(tmp_path, _result(pool, strategy="random", predicted=False), pool)
    _check_pngs(search_plots(run, tmp_path / "out"), tmp_path / "out")


def test_dominant_cluster_and_higher_is_better(tmp_path: Path) -> None:
    pool = _pool(120, 8, seed=2)
    res = _result(pool, direction="higher", dominant=True, kind="mc")
    assert res["best"]["weights"]["0"] == pytest.approx(0.99)
    run = _write_run(tmp_path, res, pool)
    _check_pngs(search_plots(run, tmp_path / "out"), tmp_path / "out")


def test_many_clusters_and_missing_pool(tmp_path: Path) -> None:
    pool = _pool(100, 48, seed=3)
    run = _write_run(tmp_path, _result(pool, strategy="regmix"), None)  # no pool.npy: PCA on the tried mixtures
    _check_pngs(search_plots(run, tmp_path / "out"), tmp_path / "out")


def test_single_cluster(tmp_path: Path) -> None:
    pool = np.ones((10, 1))
    run = _write_run(tmp_path, _result(pool, dominant=True), pool)
    _check_pngs(search_plots(run, tmp_path / "out"), tmp_path / "out")


def test_missing_result_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="search"):
        search_plots(tmp_path / "nowhere")


def test_pool_shape_mismatch(tmp_path: Path) -> None:
    pool = _pool(50, 4)
    with pytest.raises(ValueError, match="pool has shape"):
        plot_mixture_map(_result(pool), _pool(50, 3), tmp_path / "m.png")


def test_pca_2d_sign_and_padding() -> None:
    pool = _pool(80, 5, seed=4)
    mean, comps = pca_2d(pool)
    assert comps.shape == (2, 5) and np.allclose(mean, pool.mean(axis=0))
    assert np.allclose(np.linalg.norm(comps, axis=1), 1.0)
    for c in comps:
        assert c[np.argmax(np.abs(c))] > 0
    _, flat = pca_2d(np.ones((5, 1)))  # no variance: zero components, not NaN
    assert np.all(flat == 0)


def test_report_shows_both_picks_the_answer_and_the_heldout_error(tmp_path: Path) -> None:
    import re
    from html import unescape

    from climb_hpc.report.common import Ctx
    from climb_hpc.report.mixture import search_section

    pool = _pool(200, 5)
    result = _result(pool)
    fresh = {str(c): w for c, w in enumerate([0.1, 0.2, 0.3, 0.2, 0.2])}
    result["predictor_pick"] = {"weights": fresh, "predicted": 2.75, "measured": False, "value": None,
                                "round": None, "trial": None, "pool_index": None, "source": "fresh sample",
                                "candidates": 100200}
    result["final_predictor"] = {"n_rows": 9, "n_holdout": 2, "spearman": 0.5, "mae": 0.0123, "rmse": 0.0234}
    result["final"] = {"choice": "predictor", "weights": fresh}
    run = _write_run(tmp_path, result, pool)
    html = unescape(search_section(Ctx(run=run, cfg={})).render())
    assert "The answer is the final predictor's pick" in html
    row = re.search(r'<tr class="hl"><td>final predictor\'s pick \(predicted 2\.75; not measured, from the fresh '
                    r'sample\)</td>', html)
    assert row, "the predictor's pick is the highlighted answer"
    assert re.search(r"<tr><td>best measured</td>", html)  # not highlighted: not the answer
    assert "held-out Spearman 0.5, MAE 0.0123, RMSE 0.0234 on 2 held-out trials" in html
    assert "100,200 candidates" in html
    _check_pngs(search_plots(run), run / "report")  # the plots draw the pick as well
    result["final"] = {"choice": "best_measured", "weights": result["best"]["weights"]}
    html = unescape(search_section(Ctx(run=_write_run(tmp_path / "b", result, pool), cfg={})).render())
    assert re.search(r'<tr class="hl"><td>best measured</td>', html) and "The answer is the best measured" in html
