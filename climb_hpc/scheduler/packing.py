"""How many tasks one Slurm array element runs (``cluster.tasks_per_element``).

A Slurm job costs seconds to schedule and start (a Python interpreter, submitit, the stage's imports), and an
array holds at most MaxArraySize elements: 71k one-second tasks, one an element, spend most of their hours
starting, as 71 arrays chained one after another. A packed element runs several tasks one after another
(``slurm_task.SlurmTask``); each still writes its own marker, log and failure record, and a requeued element
skips the tasks it already finished.

``cluster.tasks_per_element``: an integer fixes it (1: one task an element); null chooses it:

* at least ceil(tasks / MaxArraySize), so that a stage is ONE array;
* tasks the stage's estimate calls tiny (less work than ``TARGET_ELEMENT_S``) are grouped so that an element
  holds about ``TARGET_ELEMENT_S`` of work, but never into fewer elements than the ``%N`` throttle runs at
  once (every slot stays busy);
* a stage without an estimate, or whose estimate is model work (FLOP: its rate depends on the GPU, which only
  ``climb-hpc plan``'s hardware profile knows), is packed only as far as MaxArraySize requires.

Multi-rank tasks are never packed: their ranks would have to agree on every task of the element.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from omegaconf import DictConfig

from climb_hpc.errors import ConfigError
from climb_hpc.stage import Resources, Stage

log = logging.getLogger("climb_hpc")

#: Work an automatically packed element of tiny tasks aims at: a job's start (seconds to a minute on a busy
#: cluster) is then a small part of its time, and a lost element loses little.
TARGET_ELEMENT_S = 300.0


def pack(tasks: list[int], per_element: int) -> list[list[int]]:
    """Consecutive runs of ``per_element`` tasks (the last one shorter)."""
    return [tasks[i:i + per_element] for i in range(0, len(tasks), per_element)]


def tasks_per_element(cfg: DictConfig, stage: Stage, res: Resources, n: int, max_array: int) -> tuple[int, str]:
    """(tasks an element, why) for ``n`` tasks of ``stage``."""
    fixed = cfg.cluster.get("tasks_per_element")
    if res.world_size > 1:
        if fixed is not None and int(fixed) > 1:
            log.warning("stage %s: cluster.tasks_per_element=%s ignored: its tasks have %d ranks each and run "
                        "one an element", stage.name, fixed, res.world_size)
        return 1, "multi-rank tasks run one an element"
    if fixed is not None:
        return int(fixed), "cluster.tasks_per_element"
    floor = max(1, math.ceil(n / max_array))
    seconds = task_seconds(cfg, stage, res)
    if seconds is None or seconds >= TARGET_ELEMENT_S:
        why = "no estimate of a task's work" if seconds is None else f"a task is ~{seconds:.0f} s of work"
        return floor, f"automatic: {why}; at most MaxArraySize={max_array} elements"
    tiny = max(1, int(TARGET_ELEMENT_S // max(seconds, 1e-3)))
    spread = max(1, math.ceil(n / int(cfg.cluster.array_parallelism)))
    return max(floor, min(tiny, spread)), (f"automatic: a task is ~{seconds:.3g} s of work by the stage's estimate; "
                                           f"~{TARGET_ELEMENT_S:.0f} s an element, every one of the %N slots busy")


def task_seconds(cfg: DictConfig, stage: Stage, res: Resources) -> Optional[float]:
    """One task's work in seconds by the stage's ``estimate`` (the plan's rates, start-up excluded), or None:
    no estimate, model work, or a corpus size the config does not state (``plan.corpus_tokens``)."""
    if stage.estimate is None:
        return None
    from climb_hpc import plan
    from climb_hpc.estimate import Inputs, Ledger

    led = Ledger()
    try:
        try:
            tokens, docs, per_doc = plan.corpus_size(cfg, led)
        except ConfigError:
            if cfg.corpus.paths:
                raise
            tokens, docs, per_doc = plan.builtin_corpus(cfg, led)  # the run's corpus IS the built-in one
        work = stage.estimate(cfg, Inputs(tokens, docs, per_doc, plan.vocab_size(cfg, led)), led)
    except Exception as e:  # an estimate is advice: packing falls back to the MaxArraySize rule
        log.info("stage %s: no estimate of a task's work for packing (%s)", stage.name, e)
        return None
    if work.flop or not work.tasks:
        return None
    return work.task_s + work.core_s / work.tasks / (res.cpus if work.threaded else 1)
