"""Executors: where tasks run. ``local`` (subprocesses, default), ``debug`` (in-process), ``slurm``.

This package is the only code that knows submitit and Slurm; stages never import it. Imports stay
lazy: a Slurm array task loads only ``slurm_task`` and its stage, which keeps per-task startup short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from climb_hpc.rundir import RunDir
    from climb_hpc.scheduler.base import Executor


def make_executor(cfg: DictConfig, rd: RunDir) -> Executor:
    from climb_hpc.config import ConfigError

    kind = cfg.cluster.executor
    if kind == "local":
        from climb_hpc.scheduler.local import LocalExecutor

        return LocalExecutor(cfg, rd)
    if kind == "debug":
        from climb_hpc.scheduler.debug import DebugExecutor

        return DebugExecutor(cfg, rd)
    if kind == "slurm":
        from climb_hpc.scheduler.slurm import SlurmExecutor, check_slurm_commands

        check_slurm_commands(bool(cfg.get("dry_run")))
        return SlurmExecutor(cfg, rd)
    raise ConfigError(f"cluster.executor={kind!r}: choose local, debug or slurm")
