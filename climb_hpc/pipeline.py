"""The stage graph and the controller loop: what is done, what to launch next.

Stages are named in ``cfg.pipeline.stages`` and looked up in ``climb_hpc.stage.REGISTRY``.
"""

from __future__ import annotations

import logging
import platform
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig, OmegaConf

from climb_hpc import __version__
from climb_hpc.config import ConfigError, differing_keys
from climb_hpc.rundir import RunDir
from climb_hpc.stage import Resources, Stage, get_stage

if TYPE_CHECKING:
    from climb_hpc.scheduler.base import Executor

log = logging.getLogger("climb_hpc")


class StageFailed(RuntimeError):
    """Tasks of a stage still failed after the allowed retries."""


def stage_names(cfg: DictConfig) -> list[str]:
    """The stages to run, in order, up to and including ``cfg.until``."""
    names = list(cfg.pipeline.stages)
    for n in names:
        get_stage(n)
    until = cfg.get("until")
    if until:
        if until not in names:
            raise ConfigError(f"until={until} is not a stage of this pipeline ({', '.join(names)})")
        names = names[: names.index(until) + 1]
    return names


def stage_resources(cfg: DictConfig, stage: Stage) -> Resources:
    """The stage's own resources, overridden by ``cluster.stage_resources.<stage>`` when given
    (``<family>`` for a stage family such as ``proxy/<group>``)."""
    res = stage.resources(cfg)
    override = OmegaConf.select(cfg, f"cluster.stage_resources.{stage.name.partition('/')[0]}")
    if override:
        fields = {k: v for k, v in OmegaConf.to_container(override).items()}  # type: ignore[union-attr]
        unknown = set(fields) - set(Resources.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"cluster.stage_resources.{stage.name}: unknown keys {sorted(unknown)}; "
                              f"allowed: {sorted(Resources.__dataclass_fields__)}")
        res = Resources(**{**res.__dict__, **fields})
    return res


def open_run(cfg: DictConfig, rd: Optional[RunDir] = None) -> RunDir:
    """Create the run folder, or check that a resumed run keeps the config it was started with.

    Call it holding the run folder's lock: it writes config.yaml and the manifest."""
    rd = rd or RunDir(cfg.run_dir)
    if rd.exists():
        diff = differing_keys(rd.load_config(), cfg)
        if diff:
            raise ConfigError(
                f"run folder {rd.path} was started with a different config ({', '.join(diff[:8])} differ). "
                "Resume it without those overrides, or start a new run with another run_dir=."
            )
        rd.save_config(cfg)  # only runtime keys (cluster, until, ...) can differ: record this launch's
    else:
        rd.save_config(cfg)
        rd.update_manifest(created=time.time(), climb_hpc=__version__, python=platform.python_version(),
                           host=socket.gethostname(), stages={})
    return rd


@dataclass
class StageResult:
    name: str
    num_tasks: int
    ran: int
    seconds: float
    skipped: bool = False  # complete before this launch: nothing was done


def run_stage(cfg: DictConfig, rd: RunDir, stage: Stage, executor: Executor) -> Optional[StageResult]:
    """Run the stage's unfinished tasks (retrying failures), then its finalize. None on dry run."""
    t0 = time.time()
    if stage.drive is not None:
        log.info("stage %s: driving its sub-stages (%s)", stage.name, executor.describe(stage_resources(cfg, stage)))
        rd.update_manifest(stages={stage.name: {"num_tasks": 0, "driver": True}})
        if executor.cfg.get("dry_run"):
            print(f"dry run: stage {stage.name} launches its arrays as it goes; it needs the earlier stages' "
                  "outputs, so nothing is written for it")
            return None
        stage.drive(cfg, rd, executor)
        return _complete(cfg, rd, stage, 0, 0, t0)
    n, res = prepare_stage(cfg, rd, stage)
    todo = [t for t in range(n) if not rd.is_done(stage.name, t)]
    ran = len(todo)
    if todo:
        log.info("stage %s: %d of %d tasks to run (%s)", stage.name, len(todo), n, executor.describe(res))
    retries = int(cfg.cluster.get("max_retries", 1))
    for attempt in range(retries + 1):
        if not todo:
            break
        if attempt:
            log.warning("stage %s: retrying %d failed task(s) (attempt %d of %d)", stage.name, len(todo), attempt, retries)
        if executor.run_tasks(stage, todo, res) == "dry_run":
            return None
        todo = [t for t in todo if not rd.is_done(stage.name, t)]
    if todo:
        failed = rd.failures(stage.name)
        lines = [f"  task {t}: {(failed.get(t) or {}).get('error', 'no marker written').splitlines()[0]}"
                 f"  (log: {(failed.get(t) or {}).get('log') or rd.log_dir(stage.name)})" for t in todo[:10]]
        raise StageFailed(
            f"stage {stage.name}: {len(todo)} of {n} task(s) failed after {retries} retr{'y' if retries == 1 else 'ies'}:\n"
            + "\n".join(lines)
            + "\nFix the cause and run the same command again: finished tasks are kept."
        )
    return _complete(cfg, rd, stage, n, ran, t0)


