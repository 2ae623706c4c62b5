"""What a stage is: a plain function over the run folder, plus what it reads, writes, needs and costs.

Stages know nothing of Slurm. The controller runs an array stage (:class:`Stage`) in four steps:

    prepare(cfg, run_dir)          once, under the run folder's lock: lays out what the tasks share
    num_tasks(cfg, run_dir)        how many tasks: reads the config and what prepare wrote, writes nothing
    run(cfg, run_dir, task)        each task, wherever it lands (this process, a subprocess, a Slurm array
                                   element); idempotent: it overwrites its own outputs only
    finalize(cfg, run_dir)         once, after every task: checks and merges; then the stage's marker

A :class:`DriverStage` (the search, the report) runs in the controller instead and launches other stages
as it goes. Every stage declares the stages it reads (``reads``: the controller refuses a pipeline that
does not run them first) and where it writes (``outputs``: the one place its file names are spelled; other
modules ask that accessor).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from omegaconf import DictConfig, OmegaConf, open_dict

from climb_hpc.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from climb_hpc.estimate import EstimateFn
    from climb_hpc.rundir import RunDir


@dataclass(frozen=True)
class Resources:
    """What ONE task of a stage needs. Slurm options that are not per-stage live in cluster config."""

    cpus: int = 1
    gpus: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    mem_gb: Optional[float] = None
    time_min: int = 60

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @classmethod
    def from_config(cls, section: Mapping[str, Any], **defaults: Any) -> Resources:
        """From a stage's config section (keys cpus, gpus, nodes, tasks_per_node, mem_gb, time_min).

        A key the section lacks (or sets to null) takes ``defaults``, then the field's default."""
        given = {k: section.get(k) for k in cls.__dataclass_fields__ if section.get(k) is not None}
        return cls(**{**defaults, **given})


TaskFn = Callable[[DictConfig, "RunDir", int], None]
CountFn = Callable[[DictConfig, "RunDir"], int]
ResourcesFn = Callable[[DictConfig], Resources]
PrepareFn = Callable[[DictConfig, "RunDir"], None]
FinalizeFn = Callable[[DictConfig, "RunDir"], None]
ReadsFn = Callable[[DictConfig], tuple[str, ...]]
#: outputs(run_dir) -> the stage's outputs as a frozen dataclass of paths (its module's ``Outputs``)
OutputsFn = Callable[["RunDir"], Any]
#: What a driver stage is handed: run_stage(stage) runs that stage in the controller as the pipeline runs its
#: own (its unfinished tasks, the retries, its finalize) and returns once it is complete; None on a dry run.
RunStageFn = Callable[["Stage"], Any]
DriveFn = Callable[[DictConfig, "RunDir", RunStageFn], None]  # (cfg, run_dir, run_stage)


def reads_nothing(cfg: DictConfig) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Stage:
    """A pipeline step that runs as an array of tasks.

    name:          folder name of its outputs and of its markers
    run:           run(cfg, run_dir, task) -> None; writes outputs, never the marker (the caller does)
    num_tasks:     how many tasks. Side-effect free: it reads the config and what ``prepare`` laid out
    resources:     what one task needs
    prepare:       optional, runs once in the controller (or a hand launch's ``prepare``) under the run
                   folder's lock before any task: lays out what the tasks share (a plan, Zarr arrays, the
                   built-in corpus). Idempotent: a stored plan is checked against the config, not redone
    finalize:      optional, runs once in the controller after every task is done (checks, merges);
                   the stage counts as complete only after it returns
    checkpointable: the task polls ``climb_hpc.preempt.requested()``, saves its state and raises
                   ``Preempted``; the scheduler then requeues it and it resumes from that state
    section:       the dotted config key of the stage's own settings (``minitron.correct``); a task sees the
                   resolved resources there (:func:`task_config`)
    reads:         reads(cfg) -> the stages whose outputs it reads under this config; the controller
                   refuses a ``pipeline.stages`` that does not run them before it (``pipeline.check_order``)
    outputs:       outputs(run_dir) -> its outputs' paths (a frozen dataclass). The only place that spells
                   them: other modules ask this accessor (tests/test_stage_contract.py holds it)
    estimate:      estimate(cfg, inputs, ledger) -> Work: what the stage costs for the plan's corpus size (FLOP or
                   core-seconds, its tasks, a task's memory when known; ``climb_hpc.estimate``), for
                   ``climb-hpc plan``; None: the plan lists it as "no estimate"
    """

    name: str
    run: TaskFn
    num_tasks: CountFn
    resources: ResourcesFn = lambda cfg: Resources()
    prepare: Optional[PrepareFn] = None
    finalize: Optional[FinalizeFn] = None
    checkpointable: bool = False
    section: Optional[str] = None
    reads: ReadsFn = reads_nothing
    outputs: Optional[OutputsFn] = None
    estimate: Optional[EstimateFn] = None


