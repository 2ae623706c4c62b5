"""Plots of a mixture search: ``<run>/search/result.json`` + ``pool.npy`` -> three PNGs.

- ``final_weights.png``: the best measured mixture's and the final predictor's pick's weight per cluster next to
  the natural token shares (the title names the answer, ``search.final``);
- ``predicted_vs_measured.png``: the predictor's prediction (made before a trial ran) against its measured value;
- ``mixture_map.png``: a 2-D PCA of the candidate pool with the tried mixtures coloured by their score.

Figures are ``matplotlib.figure.Figure`` objects on the Agg backend (no pyplot, no global state); nothing is random.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

DPI = 110
FIGSIZE = (7.0, 4.5)
FILES = ("final_weights.png", "predicted_vs_measured.png", "mixture_map.png")
ROUND_MARKERS = ("o", "s", "^", "D", "v", "P", "<", ">", "h", "p")
REFERENCE_STYLE = {"uniform": ("X", "0.1"), "natural": ("P", "tab:blue")}
LABEL_OFFSETS = ((24, 26), (-80, -30), (28, -30), (-80, 22), (28, 30))  # best, then the references, in points
LABEL_BOX = {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8}


# ---------------------------------------------------------------- helpers

def _fmt(v: Any, digits: int = 4) -> str:
    """A value for a title: ``n/a`` for None / NaN."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{float(v):.{digits}f}"


def _direction(result: Mapping[str, Any]) -> str:
    d = str(result.get("direction") or "lower")
    return d if d in ("lower", "higher") else "lower"


def _target_label(result: Mapping[str, Any]) -> str:
    """A short axis label for the target, e.g. ``held-out loss``."""
    t = result.get("target") or {}
    kind = t.get("kind") if isinstance(t, Mapping) else None
    if kind == "heldout":
        return "held-out loss"
    if kind == "jsonl":
        name = Path(str(t.get("path"))).name if t.get("path") else ""
        return f"loss on {name}" if name else "JSONL loss"
    if kind == "mc":
        return "multiple-choice accuracy"
    return "target"


def _better(result: Mapping[str, Any]) -> str:
    return f"{_direction(result)} is better"


def _clusters(result: Mapping[str, Any]) -> list[Any]:
    cl = result.get("clusters")
    if cl:
        return list(cl)
    best = result.get("best") or {}
    return list((best.get("weights") or {}).keys())


def _weights_vector(weights: Mapping[str, Any] | None, clusters: Sequence[Any]) -> np.ndarray:
    """A ``{cluster: w}`` dict as a vector in ``clusters`` order (missing clusters -> 0)."""
    w = weights or {}
    return np.array([float(w.get(str(c), w.get(c, 0.0)) or 0.0) for c in clusters], dtype=float)


