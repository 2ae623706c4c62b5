"""climb-hpc preflight (issue 16, points 4 to 6): every stage rehearsed with no data and no GPU. CPU only, no hub: the
stand-in teachers are folders holding the published config.json (../shared/data/model_configs/) and a tokenizer of
the same vocabulary size built here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from climb_hpc.cli import main
from climb_hpc.config import compose
from climb_hpc.minitron.memory import Dims, training_peak
from climb_hpc.preflight import Check, failures, preflight, render
from tests.conftest import ROOT
from tests.test_bad_values import assert_one_line_error, cli

MODELS = ROOT.parent / "shared" / "data" / "model_configs"
pytestmark = pytest.mark.skipif(not MODELS.is_dir(), reason=f"no published config.json files in {MODELS}")
PROFILE = "dgx_h100_32n"


def standin(folder: Path, model: str, vocab: int | None = None) -> Path:
    """A checkpoint folder without weights: the published config.json and a word-level tokenizer.json of the
    model's vocabulary size (or ``vocab``)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir(parents=True)
    shutil.copy(MODELS / model / "config.json", folder / "config.json")
    n = vocab or json.loads((folder / "config.json").read_text())["vocab_size"]
    Tokenizer(WordLevel({f"t{i}": i for i in range(n)}, unk_token="t0")).save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return standin(tmp_path_factory.mktemp("models") / "llama-3.1-8b", "llama-3.1-8b")


@pytest.fixture
def paper(llama, tmp_path) -> list[str]:
    """The paper's setup on 32 DGX H100 nodes (the encoder a local folder, as on a cluster)."""
    (tmp_path / "stella").mkdir()
    return [f"cluster={PROFILE}", "experiment=climb_minitron_paper", f"minitron.teacher.path={llama}",
            f"embed.model={tmp_path / 'stella'}", f"run_dir={tmp_path / 'run'}"]


def rows_of(*overrides: str) -> list[Check]:
    return preflight(compose(list(overrides)), PROFILE)


def failed(rows: list[Check], stage: str, check: str) -> Check:
    """The one failing row of ``stage`` whose check starts with ``check``."""
    bad = [r for r in failures(rows) if r.stage == stage and r.check.startswith(check)]
    assert len(bad) == 1, render(rows)
    return bad[0]


# ---------------------------------------------------------------- the paper setup passes


def test_the_paper_setup_passes_on_dgx_h100_32n(paper):
    rows = rows_of(*paper)
    assert not failures(rows), render(rows)
    by = {(r.stage, r.check): r for r in rows}
    assert by[("correct", "teacher on meta")].value.startswith("8.03B params, 32 layers")
    assert by[("prune", "student on meta")].value.startswith("4.51B params, 32 layers")  # Llama-3.1-Minitron-4B-Width
    assert by[("tokenize", "teacher's tokenizer")].ok  # the teacher's own 128,256 tokens
    assert by[("correct", "batch = micro x ranks x accum")].limit == "1 x 256 x k"
    for stage in ("correct", "distill", "importance", "search"):
        assert by[(stage, "memory a GPU")].ok and by[(stage, "memory a GPU")].limit == "80 GB"
    for stage in ("correct", "distill"):
        assert by[(stage, "runs on")].value == "1 GPU a rank, bf16"
        assert by[(stage, "time limit")].ok
    # without plan.corpus_tokens the corpus-sized stages' time limits are not checked, and say what they need
    assert by[("embed", "time limit")].ok is None and "plan.corpus_tokens" in by[("embed", "time limit")].message
    assert all(r.ok for r in rows_of(*paper, "plan.corpus_tokens=1.2e12") if r.check == "time limit")


def test_the_mistral_preset_passes_with_its_teacher(paper, tmp_path):
    nemo = standin(tmp_path / "mistral-nemo-12b", "mistral-nemo-12b")
    rows = rows_of(*paper, "minitron=mistral_nemo_12b_to_8b", f"minitron.teacher.path={nemo}")
    assert not failures(rows), render(rows)
    assert next(r for r in rows if r.check == "student on meta").value.startswith("8.")  # Mistral-NeMo-Minitron-8B


# ---------------------------------------------------------------- issue 16's five failures, each caught


