"""``proxy.init``: proxy trials that continue a pretrained checkpoint instead of starting from a random init.

The run is the built-in corpus (40 docs a domain, 7 clusters from the true domains) tokenized with a 600-token BPE;
the init is a small Llama saved with ``save_pretrained`` next to the run's tokenizer files: one pretrained here by a
trial (the recipe's case: a pretrained proxy to continue), or random weights where only the identity matters.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from climb_hpc import preempt
from climb_hpc.corpus.tokenize import cluster_ids, summary_path, tokenizer_dir
from climb_hpc.corpus.tokenizer import identity, save_trained, train_bpe
from climb_hpc.errors import ConfigError, InputError
from climb_hpc.pipeline import check_config, open_run, run_pipeline, stage_runner
from climb_hpc.proxy import run_mixtures
from climb_hpc.proxy.model import build_model
from climb_hpc.proxy.sampler import MixtureSampler, training_streams
from climb_hpc.proxy.stage import group_dir, trial_dir, trial_stage
from climb_hpc.proxy.train import num_steps, run_trial
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.scheduler import make_executor
from tests.conftest import ROOT, SMALL_PROXY, TOKENIZED, clone_run, make_cfg, tokenized_run

UNIFORM = {c: 1.0 for c in range(7)}
#: stages up to the search: check_config looks at these only
UP_TO_SEARCH = "pipeline.stages=[ingest,refine,tokenize,search]"
#: the init's shape differs from SMALL_PROXY's proxy.model (intermediate 128, 1 KV head): config.json sets it
INIT_DIMS = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2, "head_dim": 32}


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    return tokenized_run(tmp_path_factory.mktemp("init") / "run")


def with_tokenizer(folder: Path, tokenizer: Path) -> Path:
    for f in tokenizer.iterdir():
        shutil.copy2(f, folder / f.name)
    return folder


def random_init(folder: Path, run: Path, seed: int = 7, vocab: int | None = None, **dims: int) -> Path:
    """A Llama with random weights on the run's vocabulary (or ``vocab``) and the run's tokenizer."""
    info = read_json(summary_path(RunDir(run)))
    build_model({**INIT_DIMS, **dims}, vocab or info["vocab_size"], info["eos_id"], 256, seed).save_pretrained(str(folder))
    return with_tokenizer(folder, tokenizer_dir(RunDir(run)))


@pytest.fixture(scope="module")
def pretrained(tokenized, tmp_path_factory) -> Path:
    """A proxy pretrained here: a 40-step trial of INIT_DIMS on all clusters, saved as an HF checkpoint with the
    run's tokenizer."""
    base = tmp_path_factory.mktemp("pretrain")
    cfg = clone_run(tokenized, base / "run", "proxy.tokens=40960", "proxy.save_model=true",
                    *(f"proxy.model.{k}={v}" for k, v in INIT_DIMS.items()))
    run_trial(cfg, RunDir(cfg.run_dir), base / "trial", UNIFORM, seed=3)
    return with_tokenizer(base / "trial" / "model", tokenizer_dir(RunDir(tokenized)))


def losses(trial: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (trial / "train_log.jsonl").read_text().splitlines()]


def digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def run_group(cfg, group: str, mixtures: list[dict]) -> list[dict]:
    with RunDir(cfg.run_dir) as rd:
        open_run(cfg, rd)
        return run_mixtures(cfg, rd, stage_runner(cfg, rd, make_executor(cfg, rd)), group, mixtures)


# ---------------------------------------------------------------- a trial starts from the init's weights


