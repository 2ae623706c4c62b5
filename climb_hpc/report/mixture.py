"""Sections "Mixture search" (rounds, predicted vs measured, tried mixtures, best vs references; the plots of
``climb_hpc.report.search_plots``) and "Final weights" (``mixture.json`` against the natural token shares).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from climb_hpc.report import search_plots as sp
from climb_hpc.report.common import Ctx, finite
from climb_hpc.report.page import Section, fmt


def weights_text(weights: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``0: 0.357, 2: 0.217`` (non-zero weights, by cluster id)."""
    items = sorted(((int(c), float(w)) for c, w in (weights or {}).items() if w), key=lambda t: t[0])
    return ", ".join(f"{c}: {w:.{digits}f}" for c, w in items) or "(empty)"


def _delta(v: Any, ref: Any) -> Any:
    return float(v) - float(ref) if finite(v) and finite(ref) else None


def _search_pngs(result: dict[str, Any], pool: np.ndarray | None) -> list[tuple[str, bytes]]:
    """The three search plots, rendered by ``search_plots`` into a temporary folder and read back."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        paths = [sp.plot_final_weights(result, t / sp.FILES[0]), sp.plot_predicted_vs_measured(result, t / sp.FILES[1])]
        try:
            paths.append(sp.plot_mixture_map(result, pool, t / sp.FILES[2]))
        except ValueError:  # a pool that does not match the clusters: map the tried mixtures alone
            paths.append(sp.plot_mixture_map(result, None, t / sp.FILES[2]))
        return [(p.name, p.read_bytes()) for p in paths]


def final_predictor_text(report: Mapping[str, Any] | None, pick: Mapping[str, Any]) -> str:
    """One sentence on the final predictor: rows, held-out error, what its argmax was taken over."""
    if not report:
        return "No final predictor: fewer than 2 trials were measured."
    held = (f"held-out Spearman {fmt(report.get('spearman'))}, MAE {fmt(report.get('mae'))}, RMSE "
            f"{fmt(report.get('rmse'))} on {report.get('n_holdout')} held-out trials"
            if report.get("n_holdout") else "no held-out split (too few trials), so no held-out error")
    over = f" Its argmax was taken over {fmt(pick.get('candidates'))} candidates (the pool and a fresh sample)." \
        if pick.get("candidates") else ""
    return f"Final predictor, refit on {report.get('n_rows')} measured trials: {held}.{over}"


def search_section(ctx: Ctx) -> Section:
    sec = Section("search", "Mixture search")
    search = ctx.outputs("search")
    if not ctx.has(search.result):
        ctx.missing(sec, "search", search.result)
        return sec
    r = ctx.json(search.result)
    trials = [t for t in (r.get("trials") or []) if isinstance(t, dict)]
    direction = sp._direction(r)
    label = sp._target_label(r)
    best, pick = r.get("best") or {}, r.get("predicted_best") or {}
    final_pick, final = r.get("predictor_pick") or {}, sp._final_choice(r)
    refs = sp._references(r)
    answer = {"best_measured": "the best measured mixture",
              "predictor": "the final predictor's pick (search.final=predictor)"}.get(final, final)
    sec.p(f"{r.get('strategy', '?')} search over {len(r.get('clusters') or [])} clusters: {len(trials)} proxy trials "
          f"(budget {r.get('budget')}) drawn from a pool of {r.get('pool_size')} candidate mixtures, scored on "
          f"{label} ({direction} is better). The answer is {answer}."
          + (f" ({(r.get('final') or {}).get('note')}.)" if (r.get("final") or {}).get("note") else ""))
    rows = [["best measured", best.get("round"), best.get("trial"), best.get("value"), 0.0 if best else None,
             weights_text(best.get("weights"))]]
    if pick:
        rows.append(["predictor's pick", pick.get("round"), pick.get("trial"), pick.get("value"),
                     _delta(pick.get("value"), best.get("value")), weights_text(pick.get("weights"))])
    if final_pick:
        where = "measured" if final_pick.get("measured") else f"not measured, from the {final_pick.get('source')}"
        rows.append([f"final predictor's pick (predicted {fmt(final_pick.get('predicted'))}; {where})",
                     final_pick.get("round"), final_pick.get("trial"), final_pick.get("value"),
                     _delta(final_pick.get("value"), best.get("value")), weights_text(final_pick.get("weights"))])
    for name, ref in sorted(refs.items()):
        rows.append([f"{name} (reference)", "", "", ref.get("value"), _delta(ref.get("value"), best.get("value")),
                     weights_text(ref.get("weights"))])
    sec.h3("Best mixture and references")
    highlight = [final == "best_measured"] + ([False] if pick else []) + ([final == "predictor"] if final_pick else [])
    sec.table(["mixture", "round", "trial", label, "minus best", "weights"], rows, highlight=highlight, digits=5)
    sec.p(final_predictor_text(r.get("final_predictor"), final_pick))
    beaten = [n for n, ref in refs.items() if finite(ref.get("value")) and finite(best.get("value"))
              and ((best["value"] < ref["value"]) if direction == "lower" else (best["value"] > ref["value"]))]
    if refs:
        sec.p(f"The best measured mixture beats {len(beaten)} of {len(refs)} references"
              + (f" ({', '.join(sorted(beaten))})." if beaten else "."))

    sec.h3("Rounds")
    reports = {rep.get("round"): rep for rep in (r.get("rounds") or []) if isinstance(rep, dict)}
    round_rows = []
    for k in sorted({int(t.get("round", 0)) for t in trials}):
        ts = [t for t in trials if int(t.get("round", 0)) == k]
        vals = [float(t["value"]) for t in ts if finite(t.get("value"))]
        errs = [abs(float(t["predicted"]) - float(t["value"])) for t in ts
                if finite(t.get("predicted")) and finite(t.get("value"))]
        rep = reports.get(k, {})
        top = (min(vals) if direction == "lower" else max(vals)) if vals else None
        round_rows.append([k, len(ts), top, float(np.mean(vals)) if vals else None,
                           float(np.mean(errs)) if errs else None, rep.get("spearman"), rep.get("note") or ""])
    sec.table(["round", "trials", f"best {label}", "mean", "mean |predicted - measured|", "held-out Spearman",
               "predictor note"], round_rows, digits=5)

    pool = None
    if ctx.has(search.pool):
        try:
            pool = np.load(search.pool)
        except Exception as e:
            sec.note(f"{ctx.rel(search.pool)}: unreadable ({type(e).__name__}: {e}); the map shows the tried mixtures only",
                     warn=True)
    captions = {
        sp.FILES[0]: "The best measured mixture's and the final predictor's pick's weight per cluster next to the "
                     "natural token shares; the title names the answer (search.final).",
        sp.FILES[1]: "The predictor's value for each trial it picked (made before the trial ran) against the "
                     "measured value; on the dashed line the prediction was exact.",
        sp.FILES[2]: "Every candidate of the pool (grey) and the tried mixtures (coloured by score, marker by round) "
                     "in the first two principal components of the weight vectors.",
    }
    for name, png in _search_pngs(r, pool):
        ctx.save_png(name, png)
        sec.image(png, name.removesuffix(".png").replace("_", " "), captions[name])

    sec.h3(f"Tried mixtures ({len(trials)})")
    key = (best.get("round"), best.get("trial"))
    trows = [[t.get("round"), t.get("trial"), t.get("pool_index"), t.get("predicted"), t.get("value"),
              weights_text(t.get("weights"))] for t in trials]
    hl = [(t.get("round"), t.get("trial")) == key for t in trials]
    sec.table(["round", "trial", "pool index", "predicted", "measured", "weights"], trows, highlight=hl, digits=5,
              limit=30, what="tried mixtures")
    return sec


# ---------------------------------------------------------------- final weights


def natural_shares(ctx: Ctx) -> dict[int, float] | None:
    """Each cluster's share of the tokenized corpus (``tokenize/summary.json``), None when not tokenized."""
    path = ctx.outputs("tokenize").summary
    if not ctx.has(path):
        return None
    per = ctx.json(path).get("clusters") or {}
    total = sum(float(v.get("tokens", 0)) for v in per.values())
    return {int(c): float(v.get("tokens", 0)) / total for c, v in per.items()} if total > 0 else None


