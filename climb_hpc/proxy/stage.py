"""A group of proxy trials as one stage: "run these N mixtures" = one job array (``proxy/<group>``).

The search calls :func:`run_mixtures` once a round. The group's plan (``proxy/<group>/trials.json``)
is written once; a relaunch with the same mixtures resumes (finished trials are kept, preempted ones
continue from their checkpoint), a relaunch with other mixtures, or from another ``proxy.init`` (the plan keeps its
identity: folder, config.json hash, weight files), is refused. Trial ``i`` lives in
``proxy/<group>/trial_{i:05d}/`` (see ``climb_hpc/proxy/train.py``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from omegaconf import DictConfig

from climb_hpc.errors import ConfigError
from climb_hpc.proxy.sampler import normalize_weights
from climb_hpc.rundir import atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir
    from climb_hpc.stage import RunStageFn

ROOT = "proxy"
_GROUP = re.compile(r"^[A-Za-z0-9_.-]+$")

Mixture = Mapping[Union[int, str], float]


@dataclass(frozen=True)
class Outputs:
    """What a group of trials writes under ``<run_dir>/proxy/<group>/``."""

    dir: Path

    @property
    def trials(self) -> Path:
        return self.dir / "trials.json"  # the plan: each trial's weights and seed

    @property
    def results(self) -> Path:
        return self.dir / "results.json"

    def trial(self, i: int) -> Path:
        return self.dir / f"trial_{i:05d}"  # climb_hpc/proxy/train.py's files


def outputs(rd: RunDir, group: str) -> Outputs:
    return Outputs(rd.path / ROOT / group)


def groups(rd: RunDir) -> list[str]:
    """The groups planned in this run folder (sorted)."""
    root = rd.path / ROOT
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def trial_dirs(rd: RunDir) -> list[Path]:
    """Every planned trial's folder, by group then trial."""
    out = []
    for g in groups(rd):
        plan = read_json(outputs(rd, g).trials, default={"trials": []})
        out += [outputs(rd, g).trial(i) for i in range(len(plan["trials"]))]
    return out


def group_dir(rd: RunDir, group: str) -> Path:
    return outputs(rd, group).dir


def trial_dir(rd: RunDir, group: str, i: int) -> Path:
    return outputs(rd, group).trial(i)


def load_plan(rd: RunDir, group: str) -> dict[str, Any]:
    plan = read_json(outputs(rd, group).trials)
    if plan is None:
        raise FileNotFoundError(f"{outputs(rd, group).trials} is missing: plan the group with run_mixtures")
    return plan


def trial_stage(group: str) -> Stage:
    """The stage ``proxy/<group>``: one task a planned trial, checkpointable (preempted trials resume)."""
    if not _GROUP.match(group):
        raise ValueError(f"proxy group name {group!r}: use letters, digits, '_', '-', '.'")

    def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
        from climb_hpc.proxy.train import run_trial

        plan = load_plan(rd, group)
        check_init(plan, current_init(cfg), group)  # a checkpoint changed since the group was planned
        spec = plan["trials"][task]
        m = run_trial(cfg, rd, trial_dir(rd, group, task), spec["weights"], int(spec["seed"]))
        t = m["target"]
        print(f"proxy/{group} trial {task}: target {t['kind']} = {t['value']:.5f} ({t['direction']} is better)",
              flush=True)

    def resources(cfg: DictConfig) -> Resources:
        return Resources.from_config(cfg.proxy)

    return Stage(name=f"{ROOT}/{group}", run=run, section="proxy", num_tasks=lambda cfg, rd: len(load_plan(rd, group)["trials"]),
                 resources=resources, finalize=lambda cfg, rd: _collect(rd, group), checkpointable=True,
                 reads=lambda cfg: ("tokenize",), outputs=lambda rd: outputs(rd, group))


def _collect(rd: RunDir, group: str) -> list[dict[str, Any]]:
    """Per trial: its mixture, seed and metrics; written to ``proxy/<group>/results.json``."""
    plan = load_plan(rd, group)
    rows = []
    for i, spec in enumerate(plan["trials"]):
        m = read_json(trial_dir(rd, group, i) / "metrics.json")
        if m is None:
            raise RuntimeError(f"proxy/{group} trial {i} has a completion marker but no metrics.json")
        rows.append({"trial": i, **spec, "value": m["target"]["value"], "direction": m["target"]["direction"],
                     "metrics": m})
    atomic_write_json(outputs(rd, group).results, rows)
    return rows