def test_a_trial_starts_from_the_init_weights_in_its_shape(tokenized, pretrained, tmp_path):
    """One step in fp32: the logged loss is the pretrained model's own loss on the trial's first batch (far below
    a random init's ~ln 600); the architecture is config.json's, not proxy.model's."""
    from transformers import AutoModelForCausalLM

    cfg = clone_run(tokenized, tmp_path / "run", "proxy.tokens=1024", "proxy.precision=fp32", "proxy.save_model=true",
                    f"proxy.init={pretrained}")
    rd = RunDir(cfg.run_dir)
    m = run_trial(cfg, rd, tmp_path / "trial", UNIFORM, seed=0)
    sampler = MixtureSampler(training_streams(rd, cluster_ids(rd), 0.1), UNIFORM, 128, num_steps(cfg.proxy) * 8, 0)
    seqs = torch.from_numpy(sampler.sequences(0, 8))
    model = AutoModelForCausalLM.from_pretrained(str(pretrained), dtype=torch.float32)
    with torch.no_grad():
        expected = F.cross_entropy(model(input_ids=seqs[:, :-1]).logits.flatten(0, 1), seqs[:, 1:].flatten()).item()
    first = losses(tmp_path / "trial")[0]
    assert first == pytest.approx(expected, rel=1e-5) and first < np.log(600) - 1.0
    assert m["init"] == str(pretrained) and m["steps"] == 1
    saved = json.loads((tmp_path / "trial" / "model" / "config.json").read_text())
    assert (saved["intermediate_size"], saved["num_key_value_heads"]) == (96, 2)  # proxy.model says 128 and 1

    fresh = clone_run(tokenized, tmp_path / "fresh", "proxy.tokens=1024", "proxy.precision=fp32")
    run_trial(fresh, RunDir(fresh.run_dir), tmp_path / "f", UNIFORM, seed=0)  # the same trial from a random init
    assert losses(tmp_path / "f")[0] > first + 1.0 and read_json(tmp_path / "f" / "metrics.json")["init"] is None


# ---------------------------------------------------------------- resume: its own checkpoint, bit-identical

KILL_AT_STEP = """
import os, signal, sys
from pathlib import Path
from climb_hpc import preempt
from climb_hpc.proxy.train import run_trial
from climb_hpc.rundir import RunDir

step = {"n": 0}
def requested():  # polled once a step: the process dies by SIGKILL at step N, saving nothing
    step["n"] += 1
    if step["n"] == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    return False
preempt.requested = requested
rd = RunDir(sys.argv[1])
run_trial(rd.load_config(), rd, Path(sys.argv[2]), {c: 1.0 for c in range(7)}, seed=0)
"""