def _trials(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [t for t in (result.get("trials") or []) if isinstance(t, Mapping)]


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def _references(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    refs = result.get("references") or {}
    return {k: dict(v) for k, v in refs.items() if isinstance(v, Mapping)}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.35",
            bbox={"boxstyle": "round,pad=0.6", "fc": "0.96", "ec": "0.7"})
    ax.set_xticks([])
    ax.set_yticks([])


def _round_marker(rounds: Sequence[int], r: int) -> str:
    return ROUND_MARKERS[sorted(set(rounds)).index(r) % len(ROUND_MARKERS)]


def _label_offset(i: int, pt: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int]:
    """Offset (points) of the i-th annotation, turned inwards when ``pt`` lies near an edge of [lo, hi]."""
    dx, dy = LABEL_OFFSETS[i % len(LABEL_OFFSETS)]
    span = hi - lo
    frac = np.where(span > 1e-12, (pt - lo) / np.where(span > 1e-12, span, 1.0), 0.5)  # no spread: keep the cycle
    if frac[0] > 0.7:
        dx = -80
    elif frac[0] < 0.3:
        dx = 28
    if frac[1] > 0.7:
        dy = -30
    elif frac[1] < 0.3:
        dy = 26
    return dx, dy


def pca_2d(pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (2, k)) of the rows of ``pool`` via SVD; sign fixed so each component's largest
    loading is positive; components padded with zeros when the pool spans fewer than two directions."""
    x = np.asarray(pool, dtype=float)
    k = x.shape[1]
    mean = x.mean(axis=0) if len(x) else np.zeros(k)
    comps = np.zeros((2, k))
    if len(x) >= 2:
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        n = int(min(2, int((s > 1e-12 * max(float(s[0]), 1e-300)).sum()) if len(s) else 0))
        for i in range(n):
            v = vt[i]
            comps[i] = v if v[np.argmax(np.abs(v))] >= 0 else -v
    return mean, comps


# ---------------------------------------------------------------- plots

def _final_choice(result: Mapping[str, Any]) -> str:
    """The answer the search recorded (a result.json without one predates ``search.final``: best measured)."""
    return str((result.get("final") or {}).get("choice") or "best_measured")


def plot_final_weights(result: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: the best measured mixture's and the predictor's pick's weight per cluster next to the
    natural token shares."""
    clusters = _clusters(result)
    k = len(clusters)
    fig = Figure(figsize=(max(FIGSIZE[0], min(20.0, 0.28 * k)), FIGSIZE[1]))
    ax = fig.add_subplot()
    best = result.get("best")
    refs = _references(result)
    if not best or k == 0:
        _message(ax, "no measured trials: nothing to plot")
        ax.set_title("final mixture weights")
        return _save(fig, path)

    w = _weights_vector(best.get("weights"), clusters)
    shares = result.get("token_shares")
    if shares is None or len(shares) != k:
        shares = _weights_vector(refs.get("natural", {}).get("weights"), clusters) if "natural" in refs else None
    x = np.arange(k)
    final = _final_choice(result)
    pick = result.get("predictor_pick") or {}
    series = [(w, "best measured" + (" (final)" if final == "best_measured" else ""), "tab:orange", 1.0)]
    if pick.get("weights"):
        series.append((_weights_vector(pick["weights"], clusters),
                       "predictor's pick" + (" (final)" if final == "predictor" else ""), "tab:green", 1.0))
    if shares is not None:
        series.append((np.asarray(shares, dtype=float), "natural token shares", "tab:blue", 0.75))
    width = 0.8 / len(series)
    for j, (v, name, color, alpha) in enumerate(series):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, v, width, label=name, color=color, alpha=alpha,
               edgecolor="0.3", linewidth=0.4)
    ax.axhline(1.0 / k, color="0.4", ls="--", lw=0.9, label=f"uniform (1/{k})")

    step = max(1, math.ceil(k / 40))
    ax.set_xticks(x[::step])
    ax.set_xticklabels([str(c) for c in clusters][::step], rotation=90 if k > 16 else 0,
                       fontsize=8 if k > 16 else 9)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("cluster")
    ax.set_ylabel("mixture weight (token share)")
    top = max(*(float(np.max(v)) for v, *_ in series), 1.0 / k)
    ax.set_ylim(0, top * 1.3)  # headroom for the legend
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)

    ref_txt = ", ".join(f"{name} {_fmt(r.get('value'))}" for name, r in sorted(refs.items()))
    where = f"round {best.get('round')}, trial {best.get('trial')}"
    picked = (f"; predictor's pick: {_fmt(pick.get('predicted'))} predicted"
              + (f", {_fmt(pick.get('value'))} measured" if pick.get("measured") else ", not measured")) if pick else ""
    ax.set_title(f"best measured {_target_label(result)}: {_fmt(best.get('value'))} ({where}){picked}\n"
                 f"vs {ref_txt or 'no references'} ({_better(result)}; {result.get('strategy', '?')} search; "
                 f"final: {final.replace('_', ' ')})", fontsize=10)
    return _save(fig, path)


