"""The stage contract (climb_hpc/stage.py): stages own their outputs, declare their inputs, count their tasks
without side effects, and driver stages are their own kind."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

from climb_hpc.config import ConfigError
from climb_hpc.pipeline import check_config, check_order
from climb_hpc.rundir import RunDir
from climb_hpc.stage import REGISTRY, DriverStage, Stage, get_stage, output_roots
from tests.conftest import make_cfg

PACKAGE = Path(__file__).resolve().parents[1] / "climb_hpc"
DIAGNOSTICS = {"noop", "counter", "dist"}  # climb_hpc/selftest.py: they prove a cluster, they own no data
RECIPE = [n for n in REGISTRY if n not in DIAGNOSTICS]
#: the run folder's own layout: only climb_hpc/rundir.py spells it
RUNDIR_LAYOUT = ("_done", "_failed", "_jobs", "_tmp", "_preempted")


def _stages() -> list[Stage | DriverStage]:
    from climb_hpc.proxy.stage import trial_stage

    return [get_stage(n) for n in RECIPE] + [trial_stage("g")]


def _module_file(name: str) -> Path:
    return Path(sys.modules[name].__file__).resolve()  # type: ignore[arg-type]


def owned_names(tmp: Path) -> dict[str, Path]:
    """First path component of every output root (``ingest``, ``mixture.json``, ``teacher`` ...) -> the module
    that owns it (the one defining the stage's ``outputs``)."""
    rd = RunDir(tmp)
    out: dict[str, Path] = {}
    for stage in _stages():
        owner = _module_file(stage.outputs.__module__)
        for p in output_roots(stage, rd):
            name = p.relative_to(rd.path).parts[0]
            assert out.setdefault(name, owner) == owner, f"{name} is claimed by {out[name]} and {owner}"
    for name in RUNDIR_LAYOUT:
        out[name] = PACKAGE / "rundir.py"
    return out


def _strings(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """String constants and f-string pieces, docstrings left out (prose may name files)."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def violations(path: Path, owned: dict[str, Path]) -> list[str]:
    """Where a module spells a path of a stage (or of the run folder's layout) it does not own: a
    ``stage_dir("x")``, a ``... / "x"``, or a literal starting ``x/`` (``"search/result.json"``)."""
    tree = ast.parse(path.read_text())
    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
    found = []

    def foreign(value: str) -> str | None:
        head = value.split("/")[0]
        return head if head in owned and owned[head] != path else None

    for node in ast.walk(tree):
        arg = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "stage_dir" \
                and node.args and isinstance(node.args[0], ast.Constant):
            arg = node.args[0]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
            arg = node.right
        if arg is not None and isinstance(arg.value, str) and foreign(arg.value):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    for node, value in _strings(tree):
        if "/" in value and foreign(value) and value.split("/")[1]:
            found.append(f"{where}:{node.lineno}: {value!r}")
    return found


def test_every_stage_exposes_its_outputs_in_one_typed_accessor(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    for stage in _stages():
        assert stage.outputs is not None, f"stage {stage.name} has no outputs accessor"
        out = stage.outputs(rd)
        assert dataclasses.is_dataclass(out) and out.__dataclass_params__.frozen, stage.name
        roots = output_roots(stage, rd)
        assert rd.path / stage.name in roots, f"{stage.name}: its folder is not among its outputs {roots}"
        assert all(p.is_relative_to(rd.path) for p in roots)
    assert not rd.path.exists(), "asking for paths must not create folders in the run"


def test_no_module_spells_another_stages_output_paths(tmp_path: Path) -> None:
    owned = owned_names(tmp_path)
    assert {"ingest", "refine", "search", "mixture.json", "teacher", "student_pruned", "student", "proxy",
            "report.html", "_done"} <= set(owned)
    found = [v for f in sorted(PACKAGE.rglob("*.py")) for v in violations(f, owned)]
    assert not found, "use the owning stage's outputs(rd) accessor instead:\n" + "\n".join(found)


def test_the_ownership_check_catches_a_stray_path(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text('def f(rd):\n'
                     '    return rd.path / "search" / "x.json", rd.stage_dir("refine"), "tokenize/plan.json", "a/b"\n')
    assert len(violations(stray, owned_names(tmp_path / "run"))) == 3


# ---------------------------------------------------------------- declared inputs


def test_every_stage_declares_what_it_reads_and_the_default_pipeline_satisfies_it() -> None:
    cfg = make_cfg(Path("/tmp/unused"))
    names = list(cfg.pipeline.stages)
    check_order(cfg, names)
    reads = {n: get_stage(n).reads(cfg) for n in names}
    assert reads["embed"] == ("ingest",) and reads["tokenize"] == ("ingest", "refine")
    assert set(reads["refine"]) == {"embed", "quality", "kmeans", "assign"}
    assert set(reads["distill"]) == {"tokenize", "mix", "correct", "prune"}
    assert reads["report"] == ()


@pytest.mark.parametrize(("stages", "message"), [
    ("[ingest,kmeans,embed]", "stage kmeans reads the outputs of stage embed, which pipeline.stages runs after it"),
    ("[ingest,tokenize]", "stage tokenize reads the outputs of stage refine, which pipeline.stages does not run"),
    ("[ingest,embed,quality,kmeans,refine]", "stage refine reads the outputs of stage assign"),
    ("[distill]", "stage distill reads the outputs of stage tokenize"),
])
def test_an_order_that_would_read_missing_inputs_is_refused_before_anything_runs(tmp_path: Path, stages: str,
                                                                                 message: str) -> None:
    cfg = make_cfg(tmp_path / "run", f"pipeline.stages={stages}")
    with pytest.raises(ConfigError, match=message) as e:
        check_config(cfg)
    assert "pipeline.stages=[" in str(e.value)  # the message shows an order that works
    assert not (tmp_path / "run").exists()


def test_inputs_follow_the_config(tmp_path: Path) -> None:
    """A stage given its input by the config does not need the stage that would write it."""
    cfg = make_cfg(tmp_path, "pipeline.stages=[ingest,refine,tokenize]", "clusters.refine.from_field=source")
    check_config(cfg)
    cfg = make_cfg(tmp_path, "pipeline.stages=[ingest,refine,tokenize,mix]", "clusters.refine.from_field=source",
                   "mix.weights={0: 1.0}")
    check_config(cfg)
    with pytest.raises(ConfigError, match="stage mix reads the outputs of stage search"):
        check_config(make_cfg(tmp_path, "pipeline.stages=[ingest,refine,tokenize,mix]",
                              "clusters.refine.from_field=source"))
    cfg = make_cfg(tmp_path, "pipeline.stages=[ingest,refine,tokenize,mix,distill]", "mix.weights={0: 1.0}",
                   "clusters.refine.from_field=source", f"minitron.distill.teacher={tmp_path}",
                   f"minitron.distill.student={tmp_path}")
    check_order(cfg, list(cfg.pipeline.stages))  # (check_config would also want the checkpoints' tokenizer)


# ---------------------------------------------------------------- hooks that say what they do


def test_counting_tasks_writes_nothing(tmp_path: Path) -> None:
    """num_tasks on a run folder nobody prepared: a count or an error, and the folder stays as it was."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_cfg(run)
    rd = RunDir(run)
    for name in RECIPE:
        stage = get_stage(name)
        if isinstance(stage, DriverStage):
            continue
        try:
            stage.num_tasks(cfg, rd)
        except (FileNotFoundError, OSError, KeyError, ValueError):
            pass
        assert list(run.iterdir()) == [], f"{name}.num_tasks wrote {list(run.iterdir())}"


def test_driver_stages_are_their_own_kind() -> None:
    drivers = {n for n in RECIPE if isinstance(get_stage(n), DriverStage)}
    assert drivers == {"search", "report"}
    for n in set(RECIPE) - drivers:
        stage = get_stage(n)
        assert isinstance(stage, Stage) and not hasattr(stage, "drive"), n
    laid_out = {n for n in RECIPE if isinstance(get_stage(n), Stage) and get_stage(n).prepare is not None}
    assert {"ingest", "embed", "quality", "assign", "tokenize", "mix"} <= laid_out


def test_a_reset_stage_loses_its_outputs_outside_its_folder_too(tmp_path: Path) -> None:
    """mix writes mixture.json in the run folder itself: a changed mix.tokens (mix not complete) removes it,
    so the next prepare plans the new budget instead of refusing the stale one."""
    from climb_hpc.pipeline import open_run
    from climb_hpc.search.mix import outputs

    run = tmp_path / "run"
    rd = open_run(make_cfg(run, "mix.tokens=1000"))
    outputs(rd).mixture.write_text("{}")
    outputs(rd).dir.mkdir()
    open_run(make_cfg(run, "mix.tokens=2000"), rd)
    assert not outputs(rd).mixture.exists() and not outputs(rd).dir.exists()
