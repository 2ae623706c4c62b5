"""Minitron engine: teacher correction and distillation on DeepSpeed ZeRO (gloo on CPU).

The run is the small tokenized built-in corpus (7 planted clusters, 600-token BPE) mixed from 3 clusters;
the teacher is a 2-layer, 64-wide Llama pretrained and corrected in-process (cluster=debug, 1 rank); the
student is a 1-layer, 32-wide Llama from ``student_config``. The 2-node ZeRO-3 distillation and its
preemption run on the REAL local Slurm (node1 + node2, srun, ranks from Slurm's environment).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from climb_hpc.minitron import ds
from climb_hpc.minitron.data import TokenWindows, micro_batch, split
from climb_hpc.pipeline import run_pipeline
from climb_hpc.rundir import RunDir, read_json
from tests.conftest import SLURM, clone_run, tokenized_run, wait_for_lines

MIX = ("mix.weights={0: 0.3, 2: 0.4, 5: 0.3}", "mix.tokens=60000")
STAGES = "pipeline.stages=[ingest,refine,tokenize,mix,correct,distill]"
TEACHER = ("minitron.teacher.model.hidden_size=64", "minitron.teacher.model.intermediate_size=192",
           "minitron.teacher.model.num_hidden_layers=2", "minitron.teacher.model.num_attention_heads=2",
           "minitron.teacher.model.num_key_value_heads=1", "minitron.teacher.model.head_dim=32",
           "minitron.teacher.pretrain_tokens=40960", "minitron.teacher.pretrain_lr=3e-3",
           "minitron.correct.tokens=10240", "minitron.correct.seq_len=64", "minitron.correct.micro_batch_size=4",
           "minitron.correct.global_batch_size=8", "minitron.correct.val_tokens=4000", "minitron.correct.cpus=1",
           "minitron.correct.ckpt_every=10", "minitron.correct.warmup=5",
           "minitron.correct.loss_chunk_tokens=100")  # 4 x 64 tokens a micro-batch: chunks of 100, 100, 56
STUDENT = ("minitron.distill.student_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
           "num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16}",
           "minitron.distill.seq_len=64", "minitron.distill.micro_batch_size=4", "minitron.distill.global_batch_size=8",
           "minitron.distill.val_tokens=4000", "minitron.distill.cpus=1", "minitron.distill.lr=3e-3",
           "minitron.distill.temperature=2.0", "minitron.distill.loss_chunk_tokens=100")
#: 2 nodes x 1 rank, ZeRO-3 student and ZeRO-3 teacher: the srun path a 32-node job takes.
#: 200 steps (~20-30 s): Slurm lets a killed step linger ~12 s, a shorter run could end before the requeue.
TWO_NODES = ("minitron.distill.nodes=2", "minitron.distill.tasks_per_node=1", "minitron.distill.zero_stage=3",
             "minitron.distill.teacher_zero3=true", "minitron.distill.tokens=102400", "minitron.distill.ckpt_every=50",
             "minitron.distill.time_min=10")


def _log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _digest_equal(a: Path, b: Path) -> bool:
    return (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


# ---------------------------------------------------------------- cheap pieces


def test_ds_config_batches_zero_and_precision():
    from omegaconf import OmegaConf

    from climb_hpc.config import compose

    defaults = OmegaConf.to_container(compose([]).minitron.distill, resolve=True)  # the YAML holds the defaults
    s = {**defaults, "micro_batch_size": 4, "global_batch_size": 32, "zero_stage": 3, "grad_clip": 1.0, "lr": 1e-3,
         "gpus": 0, "zero3_persistence_threshold": 0}
    c = ds.ds_config(s, world=2)
    assert c["gradient_accumulation_steps"] == 4 and c["train_batch_size"] == 32
    assert c["zero_optimization"]["stage"] == 3 and c["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert c["zero_optimization"]["reduce_bucket_size"] == 500_000_000  # DeepSpeed's default, now a setting
    assert c["zero_optimization"]["stage3_max_live_parameters"] == 1_000_000_000
    assert c["bf16"]["enabled"] is False and c["gradient_clipping"] == 1.0 and "optimizer" not in c
    assert ds.ds_config(s, 1, client_optimizer=False)["optimizer"]["params"]["torch_adam"] is True
    with pytest.raises(ValueError, match="multiple"):
        ds.ds_config({**s, "global_batch_size": 12}, world=2)


def test_data_plan_is_seeded_partitioned_by_rank_and_keeps_validation_out():
    tokens = np.arange(10_000, dtype=np.uint16)
    end, val = split(tokens, 1000, seq_len=15)
    assert end == 9000 and val.shape == (62, 16) and val.min() >= 9000
    plan = TokenWindows(tokens, 15, 64, seed=1, end=end)
    again = TokenWindows(tokens, 15, 64, seed=1, end=end)
    assert (plan.start == again.start).all() and plan.start.max() + 16 <= end
    seqs = plan.sequences(0, 64)
    assert (np.diff(seqs, axis=1) == 1).all()  # windows are contiguous runs of the source
    # step 1 of global batch 16 on 2 ranks x micro 4: every sequence of the step used exactly once
    got = np.concatenate([micro_batch(plan, 1, m, r, 2, 4, 16) for m in range(2) for r in range(2)])
    assert sorted(got[:, 0].tolist()) == sorted(seqs[16:32, 0].tolist())


# ---------------------------------------------------------------- a run with a mixed dataset and a teacher


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("minitron")
    tokenized_run(base / "tok")
    cfg = clone_run(base / "tok", base / "mixed", "cluster=debug", "pipeline.stages=[ingest,refine,tokenize,mix]", *MIX)
    run_pipeline(cfg)
    return base / "mixed"


@pytest.fixture(scope="module")
def corrected(mixed, tmp_path_factory) -> Path:
    """Teacher pretraining (tiny Llama on all clusters) + correction on the mix, in-process (1 rank, ZeRO-2)."""
    run = tmp_path_factory.mktemp("corrected") / "run"
    cfg = clone_run(mixed, run, "cluster=debug", STAGES, "until=correct", *MIX, *TEACHER)
    t0 = time.time()
    run_pipeline(cfg)
    print(f"correct (pretrain + correction): {time.time() - t0:.1f} s")
    return run


def test_correct_trains_at_a_fifth_of_the_peak_and_lowers_the_mixed_val_loss(corrected):
    from transformers import AutoModelForCausalLM

    m = read_json(corrected / "correct" / "metrics.json")
    pre = read_json(corrected / "correct" / "pretrain" / "metrics.json")
    log = _log(corrected / "correct" / "train_log.jsonl")
    assert max(r["lr"] for r in log) == pytest.approx(3e-3 / 5) and m["lr_peak"] == pytest.approx(6e-4)
    assert [r["lr"] for r in log[:5]] == pytest.approx([6e-4 * (i + 1) / 5 for i in range(5)])  # warmup 5 steps
    assert len(log) == m["steps"] == 20 and m["teacher"] == str(corrected / "teacher_base")
    assert m["val_after"]["lm"] <= m["val_before"]["lm"]
    assert pre["val_after"]["lm"] < pre["val_before"]["lm"] - 1.0  # the tiny teacher did learn
    teacher = AutoModelForCausalLM.from_pretrained(str(corrected / "teacher"))
    assert teacher.config.hidden_size == 64 and (corrected / "teacher" / "tokenizer.json").is_file()
    assert not (corrected / "correct" / "ckpt").exists() and not (corrected / "correct" / "pretrain" / "ckpt").exists()


def test_teacher_pretraining_preempted_in_process_resumes_to_identical_weights(mixed, corrected, tmp_path,
                                                                             monkeypatch):
    """The tiny teacher's pretraining is its own checkpointed phase: stopped at step 30 of 80 (a preemption
    request), a fresh engine resumes from its ZeRO checkpoint and ends with the uninterrupted teacher_base."""
    from climb_hpc import preempt
    from climb_hpc.minitron.correct import pretrain_phase
    from climb_hpc.minitron.engine import Engine, run_phase

    cfg = clone_run(mixed, tmp_path / "run", "cluster=debug", STAGES, *MIX, *TEACHER)
    rd = RunDir(cfg.run_dir)
    torch.set_num_threads(1)
    with ds.distributed(cfg.minitron.correct):
        phase = pretrain_phase(cfg, rd)
        phase.work.mkdir(parents=True)
        first = Engine(phase)
        first.resume()
        monkeypatch.setattr(preempt, "requested", lambda: first.step >= 30)
        with pytest.raises(preempt.Preempted, match="step 30 of 80"):
            first.fit()
        monkeypatch.undo()
        assert (phase.work / "ckpt" / "latest").read_text().strip() == "step30"
        m = run_phase(pretrain_phase(cfg, rd))
    assert m["attempts"] == [0, 30] and len(_log(phase.work / "train_log.jsonl")) == 80
    assert _curve(phase.work / "train_log.jsonl") == _curve(corrected / "correct" / "pretrain" / "train_log.jsonl")
    assert _digest_equal(rd.path / "teacher_base", corrected / "teacher_base")


def test_correct_from_a_given_teacher_on_jsonl_data(mixed, corrected, tmp_path):
    """teacher.path = an HF checkpoint (no pretraining) and correct.data = a JSONL file tokenized with the
    run's tokenizer."""
    from climb_hpc.corpus.tokenize import summary_path
    from climb_hpc.minitron.data import load_tokens

    texts = [f"document {i}: the quick brown fox jumps over the lazy dog, again and again." for i in range(200)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    cfg = clone_run(mixed, tmp_path / "run", "cluster=debug", STAGES, *MIX, *TEACHER,
                    f"minitron.teacher.path={corrected / 'teacher_base'}", f"minitron.correct.data={jsonl}",
                    "minitron.correct.lr=3e-3",  # a given teacher's LR is given (no fallback to the tiny teacher's)
                    "minitron.correct.text_field=body", "minitron.correct.val_tokens=1000", "until=correct")
    run = Path(cfg.run_dir)
    run_pipeline(cfg)
    tokens, source = load_tokens(RunDir(run), str(jsonl), "body")
    eos = read_json(summary_path(RunDir(run)))["eos_id"]
    assert source == str(jsonl) and (tokens == eos).sum() == 200 and tokens[-1] == eos
    m = read_json(run / "correct" / "metrics.json")
    assert m["teacher"] == str(corrected / "teacher_base") and m["data"] == str(jsonl)
    assert not (run / "correct" / "pretrain").exists()
    assert m["val_after"]["lm"] < m["val_before"]["lm"]  # a repetitive corpus: easy to fit


def test_saved_student_loads_and_gives_the_engine_logits(corrected, tmp_path):
    """1 rank in-process, ZeRO-3 student (built sharded) + ZeRO-3 teacher + hidden-state loss, chunked losses: the
    HF checkpoint is bf16 safetensors shards with an index, written a parameter at a time; it loads with
    from_pretrained and reproduces the engine's logits (exactly when written in fp32), and the projection is not
    in it."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from climb_hpc.minitron.distill import distill_phase
    from climb_hpc.minitron.engine import Engine

    cfg = clone_run(corrected, tmp_path / "run", "cluster=debug", STAGES, *MIX, *TEACHER, *STUDENT,
                    "minitron.distill.zero_stage=3", "minitron.distill.teacher_zero3=true",
                    "minitron.distill.hidden_weight=0.5", "minitron.distill.lm_weight=0.1",
                    "minitron.distill.tokens=5120", "minitron.distill.loss_chunk_tokens=100",
                    "minitron.distill.save_shard_gb=0.00005")  # 50 kB shards
    rd = RunDir(cfg.run_dir)
    for side in (rd.path / "tokenize" / "parts").glob("*/*.ids.parquet"):
        side.unlink()  # the ranks read the stores' tokens and .idx only, never the doc-id tables
    torch.set_num_threads(1)
    with ds.distributed(cfg.minitron.distill):
        phase = distill_phase(cfg, rd)
        phase.work.mkdir(parents=True, exist_ok=True)
        engine = Engine(phase)
        assert all(hasattr(p, "ds_id") for p in engine.module.model.parameters())  # built by zero.Init
        teacher = phase.objective.teacher  # a ZeRO-3 engine without optimizer, frozen, built sharded too
        from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload

        assert type(teacher.optimizer) is DeepSpeedZeRoOffload  # parameter partitioning only, no optimizer state
        assert all(hasattr(p, "ds_id") for p in teacher.module.parameters())
        assert not any(p.requires_grad for p in teacher.module.parameters())
        m = engine.run()
        batch = torch.from_numpy(engine.data.val[:4, :-1].copy())
        want = engine.logits(batch)
        ds.save_hf(engine.engine, tmp_path / "fp32", torch.float32, 1e9)
    student = rd.path / "student"
    index = json.loads((student / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((student / f).is_file() for f in shards)
    assert json.loads((student / "config.json").read_text())["dtype"] == "bfloat16"
    assert m["saved"]["dtype"] == "bfloat16" and m["saved"]["files"] == shards
    saved: dict[str, torch.Tensor] = {}
    for f in shards:
        saved.update(load_file(str(student / f)))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    hf = AutoModelForCausalLM.from_pretrained(str(student))
    assert hf.dtype == torch.bfloat16 and set(saved) <= set(hf.state_dict())
    assert not any(k.startswith("proj") for k in saved)  # no projection
    with torch.no_grad():
        got = hf.float()(input_ids=batch).logits
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)  # bf16 weights
    exact = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fp32"))
    assert exact.dtype == torch.float32 and (tmp_path / "fp32" / "model.safetensors").is_file()
    with torch.no_grad():
        torch.testing.assert_close(exact(input_ids=batch).logits, want, atol=1e-5, rtol=0)
    assert set(m["val_before"]) == {"hidden", "kl", "lm"} and m["val_after"]["hidden"] < m["val_before"]["hidden"]
    assert m["world_size"] == 1 and m["zero_stage"] == 3 and m["teacher_zero3"] is True
    assert len(m["peak_memory_gb"]) == 1 and m["peak_memory_gb"][0] > 0


# ---------------------------------------------------------------- 2 nodes on the real Slurm


def _distill_run(corrected: Path, run: Path):
    return clone_run(corrected, run, *SLURM, STAGES, *MIX, *TEACHER, *STUDENT, *TWO_NODES)


@pytest.fixture(scope="module")
def two_node_reference(corrected, tmp_path_factory, request) -> Path:
    request.getfixturevalue("slurm")
    cfg = _distill_run(corrected, tmp_path_factory.mktemp("ref") / "run")
    t0 = time.time()
    run_pipeline(cfg)
    print(f"2-node distill: {time.time() - t0:.1f} s")
    return Path(cfg.run_dir)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_two_node_zero3_distillation_lowers_the_kl(two_node_reference):
    m = read_json(two_node_reference / "distill" / "metrics.json")
    assert m["world_size"] == 2 and sorted(m["hosts"]) == ["node1", "node2"]
    assert m["zero_stage"] == 3 and m["teacher_zero3"] is True and m["steps"] == 200
    assert m["val_after"]["kl"] < m["val_before"]["kl"]
    log = _log(two_node_reference / "distill" / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 201))
    assert np.mean([r["kl"] for r in log[-20:]]) < np.mean([r["kl"] for r in log[:20]])
    assert m["attempts"] == [0] and m["resumed_at_step"] is None


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_preempted_two_node_distillation_resumes_to_identical_weights(two_node_reference, corrected, tmp_path):
    """USR2 to both ranks mid-run: they agree, save a ZeRO checkpoint at the same step, rank 0 requeues the
    job; the rerun loads it and ends with exactly the uninterrupted run's weights and loss curve."""
    cfg = _distill_run(corrected, tmp_path / "run")
    run = Path(cfg.run_dir)
    th = threading.Thread(target=run_pipeline, args=(cfg,))
    th.start()
    wait_for_lines(run / "distill" / "train_log.jsonl", 20)
    job = read_json(run / "_jobs" / "distill.json")["0"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    th.join(400)
    assert not th.is_alive()
    m = read_json(run / "distill" / "metrics.json")
    assert m is not None, "the preempted distillation did not finish"
    assert len(m["attempts"]) == 2 and m["attempts"][1] >= 20, m["attempts"]
    assert read_json(run / "_done" / "distill" / "00000")["restarts"] == 1
    assert _curve(run / "distill" / "train_log.jsonl") == _curve(two_node_reference / "distill" / "train_log.jsonl")
    assert _digest_equal(run / "student", two_node_reference / "student")
    assert m["val_after"] == read_json(two_node_reference / "distill" / "metrics.json")["val_after"]


def _curve(path: Path) -> list[dict]:
    """The log without wall-clock times."""
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in _log(path)]


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_hand_launched_sbatch_on_two_nodes_requeues_on_preemption_and_matches(two_node_reference, corrected,
                                                                               tmp_path):
    """slurm/distill_32n.sbatch as a user runs it (sbatch by hand, srun of 2 ranks on node1 + node2, sized
    down from 32 x 8 on the command line): USR2 mid-run -> the ranks save and exit 75, the script requeues
    the job, the restart resumes and ends with the reference's student."""
    from tests.conftest import ROOT

    cfg = _distill_run(corrected, tmp_path / "run")
    run = Path(cfg.run_dir)
    out = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0",
                          "--cpus-per-task=1", "--mem=0", "--time=10", f"--output={tmp_path}/job-%j.log",
                          str(ROOT / "slurm" / "distill_32n.sbatch"), str(run), "distill"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    job = out.stdout.strip().split(";")[0]
    wait_for_lines(run / "distill" / "train_log.jsonl", 20)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 300
    while not (run / "_done" / "distill" / "00000").exists():
        assert time.time() < deadline, (tmp_path / f"job-{job}.log").read_text()[-3000:]
        time.sleep(1)
    log = (tmp_path / f"job-{job}.log").read_text()
    assert "requeueing job" in log and "(restart 1)" in log
    m = read_json(run / "distill" / "metrics.json")
    assert len(m["attempts"]) == 2 and m["attempts"][1] >= 20 and m["hosts"] == ["node1", "node2"]
    assert _digest_equal(run / "student", two_node_reference / "student")
    assert not (run / "_preempted" / "distill" / "00000").exists()


# ---------------------------------------------------------------- importance: preempted on the real Slurm


def _deep_teacher(mixed: Path, out: Path) -> Path:
    """A 6-layer Llama on the run's vocabulary (random weights) with the run's tokenizer: 6 depth candidates."""
    import shutil

    from climb_hpc.corpus.tokenize import tokenizer_dir
    from climb_hpc.minitron.correct import tokenizer_info
    from climb_hpc.proxy.model import build_model

    info = tokenizer_info(RunDir(mixed))
    dims = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32}
    build_model(dims, info["vocab_size"], info["eos_id"], 64, 3).save_pretrained(str(out))
    for f in tokenizer_dir(RunDir(mixed)).iterdir():
        shutil.copy2(f, out / f.name)
    return out


