"""Section "Run summary": what the run is (config highlights) and how far it got (stages, tasks, times).

Times come from the completion markers (``_done/<stage>/_stage``: the stage's wall seconds; per task:
its own seconds) and the manifest (when each stage completed); failures from ``_failed/``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from climb_hpc.report.common import Ctx, finite
from climb_hpc.report.page import Section
from climb_hpc.rundir import STAGE_MARKER


def _utc(t: Any) -> Optional[str]:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t))) if finite(t) else None


def _short(v: Any, n: int = 90) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[: n - 1] + "…"


def highlights(ctx: Ctx) -> list[tuple[str, str, str]]:
    """(stage, setting, value) rows for the stages of the run's pipeline."""
    c = ctx.conf
    rows: list[tuple[str, str, Any]] = [("", "executor", c("cluster.executor"))]
    paths = c("corpus.paths") or []
    paths = [paths] if isinstance(paths, str) else paths
    rows.append(("ingest", "corpus", ", ".join(map(str, paths)) if paths else
                 f"built-in, {c('corpus.builtin.docs_per_domain')} docs a domain"))
    rows.append(("embed", "encoder", f"{c('embed.model')} (max_length {c('embed.max_length')})"))
    rows.append(("quality", "raters", c("quality.raters")))
    rows.append(("kmeans", "K_init", c("clusters.kmeans.k_init")))
    target = c("clusters.refine.target_clusters")
    rows.append(("refine", "prune thresholds",
                 {k: v for k, v in (c("clusters.refine.thresholds") or {}).items() if v is not None}))
    rows.append(("refine", "merge", f"{c('clusters.refine.linkage')}, " + (f"into {target} clusters" if target else
                 f"cut at t={c('clusters.refine.merge_distance')} (at most {c('clusters.refine.max_clusters')})")))
    rows.append(("tokenize", "tokenizer", c("tokenize.tokenizer") or f"byte-level BPE, {c('tokenize.vocab_size')} ids"))
    m = c("proxy.model") or {}
    shape = (f"from proxy.init={c('proxy.init')}" if c("proxy.init") else  # its config.json sets the shape
             f"{c('proxy.name')}: {m.get('num_hidden_layers')} layers x {m.get('hidden_size')}")
    rows.append(("search", "proxy", f"{shape}, {c('proxy.tokens')} tokens a trial"))
    tk = c("target.kind")
    rows.append(("search", "target", f"{tk}" + (f" ({c('target.path')})" if c("target.path") else "")))
    rows.append(("search", "strategy", f"{c('search.strategy')}, budget {c('search.budget')}, "
                 f"pool {c('search.pool_size')}"))
    rows.append(("mix", "mixed tokens", c("mix.tokens")))
    rows.append(("mix", "weights", c("mix.weights") or "the search's best measured mixture"))
    t = c("minitron.teacher") or {}
    tm = t.get("model") or {}
    rows.append(("correct", "teacher", t.get("path") or f"tiny Llama pretrained here ({tm.get('num_hidden_layers')} "
                 f"layers x {tm.get('hidden_size')}, {t.get('pretrain_tokens')} tokens)"))
    rows.append(("correct", "correction tokens", c("minitron.correct.tokens")))
    prune = c("minitron.prune") or {}
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "depth")
    rows.append(("prune", "targets", {k: prune.get(k) for k in keys if prune.get(k) is not None}))
    rows.append(("distill", "distillation", f"{c('minitron.distill.tokens')} tokens, T={c('minitron.distill.temperature')}"
                 f", lm_weight {c('minitron.distill.lm_weight')}"))
    stages = c("pipeline.stages") or []
    return [(s, k, _short(v)) for s, k, v in rows if not s or not stages or s in stages]


def _stage_names(ctx: Ctx, manifest: dict[str, Any]) -> list[str]:
    from climb_hpc.proxy.stage import ROOT as PROXY

    names = list(ctx.conf("pipeline.stages") or [])
    marked = ctx.rd.marked_stages()
    groups = [n for n in marked if n.partition("/")[0] == PROXY]
    others = [n for n in marked if n not in groups]
    others += [k for k in manifest if k not in others]
    out = names[: names.index("search") + 1] if "search" in names else list(names)  # a search's trials after it
    out += [g for g in groups if g not in out]
    out += [n for n in names if n not in out]
    out += sorted(n for n in others if n not in out)
    return out


def stage_rows(ctx: Ctx) -> list[list[Any]]:
    """Per stage: name, state, tasks done / total, wall seconds, task seconds, completed at, failures."""
    try:
        manifest = ctx.json("manifest.json").get("stages", {})
    except Exception:
        manifest = {}
    rows = []
    for name in _stage_names(ctx, manifest):
        d = ctx.rd.marker_dir(name)
        markers = sorted(p for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []
        task_s = 0.0
        for p in markers:
            try:
                task_s += float(json.loads(p.read_text()).get("seconds") or 0.0)
            except (OSError, ValueError, AttributeError):
                pass
        stage = None
        if (d / STAGE_MARKER).is_file():
            try:
                stage = json.loads((d / STAGE_MARKER).read_text())
            except (OSError, ValueError):
                stage = {}
        failed_dir = ctx.rd.failed_dir(name)
        done_ids = {p.name for p in markers}
        failed = sorted(p for p in failed_dir.iterdir() if p.name.isdigit() and p.name not in done_ids) \
            if failed_dir.is_dir() else []
        err = ""
        if failed:
            try:
                err = (json.loads(failed[0].read_text()).get("error") or "").splitlines()[0]
            except (OSError, ValueError, AttributeError, IndexError):
                err = "(unreadable failure record)"
        info = manifest.get(name, {}) if isinstance(manifest.get(name), dict) else {}
        total = info.get("num_tasks")
        state = ("complete" if stage is not None else "failed" if failed else "running" if markers
                 else "planned" if info else "not run")
        rows.append([name, state, f"{len(markers)} / {total if total is not None else '?'}",
                     (stage or {}).get("seconds"), round(task_s, 3) if markers else None,
                     _utc(info.get("completed")) or "", f"{len(failed)}: {err}" if failed else ""])
    return rows


def section(ctx: Ctx) -> Section:
    sec = Section("summary", "Run summary")
    try:
        m = ctx.json("manifest.json") if ctx.has("manifest.json") else {}
    except Exception as e:
        m = {}
        sec.note(f"manifest.json could not be read: {e}", warn=True)
    sec.p(f"Run folder {ctx.run}; climb-hpc {m.get('climb_hpc', '?')}, Python {m.get('python', '?')}, "
          f"created {_utc(m.get('created')) or '?'} on {m.get('host', '?')}.", cls="meta")
    if ctx.cfg_error:
        sec.note(f"config.yaml could not be read ({ctx.cfg_error}): the settings below are unknown", warn=True)
    sec.h3("Stages")
    sec.table(["stage", "state", "tasks done / total", "stage seconds", "task seconds (sum)", "completed",
               "failed tasks"], stage_rows(ctx), digits=4)
    sec.p("Stage seconds: wall time of the whole stage in the controller (all its tasks, queueing included); "
          "task seconds: the sum of its tasks' own times.", cls="meta")
    if ctx.cfg:
        sec.h3("Configuration highlights")
        sec.table(["stage", "setting", "value"], highlights(ctx))
    return sec