def current_init(cfg: DictConfig) -> Optional[dict[str, Any]]:
    """``proxy.init``'s identity (:func:`climb_hpc.proxy.model.init_identity`); None for random inits."""
    from climb_hpc.proxy.model import init_folder, init_identity

    folder = init_folder(cfg.proxy)
    return init_identity(folder) if folder is not None else None


def _init_text(ident: Optional[dict[str, Any]]) -> str:
    if ident is None:
        return "a random init"
    saved = ", ".join(f"{w['file']} saved {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(w['mtime_ns'] / 1e9))}"
                      for w in ident["weights"])
    return f"{ident['path']} ({saved})"


def _what_changed(old: Optional[dict[str, Any]], new: Optional[dict[str, Any]]) -> str:
    if old is None or new is None or old["path"] != new["path"]:
        return "another checkpoint"
    if old["config"] != new["config"]:
        return "its config.json changed"
    return "its weights were saved again"


def check_init(plan: Mapping[str, Any], init: Optional[dict[str, Any]], group: str) -> None:
    """ConfigError when the group's trials were planned from another ``proxy.init`` than the one given now (another
    folder, or the same folder saved again): trials from another init are never reused."""
    if plan.get("init") == init:
        return
    raise ConfigError(f"proxy/{group} was trained from {_init_text(plan.get('init'))}, but its trials now start from "
                      f"{_init_text(init)} (proxy.init): {_what_changed(plan.get('init'), init)}. Trials from another "
                      "init are not reused: put that checkpoint back to resume, or start a new run_dir= to search "
                      "from this one")


def plan_trials(rd: RunDir, group: str, mixtures: Sequence[Mixture], seeds: Sequence[int],
                init: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write the group's plan once; an existing plan must be the same (a relaunch resumes it). ``init``: the
    identity of ``proxy.init`` the trials start from (kept in the plan; another one is refused)."""
    if len(mixtures) != len(seeds) or not mixtures:
        raise ValueError(f"need one seed a mixture and at least one mixture; got {len(mixtures)} and {len(seeds)}")
    from climb_hpc.corpus.tokenize import cluster_ids

    known = set(cluster_ids(rd))
    for i, m in enumerate(mixtures):
        unknown = sorted(c for c, w in normalize_weights(m).items() if w > 0 and c not in known)
        if unknown:
            raise ValueError(f"mixture {i} weights clusters {unknown} that have no token store; "
                             f"this run's clusters: {sorted(known)}")
    plan: dict[str, Any] = {"trials": [{"weights": {str(k): v for k, v in normalize_weights(m).items()},
                                        "seed": int(s)} for m, s in zip(mixtures, seeds, strict=True)]}
    if init is not None:
        plan["init"] = init  # absent for random inits (plans written before proxy.init existed read the same)
    path = outputs(rd, group).trials
    stored = read_json(path)
    if stored is not None:
        check_init(stored, init, group)
    if stored is not None and stored != plan:
        raise RuntimeError(f"{path} holds other trials than these {len(mixtures)}; a group's trials cannot change. "
                           f"Use another group name, or remove {group_dir(rd, group)} and "
                           f"{rd.marker_dir(f'{ROOT}/{group}')}")
    if stored is None:
        atomic_write_json(path, plan)
    return plan


def run_mixtures(cfg: DictConfig, rd: RunDir, run_stage: RunStageFn, group: str, mixtures: Sequence[Mixture],
                 seeds: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """Train and score one proxy a mixture, as one array (stage ``proxy/<group>``, run with ``run_stage``,
    what the search's ``drive`` is handed); returns each trial's ``{trial, weights, seed, value, direction,
    metrics}`` in order.

    ``seeds`` default to ``proxy.seed`` (else the run seed) for every trial: trials then differ only by
    their mixture. Raises ``StageFailed`` when trials still fail after the retries."""
    if seeds is None:
        seed = cfg.proxy.get("seed")
        seeds = [int(cfg.seed if seed is None else seed)] * len(mixtures)
    plan_trials(rd, group, mixtures, seeds, current_init(cfg))
    stage = trial_stage(group)
    if not rd.stage_complete(stage.name):
        if run_stage(stage) is None:
            return []  # dry run
    return _collect(rd, group)