def prepare_stage(cfg: DictConfig, rd: RunDir, stage: Stage) -> tuple[int, Resources]:
    """Plan a stage before its tasks run: its task count and resources, recorded in the manifest.

    Planning may create what the tasks share, once (embed: ``layout.json`` and the Zarr array's metadata),
    so it runs in the controller, or under the run folder's lock for a hand launch (``climb_hpc.task``)."""
    n = stage.num_tasks(cfg, rd)
    res = stage_resources(cfg, stage)
    rd.update_manifest(stages={stage.name: {"num_tasks": n, "resources": res.__dict__}})
    return n, res


def finalize_stage(cfg: DictConfig, rd: RunDir, stage: Stage) -> StageResult:
    """Complete a stage whose tasks were launched by hand: every task must have its marker; then the
    stage's finalize and its stage marker, as the controller does after its array."""
    t0 = time.time()
    n, _ = prepare_stage(cfg, rd, stage)  # the same plan (a changed one is refused by the stage)
    missing = [t for t in range(n) if not rd.is_done(stage.name, t)]
    if missing:
        failed = rd.failures(stage.name)
        errors = [f"\n  task {t}: {(failed[t].get('error') or 'failed').splitlines()[0]}  (log: {failed[t].get('log')})"
                  for t in missing[:10] if t in failed]
        raise StageFailed(
            f"stage {stage.name}: {len(missing)} of {n} task(s) have no completion marker: "
            + ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "") + "".join(errors)
            + "\nRun them again (tasks with a marker skip), then finalize again.")
    return _complete(cfg, rd, stage, n, 0, t0)


def _complete(cfg: DictConfig, rd: RunDir, stage: Stage, n: int, ran: int, t0: float) -> StageResult:
    """Finalize, then the stage marker (last: a marker means the outputs are complete)."""
    if stage.finalize is not None:
        stage.finalize(cfg, rd)
    seconds = time.time() - t0
    rd.mark_stage_complete(stage.name, num_tasks=n, seconds=round(seconds, 3))
    rd.update_manifest(stages={stage.name: {"num_tasks": n, "completed": time.time()}})
    return StageResult(stage.name, n, ran, seconds)


def run_pipeline(cfg: DictConfig) -> list[StageResult]:
    """Run or resume the pipeline in ``cfg.run_dir``; finished tasks and stages are never rerun."""
    from climb_hpc.scheduler import make_executor

    names = stage_names(cfg)
    results: list[StageResult] = []
    with RunDir(cfg.run_dir) as rd:  # the exclusive controller lock, before anything is written
        open_run(cfg, rd)
        executor = make_executor(cfg, rd)
        for name in names:
            if rd.stage_complete(name):
                log.info("stage %s: already complete, skipped", name)
                results.append(StageResult(name, rd.manifest().get("stages", {}).get(name, {}).get("num_tasks", 0), 0, 0.0,
                                           skipped=True))
                continue
            r = run_stage(cfg, rd, get_stage(name), executor)
            if r is None:  # dry run: later stages need this one's outputs
                break
            results.append(r)
    return results


def status(rd: RunDir) -> list[dict]:
    """Per stage: done / total / failed (with log paths), from the run folder alone."""
    cfg = rd.load_config()
    manifest = rd.manifest().get("stages", {})
    rows = []
    for name in cfg.pipeline.stages:
        total = manifest.get(name, {}).get("num_tasks")
        done = len(rd.done_tasks(name))
        failed = rd.failures(name)
        rows.append({
            "stage": name,
            "done": done,
            "total": total,
            "complete": rd.stage_complete(name),
            "failed": len(failed),
            "failures": [{"task": t, "error": f.get("error", "").splitlines()[0] if f.get("error") else "",
                          "log": f.get("log")} for t, f in sorted(failed.items())],
            "logs": str(rd.path / "logs" / name),
        })
    return rows


