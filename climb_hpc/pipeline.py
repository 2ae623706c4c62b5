"""The stage graph and the controller loop: what is done, what to launch next.

Stages are named in ``cfg.pipeline.stages`` and looked up in ``climb_hpc.stage.REGISTRY``.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig, OmegaConf

from climb_hpc._version import __version__
from climb_hpc.config import ConfigError, differing_keys
from climb_hpc.errors import UserError, one_line
from climb_hpc.rundir import RunDir
from climb_hpc.stage import (
    AnyStage,
    DriverStage,
    Resources,
    RunStageFn,
    Stage,
    get_stage,
    output_roots,
    stage_resources,
)

if TYPE_CHECKING:
    from climb_hpc.scheduler.base import Executor

log = logging.getLogger("climb_hpc")


class StageFailed(RuntimeError):
    """Tasks of a stage still failed after the allowed retries."""


class StageInputError(UserError):
    """Tasks of a stage failed on the user's input or config (retrying cannot help): one line, rc 2."""


#: The stage that first reads each config section; a changed key affects that stage and all after it.
#: Most specific prefix first. Keys not listed affect the first stage of the pipeline.
CONFIG_READERS: tuple[tuple[str, str], ...] = (
    ("corpus", "ingest"), ("seed", "ingest"), ("embed", "embed"), ("quality", "quality"),
    ("clusters.kmeans", "kmeans"), ("clusters.assign", "assign"), ("clusters.refine", "refine"),
    ("tokenize", "tokenize"), ("proxy.holdout_fraction", "tokenize"),
    ("proxy", "search"), ("target", "search"), ("search.final", "mix"), ("search", "search"), ("mix.export", "export"),
    ("mix", "mix"),
    ("minitron.importance", "importance"), ("minitron.prune", "prune"), ("minitron.distill", "distill"),
    ("minitron", "correct"), ("selftest.counter_tasks", "counter"), ("selftest.steps", "counter"),
    ("selftest.step_s", "counter"), ("selftest.ckpt_every", "counter"), ("selftest.dist_nodes", "dist"),
    ("selftest", "noop"),
)
#: Stages run on their own, after a pipeline (``climb-hpc export``): their keys change nothing else.
OUTSIDE_PIPELINE = ("export",)
#: Folders a stage family owns besides its own (the search's proxy trials).
OWNED_FAMILIES = {"search": "proxy"}


def stage_names(cfg: DictConfig) -> list[str]:
    """The stages to run, in order, up to and including ``cfg.until``."""
    names = list(cfg.pipeline.stages)
    if not names:
        raise ConfigError("pipeline.stages is empty: name the stages to run, e.g. pipeline.stages=[ingest,embed]")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"pipeline.stages names {', '.join(repeated)} more than once; list each stage once")
    for n in names:
        get_stage(n)
    until = cfg.get("until")
    if until:
        if until not in names:
            raise ConfigError(f"until={until} is not a stage of this pipeline ({', '.join(names)})")
        names = names[: names.index(until) + 1]
    return names


def check_order(cfg: DictConfig, names: list[str]) -> None:
    """Every stage's inputs (``Stage.reads``) come from a stage that runs before it in ``pipeline.stages``:
    a ConfigError names the first stage that would read outputs nobody writes."""
    order = list(cfg.pipeline.stages)
    for name in names:
        for need in get_stage(name).reads(cfg):
            if need not in order:
                raise ConfigError(f"stage {name} reads the outputs of stage {need}, which pipeline.stages does not "
                                  f"run; add it before {name}: pipeline.stages=[{','.join(_with(order, need, name))}]")
            if order.index(need) > order.index(name):
                raise ConfigError(f"stage {name} reads the outputs of stage {need}, which pipeline.stages runs after "
                                  f"it; put {need} first: pipeline.stages=[{','.join(_with(order, need, name))}]")


def _with(order: list[str], need: str, before: str) -> list[str]:
    """``order`` with ``need`` moved (or added) just before ``before``."""
    out = [n for n in order if n != need]
    out.insert(out.index(before), need)
    return out


