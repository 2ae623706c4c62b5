"""What every report section shares: the run folder (read only), the options, safe readers, PNG output.

Readers raise ``ReportDataError`` naming the file on a corrupt input; the page builder turns any error in
a section into a note, so a broken file never stops the report. Nothing here creates a folder in the run
but ``report/``.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from climb_hpc.report.page import Section  # noqa: E402
from climb_hpc.rundir import RunDir, atomic_write  # noqa: E402

#: Defaults of the report's options (``climb-hpc report run_dir=DIR max_points=N dpi=N top_trials=N``).
DEFAULTS = {"max_points": 5000, "dpi": 100, "top_trials": 5}


class ReportDataError(RuntimeError):
    """A run-folder file the report needs is unreadable or not what its stage writes."""


@dataclass
class Ctx:
    """The run folder being reported on and the report's options."""

    run: Path
    cfg: dict[str, Any]                       # the run's config.yaml as plain data ({} if unreadable)
    cfg_error: Optional[str] = None           # why config.yaml could not be read
    max_points: int = DEFAULTS["max_points"]  # documents on the 2-D map
    dpi: int = DEFAULTS["dpi"]
    top_trials: int = DEFAULTS["top_trials"]  # proxy trials whose curves are drawn
    pngs: list[Path] = field(default_factory=list)

    @property
    def rd(self) -> RunDir:
        return RunDir(self.run)

    def outputs(self, stage: str) -> Any:
        """A stage's outputs (its ``Outputs`` accessor): the report spells no other stage's file names."""
        from climb_hpc.stage import get_stage

        return get_stage(stage).outputs(self.rd)

    @property
    def out(self) -> Path:
        return self.outputs("report").dir

    def rel(self, path: Union[str, Path]) -> str:
        """``path`` as shown on the page: relative to the run folder."""
        p = self.path(path)
        return str(p.relative_to(self.run)) if p.is_relative_to(self.run) else str(p)

    def path(self, path: Union[str, Path]) -> Path:
        return Path(path) if Path(path).is_absolute() else self.run / path

    # ---------------------------------------------------------------- config
    def conf(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key, ``default`` when any level is missing."""
        node: Any = self.cfg
        for k in dotted.split("."):
            if not isinstance(node, dict) or k not in node:
                return default
            node = node[k]
        return node

    @property
    def seed(self) -> int:
        try:
            return int(self.conf("seed", 0) or 0)
        except (TypeError, ValueError):
            return 0

    def in_pipeline(self, stage: str) -> bool:
        return stage in (self.conf("pipeline.stages") or [])

    # ---------------------------------------------------------------- files
    def has(self, path: Union[str, Path]) -> bool:
        return self.path(path).exists()

    def json(self, path: Union[str, Path]) -> Any:
        """A file of the run folder parsed; ``ReportDataError`` when it is unreadable or not JSON."""
        try:
            return json.loads(self.path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReportDataError(f"{self.rel(path)}: unreadable ({type(e).__name__}: {e})") from None

    def jsonl(self, path: Union[str, Path]) -> list[dict[str, Any]]:
        """The records of a JSON-lines log; lines that do not parse (a torn last line) are skipped."""
        try:
            lines = self.path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ReportDataError(f"{self.rel(path)}: unreadable ({type(e).__name__}: {e})") from None
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def missing(self, sec: Section, stage: str, what: Union[str, Path]) -> None:
        """The one-line note of a section whose stage has not written its outputs."""
        what = self.rel(what)
        if self.rd.stage_complete(stage):
            sec.note(f"stage {stage} is complete, but {what} is missing", warn=True)
        elif self.rd.marker_dir(stage).is_dir() or self.rd.failed_dir(stage).is_dir():
            sec.note(f"stage {stage} not finished yet ({what} not found)")
        else:
            extra = "" if self.in_pipeline(stage) or not self.cfg else "; it is not in this run's pipeline.stages"
            sec.note(f"stage {stage} not run yet ({what} not found{extra})")

    # ---------------------------------------------------------------- figures
    def figure(self, sec: Section, fig: Figure, name: str, alt: str, caption: str = "") -> bytes:
        """Render ``fig`` to PNG, write it to ``<run>/report/<name>`` (atomically) and inline it in ``sec``."""
        png = png_bytes(fig, self.dpi)
        self.save_png(name, png)
        sec.image(png, alt, caption)
        return png

    def save_png(self, name: str, png: bytes) -> None:
        path = self.out / name
        atomic_write(path, png)
        self.pngs.append(path)


def png_bytes(fig: Figure, dpi: int) -> bytes:
    """A figure as PNG bytes, without the (version-dependent) Software tag: same figure, same bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def message(ax: Any, text: str) -> None:
    """Grey boxed text in place of a plot."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
