"""Diagnostic stages that prove a cluster setup end to end (``pipeline=selftest``).

    noop     N tasks that do nothing but leave a marker: array throughput and scheduler overhead
             (``selftest.fail_tasks`` makes some fail, to see failure reporting)
    counter  checkpointable tasks: a deterministic computation that checkpoints every few steps and
             on a preemption request, so a requeued or preempted task must resume, not restart
    dist     one multi-node task: torch.distributed (gloo) rendezvous and all-reduce across ranks

They are real stages (same controller, executors and markers as the CLIMB stages), small enough to
run on a laptop, and the test suite runs them through the local Slurm.
"""

from __future__ import annotations

import os
import socket
import time

from omegaconf import DictConfig

from climb_hpc import preempt
from climb_hpc.estimate import Inputs, Ledger, Work
from climb_hpc.rundir import RunDir, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage


def _noop(cfg: DictConfig, rd: RunDir, task: int) -> None:
    if task in (cfg.selftest.get("fail_tasks") or []):
        raise RuntimeError(f"selftest: noop task {task} fails on purpose (selftest.fail_tasks)")


def _noop_work(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """No work at all: a noop task's cost is its start, which the Slurm executor packs away
    (``climb_hpc.scheduler.packing``)."""
    return Work(kind="noop", rounds=[int(cfg.selftest.tasks)])


NOOP = Stage(name="noop", run=_noop, num_tasks=lambda cfg, rd: int(cfg.selftest.tasks),
             resources=lambda cfg: Resources(cpus=1, time_min=10), estimate=_noop_work)


def counter_value(steps: int, seed: int) -> int:
    """What an uninterrupted counter task computes (a cheap, order-dependent recurrence)."""
    acc = seed
    for i in range(steps):
        acc = (acc * 1_000_003 + i) % 2_147_483_647
    return acc


def _counter(cfg: DictConfig, rd: RunDir, task: int) -> None:
    st = cfg.selftest
    out = rd.stage_dir("counter")
    state_path = out / f"state_{task:05d}.json"
    state = read_json(state_path, default={"step": 0, "acc": int(cfg.seed) + task, "starts": []})
    state["starts"].append(state["step"])  # where each attempt began: proves resume, not restart
    atomic_write_json(state_path, state)
    while state["step"] < int(st.steps):
        time.sleep(float(st.step_s))
        state["acc"] = (state["acc"] * 1_000_003 + state["step"]) % 2_147_483_647
        state["step"] += 1
        if state["step"] % int(st.ckpt_every) == 0 or preempt.requested():
            atomic_write_json(state_path, state)
        if preempt.requested():
            raise preempt.Preempted(f"saved at step {state['step']}")
    atomic_write_json(out / f"result_{task:05d}.json",
                      {"acc": state["acc"], "steps": state["step"], "starts": state["starts"]})


COUNTER = Stage(name="counter", run=_counter, num_tasks=lambda cfg, rd: int(cfg.selftest.counter_tasks),
                resources=lambda cfg: Resources(cpus=1, time_min=60), checkpointable=True)


def _dist(cfg: DictConfig, rd: RunDir, task: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        me = {"rank": rank, "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
              "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()),
              "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"}
        everyone: list = [None] * world
        dist.all_gather_object(everyone, me)
        if rank == 0:
            atomic_write_json(rd.stage_dir("dist") / f"result_{task:05d}.json",
                              {"world_size": world, "all_reduce": t.item(), "ranks": everyone})
        dist.barrier()
    finally:
        dist.destroy_process_group()


DIST = Stage(name="dist", run=_dist, num_tasks=lambda cfg, rd: 1,
             resources=lambda cfg: Resources(cpus=1, nodes=int(cfg.selftest.dist_nodes), tasks_per_node=1, time_min=10))