def check_config(cfg: DictConfig) -> list[str]:
    """Everything about the config that can be checked before the run folder is touched: values, the stage
    list, every stage's resources (and, on Slurm, its sbatch options). Returns the stages to run."""
    from climb_hpc.corpus.identity import check as check_tokenizers
    from climb_hpc.minitron.presets import check_given_teacher
    from climb_hpc.proxy.model import check_init as check_proxy_init
    from climb_hpc.validate import check_input_paths, validate

    validate(cfg)
    names = stage_names(cfg)
    check_order(cfg, names)
    check_input_paths(cfg, names)
    check_given_teacher(cfg, names)
    check_tokenizers(cfg, names)  # the run's tokenizer is the given checkpoints' (climb_hpc/corpus/identity.py)
    check_proxy_init(cfg, names)  # proxy.init's weights fit its config and cover its tokenizer
    for name in names:
        stage = get_stage(name)
        res = stage_resources(cfg, stage)
        if cfg.cluster.get("executor") == "slurm":
            from climb_hpc.scheduler.slurm_options import submitit_parameters

            submitit_parameters(cfg.cluster, res, job_name=f"climb-{name}", checkpointable=stage.checkpointable)
    return names


def _reader(key: str, names: list[str]) -> Optional[str]:
    """The first stage of ``names`` that reads ``key``; None for a key of a stage the pipeline does not run
    (``mix.export.*`` when export is not in it: `climb-hpc export` runs it on its own)."""
    for prefix, stage in CONFIG_READERS:
        if key == prefix or key.startswith(prefix + "."):
            if stage in names:
                return stage
            if stage in OUTSIDE_PIPELINE:
                return None
    return names[0]


def affected_stages(changed: list[str], old: DictConfig, new: DictConfig) -> list[str]:
    """The stages whose outputs depend on the changed keys: the first reader of any of them, and every
    stage after it in the pipeline."""
    names = list(new.pipeline.stages)
    first = len(names)
    for key in changed:
        if _reader(key, names) is None:
            continue
        if key.split(".")[0] == "pipeline":
            old_names = list(old.pipeline.stages)
            same = next((i for i, (a, b) in enumerate(zip(old_names, names, strict=False)) if a != b), min(len(old_names), len(names)))
            first = min(first, same if same < len(old_names) else len(names))
        else:
            first = min(first, names.index(_reader(key, names)))
    return names[first:]


def _value(cfg: DictConfig, key: str) -> object:
    v = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def open_run(cfg: DictConfig, rd: Optional[RunDir] = None, executor: Optional[Executor] = None) -> RunDir:
    """Create the run folder, or resume one with the config it was started with.

    A resumed run may change where and how it runs (cluster, until ...). It may change what it computes
    only where no stage that depends on the change has completed: those stages are reset (their markers
    and outputs removed) and run again with the new values. Call it holding the run folder's lock."""
    rd = rd or RunDir(cfg.run_dir)
    if rd.exists():
        saved = rd.load_config()
        diff = differing_keys(saved, cfg)
        if diff:
            shown = "; ".join(f"{k}: {_value(saved, k)!r} -> {_value(cfg, k)!r}" for k in diff[:6])
            affected = affected_stages(diff, saved, cfg)
            complete = [n for n in affected if rd.stage_complete(n)]
            if complete:
                raise ConfigError(
                    f"run folder {rd.path} was started with other values ({shown}), and stage {complete[0]}, "
                    f"which depends on them, is complete. Resume without changing them, or start a new run "
                    f"with another run_dir=")
            busy = [n for n in affected if executor is not None and executor.active_tasks(n)]
            if busy:
                raise ConfigError(f"the config changed ({shown}) but stage {busy[0]} still has jobs queued or "
                                  "running from an earlier launch: cancel them (scancel) or let them end, then "
                                  "run again")
            reset = [n for n in affected
                     if any(p.exists() for p in (rd.marker_dir(n), *output_roots(get_stage(n), rd)))]
            for n in reset:
                rd.reset_stage(n, output_roots(get_stage(n), rd))
                if n in OWNED_FAMILIES:
                    rd.reset_stage(OWNED_FAMILIES[n])
            if reset:
                log.warning("config changed (%s): stage(s) %s had not completed; they start again with the new "
                            "values", shown, ", ".join(reset))
            else:
                log.info("config changed (%s): no stage that depends on it has started", shown)
        rd.save_config(cfg)  # the launch's values: runtime keys, and changes accepted above
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


