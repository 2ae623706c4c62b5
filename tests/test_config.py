"""Typed structured configs (issue 15, point 7): climb_hpc/schema.py declares every key and its type, Hydra
composes in struct mode, and each default lives in the YAML only."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from climb_hpc import schema
from climb_hpc.config import ConfigError, compose, compose_for_run
from tests.conftest import ROOT

PACKAGE = ROOT / "climb_hpc"


def _field_names(cls: type, seen: set[str]) -> set[str]:
    for f in dataclasses.fields(cls):
        seen.add(f.name)
        t = typing.get_type_hints(cls)[f.name]
        for arg in (t, *typing.get_args(t)):
            if dataclasses.is_dataclass(arg):
                _field_names(arg, seen)
    return seen


DECLARED = set()
for _cls in (schema.Config, *schema.CLUSTER_SCHEMAS.values()):
    _field_names(_cls, DECLARED)

#: Variables that hold a config or a section of one (parameters and locals by this codebase's naming).
CONFIG_NAMES = {"cfg", "section", "ocfg", "pcfg", "tcfg", "k_cfg", "model_cfg", "cluster"}
#: (file, key): a .get with a default that stays, and why.
ALLOWED = {
    # llama_config also builds minitron.distill.student_config, a user mapping the schema does not type
    ("climb_hpc/proxy/model.py", "rms_norm_eps"), ("climb_hpc/proxy/model.py", "rope_theta"),
    ("climb_hpc/proxy/model.py", "initializer_range"), ("climb_hpc/proxy/model.py", "tie_word_embeddings"),
    # planned_precision also serves minitron.importance, which has no precision key (it runs at auto)
    ("climb_hpc/minitron/ds.py", "precision"),
}


def _is_config(node: ast.AST, names: set[str]) -> bool:
    """A config variable, a key or item of one (``cfg.embed``, ``s["optim"]``), or what a plain function makes
    of one (``_t(cfg)``, ``clusters_cfg(cfg, NAME)``, ``dict(model_cfg)``), not a class (``RunDir(cfg.run_dir)``)."""
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return _is_config(node.value, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
        return not node.func.id[:1].isupper() and _is_config(node.args[0], names)
    return False


def _config_reads_with_a_default(path: Path) -> list[tuple[int, str]]:
    """``<section>.get("<declared key>", <not None>)`` where the receiver is a config or a section of one: an
    expression over a config variable, or a local assigned from one in the same function."""
    tree = ast.parse(path.read_text())
    out = []
    for fn in [tree, *[n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]]:
        names = set(CONFIG_NAMES)
        for n in ast.walk(fn):
            if isinstance(n, ast.Assign) and _is_config(n.value, names):
                names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        for n in ast.walk(fn):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                    and len(n.args) == 2 and isinstance(n.args[0], ast.Constant) and n.args[0].value in DECLARED
                    and not (isinstance(n.args[1], ast.Constant) and n.args[1].value is None)
                    and _is_config(n.func.value, names)):
                out.append((n.lineno, n.args[0].value))
    return sorted(set(out))


def test_no_config_key_is_read_with_a_default_in_code():
    """A key the schema declares has its default in the YAML only: code reads ``section.key`` (or
    ``section["key"]``), never ``section.get("key", <default>)``, which could disagree with the YAML
    (embed max_length was 256 in code and 128 in the YAML)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        found += [f"{rel}:{line}: .get({key!r}, ...)" for line, key in _config_reads_with_a_default(path)
                  if (rel, key) not in ALLOWED]
    assert not found, "config keys read with a default in code (the YAML holds it):\n" + "\n".join(found)