def test_a_teacher_fine_tuned_on_another_tokenizers_ids_fails(paper, tmp_path):
    # tokenize.tokenizer unset: the given teacher's own tokenizer by construction (climb_hpc/corpus/identity.py)
    rows = rows_of(*paper, "tokenize.tokenizer=null")
    assert [r.ok for r in rows if (r.stage, r.check) == ("tokenize", "teacher's tokenizer")] == [True]
    other = standin(tmp_path / "other", "mistral-nemo-12b")  # 131,072 tokens: not the 8B teacher's
    fails = failures(rows_of(*paper, f"tokenize.tokenizer={other}"))
    assert any("another tokenizer" in r.message and "tokenize.tokenizer" in r.message for r in fails), fails


def test_minitron_on_the_cpu_inside_a_gpu_allocation_stays_caught(paper):
    """minitron.<stage>.gpus 0 while the job requests GPUs: the job's GPU reaches the code (task_config); a job that
    requests none on the GPU nodes fails, naming the key."""
    rows = rows_of(*paper, "minitron.correct.gpus=0", "minitron.distill.gpus=0")
    assert [r.value for r in rows if r.check == "runs on"] == ["1 GPU a rank, bf16"] * 2
    assert not failures(rows)
    row = failed(rows_of(*paper, "cluster.stage_resources.correct.gpus=0"), "correct", "runs on")
    assert "cluster.stage_resources.correct.gpus=1" in row.message


def test_a_global_batch_that_does_not_divide_over_the_ranks_fails(paper):
    row = failed(rows_of(*paper, "minitron.distill.global_batch_size=1152"), "distill", "batch")
    assert "minitron.distill.global_batch_size=1024 or 1280" in row.message and "256" in row.message


def test_an_unset_correct_lr_with_a_given_teacher_fails(paper):
    row = failed(rows_of(*paper, "minitron.correct.lr=null"), "config", "check_config")
    assert "minitron.correct.lr=null" in row.message and "minitron=llama31_8b_to_4b_width" in row.message


def test_the_tiny_defaults_on_32_nodes_fail(llama, tmp_path):
    """A given teacher on dgx_h100_32n without a preset: the 32-node values are the presets', not comments."""
    rows = rows_of(f"cluster={PROFILE}", f"minitron.teacher.path={llama}", f"tokenize.tokenizer={llama}",
                   f"run_dir={tmp_path / 'run'}")
    assert "minitron=llama31_8b_to_4b_width" in failed(rows, "config", "check_config").message
    assert "minitron.correct.global_batch_size=2048" in failed(rows, "correct", "batch").message  # 16 over 8 x 256


# ---------------------------------------------------------------- pruning targets, memory


@pytest.mark.parametrize("overrides, key", [
    (["minitron.prune.num_attention_heads=30"], "minitron.prune.num_attention_heads"),  # 30 heads in 8 groups
    (["minitron.prune.num_key_value_heads=16", "minitron.prune.num_attention_heads=32"], "num_key_value_heads"),
    (["minitron.prune.num_attention_heads=48"], "minitron.prune.num_attention_heads"),  # more than the teacher's 32
])
def test_a_pruning_target_that_breaks_gqa_fails(paper, overrides, key):
    row = failed(rows_of(*paper, *overrides), "prune", "heads / KV groups")
    assert key in row.message and "teacher 32 / 8 x 128" == row.limit


def test_a_pruning_target_larger_than_the_teacher_fails(paper):
    row = failed(rows_of(*paper, "minitron.prune.hidden_size=5120"), "prune", "hidden_size")
    assert "minitron.prune.hidden_size" in row.message and row.limit == "<= 4096"


