"""LightGBM regression from mixture weights to a target value (a proxy model's loss or score).

Small, strongly regularised trees: the search fits on tens to hundreds of rows. Leaves hold ridge-penalised
linear models (LightGBM ``linear_tree``, penalty ``linear_lambda``) by default: constant leaves cannot rank
candidates beyond the range of the measured weights (every mixture richer in the helpful cluster than the
richest one tried lands on the same plateau), while linear leaves extrapolate the trend, which is what a
search needs to push towards the edges of the pool. On the RegMix replay this alone lowers CLIMB's regret at
48 trials about threefold (benchmarks/search_replay.py). Early stopping uses a
seeded held-out split; the model is then refit on all rows with the early-stopped number of trees, so no
measured trial is wasted. The predictor only regresses; search strategies decide the direction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from scipy.stats import spearmanr

MIN_ROWS_FOR_SPLIT = 10  # below this a held-out split is too small to mean anything


class Predictor:
    """Weights (n, k) -> target (n,), deterministic given ``seed`` and ``num_threads``.

    ``min_child_samples`` is LightGBM's ``min_data_in_leaf``; ``reg_alpha``/``reg_lambda`` its L1/L2 penalties on
    leaf values; ``n_estimators`` the most trees, cut by early stopping (``early_stopping_rounds``) on a seeded
    ``holdout`` fraction; ``refit_full`` refits on all rows with the early-stopped tree count.
    """

    def __init__(
        self,
        *,
        max_depth: int = 4,
        num_leaves: int = 15,
        min_child_samples: int = 5,
        reg_alpha: float = 0.1,
        reg_lambda: float = 1.0,
        learning_rate: float = 0.05,
        n_estimators: int = 400,
        early_stopping_rounds: int = 40,
        holdout: float = 0.2,
        refit_full: bool = True,
        linear_tree: bool = True,
        linear_lambda: float = 0.3,
        seed: int = 0,
        num_threads: int = 1,
    ) -> None:
        if num_leaves > 15:
            raise ValueError("num_leaves must be <= 15 (small trees for small data)")
        self.kwargs: dict[str, Any] = dict(
            max_depth=max_depth, num_leaves=num_leaves, min_child_samples=min_child_samples, reg_alpha=reg_alpha,
            reg_lambda=reg_lambda, learning_rate=learning_rate, n_estimators=n_estimators,
            early_stopping_rounds=early_stopping_rounds, holdout=holdout, refit_full=refit_full,
            linear_tree=linear_tree, linear_lambda=linear_lambda, seed=seed,
            num_threads=num_threads,
        )
        self.booster: lgb.Booster | None = None
        self.report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        k = self.kwargs
        return {
            "objective": "regression",
            "max_depth": k["max_depth"],
            "num_leaves": k["num_leaves"],
            "min_data_in_leaf": k["min_child_samples"],
            "min_data_in_bin": 1,
            "min_sum_hessian_in_leaf": 0.0,
            "lambda_l1": k["reg_alpha"],
            "lambda_l2": k["reg_lambda"],
            "learning_rate": k["learning_rate"],
            "seed": k["seed"],
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": k["num_threads"],
            "feature_pre_filter": False,
            "linear_tree": k["linear_tree"],
            "linear_lambda": k["linear_lambda"],
            "verbosity": -1,
        }

    def _train(self, X: np.ndarray, y: np.ndarray, rounds: int, valid: tuple[np.ndarray, np.ndarray] | None = None):
        params = self.params()
        train = lgb.Dataset(X, y, params=params, free_raw_data=False)
        if valid is None:
            return lgb.train(params, train, num_boost_round=rounds)
        val = lgb.Dataset(valid[0], valid[1], reference=train)
        stop = lgb.early_stopping(self.kwargs["early_stopping_rounds"], first_metric_only=True, verbose=False)
        return lgb.train(params, train, num_boost_round=rounds, valid_sets=[val], callbacks=[stop])

    def fit(self, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Fit; returns a report: rows, trees, the held-out Spearman, MAE and RMSE (None without a split; in the
        units of ``y``, from the early-stopped model before any refit) and a note."""
        X, y = _check_xy(X, y)
        n, k = X.shape
        n_est = self.kwargs["n_estimators"]
        report: dict[str, Any] = {"n_rows": n, "n_features": k, "spearman": None, "mae": None, "rmse": None,
                                  "n_holdout": 0}
        n_val = int(round(self.kwargs["holdout"] * n))
        if n < MIN_ROWS_FOR_SPLIT or n_val < 2 or n - n_val < 2:
            self.booster = self._train(X, y, n_est)
            report.update(n_trees=n_est, note=f"{n} rows: too few for a held-out split, fit without early stopping")
        else:
            perm = np.random.default_rng(self.kwargs["seed"]).permutation(n)
            val, tr = perm[:n_val], perm[n_val:]
            model = self._train(X[tr], y[tr], n_est, valid=(X[val], y[val]))
            best = max(1, int(model.best_iteration or n_est))
            held = model.predict(X[val], num_iteration=best)
            report.update(n_holdout=n_val, n_trees=best, spearman=_spearman(y[val], held), **_errors(y[val], held))
            if self.kwargs["refit_full"]:
                self.booster = self._train(X, y, best)
                report["note"] = f"early-stopped at {best} trees on a {n - n_val}/{n_val} split, refit on all {n} rows"
            else:
                self.booster = model
                self.booster.best_iteration = best
                report["note"] = f"early-stopped at {best} trees on a {n - n_val}/{n_val} split"
        self.report = report
        return dict(report)

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("Predictor.predict before fit/load")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError("X must be 2-D (n, k)")
        return np.asarray(self.booster.predict(X, num_iteration=self.report.get("n_trees")), dtype=np.float64)

    def save(self, path: str | Path) -> None:
        """Model text at ``path`` and a JSON sidecar ``path + '.json'`` (kwargs + fit report)."""
        if self.booster is None:
            raise RuntimeError("Predictor.save before fit")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self.booster.save_model(str(tmp))
        tmp.replace(path)
        side = _sidecar(path)
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps({"kwargs": self.kwargs, "report": self.report}, indent=2))
        tmp.replace(side)

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        path = Path(path)
        meta = json.loads(_sidecar(path).read_text())
        pred = cls(**meta["kwargs"])
        pred.booster = lgb.Booster(model_file=str(path))
        pred.report = meta["report"]
        return pred


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, k) and y (n,), got {X.shape} and {y.shape}")
    if X.shape[0] < 2:
        raise ValueError("need at least 2 rows to fit")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite")
    return X, y


def _errors(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Mean absolute and root-mean-square error of predictions ``p`` for ``y``."""
    d = np.asarray(p, dtype=np.float64) - y
    return {"mae": float(np.mean(np.abs(d))), "rmse": float(np.sqrt(np.mean(d * d)))}


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # undefined for a constant vector
    r = float(spearmanr(a, b)[0])
    return None if math.isnan(r) else r
