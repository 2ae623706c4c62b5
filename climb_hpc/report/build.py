"""``<run>/report.html``: one self-contained page over a run folder, built from the run folder alone.

Sections, in order: run summary, clusters, documents map, mixture search, final weights, training curves,
pruned architecture. A section whose stage has not written its outputs says so in one line; a section
that fails on a corrupt or unexpected file shows the error instead of its content. The PNGs are also
written to ``<run>/report/``. Same run folder, same page: no clock, sampling seeded by the run seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

from climb_hpc.report import architecture, clusters, mixture, summary, training
from climb_hpc.report.common import DEFAULTS, Ctx
from climb_hpc.report.page import Section, render_page
from climb_hpc.rundir import atomic_write

#: (anchor, title, builder) of every section, in page order
SECTIONS: tuple[tuple[str, str, Callable[[Ctx], Section]], ...] = (
    ("summary", "Run summary", summary.section),
    ("clusters", "Clusters", clusters.section),
    ("map", "Documents map", clusters.map_section),
    ("search", "Mixture search", mixture.search_section),
    ("weights", "Final weights", mixture.weights_section),
    ("training", "Training curves", training.section),
    ("architecture", "Pruned architecture", architecture.section),
)


def load_context(run_dir: Union[str, Path], **options: Optional[int]) -> Ctx:
    """The run folder and the options: given ones, else the run config's ``report.*``, else ``DEFAULTS``."""
    run = Path(run_dir).resolve()
    if not run.is_dir() or not ((run / "config.yaml").exists() or (run / "manifest.json").exists()):
        raise FileNotFoundError(f"{run} is not a climb-hpc run folder (no config.yaml or manifest.json)")
    cfg: dict[str, Any] = {}
    error = None
    try:
        from omegaconf import OmegaConf

        loaded = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=False)
        if not isinstance(loaded, dict):
            raise ValueError(f"expected a mapping, got {type(loaded).__name__}")
        cfg = loaded  # type: ignore[assignment]
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    saved = cfg.get("report") if isinstance(cfg.get("report"), dict) else {}
    opts = {}
    for k, default in DEFAULTS.items():
        v = options.get(k)
        v = saved.get(k) if v is None else v
        try:
            opts[k] = max(1, int(v)) if v is not None else default
        except (TypeError, ValueError):
            opts[k] = default
    return Ctx(run=run, cfg=cfg, cfg_error=error, **opts)


def build_sections(ctx: Ctx) -> list[Section]:
    """Every section; an exception in one becomes a note in its place."""
    out = []
    for anchor, title, build in SECTIONS:
        try:
            sec = build(ctx)
        except Exception as e:
            sec = Section(anchor, title)
            sec.note(f"could not build this section: {type(e).__name__}: {e}", warn=True)
        out.append(sec)
    return out


def write_report(run_dir: Union[str, Path], **options: Optional[int]) -> Path:
    """Write ``<run>/report.html`` (atomically) and its PNGs under ``<run>/report/``; returns the page's path.

    Options: ``max_points`` (documents on the 2-D map), ``dpi``, ``top_trials`` (proxy curves drawn)."""
    ctx = load_context(run_dir, **options)
    sections = build_sections(ctx)
    title = f"climb-hpc report: {ctx.run.name}"
    page = render_page(title, f"run folder {ctx.run}", sections)
    path = ctx.outputs("report").page
    atomic_write(path, page)
    return path
