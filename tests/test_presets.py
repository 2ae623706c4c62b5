"""Presets (issue 16, points 1 and 3): minitron=<teacher>_to_<student>, experiment=climb_minitron_paper, and no
silent fallback to the built-in tiny teacher's values when a teacher is given. Compose-only: no stage runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from climb_hpc.config import ConfigError, compose, compose_for_run, config_dir
from climb_hpc.minitron import ds
from climb_hpc.pipeline import check_config
from climb_hpc.rundir import RunDir
from climb_hpc.search.strategies import split_budget
from climb_hpc.stage import get_stage, stage_resources, task_config
from tests.conftest import ROOT
from tests.test_bad_values import assert_one_line_error, cli

MODELS = ROOT.parent / "shared" / "data" / "model_configs"
#: preset -> (the teacher's folder, the published student's folder) in MODELS
PRESETS = {
    "llama31_8b_to_4b_width": ("llama-3.1-8b", "llama-3.1-minitron-4b-width"),
    "llama31_8b_to_4b_depth": ("llama-3.1-8b", "llama-3.1-minitron-4b-depth"),
    "mistral_nemo_12b_to_8b": ("mistral-nemo-12b", "mistral-nemo-minitron-8b"),
}
SHAPE = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
         "head_dim", "vocab_size")


def _published(folder: str) -> dict:
    c = json.loads((MODELS / folder / "config.json").read_text())
    return {**c, "head_dim": c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]}


def test_the_presets_are_the_groups_files():
    assert sorted(p.stem for p in (config_dir() / "minitron").glob("*.yaml")) == sorted([*PRESETS, "default"])


@pytest.mark.parametrize("cluster", ["local", "dgx_h100_32n"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_composes_and_sets_the_tiny_teachers_values(preset, cluster):
    cfg = compose([f"minitron={preset}", f"cluster={cluster}"])
    tiny = compose([f"cluster={cluster}"]).minitron
    for phase in ("correct", "distill"):
        for key in ("lr", "warmup", "global_batch_size", "tokens", "seq_len"):
            assert cfg.minitron[phase][key] != tiny[phase][key], (phase, key)
        assert cfg.minitron[phase].seq_len == 8192 and cfg.minitron[phase].schedule == "cosine"
    assert cfg.minitron.distill.lr == 1e-4 and cfg.minitron.correct.tokens == 127_000_000_000
    assert cfg.minitron.teacher.path is None  # the teacher is the user's local copy


@pytest.mark.skipif(not MODELS.is_dir(), reason=f"no published config.json files in {MODELS}")
@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_pruned_student_has_the_published_students_shape(preset):
    """The student = the teacher's config.json cut to the preset's targets (null keeps, depth.drop removes
    layers; head_dim and vocabulary are never pruned) equals the published student's config.json."""
    teacher_dir, student_dir = PRESETS[preset]
    teacher, published = _published(teacher_dir), _published(student_dir)
    p = compose([f"minitron={preset}"]).minitron.prune
    student = {k: teacher[k] if p.get(k) is None else p[k] for k in SHAPE if k in p}
    student |= {"num_hidden_layers": teacher["num_hidden_layers"] - p.depth.drop, "head_dim": teacher["head_dim"],
                "vocab_size": teacher["vocab_size"]}
    assert student == {k: published[k] for k in SHAPE}


@pytest.mark.parametrize("preset, accumulation", [("llama31_8b_to_4b_width", 4), ("llama31_8b_to_4b_depth", 4),
                                                  ("mistral_nemo_12b_to_8b", 3)])
@pytest.mark.parametrize("phase", ["correct", "distill"])
def test_the_batch_divides_over_the_256_ranks_of_dgx_h100_32n(preset, phase, accumulation):
    """global = micro x ranks x accumulation, with the ranks the profile's job gets (32 nodes x 8) and the
    accumulation the engine computes (ds.grad_accumulation raises when it does not divide)."""
    cfg = compose([f"minitron={preset}", "cluster=dgx_h100_32n"])
    stage = get_stage(phase)
    res = stage_resources(cfg, stage)
    ranks = res.nodes * res.tasks_per_node
    section = OmegaConf.to_container(OmegaConf.select(task_config(cfg, stage), stage.section), resolve=True)
    assert ranks == 256
    assert ds.grad_accumulation(section, ranks) == accumulation
    assert section["micro_batch_size"] * ranks * accumulation == section["global_batch_size"]