def _weights_figure(ids: list[int], w: list[float], nat: list[float] | None, source: str) -> Figure:
    k = len(ids)
    fig = Figure(figsize=(max(7.0, min(20.0, 0.3 * k)), 4.0))
    ax = fig.add_subplot()
    x = np.arange(k)
    width = 0.4 if nat is not None else 0.7
    off = width / 2 if nat is not None else 0.0
    ax.bar(x - off, w, width, color="tab:orange", edgecolor="0.3", linewidth=0.4, label=f"mixture.json ({source})")
    if nat is not None:
        ax.bar(x + off, nat, width, color="tab:blue", alpha=0.75, edgecolor="0.3", linewidth=0.4,
               label="natural token shares")
    ax.axhline(1.0 / k, color="0.4", ls="--", lw=0.9, label=f"uniform (1/{k})")
    step = max(1, int(np.ceil(k / 40)))
    ax.set_xticks(x[::step])
    ax.set_xticklabels([str(c) for c in ids][::step], fontsize=8)
    ax.set_xlabel("cluster")
    ax.set_ylabel("weight (share of the tokens)")
    ax.set_ylim(0, max([*w, *(nat or []), 1.0 / k]) * 1.3)
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title("final mixture weights vs the natural token shares", fontsize=10)
    return fig


