"""Replay mixture-search strategies on recorded (mixture -> loss) pairs: CLIMB against RegMix and random search.

    .venv/bin/python benchmarks/search_replay.py [--mixtures CSV] [--losses CSV] [--budget 48 112]
                                                 [--seeds 10] [--strategies climb regmix random] [--threads 1]

Data: ../shared/data/regmix (from the repository root): ``train_mixture_1m.csv`` (512 mixtures over 17 Pile
domains) and ``train_pile_loss_1m.csv`` (validation losses on 13 Pile domains of a 1M model trained on each
mixture), joined on ``index``. The pool is the 512 recorded mixtures; a trial returns the recorded loss of the
mixture it picks, so a strategy is scored with no training at all. Every loss column is a target (lower is
better). Regret of a search = true loss of its final pick (the best measured) minus the pool's best loss.

Goal: CLIMB's mean regret at 48 trials <= 0.010 (random search at 112 trials is about 0.025). The last line is
``regret@B climb=... regmix=... random=...`` for B = 48 (or the first budget when 48 is not asked for).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from climb_hpc.search.strategies import STRATEGIES  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "regmix"


def read_csv(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(column names without ``index``, index column, values)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], np.array(rows[1:], dtype=np.float64)
    j = head.index("index")
    cols = [c for i, c in enumerate(head) if i != j]
    return cols, body[:, j].astype(np.int64), np.delete(body, j, axis=1)


def load(mixtures: Path, losses: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pool weights (n, k), losses (n, t) aligned on ``index``, short target names."""
    _, mi, w = read_csv(mixtures)
    names, li, loss = read_csv(losses)
    common = np.intersect1d(mi, li)
    w = w[_positions(mi, common)]
    loss = loss[_positions(li, common)]
    short = [n.replace("metric/the_pile_", "").replace("_val_loss", "") for n in names]
    return w, loss, short


def _positions(index: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    where = {int(v): i for i, v in enumerate(index)}
    return np.array([where[int(v)] for v in wanted], dtype=np.int64)


def replay(strategy: str, pool: np.ndarray, y: np.ndarray, budget: int, seed: int, threads: int) -> tuple[float, int]:
    """(regret of the final pick, number of trials run) for one target column ``y``."""
    calls: list[int] = []

    def evaluate(indices: list[int]) -> list[float]:
        calls.extend(indices)
        return [float(y[i]) for i in indices]

    kwargs: dict = {"seed": seed, "direction": "lower"}
    if strategy in ("climb", "regmix"):
        kwargs["predictor_kwargs"] = {"num_threads": threads}
    res = STRATEGIES[strategy](pool, evaluate, budget, **kwargs)
    return float(res.best_value - y.min()), len(calls)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixtures", type=Path, default=DATA / "train_mixture_1m.csv")
    ap.add_argument("--losses", type=Path, default=DATA / "train_pile_loss_1m.csv")
    ap.add_argument("--budget", type=int, nargs="+", default=[48, 112])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--strategies", nargs="+", default=["climb", "regmix", "random"], choices=sorted(STRATEGIES))
    ap.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for p in (args.mixtures, args.losses):
        if not p.is_file():
            print(f"search_replay: data file not found: {p} (expected the regmix CSVs under ../shared/data/regmix; "
                  "pass --mixtures/--losses)", file=sys.stderr)
            return 2
    pool, losses, targets = load(args.mixtures, args.losses)
    print(f"pool: {pool.shape[0]} mixtures x {pool.shape[1]} domains; {len(targets)} targets; "
          f"budgets {args.budget}; seeds {args.seeds}; strategies {args.strategies}")
    regret: dict[tuple[str, int], np.ndarray] = {}
    t0 = time.perf_counter()
    for budget in args.budget:
        for s in args.strategies:
            r = np.zeros((len(targets), args.seeds))
            for t in range(len(targets)):
                for seed in range(args.seeds):
                    r[t, seed], n_run = replay(s, pool, losses[:, t], budget, seed, args.threads)
                    assert n_run == budget, f"{s} ran {n_run} trials for a budget of {budget}"
            regret[s, budget] = r
            print(f"  {s:>7} @ {budget:>4}: mean regret {r.mean():.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    print_tables(regret, targets, args)
    b = 48 if 48 in args.budget else args.budget[0]
    print(f"regret@{b} " + " ".join(f"{s}={regret[s, b].mean():.4f}" for s in args.strategies))
    return 0


def print_tables(regret: dict[tuple[str, int], np.ndarray], targets: list[str], args: argparse.Namespace) -> None:
    cols = [(s, b) for b in args.budget for s in args.strategies]
    head = [f"{s}@{b}" for s, b in cols]
    width = max(10, *(len(h) for h in head)) + 1
    name_w = max(len(t) for t in targets + ["MEAN (sd over seeds)"])
    print("\nmean regret over seeds, per target (lower is better):")
    print(f"{'target':<{name_w}}" + "".join(f"{h:>{width}}" for h in head))
    for i, t in enumerate(targets):
        print(f"{t:<{name_w}}" + "".join(f"{regret[c][i].mean():>{width}.4f}" for c in cols))
    print(f"{'MEAN':<{name_w}}" + "".join(f"{regret[c].mean():>{width}.4f}" for c in cols))
    sd = [f"{regret[c].mean(axis=0).std(ddof=1) if args.seeds > 1 else 0.0:.4f}" for c in cols]
    print(f"{'sd of seed means':<{name_w}}" + "".join(f"{x:>{width}}" for x in sd))
    print()


if __name__ == "__main__":
    sys.exit(main())