def test_the_experiment_selects_the_presets_and_the_climb_search():
    cfg = compose(["experiment=climb_minitron_paper", "cluster=dgx_h100_32n", "minitron.teacher.path=/models/llama"])
    for group, preset in (("minitron", "llama31_8b_to_4b_width"), ("proxy", "62m"), ("embed", "stella_400m")):
        alone = compose([f"{group}={preset}", "cluster=dgx_h100_32n", "minitron.teacher.path=/models/llama",
                         "proxy.micro_batch_size=8"])  # the experiment's, for the teacher's vocabulary
        assert cfg[group] == alone[group], group
    assert cfg.cluster.stage_resources.distill.nodes == 32  # the cluster profile's, untouched
    assert cfg.clusters.kmeans.k_init == 1000
    assert split_budget(cfg.search.budget, list(cfg.search.proportions)) == [64, 32, 16]
    assert cfg.search.strategy == "climb", "the paper preset runs the paper's loop"
    from climb_hpc.corpus.identity import run_tokenizer

    assert run_tokenizer(cfg) == "/models/llama"  # the teacher's tokenizer
    assert cfg.mix.tokens >= cfg.minitron.correct.tokens
    # a group given on the command line wins over the experiment's choice
    other = compose(["experiment=climb_minitron_paper", "minitron=mistral_nemo_12b_to_8b"])
    assert other.minitron.prune.intermediate_size == 11520 and other.search.budget == 112


def test_the_experiment_group_changes_nothing_by_default(tmp_path, monkeypatch):
    """compose([]) with the experiment group is the config of the tree without it (the default run unchanged)."""
    tree = tmp_path / "configs"
    shutil.copytree(config_dir(), tree)
    shutil.rmtree(tree / "experiment")
    root = (tree / "config.yaml").read_text()
    line = next(x for x in root.splitlines(keepends=True) if x.startswith("  - experiment: null"))
    (tree / "config.yaml").write_text(root.replace(line, ""))
    for extra in ([], ["cluster=dgx_h100_32n"]):
        with_group = OmegaConf.to_yaml(compose(extra))
        monkeypatch.setenv("CLIMB_HPC_CONFIGS", str(tree))
        assert OmegaConf.to_yaml(compose(extra)) == with_group
        monkeypatch.delenv("CLIMB_HPC_CONFIGS")
    assert "experiment" not in compose([])


def test_resuming_with_the_experiment_applies_its_keys(tmp_path):
    """experiment= has no key of its own: on a resume the keys it sets are the ones given."""
    run = tmp_path / "run"
    run.mkdir()
    RunDir(run).save_config(compose([f"run_dir={run}"]))
    cfg = compose_for_run([f"run_dir={run}", "experiment=climb_minitron_paper"])
    assert "experiment" not in cfg
    assert cfg.search.budget == 112 and cfg.minitron.prune.hidden_size == 3072 and cfg.proxy.name == "62m"


@pytest.fixture
def teacher(tmp_path) -> Path:
    from climb_hpc.corpus.tokenizer import save_trained, train_bpe

    t = tmp_path / "llama-3.1-8b"
    save_trained(train_bpe([f"a stand-in teacher's tokenizer {i}" for i in range(50)], 300, 1), t)  # its own
    (t / "config.json").write_text("{}")
    return t


def test_a_given_teacher_without_its_lr_fails_before_the_run_folder(tmp_path, teacher):
    run = tmp_path / "run"
    cfg = compose([f"run_dir={run}", f"minitron.teacher.path={teacher}"])
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    message = str(e.value)
    assert "minitron.correct.lr=null" in message and "minitron=llama31_8b_to_4b_width" in message
    for key in ("correct.warmup=10", "correct.global_batch_size=16", "distill.lr=0.001", "distill.global_batch_size"):
        assert f"minitron.{key}" in message
    assert "\n" not in message and not run.exists()
    # the preset sets them; so do the user's own values (only the stages that run are held to it)
    assert check_config(compose([f"run_dir={run}", f"minitron.teacher.path={teacher}", "minitron=llama31_8b_to_4b_width"]))
    own = compose([f"run_dir={run}", f"minitron.teacher.path={teacher}", "until=correct", "minitron.correct.lr=3e-4",
                   "minitron.correct.warmup=120", "minitron.correct.global_batch_size=1024"])
    assert check_config(own)[-1] == "correct"
    # the built-in tiny teacher keeps its defaults
    assert check_config(compose([f"run_dir={run}"]))


def test_the_cli_refuses_a_given_teacher_without_its_lr_in_one_line(tmp_path, teacher):
    run = tmp_path / "run"
    p = cli("run", f"run_dir={run}", f"minitron.teacher.path={teacher}", "minitron.correct.warmup=120",
            "minitron.correct.global_batch_size=1024", "until=correct")
    assert_one_line_error(p, "minitron.correct.lr=null", "minitron=llama31_8b_to_4b_width")
    assert not run.exists()