def weights_section(ctx: Ctx) -> Section:
    sec = Section("weights", "Final weights")
    out = ctx.outputs("mix")
    if not ctx.has(out.mixture):
        ctx.missing(sec, "mix", out.mixture)
        if ctx.has(ctx.outputs("search").result):
            sec.p("The search's answer is in the search section above.")
        return sec
    m = ctx.json(out.mixture)
    weights = {int(c): float(v) for c, v in (m.get("weights") or {}).items()}
    nat = natural_shares(ctx)
    ids = sorted(set(weights) | set(nat or {}))
    if not ids:
        sec.note(f"{ctx.rel(out.mixture)} holds no weights", warn=True)
        return sec
    w = [weights.get(c, 0.0) for c in ids]
    n = [nat.get(c, 0.0) for c in ids] if nat is not None else None
    src = str(m.get("source", "?"))
    mixed = None
    if ctx.has(out.summary):
        mixed = ctx.json(out.summary)
    where = {"search": "the search (its answer, search.final: see the search section)",
             "config": "the config (mix.weights)"}.get(src, src)
    if mixed and mixed.get("shards"):
        done = (f"{fmt(mixed.get('tokens'))} tokens in {fmt(mixed.get('docs'))} whole documents written to "
                f"{mixed['shards']} Megatron shards, {ctx.rel(out.shards_megatron.parent)}")
    elif mixed:
        done = f"a blend of {fmt(mixed.get('stores'))} stores, {ctx.rel(out.megatron)} (nothing copied)"
    else:
        done = f"stage mix not finished ({ctx.rel(out.summary)} not found)"
    sec.p(f"Weights from {where}. Mixed dataset: {fmt(m.get('tokens'))} tokens asked; {done}.")
    ctx.figure(sec, _weights_figure(ids, w, n, src), "final_mixture.png", "final mixture weights per cluster",
               "The weight of each cluster in mixture.json (orange) beside its natural share of the tokenized corpus "
               "(blue); the dashed line is the uniform weight.")
    per = m.get("clusters") or {}
    rows = []
    for c, wc in zip(ids, w, strict=True):
        info = per.get(str(c)) or {}
        nc = nat.get(c) if nat is not None else None
        rows.append([c, wc, nc, wc / nc if nc else None, info.get("tokens_target"), info.get("tokens"),
                     info.get("docs"), info.get("passes", info.get("epochs"))])
    sec.table(["cluster", "weight", "natural share", "weight / natural", "tokens asked", "tokens written", "docs",
               "passes over the cluster"], rows, digits=4, limit=40, what="clusters")
    return sec
