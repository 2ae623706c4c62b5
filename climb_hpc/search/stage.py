"""Stage ``search``: the CLIMB mixture search (or a baseline) over the final clusters.

A driver stage: it runs in the controller and hands each round's batch of mixtures to
``climb_hpc.proxy.run_mixtures`` as one job array (group ``<strategy>_r<k>``). The candidate pool is
drawn once from the seed (Dirichlet around the clusters' token shares, ``search.sampler``), and the
strategy (``search.strategy``: climb | climb_plus | regmix | random, ``climb_hpc/search/strategies.py``) picks
from it. Every choice depends only on the seed and the measured values, so a preempted or killed
search resumes by replaying: finished rounds answer at once from their groups' results, the round in
flight re-attaches to its array, and tried configurations are never run again.

The answer (``search.final``, ``climb_hpc/search/final.py``): ``best_measured``, the best measured trial, or
``predictor``, the argmax of the final predictor (refit on every measured trial) over the pool and a fresh
seeded sample of ``search.final_candidates`` mixtures drawn like the pool. Both picks are always computed and
recorded; the choice depends only on the seed and the measured values, so a resumed search makes the same one.
``search.final`` is read again by the mix stage (``climb_hpc.pipeline.CONFIG_READERS``): changing it after the
search resets mix and what follows, not the proxy trials.

Outputs under ``search/``: ``pool.npy`` (the candidates), ``result.json`` (every trial: round,
weights, measured and predicted value; each round's predictor report with its held-out Spearman; ``best``,
the best measured mixture; ``predicted_best``, the strategy's last predicted best (measured); ``predictor_pick``,
the final predictor's argmax (weights, predicted value, whether it was measured); ``final_predictor``, that
predictor's fit report with its held-out Spearman, MAE and RMSE; ``final``, the answer: choice and weights;
the reference mixtures), ``predictor_r<k>.txt`` (the predictor that chose round k), ``predictor.txt`` (the final
predictor); every predictor is fit on ``value`` when lower is better, ``-value`` when higher. The plots go to
``report/`` (final weights, predicted vs measured per round, a 2-D map of the tried mixtures).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from climb_hpc.config import ConfigError, section
from climb_hpc.estimate import Inputs, Ledger, Work, dims_of, dims_text, matmul_params, train_flops
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import DriverStage, Resources

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir
    from climb_hpc.stage import RunStageFn

NAME = "search"


@dataclass(frozen=True)
class Outputs:
    """What the search writes under ``<run_dir>/search/`` (described above); its trials are ``proxy/<group>``."""

    dir: Path

    @property
    def pool(self) -> Path:
        return self.dir / "pool.npy"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    @property
    def predictor(self) -> Path:
        return self.dir / "predictor.txt"

    def round_predictor(self, r: int) -> Path:
        return self.dir / f"predictor_r{r}.txt"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def _s(cfg: DictConfig) -> DictConfig:
    return section(cfg, "search")


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) or OmegaConf.is_list(x) else x


def token_shares(rd: RunDir, clusters: list[int]) -> np.ndarray:
    """Each cluster's share of the tokenized corpus: the centre of the candidate sampler."""
    from climb_hpc.corpus.tokenize import summary_path

    per = read_json(summary_path(rd))["clusters"]
    t = np.array([per[str(c)]["tokens"] for c in clusters], dtype=np.float64)
    return t / t.sum()


def candidate_pool(cfg: DictConfig, rd: RunDir, clusters: list[int]) -> np.ndarray:
    from climb_hpc.search.candidates import sample_candidates

    s = _s(cfg)
    rng = np.random.default_rng([_seed(cfg), zlib.crc32(b"search-pool")])
    return sample_candidates(token_shares(rd, clusters), int(s.pool_size), rng, **(_plain(s.get("sampler")) or {}))


def fresh_candidates(cfg: DictConfig, shares: np.ndarray) -> Iterator[np.ndarray]:
    """``search.final_candidates`` mixtures drawn like the pool (``search.sampler``, not de-duplicated) from
    their own seed stream, in batches of ``final.CHUNK`` rows: what the final predictor scores."""
    from climb_hpc.search.candidates import sample_batch
    from climb_hpc.search.final import CHUNK

    s = _s(cfg)
    rng = np.random.default_rng([_seed(cfg), zlib.crc32(b"search-final")])
    left = int(s.final_candidates)
    while left > 0:
        n = min(CHUNK, left)
        yield sample_batch(shares, n, rng, **(_plain(s.get("sampler")) or {}))
        left -= n


