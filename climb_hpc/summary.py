"""The few lines `climb-hpc run` closes with: what the run found, read back from its run folder.

Every line comes from a stage's own summary file, and a stage that has not run is left out, so the
summary of a partial run (``until=refine``) is simply shorter. Nothing here is needed by a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from climb_hpc.rundir import RunDir, read_json


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        return read_json(path, default=None)
    except ValueError:  # a half-written file is a missing one here; the stage itself reports it
        return None


def _params(n: Optional[int]) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _shape(s: dict[str, Any]) -> str:
    heads = f"{s.get('num_attention_heads')}/{s.get('num_key_value_heads')} heads"
    return (f"{s.get('num_hidden_layers')} layers x {s.get('hidden_size')} wide, MLP {s.get('intermediate_size')}, "
            f"{heads}")


def _losses(m: Optional[dict[str, Any]]) -> str:
    """'val lm 4.91 (before 5.30)' from a Minitron phase's metrics.json."""
    if not m or not m.get("val_after"):
        return "val ?"
    before = m.get("val_before") or {}
    parts = []
    for k, v in m["val_after"].items():
        b = before.get(k)
        parts.append(f"{k} {v:.4f}" + (f" (before {b:.4f})" if isinstance(b, (int, float)) else ""))
    return "val " + ", ".join(parts)


def _outputs(rd: RunDir, stage: str) -> Any:
    from climb_hpc.stage import get_stage

    return get_stage(stage).outputs(rd)


def corpus_lines(rd: RunDir) -> list[str]:
    out = []
    ingest, tok, refine = (_read(_outputs(rd, "ingest").summary), _read(_outputs(rd, "tokenize").summary),
                           _read(_outputs(rd, "refine").clusters))
    if ingest:
        damaged = len(ingest.get("damaged_files") or [])
        out.append(f"corpus      {ingest.get('docs_written', 0):,} docs ({ingest.get('docs_quarantined', 0):,} "
                   "quarantined)" + (f", {tok['doc_tokens']:,} tokens" if tok else "")
                   + (f"; {damaged} DAMAGED input file(s), the records after the damage are missing "
                      "(ingest/summary.json: damaged_files)" if damaged else ""))
    if refine:
        out.append(f"clusters    {refine.get('final_clusters')} final, from {refine.get('initial_clusters')} k-means "
                   f"clusters; {refine.get('pruned_docs', 0):,} docs dropped by quality")
    return out


def mixture_lines(rd: RunDir) -> list[str]:
    res = _read(_outputs(rd, "search").result)
    if not res or not res.get("best"):
        return []
    best, lower = res["best"], res.get("direction", "lower") == "lower"
    weights = {int(c): float(w) for c, w in best["weights"].items()}
    top = ", ".join(f"c{c}: {w:.2f}" for c, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w >= 0.005)
    kind = (res.get("target") or {}).get("kind", "target")
    line = [f"mixture     best of {len(res.get('trials', []))} proxy trials: {top}",
            f"            {kind} = {best['value']:.4f} ({'lower' if lower else 'higher'} is better)"]
    final, pick = res.get("final") or {}, res.get("predictor_pick") or {}
    if final.get("choice") == "predictor" and pick.get("weights"):
        chosen = {int(c): float(w) for c, w in pick["weights"].items()}
        top = ", ".join(f"c{c}: {w:.2f}" for c, w in sorted(chosen.items(), key=lambda kv: -kv[1]) if w >= 0.005)
        measured = f", measured {pick['value']:.4f}" if isinstance(pick.get("value"), (int, float)) else ", not measured"
        line.append(f"            answer (search.final=predictor): {top}; predicted {pick['predicted']:.4f}{measured}")
    for name, ref in (res.get("references") or {}).items():
        v = ref.get("value")
        if isinstance(v, (int, float)):
            gain = (v - best["value"]) if lower else (best["value"] - v)
            line.append(f"            vs {name} {v:.4f}: {'better' if gain > 0 else 'NOT better'} by {abs(gain):.4f}")
    return line


def minitron_lines(rd: RunDir) -> list[str]:
    out = []
    correct, distill = _outputs(rd, "correct"), _outputs(rd, "distill")
    for label, folder, metrics in (("teacher", correct.teacher, correct.metrics),
                                   ("student", distill.student, distill.metrics)):
        cfg = _read(folder / "config.json")
        if cfg is None:
            continue
        out.append(f"{label:<12}{_shape(cfg)}; {_losses(_read(metrics))}")
    prune = _read(_outputs(rd, "prune").summary)
    if prune:
        p = prune["params"]
        dropped = prune.get("kept", {}).get("dropped_layers") or []
        out.append(f"pruned      {_params(p['before'])} -> {_params(p['after'])} parameters ({p['ratio']:.0%})"
                   + (f"; dropped layers {dropped}" if dropped else ""))
    return out


def summary_lines(run_dir: str | Path) -> list[str]:
    rd = RunDir(run_dir)
    lines = []
    for part in (corpus_lines, mixture_lines, minitron_lines):
        try:
            lines += part(rd)
        except (KeyError, TypeError, ValueError) as e:  # a summary must never fail a finished run
            lines.append(f"({part.__name__.split('_')[0]}: no summary, {type(e).__name__}: {e})")
    page = _outputs(rd, "report").page
    if page.is_file():
        lines.append(f"report      {page}")
    return lines