@pytest.fixture(scope="module")
def uninterrupted(tokenized, pretrained, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ref")
    cfg = clone_run(tokenized, base / "run", *RESUMABLE, f"proxy.init={pretrained}")
    run_trial(cfg, RunDir(cfg.run_dir), base / "trial", UNIFORM, seed=0)
    return base / "trial"


RESUMABLE = ("proxy.tokens=40960", "proxy.ckpt_every=10", "proxy.save_model=true")  # 40 steps


def test_a_trial_killed_mid_training_resumes_from_its_checkpoint_bit_identical(tokenized, pretrained, uninterrupted,
                                                                              tmp_path):
    """SIGKILL at step 25 (the last checkpoint: step 20): the rerun resumes from its own checkpoint, not from the
    init (whose weights are not even there during the rerun), and ends with the uninterrupted trial's losses,
    target and weights."""
    init = tmp_path / "init"
    shutil.copytree(pretrained, init)
    cfg = clone_run(tokenized, tmp_path / "run", *RESUMABLE, f"proxy.init={init}")
    out = tmp_path / "trial"
    p = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(cfg.run_dir), str(out), "25"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    assert len(losses(out)) == 25 and (out / "ckpt" / "state.pt").exists() and not (out / "metrics.json").exists()
    (init / "model.safetensors").rename(tmp_path / "away.safetensors")  # resuming must not read the init's weights
    m = run_trial(cfg, RunDir(cfg.run_dir), out, UNIFORM, seed=0)
    assert read_json(out / "attempts.json") == [0, 20] and m["resumed_at_step"] == 20
    assert losses(out) == losses(uninterrupted) and len(losses(out)) == 40
    ref = read_json(uninterrupted / "metrics.json")
    assert m["target"]["value"] == ref["target"]["value"] and m["heldout_loss"] == ref["heldout_loss"]
    assert digest(out / "model") == digest(uninterrupted / "model")


def test_a_preempted_trial_resumes_bit_identical(tokenized, pretrained, uninterrupted, tmp_path, monkeypatch):
    """The preemption signal at step 13: the trial saves at once and stops; the rerun ends as if never stopped."""
    cfg = clone_run(tokenized, tmp_path / "run", *RESUMABLE, f"proxy.init={pretrained}")
    out = tmp_path / "trial"
    polls = iter(range(1, 10**6))
    monkeypatch.setattr(preempt, "requested", lambda: next(polls) >= 13)
    with pytest.raises(preempt.Preempted, match="saved at step 13 of 40"):
        run_trial(cfg, RunDir(cfg.run_dir), out, UNIFORM, seed=0)
    monkeypatch.undo()
    run_trial(cfg, RunDir(cfg.run_dir), out, UNIFORM, seed=0)
    assert read_json(out / "attempts.json") == [0, 13]
    assert losses(out) == losses(uninterrupted) and digest(out / "model") == digest(uninterrupted / "model")


# ---------------------------------------------------------------- refused before anything is submitted


def test_an_init_with_another_tokenizer_is_refused_before_submission(tokenized, tmp_path):
    """Its tokenizer is not the run's (same size, other tokens): one ConfigError naming both, before the run
    folder is touched; the same tokenizer in another folder passes."""
    other = tmp_path / "other"
    random_init(other, tokenized)
    texts = [f"another corpus {i}: lorem ipsum dolor sit amet {i * 3}" for i in range(300)]
    save_trained(train_bpe(texts, 600, 1), other)
    assert identity(other) != identity(tokenizer_dir(RunDir(tokenized)))
    cfg = clone_run(tokenized, tmp_path / "run", UP_TO_SEARCH, "cluster=debug", f"proxy.init={other}")
    before = sorted(p.name for p in Path(cfg.run_dir).iterdir())
    with pytest.raises(ConfigError) as e:
        run_pipeline(cfg)
    msg = str(e.value)
    assert "proxy.init" in msg and msg.count("sha256:") == 2 and "tokenized its corpus with" in msg
    assert "run_dir=" in msg  # what to do
    assert sorted(p.name for p in Path(cfg.run_dir).iterdir()) == before and not (Path(cfg.run_dir) / "proxy").exists()

    # a new run told to tokenize with one tokenizer and to start the proxies from a checkpoint of another
    cfg = make_cfg(tmp_path / "new", *TOKENIZED, UP_TO_SEARCH, f"tokenize.tokenizer={tokenizer_dir(RunDir(tokenized))}",
                   f"proxy.init={other}")
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert "proxy.init" in str(e.value) and "tokenize.tokenizer" in str(e.value) and str(e.value).count("sha256:") == 2
    assert not (tmp_path / "new").exists()

    same = random_init(tmp_path / "same", tokenized)
    check_config(clone_run(tokenized, tmp_path / "ok", UP_TO_SEARCH, f"proxy.init={same}"))


def test_an_init_that_cannot_serve_is_refused(tokenized, tmp_path):
    """A vocabulary smaller than its tokenizer, weights that are not its config.json's, no weights, a sequence
    longer than its positions."""
    small = random_init(tmp_path / "small", tokenized, vocab=500)
    with pytest.raises(ConfigError, match=r"vocabulary of 500 rows, fewer than the run's tokenizer needs \(\d+ ids\)"):
        check_config(clone_run(tokenized, tmp_path / "r1", UP_TO_SEARCH, f"proxy.init={small}"))

    bent = random_init(tmp_path / "bent", tokenized)
    conf = json.loads((bent / "config.json").read_text())
    (bent / "config.json").write_text(json.dumps({**conf, "intermediate_size": 100}))
    with pytest.raises(InputError, match=r"mlp\.gate_proj\.weight is \[96, 64\] in model\.safetensors, config\.json "
                                         r"makes it \[100, 64\]"):
        check_config(clone_run(tokenized, tmp_path / "r2", UP_TO_SEARCH, f"proxy.init={bent}"))

    bare = random_init(tmp_path / "bare", tokenized)
    (bare / "model.safetensors").unlink()
    with pytest.raises(InputError, match="holds no \\*.safetensors weights"):
        check_config(clone_run(tokenized, tmp_path / "r3", UP_TO_SEARCH, f"proxy.init={bare}"))

    ok = random_init(tmp_path / "ok", tokenized)  # max_position_embeddings 256
    with pytest.raises(ConfigError, match="proxy.seq_len=512 is longer than proxy.init's max_position_embeddings=256"):
        check_config(clone_run(tokenized, tmp_path / "r4", UP_TO_SEARCH, f"proxy.init={ok}", "proxy.seq_len=512"))
    with pytest.raises(ConfigError, match="no such file or folder"):
        check_config(clone_run(tokenized, tmp_path / "r5", UP_TO_SEARCH, f"proxy.init={tmp_path / 'nowhere'}"))


# ---------------------------------------------------------------- another init: its trials are not reused


def test_changing_the_init_does_not_reuse_trials(tokenized, tmp_path):
    """The same folder saved again (new weights, same shapes): the group and each of its tasks refuse to reuse the
    trials; another folder while the search runs: the config change resets the search and its trials, which train
    again from the new init."""
    a, b = random_init(tmp_path / "a", tokenized, seed=1), random_init(tmp_path / "b", tokenized, seed=2)
    settings = ("cluster=debug", "proxy.tokens=2048")
    cfg = clone_run(tokenized, tmp_path / "run", *settings, f"proxy.init={a}")
    rd = RunDir(cfg.run_dir)
    first = run_group(cfg, "g", [UNIFORM])
    plan = read_json(group_dir(rd, "g") / "trials.json")
    assert plan["init"]["path"] == str(a) and plan["init"]["config"].startswith("sha256:")
    assert run_group(cfg, "g", [UNIFORM]) == first  # the same init: resumed, nothing rerun

    random_init(a, tokenized, seed=5)  # saved again in place
    with pytest.raises(ConfigError, match="proxy/g was trained from .*, but its trials now start from .*: its weights were saved again. "
                                         "Trials from another init are not reused"):
        run_group(cfg, "g", [UNIFORM])
    with pytest.raises(ConfigError, match="not reused"):  # a queued task of the group, reached by its job
        trial_stage("g").run(cfg, rd, 0)
    assert read_json(trial_dir(rd, "g", 0) / "metrics.json") == first[0]["metrics"]

    (Path(cfg.run_dir) / "search").mkdir()  # the search has started (its driver writes there first)
    rows = run_group(make_cfg(rd.path, *TOKENIZED, *SMALL_PROXY, *settings, f"proxy.init={b}"), "g", [UNIFORM])
    assert rows[0]["metrics"]["init"] == str(b) and rows[0]["value"] != first[0]["value"]
    assert read_json(group_dir(rd, "g") / "trials.json")["init"]["path"] == str(b)
    assert read_json(trial_dir(rd, "g", 0) / "attempts.json") == [0]  # trained anew, not resumed


# ---------------------------------------------------------------- the plan and preflight use the init's shape


def test_plan_and_preflight_use_the_init_shape(tokenized, tmp_path):
    from climb_hpc.estimate import dims_of, matmul_params
    from climb_hpc.plan import make_plan
    from climb_hpc.preflight import preflight

    big = random_init(tmp_path / "big", tokenized, hidden_size=256, intermediate_size=512, num_attention_heads=8,
                      num_key_value_heads=4)
    cfg = make_cfg(tmp_path / "run", UP_TO_SEARCH, f"proxy.init={big}")
    rows = preflight(cfg, "local")
    meta = next(r for r in rows if r.check == "proxy on meta")
    assert meta.ok and meta.limit == f"proxy.init={big}/config.json"
    shape = next(r for r in rows if r.check == "proxy.init sets the shape")
    assert "hidden_size 128 -> 256" in shape.value
    used = {a.name: a for a in make_plan(cfg, "local").assumptions}
    assert used["proxy matmul params"].source.startswith(f"proxy.init={big}/config.json: ")
    assert used["proxy matmul params"].value == matmul_params(dims_of(json.loads((big / "config.json").read_text())))
    plain = {a.name: a for a in make_plan(make_cfg(tmp_path / "run", UP_TO_SEARCH), "local").assumptions}
    assert plain["proxy matmul params"].source.startswith("proxy=tiny (proxy.model)")
