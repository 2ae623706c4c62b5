"""The search's answer (``search.final``): its best measured trial, or the argmax of a predictor fit on every trial.

``best_measured`` trusts one noisy measurement; ``predictor`` trusts a LightGBM fit on all of them and may pick a
mixture no trial ran. The predictor regresses ``sign * value`` (lower is better, as in the strategies), is scored
on the pool and on a fresh seeded sample (``search.final_candidates``), and its argmax is the pick; ties go to
the pool, then to a measured row (a measured candidate is as good a guess and is known). The search stage
records both picks in ``result.json``; the replay benchmark scores both (``benchmarks/search_replay.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from climb_hpc.search.predictor import Predictor

CHOICES = ("predictor", "best_measured")
#: rows of the fresh sample drawn and scored at a time (fixed: the sample depends on it, and memory stays bounded)
CHUNK = 16384


def check_choice(choice: str) -> str:
    if choice not in CHOICES:
        raise ValueError(f"search.final={choice!r}: choose {' or '.join(CHOICES)}")
    return choice


def sign_of(direction: str) -> float:
    if direction not in ("lower", "higher"):
        raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")
    return 1.0 if direction == "lower" else -1.0


def fit_final(X: np.ndarray, values: np.ndarray, direction: str, seed: int,
              predictor_kwargs: dict[str, Any] | None = None) -> tuple[Predictor, dict[str, Any]]:
    """The final predictor: fit on every measured row, on ``sign * value``; (predictor, its fit report with the
    held-out Spearman, MAE and RMSE)."""
    from climb_hpc.search.predictor import Predictor

    pred = Predictor(**{"seed": seed, **(predictor_kwargs or {})})
    report = pred.fit(X, sign_of(direction) * np.asarray(values, dtype=np.float64))
    return pred, report


@dataclass(frozen=True)
class Pick:
    """The predictor's argmax: ``pool_index`` set for a pool row, else ``sample_index`` into the fresh sample."""

    weights: np.ndarray
    predicted: float  # in the caller's units (not signed)
    pool_index: int | None
    sample_index: int | None


def predictor_argmax(pred: Predictor, direction: str, pool: np.ndarray, measured: np.ndarray,
                     fresh: Iterable[np.ndarray] = ()) -> Pick:
    """The best predicted row of ``pool`` (ties: measured rows first, then the lowest index) or of the
    ``fresh`` batches (taken only when strictly better predicted than the pool's best)."""
    sign = sign_of(direction)
    score = pred.predict(pool)
    i = int(np.lexsort((np.arange(len(pool)), ~np.asarray(measured, dtype=bool), score))[0])
    best = Pick(pool[i].copy(), float(sign * score[i]), i, None)
    best_score, offset = float(score[i]), 0
    for batch in fresh:
        if len(batch):
            s = pred.predict(batch)
            j = int(np.argmin(s))
            if s[j] < best_score:
                best, best_score = Pick(batch[j].copy(), float(sign * s[j]), None, offset + j), float(s[j])
        offset += len(batch)
    return best


NO_PREDICTOR = "the final predictor could not be fit (fewer than 2 measured trials): the best measured instead"


def final_answer(result: Mapping[str, Any], choice: str | None = None) -> dict[str, Any]:
    """The answer of a search ``result.json`` under ``search.final=choice``: ``{"choice", "weights"}`` (+ a
    ``note`` when the predictor's pick was asked for but there is none). ``choice=None`` takes the answer the
    search recorded; a result.json written before ``search.final`` existed answers with its best measured."""
    recorded = result.get("final") or None
    if choice is None:
        if recorded:
            return dict(recorded)
        choice = "best_measured"
    check_choice(choice)
    if recorded and recorded.get("choice") == choice:
        return dict(recorded)
    pick = result.get("predictor_pick")
    if choice == "predictor" and pick:
        return {"choice": "predictor", "weights": pick["weights"]}
    best = result.get("best")
    if not best:
        raise ValueError("the search measured no trial successfully: it has no answer")
    return {"choice": "best_measured", "weights": best["weights"], **({"note": NO_PREDICTOR} if choice == "predictor" else {})}
