"""`climb-hpc plan`: the figures against hand computations, DESIGN.md's embedding arithmetic, the reservation
request, and that the real local Slurm accepts that request."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from datetime import datetime, timedelta

import pytest

from climb_hpc.cli import main
from climb_hpc.config import ConfigError, compose
from climb_hpc.plan import as_json, cluster_profile, make_plan

NOW = datetime(2030, 1, 1, 12, 20)
#: the local Slurm's two nodes, described as if each had 4 small GPUs (plan refuses a profile without GPUs)
SMALL = ("cluster=slurm", "+plan.hardware.slurm={nodes: 2, gpus: 4, cpus: 8, mem_gb: 64, gpu: test, peak_tflops: 100}")


def plan_of(*overrides: str):
    args = list(overrides)
    return make_plan(compose(args), cluster_profile(args), now=NOW)


def row(plan, stage: str):
    return next(s for s in plan.stages if s.stage == stage)


def llama_fpt(h: int, i: int, layers: int, heads: int, kv: int, d: int, vocab: int, seq: int) -> int:
    """Training FLOP a token written out by hand: 6 x (q, k, v, o, gate/up/down per layer + LM head) + attention."""
    q, k = heads * d, kv * d
    matmul = layers * (h * q + h * k + h * k + q * h + 3 * h * i) + h * vocab
    return 6 * matmul + 12 * layers * seq * q


def test_small_case_equals_a_hand_computation(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({
        "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000}))
    plan = plan_of(
        *SMALL, "plan.corpus_tokens=1e9", "plan.tokens_per_doc=500", "plan.overhead_s.gpu_task=10",
        "plan.overhead_s.multinode_job=100", "embed.model=/nonexistent/encoder", "plan.models.encoder.params=1e8",
        "plan.models.encoder.dim=256", "embed.max_length=256", "embed.gpus=1", "embed.cpus=2", "plan.mfu.encoder=0.5",
        "search.strategy=climb", "search.budget=7", "proxy.tokens=1000000", "proxy.gpus=1", "proxy.cpus=2",
        "plan.mfu.proxy=0.25",
        f"minitron.teacher.path={teacher}", "minitron.correct.tokens=1e6", "minitron.correct.nodes=2",
        "minitron.correct.tasks_per_node=2", "minitron.correct.gpus=1", "plan.mfu.llm=0.35",
        "minitron.distill.tokens=1e6", "minitron.prune.intermediate_size=128", "minitron.prune.depth.drop=1",
        "minitron.prune.hidden_size=null", "minitron.importance.seq_len=128")

    # embed: 2e6 docs, truncated to embed.max_length=256 tokens, 2 FLOP a parameter a token
    e = row(plan, "embed")
    flop, rate, tasks = 2 * 1e8 * 2e6 * 256, 1 * 100e12 * 0.5, math.ceil(2e6 / 4096)
    assert e.flop == pytest.approx(flop) and e.tasks == tasks == 489
    task_s = flop / tasks / rate + 10
    assert e.gpu_h == pytest.approx(tasks * task_s / 3600)               # 1 GPU a task
    assert e.core_h == pytest.approx(2 * tasks * task_s / 3600)
    assert e.node_h == pytest.approx(0.25 * tasks * task_s / 3600)       # 1 of 4 GPUs, 2 of 8 cores
    assert e.concurrent == 8                                             # array_parallelism 8 = 2 nodes x 4 GPUs
    assert e.wall_h == pytest.approx(math.ceil(489 / 8) * task_s / 3600)
    assert e.gpus_in_use == 8 and e.nodes_busy == 2

    # search: 7 trials in rounds 4, 2, 1 + 2 references; tiny proxy, vocab 8192, 245 steps of 16 x 256 tokens
    s = row(plan, "search")
    fpt = llama_fpt(128, 384, 4, 4, 2, 32, 8192, 256)
    assert fpt == 12_582_912
    trial = fpt * 245 * 16 * 256 + fpt / 3 * 200_000                     # + the held-out evaluation forward
    assert s.tasks == 9 and s.flop == pytest.approx(9 * trial)
    trial_s = trial / (100e12 * 0.25) + 10
    assert s.gpu_h == pytest.approx(9 * trial_s / 3600)
    assert s.wall_h == pytest.approx(4 * trial_s / 3600)                 # four rounds, each one wave

    # correct: the 8B-style teacher read from its config.json, 489 steps of 16 x 128 tokens, 2 nodes x 2 GPUs
    t_fpt = llama_fpt(64, 256, 4, 4, 2, 16, 1000, 128)
    tokens = 489 * 16 * 128
    c = row(plan, "correct")
    assert c.flop == pytest.approx(t_fpt * tokens)
    c_s = t_fpt * tokens / (4 * 100e12 * 0.35) + 100
    assert c.gpu_h == pytest.approx(4 * c_s / 3600) and c.wall_h == pytest.approx(c_s / 3600)
    assert c.node_h == pytest.approx(2 * 0.5 * c_s / 3600) and c.nodes_busy == 2  # half of each of 2 nodes

    # importance: 1024 x 128 tokens, forward = train / 3; hooked pass + base loss + one a removed block (4 of 1 layer)
    assert row(plan, "importance").flop == pytest.approx(t_fpt / 3 * 1024 * 128 * (2 + 4))

    # distill: the teacher pruned to ffn 128 and 3 layers trains, the teacher runs forward
    s_fpt = llama_fpt(64, 128, 3, 4, 2, 16, 1000, 128)
    assert row(plan, "distill").flop == pytest.approx((s_fpt + t_fpt / 3) * tokens)

    # the plan's totals and request follow from the rows
    assert plan.totals["gpu_h"] == pytest.approx(sum(r.gpu_h for r in plan.stages))
    assert plan.reservation["node_count"] == 2
    assert plan.reservation["duration_h"] == math.ceil(plan.totals["wall_h"] * 1.25)


def test_doubling_the_corpus_doubles_embed_flop_and_gpu_hours():
    one = row(plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1e12"), "embed")
    two = row(plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=2e12"), "embed")
    assert two.flop == pytest.approx(2 * one.flop, rel=1e-12)
    assert two.gpu_h == pytest.approx(2 * one.gpu_h, rel=1e-3)   # tasks are whole: ceil(docs / rows) each
    assert two.tasks in (2 * one.tasks - 1, 2 * one.tasks)


def test_design_embedding_arithmetic():
    """DESIGN.md: 1.2 T tokens through a 400M encoder = ~1e21 FLOP = ~2.7 h at 400 TFLOP/s a GPU on 256 GPUs."""
    plan = plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1.2e12", "plan.tokens_per_doc=500", "embed=stella_400m",
                   "plan.models.encoder.params=4e8", f"plan.mfu.encoder={400 / 989}", "plan.overhead_s.gpu_task=0")
    e = row(plan, "embed")
    assert e.flop == pytest.approx(2 * 4e8 * 1.2e12)                       # 9.6e20 ~ 1e21
    assert e.gpu_h == pytest.approx(9.6e20 / 400e12 / 3600)                # 667 GPU-h
    assert e.gpus_in_use == 256
    assert e.wall_h == pytest.approx(9.6e20 / 400e12 / 256 / 3600, rel=0.02)  # 2.6 h (2.7 h at 1e21)
    encoder = next(a for a in plan.assumptions if a.name == "encoder params")
    assert "plan.models.encoder.params" in encoder.source               # /models/stella... is not here


def test_dgx_profile_reserves_32_nodes(capsys):
    assert main(["plan", "cluster=dgx_h100_32n", "plan.corpus_tokens=1.2e12", "plan.reservation.start=2030-01-02T00:00:00"]) == 0
    out = capsys.readouterr().out
    for column in ("stage", "work kind", "FLOP", "GPUs x wall h", "GPU-h", "core-h", "node-h"):
        assert column in out
    line = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("scontrol create reservation"))
    argv = shlex.split(line)
    assert argv[:3] == ["scontrol", "create", "reservation"]
    fields = dict(a.split("=", 1) for a in argv[3:])
    assert fields["NodeCnt"] == "32" and fields["PartitionName"] == "batch"
    assert fields["StartTime"] == "2030-01-02T00:00:00" and fields["Flags"] == "REPLACE_DOWN"
    assert "assumptions (every number used" in out and "[plan.hardware.dgx_h100_32n.peak_tflops" in out

    plan = plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1.2e12")
    d = row(plan, "distill")
    assert d.nodes == 32 and d.gpus_in_use == 256
    assert d.node_h == pytest.approx(32 * d.wall_h)                  # a 32-node job holds 32 nodes for its wall
    # the start: now + 24 h, rounded up to the hour; the duration: the wall x 1.25, rounded up to the hour
    assert plan.reservation["start"] == "2030-01-02T13:00:00"
    assert plan.reservation["duration_h"] == math.ceil(plan.totals["wall_h"] * 1.25)


def test_time_limit_warnings():
    plan = plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1.2e12", "embed=stella_400m",
                   "cluster.stage_resources.embed.time_min=5", "cluster.stage_resources.distill.time_min=120",
                   "minitron.teacher.path=/nonexistent/teacher", "minitron.distill.tokens=1e11",
                   "minitron.distill.seq_len=8192", "minitron.distill.global_batch_size=1152")
    e, d = row(plan, "embed"), row(plan, "distill")
    assert e.task_h * 60 > 5 and d.task_h > 2 * 4                     # the premises
    assert any(w.startswith("embed: a task needs") and "cannot resume" in w for w in plan.warnings)
    assert any(w.startswith("distill: a task needs") and "cluster.max_num_timeout=3" in w for w in plan.warnings)
    assert not plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1.2e12").warnings


def test_json_format(capsys):
    assert main(["plan", "cluster=dgx_h100_32n", "plan.corpus_docs=1e9", "format=json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in doc["stages"]][:3] == ["ingest", "embed", "quality"]
    assert doc["reservation"]["node_count"] == 32
    assert doc["totals"]["gpu_h"] == pytest.approx(sum(s["gpu_h"] for s in doc["stages"]))
    assert any(a["name"] == "corpus tokens" and a["value"] == 1e12 for a in doc["assumptions"])
    assert as_json(plan_of("cluster=dgx_h100_32n", "plan.corpus_docs=1e9"))["reservation"]["node_count"] == 32


@pytest.mark.parametrize("args, message", [
    (["cluster=nosuch", "plan.corpus_tokens=1e9"], "unknown cluster profile 'nosuch'"),
    (["cluster=dgx_h100_32n"], "plan needs the corpus size: plan.corpus_tokens="),
    (["cluster=slurm", "plan.corpus_tokens=1e9"], "cluster profile 'slurm' has no GPUs described"),
    # cluster=local is planned on this machine's CPUs (tests/test_plan_cpu.py); a task that asks for a GPU is not
    (["plan.corpus_tokens=1e9", "embed.gpus=1"], "is planned on this machine's CPUs"),
    (["cluster=dgx_h100_32n", "plan.corpus_tokens=1e9", "plan.hardware.dgx_h100_32n.gpus=0"], "a profile without gpus"),
    (["cluster=dgx_h100_32n", "plan.corpus_tokens=1e9", "plan.reservation.name='x; rm -rf /'"], "not a valid Slurm name"),
    (["cluster=dgx_h100_32n", "plan.corpus_tokens=1e9", "cluster.stage_resources.distill.nodes=64"], "more than"),
])
def test_errors_say_what_to_do(args, message, capsys):
    assert main(["plan", *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_stage_and_bad_start():
    with pytest.raises(ConfigError, match="unknown stage 'nosuch'"):
        plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1e9", "plan.stages=[ingest,nosuch]")
    with pytest.raises(ConfigError, match="YYYY-MM-DDTHH:MM:SS"):
        plan_of("cluster=dgx_h100_32n", "plan.corpus_tokens=1e9", "plan.reservation.start=tomorrow")


@pytest.mark.slurm
@pytest.mark.parametrize("partition", [None, "debug"])  # slurm.yaml's (none: the default partition), and named
def test_request_is_accepted_by_the_local_slurm(slurm, partition, capsys):
    name = f"climb-plan-test-{os.getpid()}-{partition or 'default'}"
    start = (datetime.now() + timedelta(days=400)).replace(microsecond=0)  # far ahead: no job of others is touched
    args = ["plan", *SMALL, "plan.corpus_tokens=1e8", "minitron.distill.nodes=2", f"plan.reservation.name={name}",
            f"plan.reservation.start={start.isoformat()}", "plan.reservation.users=[root]"]
    if partition:
        args.append(f"cluster.partition={partition}")
    assert main(args) == 0
    line = next(ln.strip() for ln in capsys.readouterr().out.splitlines()
                if ln.strip().startswith("scontrol create reservation"))
    argv = shlex.split(line)
    assert "NodeCnt=2" in argv and "Users=root" in argv
    assert any(a.startswith("PartitionName=") for a in argv) == bool(partition)
    duration = next(a for a in argv if a.startswith("Duration="))
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        shown = subprocess.run(["scontrol", "show", "reservation", name], capture_output=True, text=True,
                               timeout=60).stdout
        assert f"ReservationName={name}" in shown and "NodeCnt=2" in shown and "Users=root" in shown
        assert f"StartTime={start:%Y-%m-%dT%H:%M:%S}" in shown and f" {duration} " in f" {shown} ".replace("\n", " ")
        assert f"PartitionName={partition or 'debug'}" in shown           # debug is the local default partition
    finally:
        subprocess.run(["scontrol", "delete", "reservation", name], capture_output=True, text=True, timeout=60)
    gone = subprocess.run(["scontrol", "show", "reservation", name], capture_output=True, text=True, timeout=60)
    assert f"ReservationName={name}" not in gone.stdout