def test_a_memory_overflow_fails(paper):
    """ZeRO-1 with the 8B teacher at seq 8192 on 80 GB, without activation checkpointing."""
    rows = rows_of(*paper, "minitron.correct.zero_stage=1", "minitron.correct.activation_checkpointing=false")
    row = failed(rows, "correct", "memory a GPU")
    assert float(row.value.split()[0]) > 80 and "minitron.correct.activation_checkpointing=true" in row.message
    # with checkpointing the activations fit, and ZeRO-3 shards the rest
    assert not failures(rows_of(*paper, "minitron.correct.zero_stage=1"))
    # importance in fp32 with whole logits: 16 sequences of 4096 tokens' logits do not fit beside the teacher;
    # in bf16 with the loss in chunks (the preset) the same 16 sequences a forward do
    whole = ("minitron.importance.precision=fp32", "minitron.importance.loss_chunk_tokens=0")
    row = failed(rows_of(*paper, *whole, "minitron.importance.micro_batch_size=16"), "importance", "memory a GPU")
    assert "minitron.importance.micro_batch_size" in row.message
    assert not failures(rows_of(*paper, "minitron.importance.micro_batch_size=16"))
    # distillation without chunked losses: the advice names them first
    rows = rows_of(*paper, "minitron.distill.loss_chunk_tokens=0", "minitron.distill.micro_batch_size=4",
                   "minitron.distill.global_batch_size=1024")
    assert "minitron.distill.loss_chunk_tokens=1024" in failed(rows, "distill", "memory a GPU").message
    # the proxies with the teacher's 128k vocabulary at 62m's own micro-batch (32 x 2048 tokens)
    assert "proxy.micro_batch_size" in failed(rows_of(*paper, "proxy.micro_batch_size=32"), "search", "memory").message