def _seed(cfg: DictConfig) -> int:
    seed = _s(cfg).get("seed")
    return int(cfg.seed if seed is None else seed)


def _mixture(clusters: list[int], w: np.ndarray) -> dict[int, float]:
    return {c: float(x) for c, x in zip(clusters, w, strict=True)}


def references(cfg: DictConfig, rd: RunDir, clusters: list[int]) -> dict[str, dict[int, float]]:
    """The reference mixtures measured next to the search (outside its budget)."""
    known = {"uniform": np.full(len(clusters), 1 / len(clusters)), "natural": token_shares(rd, clusters)}
    names = list(_plain(_s(cfg).get("references")) or [])
    bad = sorted(set(names) - set(known))
    if bad:
        raise ConfigError(f"search.references {bad}: choose among {sorted(known)}")
    return {n: _mixture(clusters, known[n]) for n in names}


def drive(cfg: DictConfig, rd: RunDir, run_stage: RunStageFn) -> None:
    from climb_hpc.corpus.tokenize import cluster_ids
    from climb_hpc.proxy import run_mixtures
    from climb_hpc.proxy.targets import DIRECTION, check_target
    from climb_hpc.search.final import CHOICES
    from climb_hpc.search.strategies import STRATEGIES

    s = _s(cfg)
    strategy = str(s.strategy)
    if strategy not in STRATEGIES:
        raise ConfigError(f"search.strategy={strategy!r}: choose {', '.join(STRATEGIES)}")
    if str(s.final) not in CHOICES:
        raise ConfigError(f"search.final={s.final!r}: choose {' or '.join(CHOICES)}")
    direction = DIRECTION[check_target(cfg.target)]
    clusters = cluster_ids(rd)
    if len(clusters) < 2:
        raise RuntimeError(f"search: {len(clusters)} cluster(s) with tokens; a mixture search needs at least 2")
    pool = candidate_pool(cfg, rd, clusters)
    out = outputs(rd)
    with atomic_path(out.pool) as tmp, open(tmp, "wb") as f:
        np.save(f, pool)
    trials: list[dict[str, Any]] = []

    def evaluate(indices: list[int]) -> list[float]:
        r = 1 + len({t["round"] for t in trials})
        group = f"{strategy}_r{r}"
        rows = run_mixtures(cfg, rd, run_stage, group, [_mixture(clusters, pool[i]) for i in indices])
        for i, row in zip(indices, rows, strict=True):
            trials.append({"round": r, "group": group, "trial": row["trial"], "pool_index": int(i),
                           "weights": row["weights"], "value": row["value"]})
        return [float(row["value"]) for row in rows]

    kwargs: dict[str, Any] = {"seed": _seed(cfg), "direction": direction}
    if strategy in ("climb", "climb_plus", "regmix"):
        kwargs["predictor_kwargs"] = {**(_plain(s.get("predictor")) or {})}
        kwargs["on_fit"] = lambda r, pred: pred.save(out.round_predictor(r))
    if strategy == "climb":
        kwargs["proportions"] = tuple(_plain(s.proportions))
        if s.get("top_n") is not None:
            kwargs["top_n"] = s.top_n
    if strategy == "climb_plus":
        kwargs.update(first_fraction=float(s.plus.first_fraction), rounds=int(s.plus.rounds))
    result = STRATEGIES[strategy](pool, evaluate, int(s.budget), **kwargs)

    refs = references(cfg, rd, clusters)
    ref_rows = run_mixtures(cfg, rd, run_stage, "references", list(refs.values())) if refs else []
    _write_result(cfg, rd, strategy, direction, clusters, pool, trials, result, refs, ref_rows)