@dataclass(frozen=True)
class DriverStage:
    """A pipeline step that runs in the controller and launches other stages as it goes (the search: one
    array of proxy trials a round) or does a small job there (the report).

    drive(cfg, run_dir, run_stage) runs its sub-stages through ``run_stage`` (``climb_hpc.proxy.run_mixtures``)
    and never touches the executor or Slurm itself; it must be idempotent (a relaunch replays finished
    rounds from the run folder). ``resources`` are what its sub-stages' tasks need, for the plan; the other
    fields mean what they mean on :class:`Stage`."""

    name: str
    drive: DriveFn
    resources: ResourcesFn = lambda cfg: Resources()
    section: Optional[str] = None
    reads: ReadsFn = reads_nothing
    outputs: Optional[OutputsFn] = None
    estimate: Optional[EstimateFn] = None
    checkpointable: bool = False  # the controller's own work is replayed on a relaunch, not checkpointed


AnyStage = Union[Stage, DriverStage]


#: Stage name -> "module:ATTR", imported lazily so a task process imports only its own stage.
REGISTRY: dict[str, str] = {
    "ingest": "climb_hpc.corpus.ingest:STAGE",
    "embed": "climb_hpc.embed.stage:STAGE",
    "quality": "climb_hpc.clusters.quality:STAGE",
    "kmeans": "climb_hpc.clusters.kmeans:STAGE",
    "assign": "climb_hpc.clusters.assign:STAGE",
    "refine": "climb_hpc.clusters.refine:STAGE",
    "tokenize": "climb_hpc.corpus.tokenize:STAGE",
    "search": "climb_hpc.search.stage:STAGE",
    "mix": "climb_hpc.search.mix:STAGE",
    "export": "climb_hpc.search.export:STAGE",  # not in the default pipeline: `climb-hpc export`
    "correct": "climb_hpc.minitron.correct:STAGE",
    "importance": "climb_hpc.minitron.importance:STAGE",
    "prune": "climb_hpc.minitron.prune:STAGE",
    "distill": "climb_hpc.minitron.distill:STAGE",
    "report": "climb_hpc.report.stage:STAGE",
    # diagnostics that prove a cluster setup end to end (climb_hpc/selftest.py)
    "noop": "climb_hpc.selftest:NOOP",
    "counter": "climb_hpc.selftest:COUNTER",
    "dist": "climb_hpc.selftest:DIST",
}


#: Families of stages made on demand: "<family>/<group>" -> factory(group) -> Stage.
GROUPS: dict[str, str] = {
    "proxy": "climb_hpc.proxy.stage:trial_stage",  # a search round's proxy trials (one array)
}


def get_stage(name: str) -> AnyStage:
    family, _, group = name.partition("/")
    if group and family in GROUPS:
        module, attr = GROUPS[family].split(":")
        return getattr(importlib.import_module(module), attr)(group)

    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; known stages: {', '.join(REGISTRY)}") from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def output_roots(stage: AnyStage, rd: RunDir) -> list[Path]:
    """Where a stage's outputs live: the fields of its ``Outputs`` (its folder, and any output in the run
    folder itself, such as ``mixture.json`` or ``teacher/``). Resetting the stage removes them all."""
    if stage.outputs is None:
        return [rd.path / stage.name]
    out = stage.outputs(rd)
    return [getattr(out, f.name) for f in dataclasses.fields(out)]


def task_config(cfg: DictConfig, stage: Stage) -> DictConfig:
    """The config a task of ``stage`` runs with: its config section (``stage.section``) carries the resolved
    resources, the ones the scheduler requested (:func:`stage_resources`, cluster overrides included), so the
    code never reads a second copy: a ``cluster.stage_resources.correct.gpus: 1`` is the GPU the task uses."""
    if not stage.section:
        return cfg
    res = stage_resources(cfg, stage)
    out = cfg.copy()
    section = OmegaConf.select(out, stage.section)
    # open_dict: a one-rank stage's section (proxy, minitron.prune) declares no nodes/tasks_per_node
    # (climb_hpc/schema.py), and a run folder's config.yaml from before a key was declared lacks it
    with open_dict(section):
        section.merge_with(res.__dict__)
    return out


def stage_resources(cfg: DictConfig, stage: AnyStage) -> Resources:
    """The stage's own resources, overridden by ``cluster.stage_resources.<stage>`` when given
    (``<family>`` for a stage family such as ``proxy/<group>``)."""
    res = stage.resources(cfg)
    override = OmegaConf.select(cfg, f"cluster.stage_resources.{stage.name.partition('/')[0]}")
    if override:
        # its keys were checked with the config (climb_hpc.validate)
        res = Resources(**{**res.__dict__, **OmegaConf.to_container(override)})  # type: ignore[arg-type]
    return res