def run_stage(cfg: DictConfig, rd: RunDir, stage: AnyStage, executor: Executor) -> Optional[StageResult]:
    """Run the stage's unfinished tasks (retrying failures), then its finalize; a driver stage's drive.
    None on dry run."""
    t0 = time.time()
    if isinstance(stage, DriverStage):
        log.info("stage %s: driving its sub-stages (%s)", stage.name, executor.describe(stage_resources(cfg, stage)))
        rd.update_manifest(stages={stage.name: {"num_tasks": 0, "driver": True}})
        if executor.cfg.get("dry_run"):
            print(f"dry run: stage {stage.name} launches its arrays as it goes; it needs the earlier stages' "
                  "outputs, so nothing is written for it")
            return None
        with _recorded(rd, stage.name, "drive"):
            stage.drive(cfg, rd, stage_runner(cfg, rd, executor))
        return _complete(cfg, rd, stage, 0, 0, t0)
    with _recorded(rd, stage.name, "prepare"):
        n, res = prepare_stage(cfg, rd, stage)
    todo = [t for t in range(n) if not rd.is_done(stage.name, t)]
    ran = len(todo)
    if todo:
        log.info("stage %s: %d of %d tasks to run (%s)", stage.name, len(todo), n, executor.describe(res))
    retries = int(cfg.cluster.max_retries)
    for attempt in range(retries + 1):
        if not todo:
            break
        if attempt:
            log.warning("stage %s: retrying %d failed task(s) (attempt %d of %d)", stage.name, len(todo), attempt, retries)
        if executor.run_tasks(stage, todo, res) == "dry_run":
            return None
        todo = [t for t in todo if not rd.is_done(stage.name, t)]
        _raise_user_errors(rd, stage.name, todo)
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


def stage_runner(cfg: DictConfig, rd: RunDir, executor: Executor) -> RunStageFn:
    """What a driver stage runs its sub-stages with: ``run_stage(stage)``, on this run and executor."""
    return lambda stage: run_stage(cfg, rd, stage, executor)


@contextlib.contextmanager
def _recorded(rd: RunDir, stage: str, step: str) -> Iterator[None]:
    """Record a failure of the stage's own work (not a task's) for `climb-hpc status`, and re-raise it."""
    try:
        yield
    except Exception as e:
        user = isinstance(e, UserError)
        rd.mark_stage_failed(stage, step, one_line(str(e)) if user else f"{type(e).__name__}: {e}", user)
        raise


def _raise_user_errors(rd: RunDir, stage: str, todo: list[int]) -> None:
    """StageInputError when every failed task failed on the user's input or config."""
    failed = rd.failures(stage)
    errors = [failed.get(t) or {} for t in todo]
    if todo and all(e.get("user_error") for e in errors):
        more = f" ({len(todo) - 1} more task(s) failed the same way: climb-hpc status run_dir={rd.path})" if len(todo) > 1 else ""
        raise StageInputError(f"stage {stage}, task {todo[0]}: {one_line(errors[0].get('error', ''))}{more}. "
                              "Fix it and run the same command again: finished tasks are kept")


def prepare_stage(cfg: DictConfig, rd: RunDir, stage: Stage) -> tuple[int, Resources]:
    """Prepare a stage before its tasks run (``Stage.prepare``: what the tasks share, laid out once, e.g.
    embed's ``layout.json`` and Zarr array), then count its tasks and record them and their resources in the
    manifest. Runs in the controller, or under the run folder's lock for a hand launch (``climb_hpc.task``)."""
    if stage.prepare is not None:
        stage.prepare(cfg, rd)
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


def hand_launch(run_dir: str, stage_name: str, action: str) -> int:
    """``prepare`` (returns the task count) or ``finalize`` a stage whose tasks are launched by hand
    (``python -m climb_hpc.task RUN STAGE prepare|finalize``), under the run folder's lock."""
    with RunDir(run_dir) as rd:
        cfg = rd.load_config()
        stage = get_stage(stage_name)
        names = list(cfg.pipeline.stages)
        if stage_name not in names or not isinstance(stage, Stage):
            raise ConfigError(f"{stage_name} is not an array stage of this run's pipeline ({', '.join(names)})")
        before = [s for s in stage.reads(cfg) if not rd.stage_complete(s)]
        if before:
            raise ConfigError(f"stage {stage_name} reads the outputs of stages that are not complete: "
                              f"{', '.join(before)}. Run them first: climb-hpc run run_dir={rd.path} "
                              f"until={max(before, key=lambda n: names.index(n) if n in names else -1)}")
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the answer alone
            if action == "prepare":
                n, _ = prepare_stage(cfg, rd, stage)
            elif rd.stage_complete(stage_name):
                n = -1
                log.info("stage %s is already complete", stage_name)
            else:
                n = finalize_stage(cfg, rd, stage).num_tasks
                log.info("stage %s complete: %d task(s)", stage_name, n)
    return n


