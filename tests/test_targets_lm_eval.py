"""Targets scored by lm-evaluation-harness (target=lm_eval), the local tasks `climb-hpc build-tasks` writes from
held-out docs, and the mended multiple-choice target (seeded samples, several files, a normalisation a file).

A tiny random Llama (2 layers, 64 wide) and a 600-token BPE trained here; the corpus is the built-in one plus
GSM8K-shaped word problems, written to a temporary folder. The value a trial records is compared exactly with
what ``lm_eval.simple_evaluate`` itself reports for the same model object and samples, and the built task YAMLs
are run through lm-eval's own command line on the model saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from climb_hpc.config import compose
from climb_hpc.corpus.builtin import write_builtin_corpus
from climb_hpc.corpus.heldout import heldout_mask
from climb_hpc.corpus.tokenizer import EOS, train_bpe
from climb_hpc.evaltasks import build, target_overrides
from climb_hpc.proxy import lm_eval_target as le
from climb_hpc.proxy.model import build_model
from climb_hpc.proxy.targets import TargetError, check_target, evaluate, mc_accuracy, read_mc
from tests.conftest import SMALL_PROXY

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'climb-hpc[eval]'")

HOLDOUT = 0.5
CPU = torch.device("cpu")
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 32}


def _word_problems(n: int) -> list[dict]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(2, 90, 2))
        out.append({"id": f"wp-{i:04d}", "source": "math",
                    "text": f"Sam has {a} apples and buys {b} more. How many apples does Sam have?\n"
                            f"Sam has {a}+{b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    write_builtin_corpus(d, 30, seed=0)
    (d / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _word_problems(60)))
    return d


@pytest.fixture(scope="module")
def tasks(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tasks")
    return out, build(corpus, out, HOLDOUT, seed=0, items=40)


@pytest.fixture(scope="module")
def tok(corpus):
    texts = [json.loads(line)["text"] for f in sorted(corpus.glob("*.jsonl")) for line in f.open()]
    return train_bpe(texts, 600, 2)


@pytest.fixture(scope="module")
def model(tok):
    return build_model(TINY, tok.get_vocab_size(), tok.token_to_id(EOS), 128, seed=0)


def tcfg(include: Path, tasks: list, limit=None, seed=0, **extra):
    return OmegaConf.create({"kind": "lm_eval", "include_path": str(include), "tasks": tasks, "metric": "acc_norm",
                             "limit": limit, "seed": seed, "batch_size": 8, "cluster_losses": False,
                             "max_tokens": 1000, **extra})


# ---------------------------------------------------------------- the task builder


def test_built_tasks_hold_only_heldout_docs_and_are_seeded(corpus, tasks, tmp_path):
    out, m = tasks
    names = set(m["tasks"])
    assert {"climb_cont_code", "climb_cont_recipes", "climb_answer_math", "climb_cont_math"} <= names
    assert m["tasks"]["climb_answer_math"]["metric"] == "acc" and m["tasks"]["climb_cont_code"]["metric"] == "acc_norm"
    docs = {json.loads(line)["id"]: json.loads(line)["text"] for f in corpus.glob("*.jsonl") for line in f.open()}
    held = {i for i, h in zip(docs, heldout_mask(list(docs), HOLDOUT), strict=True) if h}
    held_text = "\n".join(docs[i] for i in held)
    for name in names:
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").open()]
        assert 0 < len(rows) <= 40
        assert {r["id"] for r in rows} <= held  # every question from a held-out doc ...
        for r in rows:
            assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["answer"] < 4
            assert docs[r["id"]].strip().startswith(r["context"].removeprefix("Question: ").split("\nAnswer:")[0])
            assert all(c in held_text for c in r["choices"])  # ... and every distractor too
        assert len({r["answer"] for r in rows}) > 1  # the true choice is not always in one place
        yaml = (out / f"{name}.yaml").read_text()
        assert f"task: {name}" in yaml and json.dumps(str((out / f"{name}.jsonl").resolve())) in yaml
    assert {json.loads(x)["choices"][json.loads(x)["answer"]] for x in (out / "climb_answer_math.jsonl").open()} <= {
        d.rsplit("#### ", 1)[1] for d in docs.values() if "#### " in d}
    again = build(corpus, tmp_path / "a", HOLDOUT, seed=0, items=40)
    other = build(corpus, tmp_path / "b", HOLDOUT, seed=1, items=40)
    same = (tmp_path / "a" / "climb_cont_code.jsonl").read_text() == (out / "climb_cont_code.jsonl").read_text()
    assert same and again["tasks"].keys() == m["tasks"].keys()
    assert (tmp_path / "b" / "climb_cont_code.jsonl").read_text() != (out / "climb_cont_code.jsonl").read_text()
    assert other["heldout_docs"] == m["heldout_docs"]  # the seed picks distractors, never which docs are held out


def test_build_tasks_cli_prints_the_target_overrides(corpus, tmp_path):
    from climb_hpc.cli import main

    r = subprocess.run([sys.executable, "-m", "climb_hpc.evaltasks", f"corpus={corpus}", f"out={tmp_path}",
                        "holdout=0.5", "items=10", "kinds=cont", "domains=code,legal"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "climb_cont_code" in r.stdout and "climb_cont_legal" in r.stdout and "climb_answer" not in r.stdout
    assert "target=lm_eval target.include_path=" in r.stdout
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == ["climb_cont_code.yaml", "climb_cont_legal.yaml"]
    assert main(["build-tasks", f"corpus={corpus}", f"out={tmp_path}", "holdout=0"]) == 2  # a clear error, rc 2


# ---------------------------------------------------------------- scoring: the same value lm-eval reports


def test_subsample_is_seeded_never_the_first_items():
    a = le.subsample(500, 20, 0, "t")
    assert a == le.subsample(500, 20, 0, "t") and a == sorted(set(a)) and len(a) == 20
    assert a != list(range(20)) and a != le.subsample(500, 20, 1, "t") and a != le.subsample(500, 20, 0, "u")
    expected = sorted(np.random.default_rng([0, zlib.crc32(b"t")]).permutation(500)[:20].tolist())
    assert a == expected
    assert le.subsample(7, 20, 0, "t") == list(range(7)) and le.subsample(7, None, 0, "t") == list(range(7))


def test_trial_value_equals_lm_evals_own_report(tasks, tok, model):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out, m = tasks
    specs = [{"name": "climb_cont_code", "metric": "acc_norm"}, {"name": "climb_answer_math", "metric": "acc"},
             "climb_cont_legal"]  # a bare name: target.metric (acc_norm)
    cfg = tcfg(out, specs, limit=15, seed=3)
    eos = tok.token_to_id(EOS)
    model.train()
    got = evaluate(model, cfg, None, clusters=[0], holdout=0.0, seq_len=128, tokenizer=tok, eos_id=eos, device=CPU)
    t = got["target"]
    assert model.training  # put back in training mode as it was handed over (HFLM sets eval mode)
    assert t["kind"] == "lm_eval" and t["direction"] == "higher" and got["heldout_loss"] == {}
    samples = {n: sorted(np.random.default_rng([3, zlib.crc32(n.encode())]).permutation(
        m["tasks"][n]["items"])[:15].tolist()) for n in ("climb_cont_code", "climb_answer_math", "climb_cont_legal")}
    lm = HFLM(pretrained=model, tokenizer=le.hf_tokenizer(tok, eos), batch_size=8)
    ref = simple_evaluate(lm, tasks=list(samples), task_manager=TaskManager(include_path=str(out)),
                          samples=samples, bootstrap_iters=0)["results"]  # lm-eval's default seeds
    want = {"climb_cont_code": ref["climb_cont_code"]["acc_norm,none"],
            "climb_answer_math": ref["climb_answer_math"]["acc,none"],
            "climb_cont_legal": ref["climb_cont_legal"]["acc_norm,none"]}
    assert {n: v["value"] for n, v in t["tasks"].items()} == want
    assert t["value"] == float(np.mean(list(want.values())))
    assert all(v["docs"] == m["tasks"][n]["items"] and v["items"] == min(15, v["docs"]) for n, v in t["tasks"].items())
    assert any(v["items"] < v["docs"] for v in t["tasks"].values())  # a sample, not the whole task
    # the EOS prefix: lm-eval's context tokens start with EOS, as every doc did in training
    assert le.hf_tokenizer(tok, eos).encode("a b")[0] == eos and tok.encode("a b").ids[0] != eos


@pytest.mark.slow
def test_built_task_yaml_runs_through_the_lm_eval_cli_and_agrees(tasks, tok, model, tmp_path):
    """The folder as `build-tasks` wrote it, through `python -m lm_eval` on the model saved with save_pretrained:
    the same acc_norm on the same samples as the in-process target."""
    out, m = tasks
    eos = tok.token_to_id(EOS)
    model.save_pretrained(tmp_path / "model")
    le.hf_tokenizer(tok, eos).save_pretrained(tmp_path / "model")
    cfg = tcfg(out, [{"name": "climb_cont_recipes", "metric": "acc_norm"}], limit=12, seed=5)
    mine = evaluate(model, cfg, None, clusters=[0], holdout=0.0, seq_len=128, tokenizer=tok, eos_id=eos,
                    device=CPU)["target"]["value"]
    samples = le.samples_for(cfg)
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                        f"pretrained={tmp_path / 'model'},dtype=float32", "--device", "cpu", "--batch_size", "8",
                        "--tasks", "climb_cont_recipes", "--include_path", str(out),
                        "--samples", json.dumps(samples), "--output_path", str(tmp_path / "res")],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **le.OFFLINE})
    assert r.returncode == 0, r.stderr[-3000:]
    (res,) = (tmp_path / "res").rglob("results_*.json")
    cli = json.loads(res.read_text())["results"]["climb_cont_recipes"]["acc_norm,none"]
    assert cli == pytest.approx(mine, abs=1e-9)


# ---------------------------------------------------------------- errors before any GPU is spent


def test_clear_errors_for_what_would_fail_every_trial(tasks, tmp_path, monkeypatch):
    out, _ = tasks
    with pytest.raises(TargetError, match=r"no task 'nope' .* found: .*climb_cont_code"):
        check_target(tcfg(out, ["nope"]))
    with pytest.raises(TargetError, match="target.include_path=.*no such folder"):
        check_target(tcfg(tmp_path / "missing", ["climb_cont_code"]))
    with pytest.raises(TargetError, match=r"reports \['acc', 'acc_norm'\], not 'f1'"):
        check_target(tcfg(out, [{"name": "climb_cont_code", "metric": "f1"}]))
    with pytest.raises(TargetError, match="needs target.tasks"):
        check_target(tcfg(out, []))
    with pytest.raises(TargetError, match="target.tasks is not set"):
        check_target(tcfg(out, "???"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "t.yaml").write_text((out / "climb_cont_code.yaml").read_text().replace(
        "task: climb_cont_code", "task: gone").replace(str(out.resolve()), str(tmp_path / "nowhere")))
    with pytest.raises(TargetError, match="'gone' .* did not load"):
        check_target(tcfg(broken, ["gone"]))
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: `import lm_eval` raises ImportError
    with pytest.raises(TargetError, match=r"pip install 'climb-hpc\[eval\]'"):
        check_target(tcfg(out, ["climb_cont_code"]), deep=False)


def test_config_preflight_and_plan(tasks, tmp_path):
    from climb_hpc.estimate import Inputs, Ledger
    from climb_hpc.pipeline import check_config
    from climb_hpc.preflight import target_rows
    from climb_hpc.search.stage import estimate

    out, m = tasks
    over = [f"run_dir={tmp_path / 'run'}", *target_overrides(m, out), "target.limit=50", "seed=4"]
    cfg = compose(over)
    n = sum(t["kind"] == "cont" for t in m["tasks"].values())
    assert cfg.target.kind == "lm_eval" and cfg.target.seed == 4 and len(cfg.target.tasks) == n == 8
    assert "search" in check_config(cfg)
    assert [r.ok for r in target_rows(cfg, ["search"])] == [True]
    bad = compose([*over, "target.tasks=[{name:nope,metric:acc}]"])
    (row,) = target_rows(bad, ["search"])
    assert row.ok is False and "no task 'nope'" in row.message
    with pytest.raises(Exception, match="target.include_path"):
        check_config(compose([*over, f"target.include_path={tmp_path / 'none'}"]))
    # the plan: tasks x target.limit x plan.mc_tokens_per_item tokens scored a trial (+ cluster losses when on)
    x = Inputs(tokens=1e9, docs=1e6, tokens_per_doc=1000, vocab=8192)
    quiet = compose([*over, "target.cluster_losses=false"])
    for c, items in ((quiet, 50), (compose([*over, "target.cluster_losses=false", "target.limit=null"]), 1000)):
        led = Ledger()
        estimate(c, x, led)
        (evals,) = [a for a in led.items if a.name == "eval tokens a trial"]
        assert evals.value == n * items * c.plan.mc_tokens_per_item and f"{n} target.tasks" in evals.source
    led = Ledger()
    estimate(compose([*over]), x, led)
    assert [a.value for a in led.items if a.name == "eval tokens a trial"][0] > n * 50 * cfg.plan.mc_tokens_per_item


# ---------------------------------------------------------------- the multiple-choice target, mended


def _mc_file(path: Path, n: int, offset: int = 0) -> Path:
    path.write_text("".join(json.dumps({"context": f"item {i + offset} is", "choices": ["red.", "a blue one."],
                                        "answer": i % 2}) + "\n" for i in range(n)))
    return path


def test_mc_samples_by_seed_and_averages_files_each_normalised(tok, model, tmp_path):
    f = _mc_file(tmp_path / "a.jsonl", 50)
    first = read_mc(f, 10, seed=0)
    assert len(first) == 10 and first == read_mc(f, 10, seed=0) and first != read_mc(f, 10, seed=1)
    assert [r["context"] for r in first] != [f"item {i} is" for i in range(10)]  # not the first lines
    assert len(read_mc(f, None)) == 50
    g = _mc_file(tmp_path / "b.jsonl", 30, offset=100)
    eos = tok.token_to_id(EOS)
    cfg = compose(["target=mc", f"target.files=[{{path:{f},normalize:char}},{{path:{g},normalize:none}}]",
                   "target.max_items=12", "seed=2", "target.cluster_losses=false"]).target
    t = evaluate(model, cfg, None, clusters=[0], holdout=0.0, seq_len=128, tokenizer=tok, eos_id=eos, device=CPU)["target"]
    want = [mc_accuracy(model, tok, eos, read_mc(p, 12, seed=2), 128, CPU, norm)["accuracy"]
            for p, norm in ((f, "char"), (g, "none"))]
    assert [x["value"] for x in t["files"]] == want and t["value"] == float(np.mean(want))
    assert [x["normalize"] for x in t["files"]] == ["char", "none"] and [x["items"] for x in t["files"]] == [12, 12]
    one = compose(["target=mc", f"target.path={f}", "target.max_items=12", "seed=2"]).target
    t1 = evaluate(model, one, None, clusters=[0], holdout=0.0, seq_len=128, tokenizer=tok, eos_id=eos, device=CPU)["target"]
    assert t1["value"] == want[0] and t1["path"] == str(f) and t1["normalize"] == "char"
    with pytest.raises(TargetError, match="both set"):
        check_target(compose(["target=mc", f"target.path={f}", f"target.files=[{g}]"]).target)
    with pytest.raises(TargetError, match="normalize='bytes'"):
        check_target(compose(["target=mc", f"target.files=[{{path:{f},normalize:bytes}}]"]).target)
    with pytest.raises(TargetError, match="target.path .* or target.files"):
        check_target(compose(["target=mc"]).target)


# ---------------------------------------------------------------- a whole trial


def test_trial_records_each_task_and_the_cluster_losses(tasks, tmp_path):
    from climb_hpc.proxy.train import run_trial
    from climb_hpc.rundir import RunDir
    from tests.conftest import clone_run, tokenized_run

    out, m = tasks
    base = tokenized_run(tmp_path / "base")
    cfg = clone_run(base, tmp_path / "run", *SMALL_PROXY, "proxy.tokens=4096", *target_overrides(m, out),
                    "target.limit=10")
    metrics = run_trial(cfg, RunDir(cfg.run_dir), tmp_path / "trial", {c: 1.0 for c in range(7)}, seed=0)
    t = metrics["target"]
    assert t["kind"] == "lm_eval" and set(t["tasks"]) == {n for n, x in m["tasks"].items() if x["kind"] == "cont"}
    assert t["value"] == pytest.approx(np.mean([x["value"] for x in t["tasks"].values()]))
    assert len(metrics["heldout_loss"]) == 7  # target.cluster_losses: every cluster's held-out loss too
    saved = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert saved["target"]["tasks"] == t["tasks"]
