"""What a stage is: a plain function over the run folder, plus its task count and resources.

Stages know nothing of Slurm. The scheduler asks a stage how many tasks it has and what one task
needs, then calls ``run(cfg, run_dir, task)`` wherever the task lands (this process, a local
subprocess, a Slurm array element). A task must be idempotent: it overwrites its own outputs only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from climb_hpc.errors import ConfigError

if TYPE_CHECKING:
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
FinalizeFn = Callable[[DictConfig, "RunDir"], None]
#: What a driver stage is handed: run_stage(stage) runs that stage in the controller as the pipeline runs its
#: own (its unfinished tasks, the retries, its finalize) and returns once it is complete; None on a dry run.
RunStageFn = Callable[["Stage"], Any]
DriveFn = Callable[[DictConfig, "RunDir", RunStageFn], None]  # (cfg, run_dir, run_stage)


@dataclass(frozen=True)
class Stage:
    """A pipeline step.

    name:          folder name of its outputs and of its markers
    run:           run(cfg, run_dir, task) -> None; writes outputs, never the marker (the caller does)
    num_tasks:     how many tasks, computed from the config and earlier stages' outputs
    resources:     what one task needs
    finalize:      optional, runs once in the controller after every task is done (checks, merges);
                   the stage counts as complete only after it returns
    checkpointable: the task polls ``climb_hpc.preempt.requested()``, saves its state and raises
                   ``Preempted``; the scheduler then requeues it and it resumes from that state
    section:       the dotted config key of the stage's own settings (``minitron.correct``); a task sees the
                   resolved resources there (:func:`task_config`)
    drive:         for a stage that launches other stages as it goes (the search: one array of proxy
                   trials a round): drive(cfg, run_dir, run_stage) runs in the controller instead of
                   tasks. It runs its sub-stages through ``run_stage`` (``climb_hpc.proxy.run_mixtures``)
                   and never touches the executor or Slurm itself; it must be idempotent (a relaunch
                   replays finished rounds from the run folder)
    """

    name: str
    run: TaskFn
    num_tasks: CountFn
    resources: ResourcesFn = lambda cfg: Resources()
    finalize: Optional[FinalizeFn] = None
    checkpointable: bool = False
    section: Optional[str] = None
    drive: Optional[DriveFn] = None


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


def get_stage(name: str) -> Stage:
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


def stage_resources(cfg: DictConfig, stage: Stage) -> Resources:
    """The stage's own resources, overridden by ``cluster.stage_resources.<stage>`` when given
    (``<family>`` for a stage family such as ``proxy/<group>``)."""
    res = stage.resources(cfg)
    override = OmegaConf.select(cfg, f"cluster.stage_resources.{stage.name.partition('/')[0]}")
    if override:
        # its keys were checked with the config (climb_hpc.validate)
        res = Resources(**{**res.__dict__, **OmegaConf.to_container(override)})  # type: ignore[arg-type]
    return res
