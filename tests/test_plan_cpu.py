"""Each stage states its own cost (``Stage.estimate``), and `climb-hpc plan` works on a CPU profile: the wall time
of the default pipeline on this machine (benchmarks/plan_vs_actual.py holds it against a real run)."""

from __future__ import annotations

import json

import pytest

from climb_hpc.cli import main
from climb_hpc.config import compose
from climb_hpc.estimate import Inputs, Ledger, Work
from climb_hpc.pipeline import OUTSIDE_PIPELINE
from climb_hpc.plan import cluster_profile, make_plan, render
from climb_hpc.stage import REGISTRY, get_stage, stage_resources

DIAGNOSTICS = {"noop", "counter", "dist"}  # climb_hpc/selftest.py: they prove a cluster setup, there is nothing to plan
RECIPE = [name for name in REGISTRY if name not in DIAGNOSTICS | set(OUTSIDE_PIPELINE)]  # export: run on its own


def plan_of(*overrides: str):
    args = list(overrides)
    return make_plan(compose(args), cluster_profile(args))


def test_every_recipe_stage_states_its_cost():
    assert len(RECIPE) == 14
    cfg = compose(["cluster=local"])
    x = Inputs(tokens=1e9, docs=1e6, tokens_per_doc=1000, vocab=8192)
    for name in RECIPE:
        hook = get_stage(name).estimate
        assert hook is not None, f"stage {name} has no estimate (Stage.estimate in {REGISTRY[name]})"
        work = hook(cfg, x, Ledger())
        assert isinstance(work, Work) and work.tasks >= 1, name
        assert work.flop > 0 or work.core_s > 0 or work.task_s > 0, f"{name}: an estimate of no work"


def test_plan_on_this_machine_renders_a_wall_time_for_every_stage(capsys):
    assert main(["plan", "cluster=local"]) == 0   # the built-in corpus: no corpus size needed
    out = capsys.readouterr().out
    assert "cluster=local (this machine:" in out and "scontrol" not in out
    for name in RECIPE:
        row = next(ln for ln in out.splitlines() if ln.startswith(f"{name} "))
        assert any(row.rstrip().rsplit(None, 1)[0].endswith(unit) for unit in (" s", " min", " h")), row
    assert "wall time on this machine:" in out

    assert main(["plan", "cluster=local", "format=json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in doc["stages"]] == RECIPE
    assert all(s["wall_h"] > 0 and s["estimated"] for s in doc["stages"])
    assert doc["reservation"] == {} and doc["hardware"]["gpus"] == 0


def test_the_built_in_corpus_is_planned_as_the_stages_cut_it():
    plan = plan_of("cluster=local")
    rows = {s.stage: s for s in plan.stages}
    assert rows["ingest"].tasks == rows["tokenize"].tasks == 7        # one file a domain, one shard each
    assert rows["embed"].tasks == rows["quality"].tasks == rows["assign"].tasks == 1  # 2,800 docs < 4,096 a task
    assert rows["search"].tasks == 16                                   # 14 trials (climb_plus) + 2 references
    assert rows["search"].concurrent == 2 and rows["embed"].concurrent == 1  # 1-core trials, 2-core embed, on 2 cores
    sources = {a.name: a.source for a in plan.assumptions}
    assert sources["CPU GFLOP/s a core, proxy"] == "plan.cpu.proxy_gflops"
    assert sources["ingest rate"] == "plan.cpu.rates.ingest_tokens_s"
    # a CPU profile's wall time is the sum of its stages; nothing is reserved
    assert plan.totals["wall_h"] == pytest.approx(sum(s.wall_h for s in plan.stages)) and plan.reservation == {}


def test_debug_runs_one_task_at_a_time():
    climb = "search.strategy=climb"  # rounds 8 + 4 + 2, then 2 references
    local, debug = plan_of("cluster=local", "cluster.cpus=2", climb), plan_of("cluster=debug", climb)
    li, di = (next(s for s in p.stages if s.stage == "search") for p in (local, debug))
    assert li.concurrent == 2 and di.concurrent == 1
    assert di.wall_h == pytest.approx(16 * di.task_h) and li.wall_h == pytest.approx(8 * li.task_h)
    # climb_plus: rounds 8 + 1 x 6 (each a wave of its own on 2 cores), then 2 references: 4 + 6 + 1 waves
    plus = next(s for s in plan_of("cluster=local", "cluster.cpus=2").stages if s.stage == "search")
    assert plus.wall_h == pytest.approx(11 * plus.task_h)


def test_time_limits_and_job_shapes_come_from_the_stages_own_resources():
    """The plan's time limit and shape of every stage are what the scheduler would request (report: its own 10
    minutes, not a copy in plan.py; search: its proxy trials')."""
    cfg = compose(["cluster=dgx_h100_32n", "plan.corpus_tokens=1e12"])
    plan = make_plan(cfg, "dgx_h100_32n")
    for row in plan.stages:
        stage = get_stage("proxy/plan" if row.stage == "search" else row.stage)
        assert row.time_limit_min == stage_resources(cfg, stage).time_min, row.stage
    report = next(s for s in plan.stages if s.stage == "report")
    assert report.time_limit_min == get_stage("report").resources(cfg).time_min == 10


def test_a_stage_without_an_estimate_is_listed_not_counted():
    plan = plan_of("cluster=local", "plan.stages=[ingest,counter,embed]")  # counter (selftest) states no cost
    counter = next(s for s in plan.stages if s.stage == "counter")
    assert not counter.estimated and counter.wall_h == 0 and plan.unestimated == ["counter"]
    assert any("no estimate" in n and "counter" in n for n in plan.notes)
    text = render(plan)
    assert any(ln.startswith("counter") and "no estimate" in ln for ln in text.splitlines())
    gpu = plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1e12", "plan.stages=[embed,counter]")
    assert gpu.reservation["node_count"] >= 1 and "no estimate" in render(gpu)


def test_memory_a_task_holds_when_the_stage_knows():
    plan = plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1.2e12", "minitron.teacher.path=/nonexistent/8b")
    rows = {s.stage: s for s in plan.stages}
    # 8B-class teacher (Llama-3.1-8B's shape): 16 bytes a parameter, ZeRO-2 shards 12 of them over 256 ranks
    assert 8 < rows["correct"].mem_gb < 40
    dim = next(a.value for a in plan.assumptions if a.name == "embedding dim")
    assert rows["kmeans"].mem_gb == pytest.approx(4 * (1e6 + 1000) * dim / 1e9)  # the sample and K centroids, fp32
    assert rows["ingest"].mem_gb is None
