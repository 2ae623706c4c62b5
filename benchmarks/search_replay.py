"""Replay mixture-search strategies on recorded (mixture -> loss) pairs: CLIMB and climb_plus against RegMix and
random search.

    .venv/bin/python benchmarks/search_replay.py [--mixtures CSV] [--losses CSV] [--budget 16 28 48 112]
                                                 [--seeds 10] [--first-seed 0]
                                                 [--strategies climb climb_plus regmix random]
                                                 [--final best_measured predictor] [--threads 1]

Data: ../shared/data/regmix (from the repository root): ``train_mixture_1m.csv`` (512 mixtures over 17 Pile
domains) and ``train_pile_loss_1m.csv`` (validation losses on 13 Pile domains of a 1M model trained on each
mixture), joined on ``index``. The pool is the 512 recorded mixtures; a trial returns the recorded loss of the
mixture it picks, so a strategy is scored with no training at all. Every loss column is a target (lower is
better). Regret of a search = true loss of its final pick minus the pool's best loss.

The final pick (``--final``, ``search.final`` in a run; one search is scored under each choice asked):
``best_measured`` is the lowest measured loss; ``predictor`` is the argmax of a predictor refit on all of the
search's trials (``climb_hpc.search.final``). A run scores the predictor on the pool and on a fresh sample of
``search.final_candidates`` mixtures, but here the true loss is known only for the 512 recorded mixtures, so
the predictor's argmax is taken over the whole replay pool (measured rows included). Random search is scored
under ``predictor`` too, with the same refit on its trials: a run with ``search.strategy=random`` does exactly
that, and it separates what the final predictor adds from what the strategy's choice of trials adds.

Goals: CLIMB's mean regret at 48 trials <= 0.010 (random search at 112 trials is about 0.025); climb_plus at 28
trials <= CLIMB's at 48, and no worse than CLIMB at 48 and 112. climb_plus was tuned on seeds 100-119
(``--first-seed 100 --seeds 20``); the report uses 0-9. The last line is
``regret@B climb=... climb_plus=... regmix=... random=... final=<choice>`` for B = 48 (or the first budget when 48 is not asked
for), one such line per final choice, in the order given (the last line is the last choice).
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

from climb_hpc.search.final import CHOICES, fit_final, predictor_argmax  # noqa: E402
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


def replay(strategy: str, pool: np.ndarray, y: np.ndarray, budget: int, seed: int, threads: int,
           finals: tuple[str, ...] = ("best_measured",)) -> tuple[dict[str, float], int]:
    """({final choice: regret of its pick}, number of trials run) for one target column ``y``."""
    calls: list[int] = []

    def evaluate(indices: list[int]) -> list[float]:
        calls.extend(indices)
        return [float(y[i]) for i in indices]

    kwargs: dict = {"seed": seed, "direction": "lower"}
    if strategy in ("climb", "climb_plus", "regmix"):
        kwargs["predictor_kwargs"] = {"num_threads": threads}
    res = STRATEGIES[strategy](pool, evaluate, budget, **kwargs)
    regret = {}
    for final in finals:
        if final == "best_measured":
            regret[final] = float(res.best_value - y.min())
        else:
            pred, _ = fit_final(pool[res.indices], np.asarray(res.values), "lower", seed, {"num_threads": threads})
            measured = np.zeros(len(pool), dtype=bool)
            measured[res.indices] = True
            regret[final] = float(y[predictor_argmax(pred, "lower", pool, measured).pool_index] - y.min())
    return regret, len(calls)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixtures", type=Path, default=DATA / "train_mixture_1m.csv")
    ap.add_argument("--losses", type=Path, default=DATA / "train_pile_loss_1m.csv")
    ap.add_argument("--budget", type=int, nargs="+", default=[16, 28, 48, 112])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (tune on "
                    "seeds disjoint from the reported 0-9)")
    ap.add_argument("--strategies", nargs="+", default=["climb", "climb_plus", "regmix", "random"],
                    choices=sorted(STRATEGIES))
    ap.add_argument("--final", nargs="+", default=["best_measured"], choices=CHOICES,
                    help="the final pick(s) to score: best_measured (the best measured trial), predictor (the final "
                    "predictor's argmax over the pool)")
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
    finals = tuple(dict.fromkeys(args.final))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"pool: {pool.shape[0]} mixtures x {pool.shape[1]} domains; {len(targets)} targets; "
          f"budgets {args.budget}; seeds {seeds.start}-{seeds.stop - 1}; strategies {args.strategies}; "
          f"final {list(finals)}")
    regret: dict[tuple[str, int, str], np.ndarray] = {}
    t0 = time.perf_counter()
    for budget in args.budget:
        for s in args.strategies:
            r = {f: np.zeros((len(targets), args.seeds)) for f in finals}
            for t in range(len(targets)):
                for k, seed in enumerate(seeds):
                    got, n_run = replay(s, pool, losses[:, t], budget, seed, args.threads, finals)
                    assert n_run == budget, f"{s} ran {n_run} trials for a budget of {budget}"
                    for f in finals:
                        r[f][t, k] = got[f]
            for f in finals:
                regret[s, budget, f] = r[f]
            means = "  ".join(f"{f} {r[f].mean():.4f}" for f in finals)
            print(f"  {s:>10} @ {budget:>4}: mean regret {means}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    for f in finals:
        print_tables({(s, b): v for (s, b, g), v in regret.items() if g == f}, targets, args, f"final={f}")
    print_summary(regret, args, finals)
    b = 48 if 48 in args.budget else args.budget[0]
    for f in finals:
        print(f"regret@{b} " + " ".join(f"{s}={regret[s, b, f].mean():.4f}" for s in args.strategies) + f" final={f}")
    return 0


def _seed_sd(r: np.ndarray) -> float:
    """The sd over seeds of the mean regret over targets (0 with one seed)."""
    return float(r.mean(axis=0).std(ddof=1)) if r.shape[1] > 1 else 0.0


def print_summary(regret: dict[tuple[str, int, str], np.ndarray], args: argparse.Namespace,
                  finals: tuple[str, ...]) -> None:
    """Mean regret (sd of seed means) for each strategy x budget x final choice."""
    print("mean regret over targets and seeds (sd of seed means), per final choice:")
    head = ["strategy", "budget", *finals]
    print("".join(f"{h:>22}" for h in head))
    for b in args.budget:
        for s in args.strategies:
            cells = [f"{regret[s, b, f].mean():.4f} ({_seed_sd(regret[s, b, f]):.4f})" for f in finals]
            print("".join(f"{c:>22}" for c in [s, str(b), *cells]))
    print()


def print_tables(regret: dict[tuple[str, int], np.ndarray], targets: list[str], args: argparse.Namespace,
                 title: str = "") -> None:
    cols = [(s, b) for b in args.budget for s in args.strategies]
    head = [f"{s}@{b}" for s, b in cols]
    width = max(10, *(len(h) for h in head)) + 1
    name_w = max(len(t) for t in targets + ["MEAN (sd over seeds)"])
    print(f"\nmean regret over seeds, per target (lower is better){', ' + title if title else ''}:")
    print(f"{'target':<{name_w}}" + "".join(f"{h:>{width}}" for h in head))
    for i, t in enumerate(targets):
        print(f"{t:<{name_w}}" + "".join(f"{regret[c][i].mean():>{width}.4f}" for c in cols))
    print(f"{'MEAN':<{name_w}}" + "".join(f"{regret[c].mean():>{width}.4f}" for c in cols))
    sd = [f"{_seed_sd(regret[c]):.4f}" for c in cols]
    print(f"{'sd of seed means':<{name_w}}" + "".join(f"{x:>{width}}" for x in sd))
    print()


if __name__ == "__main__":
    sys.exit(main())