def test_the_walk_finds_a_default_in_code(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f(cfg):\n    e = cfg.embed\n    return e.get('max_length', 256), cfg.get('seed'), {}.get('x', 1)\n")
    assert _config_reads_with_a_default(probe) == [(3, "max_length")]


@pytest.mark.parametrize("extra", [[], ["cluster=slurm"], ["cluster=debug"], ["cluster=dgx_h100_32n"], ["embed=stella_400m"],
                                   ["embed=sentence_transformers"], ["proxy=62m"], ["proxy=350m"], ["pipeline=selftest"]])
def test_the_yaml_gives_every_declared_key_a_value(extra):
    """Every schema field has its value in the YAML (none is left ``???``), and the config is in struct mode."""
    cfg = compose(extra)
    missing = [k for k in _keys(cfg) if OmegaConf.is_missing(OmegaConf.select(cfg, k.rpartition(".")[0]) if "." in k
                                                             else cfg, k.rpartition(".")[2])]
    assert not missing, missing
    assert OmegaConf.is_struct(cfg)
    assert dataclasses.is_dataclass(OmegaConf.get_type(cfg, "embed"))


def _keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k in cfg:
        out.append(f"{prefix}{k}")
        node = cfg._get_node(k)
        if OmegaConf.is_dict(node) and not OmegaConf.is_missing(cfg, k):
            out += _keys(node, f"{prefix}{k}.")
    return out


def test_embed_max_length_default_is_the_yamls():
    """Code said 256, the YAML 128: the YAML's value is the one the encoder gets."""
    from climb_hpc.embed.stage import encoder_kwargs

    assert encoder_kwargs(compose([]))["max_length"] == 128


@pytest.mark.parametrize("override, nearest", [
    ("+embed.max_lenght=5", "embed.max_length"), ("embed.max_lenght=5", "embed.max_length"),
    ("search.budgt=3", "search.budget"), ("+clusters.kmeans.k_int=3", "clusters.kmeans.k_init"),
])
def test_struct_mode_unknown_key_names_the_nearest(override, nearest):
    with pytest.raises(ConfigError, match="unknown config key") as e:
        compose([override])
    assert nearest in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("embed.max_length=abc", "embed.max_length='abc': expected a whole number"),
    ("embed.max_length=1.5", "embed.max_length=1.5 (float): expected a whole number"),
    ("search.proportions=[1,x]", "search.proportions=[1, 'x'] (list): expected a list of whole numbers"),
    ("proxy.optim.betas=[0.9,b]", "proxy.optim.betas=[0.9, 'b'] (list): expected a list of numbers"),
    ("proxy.compile=yes", "proxy.compile='yes': expected true or false"),
    ("corpus.text_field=12", "corpus.text_field=12 (int): expected a string"),
    ("corpus.chunk_mb=abc", "corpus.chunk_mb='abc': expected a number"),
    ("clusters.kmeans.gpu=maybe", "clusters.kmeans.gpu='maybe': expected auto, true or false"),
    ("mix.weights=3", "mix.weights=3 (int): expected a mapping"),
    ("pipeline.stages=ingest", "pipeline.stages='ingest': expected a list of strings"),
    ("embed.max_length=null", "embed.max_length=null: it needs a value (a whole number)"),
    ("embed.max_length={a: 1}", "expected a whole number"),
])
def test_struct_mode_wrong_type_names_the_key_and_the_type(override, message):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_values_of_the_declared_type_pass_and_keep_their_form():
    cfg = compose(["proxy.tokens=1e6", "clusters.kmeans.gpu=true", "mix.weights={0: 0.5, 3: 0.5}", "corpus.paths=/x.jsonl",
                   "target.clusters=[3]", "proxy.optim.warmup=10", "cluster=slurm", "cluster.poll_s=0.5"])
    assert cfg.proxy.tokens == 1000000 and isinstance(cfg.proxy.tokens, int)
    assert cfg.clusters.kmeans.gpu is True and cfg.mix.weights == {0: 0.5, 3: 0.5} and cfg.corpus.paths == "/x.jsonl"
    assert cfg.proxy.optim.warmup == 10 and isinstance(cfg.proxy.optim.warmup, int)  # a number: kept as given
    assert compose([]).corpus.chunk_mb == 64 and isinstance(compose([]).corpus.chunk_mb, int)


def test_the_cli_says_a_wrong_type_in_one_line(tmp_path):
    from tests.test_bad_values import assert_one_line_error, cli

    assert_one_line_error(cli("run", f"run_dir={tmp_path / 'r'}", "embed.max_length=abc"),
                          "embed.max_length='abc': expected a whole number")
    assert not (tmp_path / "r").exists()


def test_a_config_file_with_a_wrong_type_or_an_unknown_key_is_one_line(tmp_path, monkeypatch):
    import shutil

    tree = tmp_path / "configs"
    shutil.copytree(PACKAGE / "configs", tree)
    monkeypatch.setenv("CLIMB_HPC_CONFIGS", str(tree))
    minilm = tree / "embed" / "minilm.yaml"
    text = minilm.read_text()
    minilm.write_text(text.replace("\nmax_length: 128", "\nmax_length: abc"))
    with pytest.raises(ConfigError, match=r"wrong type embed.max_length in .*minilm.yaml: Value 'abc'"):
        compose([])
    minilm.write_text(text.replace("\nmax_length: 128", "\nmax_lenght: 128"))
    with pytest.raises(ConfigError, match=r"unknown config key embed.max_lenght in .*minilm.yaml"):
        compose([])


def test_a_resumed_run_keeps_struct_mode_and_its_saved_values(tmp_path):
    from climb_hpc.rundir import RunDir

    run = tmp_path / "run"
    first = compose([f"run_dir={run}", "embed.max_length=64", "cluster.stage_resources.ingest.cpus=2"])
    RunDir(run).path.mkdir(parents=True)
    RunDir(run).save_config(first)
    cfg = compose_for_run([f"run_dir={run}", "cluster.stage_resources.embed.cpus=3", "until=embed"])
    assert OmegaConf.is_struct(cfg)
    assert cfg.embed.max_length == 64 and cfg.cluster.stage_resources.ingest.cpus == 2
    assert cfg.cluster.stage_resources.embed.cpus == 3 and cfg.until == "embed"
    with pytest.raises(ConfigError, match="unknown config key"):
        compose_for_run([f"run_dir={run}", "embed.max_lenght=3"])


def test_task_config_adds_the_resources_in_struct_mode():
    from climb_hpc.stage import get_stage, task_config

    cfg = compose([])
    for name in ("prune", "correct"):
        stage = get_stage(name)
        section = OmegaConf.select(task_config(cfg, stage), stage.section)
        assert section.nodes == 1 and section.tasks_per_node == 1 and section.cpus == 2