def _write_result(cfg: DictConfig, rd: RunDir, strategy: str, direction: str, clusters: list[int], pool: np.ndarray,
                  trials: list[dict[str, Any]], result: Any, refs: dict[str, Any], ref_rows: list[dict]) -> None:
    from climb_hpc.corpus.tokenize import data_tokenizer
    from climb_hpc.search.final import final_answer

    predicted = {rep.get("round"): rep.get("predicted") or [] for rep in result.reports}
    for r in sorted({t["round"] for t in trials}):
        for k, t in enumerate(t for t in trials if t["round"] == r):
            t["predicted"] = predicted[r][k] if k < len(predicted.get(r, [])) else None
    by_index = {t["pool_index"]: t for t in trials}
    best = by_index[result.best_index] if result.best_index is not None else None
    pick = by_index.get(result.predicted_best_index) if result.predicted_best_index is not None else None
    ok = [t for t in trials if math.isfinite(t["value"])]
    final_report, predictor_pick = _final_predictor(cfg, rd, direction, clusters, pool, ok) if len(ok) >= 2 else (None, None)
    doc = {
        "strategy": strategy, "direction": direction, "target": _plain(cfg.target), "budget": int(_s(cfg).budget),
        "tokenizer": data_tokenizer(rd),
        "clusters": clusters, "token_shares": token_shares(rd, clusters).tolist(), "pool_size": len(pool),
        "trials": trials,
        "rounds": [{"round": rep.get("round"), **{k: v for k, v in rep.items() if k not in ("round", "predicted")}}
                   for rep in result.reports],
        "best": best, "predicted_best": pick, "predictor_pick": predictor_pick, "final_predictor": final_report,
        "references": {n: {"weights": row["weights"], "value": row["value"]}
                       for n, row in zip(refs, ref_rows, strict=True)},
    }
    doc["final"] = final_answer(doc, str(_s(cfg).final)) if best else None
    atomic_write_json(outputs(rd).result, doc)
    try:
        from climb_hpc.report.search_plots import search_plots

        search_plots(rd.path)
    except Exception as e:  # plots are for people; a broken plot must not lose the search
        print(f"search: plots failed ({type(e).__name__}: {e}); the result is in {outputs(rd).dir}", flush=True)
    line = f"search ({strategy}, {len(trials)} trials): best measured {direction}-is-better target {best['value']:.5f}"
    if predictor_pick:
        line += (f"; predictor's pick {predictor_pick['predicted']:.5f} predicted"
                 + (f", {predictor_pick['value']:.5f} measured" if predictor_pick["measured"] else " (not measured)"))
    for n, r in doc["references"].items():
        line += f"; {n} {r['value']:.5f}"
    print(line + f"; final: {doc['final']['choice']}", flush=True)


