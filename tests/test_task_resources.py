"""One resolved Resources per task: what the scheduler requests is what the task's code sees (issue 15, point 5)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from climb_hpc.config import compose
from climb_hpc.minitron import ds
from climb_hpc.scheduler.slurm_options import submitit_parameters
from climb_hpc.stage import get_stage, stage_resources, task_config
from climb_hpc.training import task_device


def _seen(cfg, name: str) -> dict:
    """The stage's config section as its task sees it."""
    stage = get_stage(name)
    return OmegaConf.to_container(OmegaConf.select(task_config(cfg, stage), stage.section))


@pytest.mark.parametrize("name", ["correct", "importance", "distill"])
def test_gpu_profile_tasks_see_their_gpus_and_bf16(name):
    cfg = compose(["cluster=dgx_h100_32n"])
    stage = get_stage(name)
    section = _seen(cfg, name)
    res = stage_resources(cfg, stage)
    assert section["gpus"] == res.gpus == 1 and section["cpus"] == res.cpus == 12
    assert section["nodes"] == res.nodes and section["tasks_per_node"] == res.tasks_per_node
    assert ds.planned_precision(section) == "bf16"
    requested = submitit_parameters(cfg.cluster, res, job_name=name, checkpointable=stage.checkpointable)
    assert requested["gpus_per_node"] == section["gpus"] * section["tasks_per_node"]
    assert requested["cpus_per_task"] == section["cpus"]
    assert cfg.minitron[name].gpus == 0  # the profile's value reaches the task, not the section's default


@pytest.mark.parametrize("name", ["correct", "importance", "distill"])
def test_local_tasks_see_cpus_and_fp32(name):
    section = _seen(compose(["cluster=local"]), name)
    assert section["gpus"] == 0 and ds.planned_precision(section) == "fp32"


def test_a_cluster_override_is_the_thread_count_a_proxy_trial_uses():
    cfg = compose(["cluster=local", "cluster.stage_resources.proxy.cpus=2"])
    assert _seen(cfg, "proxy/climb_r1")["cpus"] == 2 and cfg.proxy.cpus == 1


def test_a_task_given_gpus_it_cannot_see_fails_instead_of_running_on_cpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        task_device({"gpus": 1})
    assert task_device({"gpus": 0}).type == "cpu"