IMPORTANCE = ("pipeline.stages=[ingest,refine,tokenize,mix,importance]", "minitron.importance.samples=384",
              "minitron.importance.batch_size=64", "minitron.importance.micro_batch_size=32",
              "minitron.importance.seq_len=64", "minitron.importance.loss_chunk_tokens=500",
              "minitron.importance.drop=1", "minitron.importance.cpus=1")


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_importance_preempted_on_slurm_resumes_at_the_next_candidate(mixed, tmp_path):
    """USR2 after the first depth candidate was saved: the task stops between pieces, is requeued, and the rerun
    scores only the pieces still missing; the scores equal an uninterrupted in-process run's exactly."""
    model = _deep_teacher(mixed, tmp_path / "teacher")
    given = f"minitron.importance.model={model}"
    ref = clone_run(mixed, tmp_path / "ref", "cluster=debug", *MIX, *IMPORTANCE, given)
    run_pipeline(ref)
    cfg = clone_run(mixed, tmp_path / "run", *SLURM, *MIX, *IMPORTANCE, given)
    run = Path(cfg.run_dir)
    progress = run / "importance" / "progress"
    th = threading.Thread(target=run_pipeline, args=(cfg,))
    th.start()
    deadline = time.time() + 240
    while not (progress / "depth_0000.pt").exists():
        assert time.time() < deadline and th.is_alive(), "importance never saved its first depth candidate"
        time.sleep(0.1)
    job = read_json(run / "_jobs" / "importance.json")["0"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    th.join(400)
    assert not th.is_alive()
    assert read_json(run / "_done" / "importance" / "00000")["restarts"] == 1
    logs = "".join(p.read_text(errors="replace") for p in (run / "logs" / "importance").rglob("*") if p.is_file())
    assert "importance: resuming after" in logs and "depth_0000" in logs.split("importance: resuming after")[1]
    got = torch.load(run / "importance" / "importance.pt", weights_only=False)
    want = torch.load(Path(ref.run_dir) / "importance" / "importance.pt", weights_only=False)
    for k in ("mlp", "heads", "kv_groups", "channels", "block", "depth_loss"):
        assert torch.equal(got[k], want[k]), k
    assert got["base_loss"] == want["base_loss"] and len(got["depth_loss"]) == 6