def test_zero_shards_the_model_state_by_stage():
    p, r = 8e9, 256
    d = Dims.of({"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256}, int(p))
    terms = {z: training_peak(d, 1, 8192, "bf16", z, r).terms for z in (0, 1, 2, 3)}
    assert terms[0]["weights"] == terms[1]["weights"] == terms[2]["weights"] == 2 * p
    assert terms[3]["weights"] == 2 * p / r
    assert terms[1]["grads"] == 2 * p and terms[2]["grads"] == terms[3]["grads"] == 2 * p / r
    assert terms[0]["optimizer"] == 12 * p and terms[1]["optimizer"] == 12 * p / r
    # the logits: the cross-entropy's 3 fp32 [tokens, vocab] buffers; chunked, a chunk's buffers only
    assert terms[1]["logits and loss"] == 3 * 4 * 8192 * 128256
    chunked = training_peak(d, 1, 8192, "bf16", 1, r, chunk=1024).terms
    assert chunked["logits and loss"] == (3 * 4 + 2 * 2) * 1024 * 128256 < terms[1]["logits and loss"] / 5
    assert chunked["hidden states"] == 8192 * 2 * 2 * 4096
    ckpt = training_peak(d, 1, 8192, "bf16", 3, r, checkpointing=True).terms["activations"]
    assert ckpt < terms[3]["activations"] / 10


SMALL = {"hidden_size": 1024, "intermediate_size": 3584, "num_attention_heads": 8, "num_key_value_heads": 2,
         "head_dim": 128, "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 5e5, "tie_word_embeddings": False,
         "max_position_embeddings": 8192}


@pytest.mark.parametrize("dtype, checkpointing", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_the_memory_model_matches_the_measured_peak(dtype, checkpointing):
    """benchmarks/memory_model.py's code path (HF Llama, SDPA, engine.lm_loss, two micro-steps with the gradients
    resident) at Llama-3.1-8B's proportions scaled to hidden 1024 and a 32k vocabulary (~1 GB, seconds): the model
    is within 25 % of the measured peak RSS. The full-width figures are in docs/preflight.md."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.memory_model import compare, spec_of

    r = compare(spec_of(SMALL, 2, 512, 1, dtype, checkpointing))
    assert 0.75 <= r["ratio"] <= 1.25, r
    assert r["measured_gb"] > 0.5


# ---------------------------------------------------------------- the CLI: preflight, run, plan


def test_the_cli_prints_one_table_and_exits_0_or_2(paper):
    p = cli("preflight", *paper)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("stage ") == 1 and "preflight: ok" in p.stdout.splitlines()[-1]
    p = cli("preflight", *paper, "minitron.distill.global_batch_size=1000")
    assert p.stdout.count("stage ") == 1 and "FAIL" in p.stdout
    assert_one_line_error(p, "preflight failed", "minitron.distill.global_batch_size=768 or 1024")
    js = cli("preflight", *paper, "format=json")
    assert js.returncode == 0 and json.loads(js.stdout)["ok"] is True


def test_run_refuses_to_submit_when_preflight_fails(paper, tmp_path):
    run = tmp_path / "run"
    p = cli("run", *paper, "minitron.distill.global_batch_size=1000", "dry_run=true")
    assert_one_line_error(p, "minitron.distill.global_batch_size")
    assert "FAIL" in p.stdout and not run.exists()


def test_preflight_skip_lets_a_run_through(tmp_path, monkeypatch):
    """preflight=skip: `run` goes on without it (here a failing preflight is simulated: the real one checks the
    stages that run, and one that fails would stop the run before them)."""
    import climb_hpc.preflight as pf

    fail = [Check("distill", "batch", "1000", "1 x 256 x k", False, "minitron.distill.global_batch_size=1024")]
    monkeypatch.setattr(pf, "preflight", lambda cfg, profile=None, plan=None: fail)
    args = ["run", f"run_dir={tmp_path / 'run'}", "until=ingest", "cluster=debug", "corpus.builtin.docs_per_domain=5",
            "progress=false"]
    assert main(args) == 2 and not (tmp_path / "run").exists()
    assert main([*args, "preflight=skip"]) == 0
    assert (tmp_path / "run" / "_done" / "ingest").exists()


def test_plan_prints_the_verdict_beside_the_reservation(paper, capsys):
    assert main(["plan", *paper, "plan.corpus_tokens=1.2e12"]) == 0
    out = capsys.readouterr().out
    assert out.index("reservation:") < out.index("preflight: ok") < out.index("assumptions")
    assert main(["plan", *paper, "plan.corpus_tokens=1.2e12", "minitron.prune.num_attention_heads=30"]) == 0
    out = capsys.readouterr().out
    assert "preflight: FAILED, 1 of" in out and "do not book this reservation" in out
    assert main(["plan", *paper, "plan.corpus_tokens=1.2e12", "format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["preflight"]["ok"] is True


def test_the_default_run_passes_on_this_machine():
    rows = preflight(compose([]), "local")
    assert not failures(rows), render(rows)
    assert {r.stage for r in rows if r.check.startswith("memory")} >= {"correct", "distill"}


def test_a_resumed_run_is_checked_on_the_profile_it_was_saved_with(tmp_path):
    from climb_hpc.config import compose_for_run
    from climb_hpc.preflight import profile_for
    from climb_hpc.rundir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    RunDir(run).save_config(compose([f"cluster={PROFILE}", f"run_dir={run}"]))
    assert profile_for([f"run_dir={run}"], compose_for_run([f"run_dir={run}"])) == PROFILE
    assert profile_for([f"run_dir={tmp_path / 'new'}"], compose([f"run_dir={tmp_path / 'new'}"])) == "local"


def test_the_engine_honours_activation_checkpointing(tmp_path):
    """minitron.<stage>.activation_checkpointing=true: the engine's model recomputes its layers in the backward (HF
    gradient checkpointing) and trains to the same losses as without."""
    import numpy as np
    import torch

    from climb_hpc.minitron import ds
    from climb_hpc.minitron.correct import plain
    from climb_hpc.minitron.data import PhaseData, TokenWindows, val_windows
    from climb_hpc.minitron.engine import Engine, LMObjective, Phase
    from climb_hpc.proxy.model import build_model

    cfg = compose([])
    section = plain(cfg.minitron.correct) | {"tokens": 3 * 16 * 32, "seq_len": 32, "lr": 1e-3, "ckpt_every": 0}
    shape = plain(cfg.minitron.teacher.model) | {"num_hidden_layers": 2}
    tokens = np.random.default_rng(0).integers(0, 256, 20_000)

    def data(n: int) -> PhaseData:
        return PhaseData(TokenWindows(tokens, 32, n, 0, end=18_000), val_windows(tokens[18_000:], 32), "random", 18_000)

    losses, checkpointed = {}, {}
    torch.set_num_threads(1)
    with ds.distributed(section):
        for on in (False, True):
            phase = Phase(f"ac-{on}", section | {"activation_checkpointing": on}, tmp_path / f"w{on}", tmp_path / f"m{on}",
                          lambda: build_model(shape, 256, 0, 32, 0), data, LMObjective(), 0)
            phase.work.mkdir()
            engine = Engine(phase)
            engine.fit()
            losses[on] = [h["loss"] for h in engine.history]
            checkpointed[on] = any(getattr(m, "gradient_checkpointing", False) for m in engine.module.model.modules())
    assert checkpointed == {False: False, True: True} and len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