def _final_predictor(cfg: DictConfig, rd: RunDir, direction: str, clusters: list[int], pool: np.ndarray,
                     ok: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the final predictor on the measured trials ``ok`` (saved as ``predictor.txt``) and take its argmax over
    the pool and the fresh sample: (its fit report, the pick as recorded in result.json)."""
    from climb_hpc.search.final import fit_final, predictor_argmax

    idx = [t["pool_index"] for t in ok]
    pred, report = fit_final(pool[idx], np.array([t["value"] for t in ok]), direction, _seed(cfg),
                             _plain(_s(cfg).get("predictor")) or {})
    pred.save(outputs(rd).predictor)
    measured = np.zeros(len(pool), dtype=bool)
    measured[idx] = True
    p = predictor_argmax(pred, direction, pool, measured, fresh_candidates(cfg, token_shares(rd, clusters)))
    trial = next((t for t in ok if t["pool_index"] == p.pool_index), None) if p.pool_index is not None else None
    pick: dict[str, Any] = {
        "weights": trial["weights"] if trial else {str(c): w for c, w in _mixture(clusters, p.weights).items()},
        "predicted": p.predicted,
        "measured": trial is not None, "value": trial["value"] if trial else None,
        "round": trial["round"] if trial else None, "trial": trial["trial"] if trial else None,
        "pool_index": p.pool_index, "source": "pool" if p.pool_index is not None else "fresh sample",
        "candidates": len(pool) + int(_s(cfg).final_candidates)}
    return report, pick


def load_result(rd: RunDir) -> dict[str, Any]:
    doc = read_json(outputs(rd).result)
    if doc is None:
        raise FileNotFoundError(f"{outputs(rd).result} is missing: the search has not finished")
    return doc


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Proxy trials, each round one array (``proxy/<group>``): (training + evaluation) FLOP a trial x trials."""
    from climb_hpc.proxy.model import init_shape
    from climb_hpc.proxy.stage import ROOT as PROXY
    from climb_hpc.proxy.train import num_steps
    from climb_hpc.search.strategies import plus_rounds, split_budget

    s, p, t = cfg.search, cfg.proxy, cfg.target
    budget, strategy = int(led.use("search budget", int(s.budget), "search.budget", "trials")), str(s.strategy)
    if strategy == "climb":
        rounds = [m for m in split_budget(budget, [float(v) for v in s.proportions]) if m > 0]
        led.use("search rounds", rounds, "search.proportions (climb)", "trials")
    elif strategy == "climb_plus":
        rounds = plus_rounds(budget, float(s.plus.first_fraction), int(s.plus.rounds))
        led.use("search rounds", rounds, "search.plus (climb_plus)", "trials")
    else:
        rounds = [budget - 1, 1] if strategy == "regmix" else [budget]
        led.use("search rounds", rounds, f"search.strategy={strategy}", "trials")
    refs = len(list(s.get("references") or []))
    if refs:
        rounds.append(int(led.use("reference trials", refs, "search.references (outside the budget)", "trials")))
    shape, where = init_shape(p)  # proxy.init's config.json when set, else proxy.model
    dims = dims_of(shape, x.vocab)
    seq = int(p.seq_len)
    fpt = train_flops(dims, seq)
    led.use("proxy matmul params", matmul_params(dims), f"{where}: {dims_text(dims)}")
    trained = num_steps(p) * int(p.batch_size) * seq
    led.use("proxy tokens a trial", trained, "proxy.tokens, rounded up to whole steps of batch_size x seq_len")
    led.use("proxy FLOP a token", fpt, f"climb_hpc.estimate.train_flops_per_token at proxy.seq_len={seq}", "FLOP")
    # held-out docs: proxy.holdout_fraction of the corpus, at most target.max_tokens of them scored
    heldout = min(int(t.max_tokens), float(p.holdout_fraction) * x.tokens)
    kind = str(t.kind)
    if kind == "mc":
        files = max(1, len(t.files or []))
        evals = files * int(t.max_items) * float(cfg.plan.mc_tokens_per_item) + (heldout if t.cluster_losses else 0)
        src = "files x target.max_items x plan.mc_tokens_per_item (+ held-out cluster losses)"
    elif kind == "lm_eval":
        # tasks x items a task x the tokens of a question's choices (plan.mc_tokens_per_item: 4 choices x ~100);
        # target.limit null scores every doc: target.max_items stands in for a task's size
        named = None if OmegaConf.is_missing(t, "tasks") else t.tasks
        tasks = len(named) if named is not None and not isinstance(named, str) else 1
        items = int(t.limit) if t.limit is not None else int(t.max_items)
        evals = tasks * items * float(cfg.plan.mc_tokens_per_item) + (heldout if t.cluster_losses else 0)
        src = (f"{tasks} target.tasks x {'target.limit' if t.limit is not None else 'target.max_items (limit null)'}"
               " x plan.mc_tokens_per_item (+ held-out cluster losses)")
    else:
        extra = kind != "heldout" and t.cluster_losses
        evals = (heldout if kind == "heldout" else int(t.max_tokens)) + (heldout if extra else 0)
        src = ("min(target.max_tokens, proxy.holdout_fraction x corpus tokens)" if kind == "heldout" else
               "target.max_tokens" + (" + held-out cluster losses" if extra else ""))
    led.use("eval tokens a trial", evals, src)
    per_trial = fpt * trained + fpt / 3 * evals
    return Work("proxy training", rounds, flop=per_trial * sum(rounds), model=True, task_stage=f"{PROXY}/plan")


STAGE = DriverStage(name=NAME, drive=drive, resources=lambda cfg: Resources.from_config(cfg.proxy),
                    reads=lambda cfg: ("tokenize",), outputs=outputs, estimate=estimate)
