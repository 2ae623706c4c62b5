"""Section "Training curves": the proxy trials' losses (the best few and the references) and the Minitron
phases' logs (teacher pretraining, teacher correction, distillation), with their validation losses.

Inputs: ``proxy/<group>/trial_*/{train_log.jsonl,metrics.json}`` and ``<work>/{train_log.jsonl,metrics.json}``
of the engine's phases (``correct/pretrain``, ``correct``, ``distill``; see ``climb_hpc/minitron/engine.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from climb_hpc.report.common import Ctx, ReportDataError, finite, message
from climb_hpc.report.page import Section

#: (label, stage, its ``Outputs`` field holding the phase's work folder) of the Minitron engine's phases, in order
PHASES = (("teacher pretraining", "correct", "pretrain"), ("teacher correction", "correct", "dir"),
          ("distillation", "distill", "dir"))
#: files of the Minitron engine's work folder (climb_hpc/minitron/engine.py) and of a proxy trial's
TRAIN_LOG, METRICS = "train_log.jsonl", "metrics.json"


def smooth(y: np.ndarray) -> np.ndarray:
    """A centred moving average over ~2 % of the points (the curve itself when it is short)."""
    w = max(1, len(y) // 50)
    if w < 3:
        return y
    pad = np.pad(y, (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(pad, np.ones(w) / w, mode="valid")


def _series(log: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in log if finite(r.get("step")) and finite(r.get(key))]
    a = np.array(pts, dtype=float).reshape(-1, 2)
    return a[:, 0], a[:, 1]


def proxy_trials(ctx: Ctx) -> list[dict[str, Any]]:
    """Every proxy trial with metrics: group, trial, value, direction, folder."""
    from climb_hpc.proxy.stage import trial_dirs

    out = []
    for m in [d / METRICS for d in trial_dirs(ctx.rd) if (d / METRICS).is_file()]:
        try:
            metrics = ctx.json(m)
            t = metrics.get("target") or {}
        except (ReportDataError, AttributeError):
            continue
        out.append({"group": m.parent.parent.name, "trial": int(m.parent.name.split("_")[-1]), "dir": m.parent,
                    "value": t.get("value"), "direction": t.get("direction", "lower"), "metrics": metrics})
    return out


def _reference_names(ctx: Ctx) -> dict[int, str]:
    """Trial index of the ``references`` group -> reference name, in the order the search measured them."""
    path = ctx.outputs("search").result
    if not ctx.has(path):
        return {}
    try:
        refs = ctx.json(path).get("references") or {}
    except (ReportDataError, AttributeError):
        return {}
    return dict(enumerate(refs))


def _proxy_figure(ctx: Ctx, shown: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(8.0, 4.2))
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
    for i, t in enumerate(shown):
        log = ctx.jsonl(t["dir"] / TRAIN_LOG) if (t["dir"] / TRAIN_LOG).is_file() else []
        x, y = _series(log, "loss")
        if not len(x):
            continue
        ref = t["group"] == "references"
        color = "0.35" if ref else cmap(i % 10)
        if len(y) >= 150:
            ax.plot(x, y, color=color, lw=0.5, alpha=0.25)
        ax.plot(x, smooth(y), color=color, lw=2.0 if i == 0 else 1.2, ls="--" if ref else "-", label=t["label"])
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss (next-token cross-entropy)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="upper right")
    else:
        message(ax, "no training logs")
    ax.set_title("proxy trials: the best measured (thick) and the references (dashed)", fontsize=10)
    return fig


def _proxy_part(ctx: Ctx, sec: Section) -> None:
    sec.h3("Proxy trials")
    trials = proxy_trials(ctx)
    if not trials:
        ctx.missing(sec, "search", f"{ctx.rel(ctx.outputs('search').dir)}: proxy trials with {METRICS}")
        return
    lower = trials[0]["direction"] != "higher"
    ranked = sorted((t for t in trials if t["group"] != "references" and finite(t["value"])),
                    key=lambda t: (float(t["value"]) if lower else -float(t["value"]), t["group"], t["trial"]))
    names = _reference_names(ctx)
    refs = [t for t in trials if t["group"] == "references"]
    shown = ranked[: ctx.top_trials] + refs
    for t in shown:
        name = names.get(t["trial"], f"references/{t['trial']}") if t["group"] == "references" \
            else f"{t['group']}/{t['trial']}"
        t["label"] = f"{name}: {t['value']:.4f}" if finite(t["value"]) else name
    groups = sorted({t["group"] for t in trials})
    sec.p(f"{len(trials)} proxy trials in {len(groups)} groups ({', '.join(groups)}); the curves of the "
          f"{min(ctx.top_trials, len(ranked))} best by the target ({'lower' if lower else 'higher'} is better) "
          f"and of the {len(refs)} reference mixture(s).")
    ctx.figure(sec, _proxy_figure(ctx, shown), "proxy_curves.png", "training loss of the best proxy trials",
               "Training loss per step of each shown trial (smoothed when long; raw in light colour); the legend "
               "gives the target value each trial measured.")
    rows = []
    for t in shown:
        m = t["metrics"]
        rows.append([t["label"].split(":")[0], t["value"], m.get("final_train_loss"), m.get("steps"), m.get("tokens"),
                     m.get("tokens_per_s"), m.get("precision"), m.get("resumed_at_step")])
    sec.table(["trial", "target", "final train loss", "steps", "tokens", "tokens/s", "precision", "resumed at step"],
              rows, highlight=[True] + [False] * (len(rows) - 1), digits=5)


def _val(v: Any) -> str:
    if not isinstance(v, dict) or not v:
        return "n/a"
    return ", ".join(f"{k} {float(x):.4f}" if finite(x) else f"{k} n/a" for k, x in sorted(v.items()))


def _phase_figure(logs: list[tuple[str, list[dict[str, Any]]]]) -> Figure:
    fig = Figure(figsize=(4.0 * len(logs) + 1.0, 3.8))
    for j, (label, log) in enumerate(logs):
        ax = fig.add_subplot(1, len(logs), j + 1)
        keys = ["loss"] + sorted({k for r in log for k in r} - {"step", "loss", "lr", "tokens", "elapsed_s"})
        _, loss = _series(log, "loss")
        for i, k in enumerate(keys):
            x, y = _series(log, k)
            if not len(x) or (k != "loss" and len(y) == len(loss) and np.allclose(y, loss)):
                continue  # a term equal to the loss (the only term with weight): drawn once
            ax.plot(x, smooth(y), lw=1.6 if k == "loss" else 1.0, color=colormaps["tab10"](i),
                    label="loss (optimised)" if k == "loss" else k)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log" if label == "distillation" else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(label, fontsize=10)
    fig.axes[0].set_ylabel("training loss")
    return fig


def _minitron_part(ctx: Ctx, sec: Section) -> None:
    sec.h3("Minitron: teacher and distillation")
    work = {label: getattr(ctx.outputs(stage), field) for label, stage, field in PHASES}
    has = {label: ctx.has(w / TRAIN_LOG) for label, w in work.items()}
    pretrain, correct, distill = (label for label, _, _ in PHASES)
    if not has[correct] and not has[pretrain]:
        ctx.missing(sec, "correct", work[correct] / TRAIN_LOG)
    elif not has[pretrain]:
        sec.p("No teacher pretraining here: the teacher was given (minitron.teacher.path).")
    elif not has[correct]:
        sec.note(f"teacher correction not started yet ({ctx.rel(work[correct] / TRAIN_LOG)} not found)")
    if not has[distill]:
        ctx.missing(sec, "distill", work[distill] / TRAIN_LOG)
    logs, rows = [], []
    for label, _, _ in PHASES:
        if not has[label]:
            continue
        log = ctx.jsonl(work[label] / TRAIN_LOG)
        if log:
            logs.append((label, log))
        m = ctx.json(work[label] / METRICS) if ctx.has(work[label] / METRICS) else {}
        rows.append([label, m.get("steps") or len(log), m.get("tokens"), m.get("lr_peak"), m.get("final_train_loss"),
                     _val(m.get("val_before")), _val(m.get("val_after")), m.get("world_size"), m.get("zero_stage"),
                     m.get("precision"), m.get("train_seconds"), "finished" if m else "running (no metrics.json)"])
    if logs:
        ctx.figure(sec, _phase_figure(logs), "minitron_curves.png", "Minitron training curves",
                   "Training loss per step of each phase (distillation: the optimised loss and its KL / LM / hidden "
                   "terms, log scale).")
    if rows:
        sec.table(["phase", "steps", "tokens", "peak LR", "final train loss", "validation before", "validation after",
                   "ranks", "ZeRO", "precision", "train seconds", "state"], rows, digits=4)
        sec.p("Validation: the held-out tail of each phase's data (lm: next-token loss; kl: KL(teacher || student) "
              "at the distillation temperature).", cls="meta")


def section(ctx: Ctx) -> Section:
    sec = Section("training", "Training curves")
    for part in (_proxy_part, _minitron_part):
        try:
            part(ctx, sec)
        except Exception as e:  # one broken part must not hide the other
            sec.note(f"could not build this part: {type(e).__name__}: {e}", warn=True)
    return sec
