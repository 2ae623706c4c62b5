"""Sections "Clusters" (sizes, quality, what refine pruned and merged) and "Documents map" (a 2-D PCA of a
seeded sample of the embeddings, coloured by final cluster).

Inputs: ``refine/clusters.json``, ``tokenize/summary.json`` (tokens per cluster), ``embed/embeddings.zarr``
and ``refine/doc_clusters.parquet`` (one row per document, rows in the embeddings' order).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from climb_hpc.report.common import Ctx, ReportDataError, finite
from climb_hpc.report.page import Section

MAX_MEMBERS = 12  # initial cluster ids listed per final cluster


def cluster_colors(ids: list[int]) -> dict[int, Any]:
    """A fixed colour per cluster id (tab10 / tab20 when few, evenly spaced turbo when many)."""
    k = len(ids)
    if k <= 10:
        return {c: colormaps["tab10"](i) for i, c in enumerate(ids)}
    if k <= 20:
        return {c: colormaps["tab20"](i) for i, c in enumerate(ids)}
    return {c: colormaps["turbo"](i / (k - 1)) for i, c in enumerate(ids)}


def _tokens(ctx: Ctx) -> dict[int, int] | None:
    path = ctx.outputs("tokenize").summary
    if not ctx.has(path):
        return None
    per = ctx.json(path).get("clusters") or {}
    return {int(c): int(v.get("tokens", 0)) for c, v in per.items()}


def _members(ms: list[int]) -> str:
    s = ", ".join(map(str, ms[:MAX_MEMBERS]))
    return s + (f", … ({len(ms)} in all)" if len(ms) > MAX_MEMBERS else "")


def _sizes_figure(ids: list[int], docs: list[int], tokens: dict[int, int] | None) -> Figure:
    fig = Figure(figsize=(9.0, 3.6))
    colors = cluster_colors(ids)
    x = np.arange(len(ids))
    panels = [("documents", docs)] + ([("tokens", [tokens.get(c, 0) for c in ids])] if tokens is not None else [])
    for j, (what, vals) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        ax.bar(x, vals, color=[colors[c] for c in ids], edgecolor="0.3", linewidth=0.4)
        step = max(1, int(np.ceil(len(ids) / 30)))
        ax.set_xticks(x[::step])
        ax.set_xticklabels([str(c) for c in ids][::step], fontsize=8)
        ax.set_xlabel("final cluster")
        ax.set_ylabel(what)
        ax.set_title(f"{what} per final cluster (total {sum(vals):,})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    return fig


def _quality_figure(ids: list[int], axes: list[str], means: np.ndarray, thresholds: dict[str, Any],
                    scale: tuple[float, float] = (0.0, 5.0)) -> Figure:
    fig = Figure(figsize=(max(5.0, 1.6 + 0.9 * len(axes)), max(2.6, min(10.0, 1.2 + 0.32 * len(ids)))))
    ax = fig.add_subplot()
    im = ax.imshow(means, cmap="RdYlGn", vmin=scale[0], vmax=scale[1], aspect="auto")
    ax.set_xticks(range(len(axes)))
    ax.set_xticklabels([a + (f"\n(prune < {thresholds[a]})" if thresholds.get(a) is not None else "") for a in axes],
                       fontsize=8)
    step = max(1, int(np.ceil(len(ids) / 40)))
    ax.set_yticks(range(0, len(ids), step))
    ax.set_yticklabels([str(c) for c in ids][::step], fontsize=8)
    ax.set_ylabel("final cluster")
    if len(ids) <= 40:
        for i in range(len(ids)):
            for j in range(len(axes)):
                ax.text(j, i, f"{means[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, pad=0.02).set_label(f"mean score ({scale[0]:g} to {scale[1]:g}, higher is better)")
    ax.set_title("mean quality scores of the kept clusters", fontsize=10)
    return fig


def _refine_figure(initial: list[dict[str, Any]], thresholds: dict[str, Any]) -> Figure | None:
    """Initial clusters: size against the margin to the nearest prune threshold, kept vs pruned."""
    used = {a: float(t) for a, t in thresholds.items() if t is not None}
    rows = [c for c in initial if c.get("size") and c.get("mean_scores")]
    if not used or not rows:
        return None
    margin = np.array([min(float(c["mean_scores"].get(a, np.nan)) - t for a, t in used.items()) for c in rows])
    size = np.array([int(c["size"]) for c in rows])
    kept = np.array([c.get("pruned") is None for c in rows])
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot()
    ax.scatter(margin[kept], size[kept], s=22, color="tab:green", edgecolor="k", linewidth=0.3,
               label=f"kept ({int(kept.sum())})")
    ax.scatter(margin[~kept], size[~kept], s=26, marker="X", color="tab:red", edgecolor="k", linewidth=0.3,
               label=f"pruned ({int((~kept).sum())})")
    ax.axvline(0, color="0.3", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("min over thresholded axes of (cluster mean score - threshold)   [< 0: below a threshold]")
    ax.set_ylabel("documents (log)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    ax.set_title("refine: initial k-means clusters, kept and pruned", fontsize=10)
    return fig


def section(ctx: Ctx) -> Section:
    sec = Section("clusters", "Clusters")
    path = ctx.outputs("refine").clusters
    if not ctx.has(path):
        ctx.missing(sec, "refine", path)
        return sec
    info = ctx.json(path)
    final = info.get("clusters") or []
    initial = info.get("initial") or []
    merge = info.get("merge") or {}
    thresholds = {a: t for a, t in (info.get("thresholds") or {}).items() if t is not None}
    k0, kept0 = info.get("initial_clusters"), info.get("kept_initial_clusters")
    sec.p(f"{fmt_int(info.get('n_docs'))} documents in {k0} k-means clusters. Refine pruned "
          f"{(k0 or 0) - (kept0 or 0)} clusters ({fmt_int(info.get('pruned_docs'))} documents; pruning "
          f"{info.get('pruning')}, thresholds {thresholds or 'none'}, min size {info.get('min_size')}) and merged "
          f"the {kept0} kept clusters into {len(final)} final clusters ({merge.get('linkage')} linkage, "
          f"{merge.get('criterion')} t={merge.get('t')}); {fmt_int(info.get('kept_docs'))} documents are kept.")
    if not final:
        sec.note("refine kept no cluster", warn=True)
        return sec
    ids = [int(c["id"]) for c in final]
    docs = [int(c.get("size", 0)) for c in final]
    try:
        tokens = _tokens(ctx)
    except ReportDataError as e:
        tokens = None
        sec.note(str(e), warn=True)
    if tokens is None:
        ctx.missing(sec, "tokenize", f"{ctx.rel(ctx.outputs('tokenize').summary)}: token counts")
    ctx.figure(sec, _sizes_figure(ids, docs, tokens), "cluster_sizes.png", "documents and tokens per final cluster",
               "Size of each final cluster in documents and in tokens (tokens include one EOS a document).")
    axes = [a for a in (info.get("axes") or []) if any(a in (c.get("mean_scores") or {}) for c in final)]
    if axes:
        means = np.array([[float((c.get("mean_scores") or {}).get(a, np.nan)) for a in axes] for c in final])
        lo, hi = info.get("range") or (0.0, 5.0)  # the raters' scale (-1..5 for NVIDIA's CLIMB classifiers)
        ctx.figure(sec, _quality_figure(ids, axes, means, thresholds, (lo, hi)), "cluster_quality.png",
                   "mean quality scores per final cluster",
                   f"Mean rater score of each kept cluster's documents, per axis ({lo:g} to {hi:g}).")
    else:
        sec.note("no quality scores: clusters were not rated (quality stage not in the pipeline)")
    fig = _refine_figure(initial, thresholds)
    if fig is not None:
        ctx.figure(sec, fig, "refine.png", "initial clusters kept and pruned by refine",
                   "Each initial k-means cluster: its size against how far its worst thresholded mean score lies "
                   "above (> 0) or below (< 0) the threshold. Clusters left of the dashed line were pruned.")
    total_tokens = sum(tokens.values()) if tokens else 0
    rows = []
    for c, n in zip(final, docs, strict=True):
        t = tokens.get(int(c["id"])) if tokens is not None else None
        ms = c.get("mean_scores") or {}
        rows.append([int(c["id"]), _members(list(c.get("members") or [])), n, t,
                     t / total_tokens if t is not None and total_tokens else None, *[ms.get(a) for a in axes]])
    sec.h3("Final clusters")
    sec.table(["cluster", "initial clusters merged", "docs", "tokens", "token share", *axes], rows, limit=40,
              what="clusters", digits=3)
    merged = sum(1 for c in final if len(c.get("members") or []) > 1)
    sec.p(f"{merged} of {len(final)} final clusters merge two or more initial clusters.")
    pruned = [c for c in initial if c.get("pruned")]
    sec.h3(f"Pruned initial clusters ({len(pruned)})")
    if pruned:
        prow = [[int(c["id"]), int(c.get("size", 0)), str(c["pruned"]),
                 *[(c.get("mean_scores") or {}).get(a) for a in axes]] for c in pruned]
        sec.table(["initial cluster", "docs", "why pruned", *axes], prow, limit=20, what="pruned clusters", digits=3)
    else:
        sec.p("None: every initial cluster was kept.")
    return sec


def fmt_int(v: Any) -> str:
    return f"{int(v):,}" if finite(v) else "?"


# ---------------------------------------------------------------- the documents map


def sample_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded sample of at most ``cap`` of ``n`` rows (all rows when n <= cap)."""
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng([seed, zlib.crc32(b"report-map")])
    return np.sort(rng.choice(n, size=cap, replace=False))


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(mean, components (2, d), explained variance ratios) from the d x d covariance (``eigh``: fast for many
    rows). Signs as ``search_plots.pca_2d``: each component's largest loading is positive; a direction without
    variance is all zeros."""
    mean = x.mean(axis=0)
    xc = x - mean
    w, v = np.linalg.eigh(xc.T @ xc)
    order = np.argsort(w)[::-1][:2]
    total = float(w.clip(min=0).sum())
    comps = np.zeros((2, x.shape[1]))
    ratios = [0.0, 0.0]
    for i, j in enumerate(order):
        if total > 0 and w[j] > 1e-12 * total:
            c = v[:, j]
            comps[i] = c if c[np.argmax(np.abs(c))] >= 0 else -c
            ratios[i] = float(w[j]) / total
    return mean, comps, ratios


def _doc_clusters(ctx: Ctx, n: int) -> np.ndarray | None:
    import pyarrow.parquet as pq

    path = ctx.outputs("refine").doc_clusters
    if not ctx.has(path):
        return None
    try:
        col = pq.read_table(path, columns=["cluster"]).column("cluster")
    except Exception as e:
        raise ReportDataError(f"{ctx.rel(path)}: unreadable ({type(e).__name__}: {e})") from None
    labels = col.to_numpy()
    if len(labels) != n:
        raise ReportDataError(f"{ctx.rel(path)} has {len(labels)} rows, the embeddings {n}")
    return labels


def map_section(ctx: Ctx) -> Section:
    sec = Section("map", "Documents map")
    path = ctx.outputs("embed").store
    if not path.exists():
        ctx.missing(sec, "embed", path)
        return sec
    import zarr

    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception as e:
        raise ReportDataError(f"{ctx.rel(path)}: unreadable ({type(e).__name__}: {e})") from None
    n, dim = int(arr.shape[0]), int(arr.shape[1])
    idx = sample_rows(n, ctx.max_points, ctx.seed)
    x = np.asarray(arr[:] if len(idx) == n else arr.get_orthogonal_selection((idx, slice(None))), dtype=np.float64)
    ok = np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0)  # unwritten rows are all zero
    labels_all = _doc_clusters(ctx, n)
    labels = labels_all[idx] if labels_all is not None else None
    if labels_all is None:
        ctx.missing(sec, "refine", ctx.outputs("refine").doc_clusters)
    x, idx = x[ok], idx[ok]
    labels = labels[ok] if labels is not None else None
    if len(x) < 2:
        sec.note("fewer than 2 embedded documents: nothing to map")
        return sec
    mean, comps, explained = pca_2d(x)
    xy = (x - mean) @ comps.T
    fig = _map_figure(xy, labels, explained)
    ctx.figure(sec, fig, "doc_map.png", "2-D map of the documents by final cluster",
               f"{len(x):,} of {n:,} documents (a seeded sample of at most {ctx.max_points:,}), projected on the first "
               f"two principal components of their {dim}-d embeddings (PCA fitted on the sample). "
               + ("Colour: final cluster; grey crosses: documents in pruned clusters; numbers: cluster ids at their "
                  "median." if labels is not None else "Not coloured: the documents have no final clusters yet."))
    return sec


def _map_figure(xy: np.ndarray, labels: np.ndarray | None, explained: list[float]) -> Figure:
    fig = Figure(figsize=(8.0, 6.0))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, color="tab:blue", alpha=0.6, linewidth=0)
    else:
        pruned = labels < 0
        if pruned.any():
            ax.scatter(xy[pruned, 0], xy[pruned, 1], s=10, marker="x", color="0.7", linewidth=0.6,
                       label=f"pruned ({int(pruned.sum())})")
        ids = sorted(int(c) for c in np.unique(labels[~pruned]))
        colors = cluster_colors(ids)
        for c in ids:
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=colors[c], alpha=0.75, linewidth=0,
                       label=f"cluster {c} ({int(sel.sum())})")
            mx, my = np.median(xy[sel], axis=0)
            ax.annotate(str(c), (mx, my), ha="center", va="center", fontsize=8, fontweight="bold",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": colors[c], "alpha": 0.85})
        if len(ids) <= 20:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=1.6, frameon=False)
    ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of the variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.1%} of the variance)")
    ax.grid(alpha=0.25)
    ax.set_title("documents by final cluster (PCA of the embeddings)", fontsize=10)
    return fig
