"""Section "Pruned architecture": teacher vs pruned vs distilled (widths, heads, layers, parameters,
validation losses), which layers depth pruning dropped, and the layer importances it was chosen from.

Inputs: ``prune/summary.json``, ``importance/summary.json``, the ``config.json`` and safetensors headers of
``teacher/``, ``student_pruned/``, ``student/``, and the ``metrics.json`` of ``correct`` and ``distill``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from climb_hpc.report.common import Ctx, ReportDataError, finite
from climb_hpc.report.page import Section
from climb_hpc.safetensors_header import stored_params

DIMS = (("hidden size", "hidden_size"), ("MLP intermediate size", "intermediate_size"),
        ("attention heads", "num_attention_heads"), ("KV heads", "num_key_value_heads"), ("head dim", "head_dim"),
        ("layers", "num_hidden_layers"), ("vocabulary", "vocab_size"), ("tied embeddings", "tie_word_embeddings"))
#: (label, the stage that writes the model, its ``Outputs`` field)
MODELS = (("teacher", "correct", "teacher"), ("pruned", "prune", "student_pruned"), ("distilled", "distill", "student"))


def _folder(ctx: Ctx, label: str) -> Path:
    _, stage, field = next(m for m in MODELS if m[0] == label)
    return getattr(ctx.outputs(stage), field)


def _config(ctx: Ctx, label: str) -> dict[str, Any] | None:
    path = _folder(ctx, label) / "config.json"
    return ctx.json(path) if ctx.has(path) else None


def _shape(conf: dict[str, Any] | None) -> dict[str, Any]:
    if not conf:
        return {}
    out = {k: conf.get(k) for _, k in DIMS}
    if out.get("head_dim") is None and finite(conf.get("hidden_size")) and conf.get("num_attention_heads"):
        out["head_dim"] = int(conf["hidden_size"]) // int(conf["num_attention_heads"])
    return out


def _importance_figure(imp: dict[str, Any], dropped: list[int]) -> Figure:
    block = [float(x) for x in imp.get("block") or []]
    depth = [float(x) for x in imp.get("depth_loss") or []]
    drop = int(imp.get("drop") or 1)
    fig = Figure(figsize=(9.0, 3.6))
    ax = fig.add_subplot(1, 2, 1)
    x = np.arange(len(block))
    ax.bar(x, block, color=["tab:red" if i in dropped else "tab:blue" for i in x], edgecolor="0.3", linewidth=0.4)
    ax.set_xlabel("layer (red: dropped by depth pruning)")
    ax.set_ylabel("block importance: 1 - cos(in, out)")
    ax.set_xticks(x[:: max(1, len(x) // 20)])
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("layer importance", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    if depth:
        s = np.arange(len(depth))
        start = min(dropped) if dropped else None
        ax2.plot(s, depth, marker="o", color="tab:purple", label=f"without layers [s, s+{drop})")
        if start is not None and start < len(depth):
            ax2.scatter([start], [depth[start]], s=120, facecolor="none", edgecolor="tab:red", lw=1.8, zorder=4,
                        label="dropped block")
        if finite(imp.get("base_loss")):
            ax2.axhline(float(imp["base_loss"]), color="0.3", ls="--", lw=1, label="all layers")
        ax2.set_xticks(s[:: max(1, len(s) // 20)])
        ax2.legend(fontsize=7)
    ax2.set_xlabel("first removed layer s")
    ax2.set_ylabel("LM loss on the calibration data")
    ax2.grid(alpha=0.3)
    ax2.set_title(f"loss with a block of {drop} layer(s) removed", fontsize=10)
    return fig


def _kept_figure(teacher: dict[str, Any], pruned: dict[str, Any], params: tuple[Any, Any]) -> Figure | None:
    rows = [(label, pruned.get(k), teacher.get(k)) for label, k in DIMS[:6] if finite(teacher.get(k))]
    rows.append(("parameters", params[1], params[0]))
    rows = [(label, float(a) / float(b)) for label, a, b in rows if finite(a) and finite(b) and float(b) > 0]
    if not rows:
        return None
    fig = Figure(figsize=(7.0, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    frac = [f for _, f in rows]
    ax.barh(y, frac, color=["tab:orange" if f < 1 else "tab:green" for f in frac], edgecolor="0.3", linewidth=0.4)
    for yi, f in zip(y, frac, strict=True):
        ax.text(min(f, 1.0) + 0.01, yi, f"{f:.0%}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([label for label, _ in rows], fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.axvline(1.0, color="0.4", ls="--", lw=0.9)
    ax.set_xlabel("pruned / teacher")
    ax.set_title("what pruning kept of the teacher", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def section(ctx: Ctx) -> Section:
    sec = Section("architecture", "Pruned architecture")
    prune_summary = ctx.outputs("prune").summary
    summary = ctx.json(prune_summary) if ctx.has(prune_summary) else None
    confs = {label: _config(ctx, label) for label, _, _ in MODELS}
    if summary is None and not confs["pruned"] and not confs["distilled"]:
        ctx.missing(sec, "prune", f"{ctx.rel(prune_summary)} and {ctx.rel(_folder(ctx, 'pruned'))}/")
        return sec
    shapes = {label: _shape(c) for label, c in confs.items()}
    if summary:  # the model the prune stage pruned (minitron.prune.model may name one outside the run folder)
        shapes["teacher"] = summary.get("before") or shapes["teacher"]
        shapes["pruned"] = shapes["pruned"] or summary.get("after") or {}
    params: dict[str, Any] = {}
    for label, _, _ in MODELS:
        folder = _folder(ctx, label)
        try:
            params[label] = stored_params(folder) if folder.is_dir() else None
        except (OSError, ReportDataError, KeyError, TypeError, ValueError) as e:
            params[label] = None
            sec.note(f"{ctx.rel(folder)}/: parameters not counted ({type(e).__name__}: {e})", warn=True)
    sp = (summary or {}).get("params") or {}
    params["teacher"] = sp.get("before") if sp.get("before") is not None else params["teacher"]
    params["pruned"] = params["pruned"] if params["pruned"] is not None else sp.get("after")
    correct_metrics, distill_metrics = ctx.outputs("correct").metrics, ctx.outputs("distill").metrics
    correct = ctx.json(correct_metrics) if ctx.has(correct_metrics) else {}
    distill = ctx.json(distill_metrics) if ctx.has(distill_metrics) else {}
    vals = {"teacher": (correct.get("val_after") or {}), "pruned": (distill.get("val_before") or {}),
            "distilled": (distill.get("val_after") or {})}
    labels = [label for label, _, _ in MODELS]
    rows: list[list[Any]] = [[name, *[shapes[m].get(k) if shapes[m] else None for m in labels]] for name, k in DIMS]
    tp = params["teacher"]
    rows.append(["parameters", *[params[m] for m in labels]])
    rows.append(["parameters / teacher", *[float(params[m]) / float(tp) if finite(params[m]) and finite(tp) and tp
                                           else None for m in labels]])
    rows.append(["validation LM loss", *[vals[m].get("lm") for m in labels]])
    rows.append(["validation KL(teacher || model)", None, vals["pruned"].get("kl"), vals["distilled"].get("kl")])
    sec.table(["", "teacher", "pruned (student_pruned/)", "distilled (student/)"], rows, digits=5)
    sec.p("Validation losses: the teacher's after correction (correct/metrics.json), the pruned and distilled "
          "student's before and after distillation (distill/metrics.json), each on the held-out tail of its phase's "
          "data. A missing column means its stage has not run.", cls="meta")
    for label, stage, _ in MODELS[1:]:
        if not confs[label]:
            ctx.missing(sec, stage, _folder(ctx, label) / "config.json")
    if summary:
        kept = summary.get("kept") or {}
        depth = ((summary.get("targets") or {}).get("depth") or {})
        dropped = [int(i) for i in kept.get("dropped_layers") or []]
        n_layers = (summary.get("before") or {}).get("num_hidden_layers")
        if dropped:
            sec.p(f"Depth pruning ({depth.get('metric', 'block')} metric, a block of {depth.get('drop')} layer(s)) "
                  f"dropped teacher layer(s) {dropped} of {n_layers}; kept {kept.get('layers')}.")
        else:
            sec.p(f"No depth pruning: all {n_layers} layers kept.")
        fig = _kept_figure(shapes["teacher"], shapes["pruned"], (params["teacher"], params["pruned"]))
        if fig is not None:
            ctx.figure(sec, fig, "pruned_architecture.png", "fraction of the teacher kept by pruning",
                       "Each dimension of the pruned student as a fraction of the teacher's.")
    else:
        dropped = []
        ctx.missing(sec, "prune", prune_summary)
    imp_summary = ctx.outputs("importance").summary
    if not ctx.has(imp_summary):
        ctx.missing(sec, "importance", imp_summary)
        return sec
    try:
        imp = ctx.json(imp_summary)
        if imp.get("block"):
            ctx.figure(sec, _importance_figure(imp, dropped), "layer_importance.png", "layer importance",
                       "Left: each teacher layer's block importance (how much it changes its input). Right: the LM "
                       "loss of the teacher with each contiguous block of layers removed (the loss metric of depth "
                       "pruning). Measured by the importance stage on calibration windows of the mixed data.")
    except Exception as e:  # the table above stays
        sec.note(f"layer importance not shown ({type(e).__name__}: {e})", warn=True)
    return sec
