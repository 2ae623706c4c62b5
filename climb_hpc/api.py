"""The Python API beside the CLI: the same composition, checks and resume rules as `climb-hpc run`.

    from climb_hpc import Pipeline, status

    p = Pipeline.from_overrides(["run_dir=runs/api_demo", "until=ingest", "corpus.builtin.docs_per_domain=20"])
    p.run()                                  # runs (or resumes) the pipeline; raises on failure
    for row in status("runs/api_demo"):      # per stage: done / total / failed / complete
        print(row["stage"], row["done"], row["total"], row["complete"])
    print("\\n".join(p.summary()))

A user error (a wrong value, a damaged input file) raises :class:`climb_hpc.errors.UserError` with the
one-line message the CLI prints; a stage whose tasks keep failing raises ``StageFailed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

__all__ = ["Pipeline", "status"]


@dataclass
class Pipeline:
    """A run folder and the config it runs with."""

    cfg: DictConfig
    profile: Optional[str] = None  # the cluster profile, for preflight (None: the one cfg's job shapes match)

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] = ()) -> Pipeline:
        """``key=value`` overrides as on the command line. For an existing run folder: its saved config,
        changed only at the keys given (see ``climb_hpc.config.compose_for_run``)."""
        from climb_hpc.config import compose_for_run
        from climb_hpc.preflight import profile_for

        cfg = compose_for_run(list(overrides))
        return cls(cfg, profile_for(list(overrides), cfg))

    @classmethod
    def resume(cls, run_dir: str | Path) -> Pipeline:
        """An existing run, with the config it was saved with."""
        return cls.from_overrides([f"run_dir={run_dir}"])

    @property
    def run_dir(self) -> Path:
        from climb_hpc.rundir import RunDir

        return RunDir(self.cfg.run_dir).path

    def run(self) -> list[Any]:
        """Run or resume every stage up to ``until``, after preflight (unless ``preflight=skip``: a failing check
        raises ``PreflightFailed`` before anything is written); returns one ``StageResult`` a stage."""
        from climb_hpc.pipeline import run_pipeline
        from climb_hpc.preflight import gate, profile_for

        if self.cfg.preflight == "run":
            gate(self.cfg, self.profile or profile_for([], self.cfg))
        return run_pipeline(self.cfg)

    def status(self) -> list[dict]:
        return status(self.run_dir)

    def summary(self) -> list[str]:
        """The closing summary `climb-hpc run` prints (clusters, mixture, teacher, student ...)."""
        from climb_hpc.summary import summary_lines

        return summary_lines(str(self.run_dir))


def status(run_dir: str | Path) -> list[dict]:
    """Per stage of a run folder: ``stage, done, total, failed, complete, failures, stage_failure, logs``."""
    from climb_hpc.pipeline import status as _status
    from climb_hpc.rundir import RunDir

    return _status(RunDir(run_dir))
