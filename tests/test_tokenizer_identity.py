"""Tokenizer identity (climb_hpc/corpus/identity.py): a run tokenizes with its given checkpoints' tokenizer,
refuses another one before anything runs, and a mixture carries the tokenizer it was searched with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from climb_hpc.config import ConfigError
from climb_hpc.corpus.identity import run_tokenizer
from climb_hpc.corpus.tokenizer import identity, save_trained, train_bpe
from climb_hpc.pipeline import check_config
from climb_hpc.rundir import RunDir, atomic_write_json, read_json
from tests.conftest import ROOT, make_cfg

TEXTS = [f"document {i}: the quick brown fox {i * 7} jumps over the lazy dog {i % 13}" for i in range(200)]
#: the Minitron part on known domains and given weights: no embedding, no search
MINITRON = ("pipeline.stages=[ingest,refine,tokenize,mix,correct,importance,prune,distill]",
            "clusters.refine.from_field=source", "mix.weights={0: 1.0}",
            # a given teacher's own values (not the tiny built-in teacher's: climb_hpc/minitron/presets.py)
            *(f"minitron.{p}.{k}={v}" for p in ("correct", "distill")
              for k, v in (("lr", 1e-4), ("warmup", 5), ("global_batch_size", 32))))


def checkpoint(folder: Path, vocab: int, texts: list[str] = TEXTS) -> Path:
    """A stand-in HF checkpoint folder: a config.json and a fast tokenizer of about ``vocab`` tokens."""
    save_trained(train_bpe(texts, vocab, 1), folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab}))
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ckpt")
    return {"a": checkpoint(base / "a", 400), "a_copy": checkpoint(base / "a_copy", 400),
            "b": checkpoint(base / "b", 420), "c": checkpoint(base / "c", 400, [t[::-1] for t in TEXTS])}


def test_the_fingerprint_names_the_vocabulary(ckpts) -> None:
    a, a2, b, c = (identity(ckpts[k]) for k in ("a", "a_copy", "b", "c"))
    assert a == a2 and a["fingerprint"].startswith("sha256:")  # the same training: the same ids
    assert a["vocab_size"] != b["vocab_size"] and a["fingerprint"] != b["fingerprint"]
    assert c["vocab_size"] == a["vocab_size"] and c["fingerprint"] != a["fingerprint"]  # same size, other tokens


def test_a_given_teacher_is_the_runs_tokenizer_by_default(tmp_path: Path, ckpts) -> None:
    cfg = make_cfg(tmp_path / "run", *MINITRON, f"minitron.teacher.path={ckpts['a']}")
    assert run_tokenizer(cfg) == str(ckpts["a"])
    check_config(cfg)
    assert run_tokenizer(make_cfg(tmp_path / "run")) is None  # no checkpoint: a BPE trained on the corpus
    from climb_hpc.corpus.tokenize import _settings

    assert _settings(cfg)["tokenizer"] == str(ckpts["a"])


@pytest.mark.parametrize(("overrides", "names"), [
    (("tokenize.tokenizer={b}", "minitron.teacher.path={a}"), ("tokenize.tokenizer", "minitron.teacher.path")),
    (("tokenize.tokenizer={c}", "minitron.teacher.path={a}"), ("tokenize.tokenizer", "minitron.teacher.path")),
    (("minitron.distill.teacher={a}", "minitron.distill.student={b}"),
     ("minitron.distill.teacher", "minitron.distill.student")),
    (("minitron.teacher.path={a}", "minitron.importance.model={c}"), ("minitron.teacher.path", "minitron.importance.model")),
])
def test_another_tokenizer_is_refused_before_anything_runs(tmp_path: Path, ckpts, overrides, names) -> None:
    run = tmp_path / "run"
    cfg = make_cfg(run, *MINITRON, *(o.format(**ckpts) for o in overrides))
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert all(n in msg for n in names) and msg.count("sha256:") == 2 and msg.count("vocabulary") == 2
    assert not run.exists()


def test_the_same_tokenizer_in_another_folder_passes(tmp_path: Path, ckpts) -> None:
    check_config(make_cfg(tmp_path / "run", *MINITRON, f"tokenize.tokenizer={ckpts['a_copy']}",
                          f"minitron.teacher.path={ckpts['a']}", f"minitron.distill.student={ckpts['a_copy']}"))


def test_a_checkpoint_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no tokenizer.json"):
        check_config(make_cfg(tmp_path / "run", *MINITRON, f"minitron.teacher.path={bare}"))


def test_a_run_folder_tokenized_with_another_tokenizer_refuses_a_teacher(tmp_path: Path, ckpts) -> None:
    """Tokenized with a BPE of its own: a teacher trained on that BPE passes, another one is refused."""
    import shutil

    from climb_hpc.corpus.tokenize import plan_path, tokenizer_dir
    from climb_hpc.pipeline import open_run

    run = tmp_path / "run"
    rd = open_run(make_cfg(run, *MINITRON))
    atomic_write_json(plan_path(rd), {"settings": {"tokenizer": None}, "tasks": []})
    shutil.copytree(ckpts["c"], tokenizer_dir(rd))  # the run's own BPE
    check_config(make_cfg(run, *MINITRON, f"minitron.teacher.path={ckpts['c']}"))
    with pytest.raises(ConfigError, match="tokenized its corpus with a BPE trained on it"):
        check_config(make_cfg(run, *MINITRON, f"minitron.teacher.path={ckpts['a']}"))


def test_the_cli_says_it_in_one_line(tmp_path: Path, ckpts) -> None:
    p = subprocess.run([sys.executable, "-m", "climb_hpc.cli", "run", f"run_dir={tmp_path / 'run'}", *MINITRON,
                        f"tokenize.tokenizer={ckpts['b']}", f"minitron.teacher.path={ckpts['a']}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("climb-hpc: error:")]
    assert len(lines) == 1 and "minitron.teacher.path" in lines[0]


# ---------------------------------------------------------------- the mixture carries its tokenizer


def test_weights_searched_with_another_tokenizer_warn_when_applied(tmp_path_factory, ckpts) -> None:
    from climb_hpc.corpus.tokenize import data_tokenizer
    from climb_hpc.pipeline import run_pipeline
    from climb_hpc.search.mix import outputs
    from tests.conftest import TOKENIZED, clone_run, tokenized_run

    base = tmp_path_factory.mktemp("mixid")
    tokenized_run(base / "tok")
    ours = data_tokenizer(RunDir(base / "tok"))
    theirs = identity(ckpts["c"])
    for name, tok in (("same", ours), ("other", theirs)):
        src = base / f"{name}_mixture.json"
        src.write_text(json.dumps({"weights": {"0": 0.5, "2": 0.5}, "tokenizer": tok}))
        run = base / name
        cfg = clone_run(base / "tok", run, *TOKENIZED, "cluster=debug", "pipeline.stages=[ingest,refine,tokenize,mix]",
                        f"mix.weights_from={src}", "mix.tokens=5000")
        run_pipeline(cfg)
        m = read_json(outputs(RunDir(run)).mixture)
        assert m["tokenizer"] == ours and m["source"] == str(src)
        if name == "same":
            assert "warnings" not in m
        else:
            assert "another tokenizer" in m["warnings"][0] and theirs["fingerprint"] in m["warnings"][0]