def plot_predicted_vs_measured(result: Mapping[str, Any], path: str | Path) -> Path:
    """Scatter of the predictor's prediction vs the measured value, per round, with y = x."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    label = _target_label(result)
    pts = [t for t in _trials(result) if _finite(t.get("predicted")) and _finite(t.get("value"))]
    if not pts:
        _message(ax, f"no predictor-picked trials\n({result.get('strategy', '?')} search: nothing was predicted)")
        ax.set_title(f"predicted vs measured {label}")
        return _save(fig, path)

    spearman = {r.get("round"): r.get("spearman") for r in (result.get("rounds") or []) if isinstance(r, Mapping)}
    rounds = sorted({int(t.get("round", 0)) for t in pts})
    cmap = colormaps["tab10"]
    for i, r in enumerate(rounds):
        sel = [t for t in pts if int(t.get("round", 0)) == r]
        rho = spearman.get(r)
        ax.scatter([t["predicted"] for t in sel], [t["value"] for t in sel], s=46, color=cmap(i % 10),
                   marker=_round_marker(rounds, r), edgecolor="k", linewidth=0.5, zorder=3,
                   label=f"round {r} (n={len(sel)}, held-out ρ={_fmt(rho, 2)})")
    allv = np.array([[t["predicted"], t["value"]] for t in pts], dtype=float)
    lo, hi = float(allv.min()), float(allv.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo) * 0.01, 1e-3)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=1, label="y = x", zorder=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"predicted {label}")
    ax.set_ylabel(f"measured {label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title(f"predicted (before the run) vs measured {label}\n"
                 f"{len(pts)} predictor-picked trials, {_better(result)}", fontsize=10)
    return _save(fig, path)


def plot_mixture_map(result: Mapping[str, Any], pool: np.ndarray | None, path: str | Path) -> Path:
    """2-D PCA map (fitted on the pool) of the pool, the tried mixtures coloured by score, best and references."""
    clusters = _clusters(result)
    k = len(clusters)
    pool_arr = np.asarray(pool, dtype=float) if pool is not None else np.zeros((0, k))
    if pool_arr.ndim != 2 or pool_arr.shape[1] != k:
        raise ValueError(f"pool has shape {pool_arr.shape}, expected (n, {k}) for clusters {clusters}")
    trials = [t for t in _trials(result) if _finite(t.get("value"))]
    refs = {n: r for n, r in _references(result).items() if r.get("weights")}
    tw = np.array([_weights_vector(t.get("weights"), clusters) for t in trials]).reshape(-1, k)

    fit_on = pool_arr if len(pool_arr) >= 2 else np.vstack([tw] + [_weights_vector(r["weights"], clusters)[None]
                                                                    for r in refs.values()])
    mean, comps = pca_2d(fit_on)

    def proj(x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=float).reshape(-1, k) - mean) @ comps.T

    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    label = _target_label(result)
    if len(pool_arr):
        p = proj(pool_arr)
        ax.scatter(p[:, 0], p[:, 1], s=9, color="0.82", linewidth=0, zorder=1, label=f"pool ({len(pool_arr)})")

    values = [float(t["value"]) for t in trials] + [float(r["value"]) for r in refs.values() if _finite(r.get("value"))]
    cmap = colormaps["viridis_r" if _direction(result) == "lower" else "viridis"]
    norm = Normalize(vmin=min(values), vmax=max(values)) if values else Normalize(0.0, 1.0)
    if values and norm.vmin == norm.vmax:
        norm = Normalize(vmin=norm.vmin - 0.5, vmax=norm.vmax + 0.5)

    shown = [proj(pool_arr), proj(tw)] + [proj(_weights_vector(r["weights"], clusters)) for r in refs.values()]
    shown_xy = np.vstack(shown) if shown else np.zeros((0, 2))
    lo_xy = shown_xy.min(axis=0) if len(shown_xy) else np.zeros(2)
    hi_xy = shown_xy.max(axis=0) if len(shown_xy) else np.ones(2)
    handles: list[Any] = []
    if trials:
        pt = proj(tw)
        rounds = [int(t.get("round", 0)) for t in trials]
        for r in sorted(set(rounds)):
            idx = [i for i, rr in enumerate(rounds) if rr == r]
            m = _round_marker(rounds, r)
            ax.scatter(pt[idx, 0], pt[idx, 1], c=[trials[i]["value"] for i in idx], cmap=cmap, norm=norm, s=55,
                       marker=m, edgecolor="k", linewidth=0.6, zorder=3)
            handles.append(Line2D([], [], ls="", marker=m, color="0.55", mec="k", ms=7,
                                  label=f"round {r} ({len(idx)})"))
        best = result.get("best") or {}
        if best.get("weights"):
            b = proj(_weights_vector(best["weights"], clusters))[0]
            ax.scatter([b[0]], [b[1]], s=260, marker="*", facecolor="none", edgecolor="crimson", linewidth=1.6,
                       zorder=5)
            ax.annotate(f"best {_fmt(best.get('value'))}", b, xytext=_label_offset(0, b, lo_xy, hi_xy),
                        textcoords="offset points",
                        fontsize=8, color="crimson", zorder=6, bbox=LABEL_BOX,
                        arrowprops={"arrowstyle": "-", "color": "crimson", "lw": 0.8})
            handles.append(Line2D([], [], ls="", marker="*", mfc="none", mec="crimson", ms=12, label="best measured"))
        pick = result.get("predictor_pick") or {}
        if pick.get("weights") and not pick.get("measured"):
            q = proj(_weights_vector(pick["weights"], clusters))[0]
            ax.scatter([q[0]], [q[1]], s=160, marker="D", facecolor="none", edgecolor="tab:green", linewidth=1.6,
                       zorder=5)
            handles.append(Line2D([], [], ls="", marker="D", mfc="none", mec="tab:green", ms=8,
                                  label=f"predictor's pick (predicted {_fmt(pick.get('predicted'))})"))
    else:
        ax.text(0.5, 0.04, "no measured trials", transform=ax.transAxes, ha="center", fontsize=10, color="0.35")

    for i, (name, r) in enumerate(sorted(refs.items())):
        m, col = REFERENCE_STYLE.get(name, ("d", "0.2"))
        q = proj(_weights_vector(r["weights"], clusters))[0]
        face = cmap(norm(float(r["value"]))) if _finite(r.get("value")) else "white"
        ax.scatter([q[0]], [q[1]], s=110, marker=m, color=face, edgecolor=col, linewidth=1.6, zorder=4)
        ax.annotate(f"{name} {_fmt(r.get('value'))}", q, xytext=_label_offset(i + 1, q, lo_xy, hi_xy),
                    textcoords="offset points", fontsize=8, color=col, zorder=6, bbox=LABEL_BOX,
                    arrowprops={"arrowstyle": "-", "color": col, "lw": 0.8})
        handles.append(Line2D([], [], ls="", marker=m, color="white", mec=col, mew=1.6, ms=8, label=name))
    if len(pool_arr):
        handles.insert(0, Line2D([], [], ls="", marker="o", color="0.82", ms=4, label=f"pool ({len(pool_arr)})"))

    if values:
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
        cb.set_label(f"{label} ({_better(result)})")
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.85)
    fitted = "pool" if len(pool_arr) >= 2 else "tried mixtures"
    ax.set_xlabel(f"PC 1 (PCA of weight vectors, fitted on the {fitted})")
    ax.set_ylabel("PC 2")
    ax.grid(alpha=0.25)
    ax.set_title(f"mixture map: {len(trials)} trials of the {result.get('strategy', '?')} search, "
                 f"{k} cluster{'s' if k != 1 else ''}", fontsize=10)
    return _save(fig, path)


def search_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the three search PNGs of ``<run_dir>/search`` into ``out_dir`` (default ``<run_dir>/report``)."""
    from climb_hpc.rundir import RunDir
    from climb_hpc.stage import get_stage  # the stages' outputs, without importing the search (which calls this)

    rd = RunDir(run_dir)
    search = get_stage("search").outputs(rd)
    res_path, pool_path = search.result, search.pool
    if not res_path.is_file():
        raise FileNotFoundError(f"{res_path} not found: run the search stage first")
    result = json.loads(res_path.read_text())
    pool = np.load(pool_path) if pool_path.is_file() else None
    out = Path(out_dir) if out_dir is not None else get_stage("report").outputs(rd).dir
    out.mkdir(parents=True, exist_ok=True)
    return [plot_final_weights(result, out / FILES[0]),
            plot_predicted_vs_measured(result, out / FILES[1]),
            plot_mixture_map(result, pool, out / FILES[2])]