def _complete(cfg: DictConfig, rd: RunDir, stage: AnyStage, n: int, ran: int, t0: float) -> StageResult:
    """Finalize, then the stage marker (last: a marker means the outputs are complete)."""
    if isinstance(stage, Stage) and stage.finalize is not None:
        with _recorded(rd, stage.name, "finalize"):
            stage.finalize(cfg, rd)
    shutil.rmtree(rd.tmp_dir(stage.name), ignore_errors=True)  # a temp never outlives its stage
    seconds = time.time() - t0
    rd.mark_stage_complete(stage.name, num_tasks=n, seconds=round(seconds, 3))
    rd.update_manifest(stages={stage.name: {"num_tasks": n, "completed": time.time()}})
    return StageResult(stage.name, n, ran, seconds)


def run_pipeline(cfg: DictConfig) -> list[StageResult]:
    """Run or resume the pipeline in ``cfg.run_dir``; finished tasks and stages are never rerun."""
    from climb_hpc.scheduler import make_executor

    names = check_config(cfg)  # before anything is written: a wrong value leaves no trace to undo
    results: list[StageResult] = []
    rd = RunDir(cfg.run_dir)
    executor = make_executor(cfg, rd)  # Slurm's commands checked, nothing written yet
    with rd:  # the exclusive controller lock
        open_run(cfg, rd, executor)
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


def run_one_stage(cfg: DictConfig, name: str) -> StageResult:
    """Run one stage on a run folder, outside its pipeline (``climb-hpc export``): the stages it reads must be
    complete. A complete stage whose own settings changed is reset and run again."""
    from climb_hpc.scheduler import make_executor

    stage = get_stage(name)
    rd = RunDir(cfg.run_dir)
    executor = make_executor(cfg, rd)
    with rd:
        saved = rd.load_config() if rd.exists() else None
        open_run(cfg, rd, executor)
        before = [s for s in stage.reads(cfg) if not rd.stage_complete(s)]
        if before:
            raise ConfigError(f"stage {name} reads the outputs of stages that are not complete: {', '.join(before)}; "
                              f"finish them first: climb-hpc run run_dir={rd.path}")
        mine = [k for k in differing_keys(saved, cfg) if _reader(k, [name]) == name] if saved is not None else []
        if rd.stage_complete(name) and mine:
            rd.reset_stage(name, output_roots(stage, rd))
        if rd.stage_complete(name):
            log.info("stage %s: already complete, skipped", name)
            return StageResult(name, rd.manifest().get("stages", {}).get(name, {}).get("num_tasks", 0), 0, 0.0,
                               skipped=True)
        r = run_stage(cfg, rd, stage, executor)
    if r is None:
        raise ConfigError(f"stage {name}: nothing runs in a dry run")
    return r


def _status_row(rd: RunDir, name: str, total: Optional[int]) -> dict:
    failed = rd.failures(name)
    stage_failure = rd.stage_failure(name)
    return {
        "stage": name,
        "done": len(rd.done_tasks(name)),
        "total": total,
        "complete": rd.stage_complete(name),
        "failed": len(failed) + (stage_failure is not None),
        "stage_failure": stage_failure,
        "failures": [{"task": t, "error": f.get("error", "").splitlines()[0] if f.get("error") else "",
                      "log": f.get("log")} for t, f in sorted(failed.items())],
        "logs": str(rd.path / "logs" / name),
    }


def status(rd: RunDir) -> list[dict]:
    """Per stage: done / total / failed (with log paths), from the run folder alone. A driver stage (the
    search) counts the tasks of the arrays it launched (its rounds of proxy trials), listed under ``parts``."""
    cfg = rd.load_config()
    manifest = rd.manifest().get("stages", {})
    rows = []
    for name in cfg.pipeline.stages:
        row = _status_row(rd, name, manifest.get(name, {}).get("num_tasks"))
        family = OWNED_FAMILIES.get(name)
        if family:
            parts = [_status_row(rd, k, v.get("num_tasks")) for k, v in manifest.items() if k.startswith(family + "/")]
            row["parts"] = parts
            if parts:
                row["done"] = sum(p["done"] for p in parts)
                row["total"] = sum(p["total"] or 0 for p in parts)
                row["failed"] += sum(p["failed"] for p in parts)
                row["failures"] = [{**f, "task": f"{p['stage']}/{f['task']}"} for p in parts for f in p["failures"]]
        rows.append(row)
    return rows


