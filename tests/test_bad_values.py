"""Hostile and mistaken values: each is refused before anything is written, as one line `climb-hpc: error: ...`
with rc 2, or (for run folders, paths and Slurm options) handled so that no character can break a script.

One test per class of fault, several instances each (issue 14). Inputs (damaged files, symlinks) are in
tests/test_ingest_damage.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from climb_hpc.config import ConfigError, compose
from climb_hpc.pipeline import check_config, run_pipeline, status
from climb_hpc.rundir import RunDir, atomic_write_json, task_temps
from climb_hpc.validate import INT_RULES, NUMERIC_RULES, POSITIVE_NUM
from tests.conftest import ROOT, SLURM, make_cfg


def cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    quiet = ["progress=false"] if args[0] == "run" else []
    return subprocess.run([sys.executable, "-m", "climb_hpc.cli", *args, *quiet], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def assert_one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> str:
    """rc 2 and exactly one line on stderr, `climb-hpc: error: ...`, holding the fragments; no traceback."""
    lines = [ln for ln in p.stderr.splitlines()  # the log's timestamped progress lines and bars aside
             if ln.strip() and not re.match(r"^\d\d:\d\d:\d\d ", ln) and not ln.lstrip().startswith(("noop", "ingest"))]
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("climb-hpc: error: "), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# ---------------------------------------------------------------- class: control characters, shell injection

@pytest.mark.parametrize("override", [
    "run_dir='runs/a\nb'", "run_dir='runs/a\rb'", "run_dir='runs/a\tb'", "run_dir='runs/\x1bx'",
    "run_dir='runs/a\u2028b'", "corpus.paths=['data\n/x.jsonl']", "minitron.teacher.path='/m\n#SBATCH --x'",
    "tokenize.tokenizer='tok\x07'", "cluster.partition='debug\nhostname'", "corpus.text_field='te\nxt'",
])
def test_control_characters_are_refused_before_anything_is_written(tmp_path, override):
    with pytest.raises(ConfigError, match="control character"):
        compose([override, "cluster=slurm"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("override, key", [
    ("cluster.setup=['module load x\nrm -rf /']", "cluster.setup"),
    ("+cluster.extra_sbatch.comment='a\nb'", "cluster.extra_sbatch.comment"),
])
def test_control_characters_in_lists_and_open_maps(override, key):
    with pytest.raises(ConfigError, match=r"control character") as e:
        compose(["cluster=slurm", override])
    assert key in str(e.value)


def test_cli_refuses_a_newline_in_run_dir_and_creates_nothing(tmp_path):
    target = tmp_path / "a\nrm -rf x"
    p = cli("run", f"run_dir={target}", "cluster=slurm", "dry_run=true", "until=ingest")
    assert_one_line_error(p, "run_dir=", "control character")
    assert not any(tmp_path.iterdir())


@pytest.mark.slurm
def test_shell_characters_in_run_dir_reach_slurm_as_plain_text(tmp_path, slurm):
    """Spaces, quotes, $(...), backticks and ; in the run folder's path: the jobs run, their files land at the
    literal path, and no injected command runs."""
    canary = tmp_path / "pwned"
    run = tmp_path / f"my run $(touch {canary}) `touch {canary}` ;touch {canary}; it's \"q\""
    cfg = make_cfg(tmp_path / "placeholder", *SLURM, "pipeline=selftest", "until=noop", "selftest.tasks=2")
    cfg.run_dir = str(run)  # as a YAML file or the Python API would give it (Hydra's override grammar needs quoting)
    run_pipeline(cfg)
    assert RunDir(run).stage_complete("noop") and RunDir(run).done_tasks("noop") == {0, 1}
    assert list((run / "logs" / "noop" / "slurm").glob("*_log.out"))
    assert not canary.exists()


# ---------------------------------------------------------------- class: sizes, counts and resources

@pytest.mark.parametrize("override, message", [
    ("cluster.cpus=-1", "cluster.cpus=-1: must be at least 1"),
    ("cluster.cpus=0", "cluster.cpus=0: must be at least 1"),
    ("cluster.max_retries=-1", "cluster.max_retries=-1: must be 0 or more"),
    ("cluster.stage_resources.ingest.cpus=-2", "cluster.stage_resources.ingest.cpus=-2"),
    ("cluster.stage_resources.embed.gpus=-1", "cluster.stage_resources.embed.gpus=-1"),
    ("cluster.stage_resources.distill.nodes=0", "cluster.stage_resources.distill.nodes=0"),
    ("cluster.stage_resources.embed.time_min=0", "time_min=0"),
    ("cluster.stage_resources.prune.mem_gb=-4", "mem_gb=-4"),
    ("cluster.stage_resources.embed.cpus=2.5", "must be a whole number"),
    ("cluster.stage_resources.embed.cpu=2", "unknown key(s) cpu"),
    ("cluster.stage_resources.embedd.cpus=2", "'embedd' is not a stage"),
    ("embed.cpus=0", "embed.cpus=0"),
    ("proxy.cpus=-1", "proxy.cpus=-1"),
    ("minitron.correct.tasks_per_node=0", "tasks_per_node=0"),
    ("corpus.chunk_mb=-1", "corpus.chunk_mb=-1: must be greater than 0"),
    ("corpus.chunk_mb=0", "must be greater than 0"),
    ("corpus.chunk_mb=abc", "corpus.chunk_mb='abc': expected a number"),
    ("corpus.chunk_mb=nan", "expected a number"),
    ("corpus.chunk_mb=inf", "expected a number"),
    ("embed.batch_size=1.5", "whole number"),
    ("corpus.damaged_files=maybe", "choose one of fail, quarantine"),
    ("clusters.kmeans.k_init=0", "k_init=0"),
    ("search.budget=-3", "search.budget=-3"),
    ("proxy.holdout_fraction=1.0", "must lie in (0, 1)"),
    ("minitron.correct.zero_stage=4", "choose one of 0, 1, 2, 3"),
    ("proxy.precision=fp16", "choose one of auto, fp32, bf16"),
    ("cluster.executor=kubernetes", "choose one of local, debug, slurm"),
    ("proxy.compile=yes", "expected true or false"),
    ("cluster.max_retries=null", "needs a value"),
    ("seed=-1", "seed=-1: must be 0 or more"),
])
def test_bad_sizes_and_counts_are_refused(override, message):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert message in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("cluster.array_parallelism=0", "array_parallelism=0"),
    ("cluster.signal_delay_s=-5", "signal_delay_s=-5"),
    ("cluster.max_num_timeout=-1", "max_num_timeout=-1"),
    ("cluster.poll_s=0", "poll_s=0"),
    ("cluster.time_min=-10", "time_min=-10"),
    ("cluster.mem_gb=0", "mem_gb=0"),
    ("cluster.tasks_per_element=0", "tasks_per_element=0"),
    ("cluster.squeue_retries=-1", "squeue_retries=-1"),
    ("cluster.squeue_backoff_s=-2", "squeue_backoff_s=-2"),
    ("cluster.squeue_retries=null", "squeue_retries"),
])
def test_bad_slurm_numbers_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        compose(["cluster=slurm", override])


def test_every_numeric_key_of_the_default_configs_has_a_rule():
    """A new count or size added to configs/ must say what range it takes (climb_hpc/validate.py)."""
    free = {"rope_theta", "dedup_tol"}  # checked by other rules or free by nature
    missing = set()
    for profile in ("local", "slurm", "dgx_h100_32n"):
        for extra in ([], ["proxy=62m"], ["embed=stella_400m"]):
            c = OmegaConf.to_container(compose([f"cluster={profile}", *extra]), resolve=True)
            stack = [("", c)]
            while stack:
                prefix, node = stack.pop()
                for k, v in node.items():
                    if isinstance(v, dict):
                        stack.append((f"{prefix}{k}.", v))
                    elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NUMERIC_RULES | free:
                        missing.add(f"{prefix}{k}")
    assert not missing, f"numeric keys without a range rule in climb_hpc/validate.py: {sorted(missing)}"
    assert not INT_RULES & POSITIVE_NUM


def test_resources_checked_for_every_stage_of_the_pipeline():
    """A value that only a stage's own resources function turns into a request is checked up front too."""
    cfg = compose(["cluster=slurm"])
    cfg.cluster.signal_delay_s = 60 * 60 * 24 * 30  # longer than any stage's time limit
    with pytest.raises(ConfigError, match="signal_delay_s"):
        check_config(cfg)


def test_cli_refuses_bad_resources_with_one_line_and_writes_nothing(tmp_path):
    for i, override in enumerate(("cluster.cpus=-1", "cluster.max_retries=-1",
                                  "cluster.stage_resources.ingest.cpus=-2", "corpus.chunk_mb=-1")):
        run = tmp_path / f"run{i}"
        assert_one_line_error(cli("run", f"run_dir={run}", override), override.split("=")[0])
        assert not run.exists()


# ---------------------------------------------------------------- class: +key= and unknown keys

@pytest.mark.parametrize("override, nearest", [
    ("+embed.max_lenght=5", "embed.max_length"),
    ("embed.max_lenght=5", "embed.max_length"),
    ("++embed.max_lenght=5", "embed.max_length"),
    ("+cluster.dry_run=true", "dry_run"),
    ("+corpus.text_fild=body", "corpus.text_field"),
    ("+seeed=3", "seed"),
    ("+proxy.optim.lrr=1e-3", "proxy.optim.lr"),
])
def test_unknown_keys_fail_with_the_nearest_valid_key(override, nearest):
    with pytest.raises(ConfigError, match="unknown config key") as e:
        compose([override])
    assert f"did you mean {nearest}" in str(e.value) or f" or {nearest}" in str(e.value), str(e.value)


def test_plus_on_a_known_key_and_open_maps_without_plus_work():
    cfg = compose(["+embed.max_length=64", "cluster.stage_resources.ingest.cpus=4",
                   "+cluster.extra_sbatch={mail-type: FAIL}", "cluster=slurm", "cluster.extra_sbatch.comment=hi"])
    assert cfg.embed.max_length == 64 and cfg.cluster.stage_resources.ingest.cpus == 4
    assert cfg.cluster.extra_sbatch == {"mail-type": "FAIL", "comment": "hi"}
    with pytest.raises(ConfigError, match="deleting a key is not supported"):
        compose(["~seed"])
    with pytest.raises(ConfigError, match="no such cluster config; choose one of debug, dgx_h100_32n, local, slurm"):
        compose(["cluster=slurmm"])


def test_readme_stage_resources_example_runs(tmp_path):
    run_pipeline(make_cfg(tmp_path, "cluster=debug", "cluster.stage_resources.ingest.cpus=4", "until=ingest",
                          "corpus.builtin.docs_per_domain=5"))
    assert RunDir(tmp_path).manifest()["stages"]["ingest"]["resources"]["cpus"] == 4


def test_cli_plus_key_typo_is_one_line(tmp_path):
    line = assert_one_line_error(cli("run", f"run_dir={tmp_path / 'r'}", "+cluster.dry_run=true"), "cluster.dry_run")
    assert "did you mean dry_run" in line and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- class: sbatch options climb-hpc owns

@pytest.mark.parametrize("flag, means", [
    ("part", "partition"), ("outp", "output"), ("sig", "signal"), ("dep", "dependency"), ("no-requeue", None),
    ("requeu", "requeue"), ("job", "job-name"), ("chd", "chdir"), ("ntasks-per-n", "ntasks-per-node"),
    ("gpus-per-n", "gpus-per-node"), ("export", None), ("parsable", None), ("op", "open-mode"), ("wra", "wrap"),
])
def test_extra_sbatch_cannot_override_owned_options_by_any_name(flag, means):
    cfg = compose(["cluster=slurm", f"+cluster.extra_sbatch.{flag}=x"])
    with pytest.raises(ConfigError, match="itself") as e:
        check_config(cfg)
    assert (f"sbatch reads it as --{means}" in str(e.value)) if means else f"--{flag} itself" in str(e.value)


@pytest.mark.parametrize("flag, message", [("p", "ambiguous"), ("mail", "ambiguous"), ("expo", "ambiguous"),
                                           ("nosuchoption", "has no option --nosuchoption")])
def test_extra_sbatch_ambiguous_or_unknown_options(flag, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose(["cluster=slurm", f"+cluster.extra_sbatch.{flag}=x"]))


def test_extra_sbatch_other_options_pass():
    check_config(compose(["cluster=slurm", "+cluster.extra_sbatch.mail-type=FAIL", "+cluster.extra_sbatch.comment=hi",
                          "+cluster.extra_sbatch.exclude=node2", "+cluster.extra_sbatch.mail-u=me"]))


@pytest.mark.slurm
def test_sbatch_itself_reads_an_abbreviation_as_the_option(slurm):
    """The rule above models sbatch: --part=nope is --partition=nope to it."""
    p = subprocess.run(["sbatch", "--test-only"], input="#!/bin/bash\n#SBATCH --part=nope\ntrue\n",
                       capture_output=True, text=True)
    assert p.returncode != 0 and "partition" in p.stderr.lower()


# ---------------------------------------------------------------- class: fix in place, resume

def test_a_failed_first_launch_is_fixed_in_the_same_folder(tmp_path):
    run = tmp_path / "run"
    assert_one_line_error(cli("run", f"run_dir={run}", "corpus.chunk_mb=-1", "until=ingest"), "corpus.chunk_mb")
    assert not run.exists()  # nothing was written: the same command with the value fixed is a first launch
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(5)))
    # a value only the stage can judge: the text field. The stage fails; the fix is accepted in place
    p = cli("run", f"run_dir={run}", f"corpus.paths=[{corpus}]", "until=ingest", "cluster=debug")
    assert_one_line_error(p, "corpus.text_field")
    assert (run / "config.yaml").exists() and not RunDir(run).stage_complete("ingest")
    p = cli("run", f"run_dir={run}", f"corpus.paths=[{corpus}]", "corpus.text_field=body", "until=ingest",
            "cluster=debug")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "start again with the new values" in p.stderr
    assert json.loads((run / "ingest" / "summary.json").read_text())["docs_written"] == 5
    # resuming needs no override repeated; repeating them changes nothing
    for args in ([], [f"corpus.paths=[{corpus}]", "corpus.text_field=body"]):
        p = cli("run", f"run_dir={run}", "until=ingest", *args)
        assert p.returncode == 0 and "already complete" in p.stdout, p.stderr[-2000:]
    # a change that a complete stage depends on is refused, naming the key and both values
    line = assert_one_line_error(cli("run", f"run_dir={run}", "corpus.text_field=text"),
                                 "corpus.text_field: 'body' -> 'text'", "stage ingest")
    assert "\n" not in line


def test_a_changed_value_resets_only_stages_that_have_not_completed(tmp_path):
    base = ("pipeline=selftest", "cluster=debug", "selftest.tasks=3", "selftest.counter_tasks=1", "selftest.steps=3",
            "selftest.step_s=0")
    run_pipeline(make_cfg(tmp_path, *base, "until=noop"))
    noop_done = RunDir(tmp_path).path.joinpath("_done", "noop", "_stage").read_text()
    # counter has not started: its settings may change, noop is kept as it is
    run_pipeline(make_cfg(tmp_path, *base, "selftest.steps=4", "until=counter"))
    assert (tmp_path / "_done" / "noop" / "_stage").read_text() == noop_done
    with pytest.raises(ConfigError, match=r"selftest.tasks: 3 -> 4.*stage noop"):
        run_pipeline(make_cfg(tmp_path, *base, "selftest.steps=4", "selftest.tasks=4", "until=counter"))


# ---------------------------------------------------------------- class: one error path

def test_user_errors_are_one_line_with_rc_2(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"doc {i}", "id": f"d{i}"}) + "\n" for i in range(3)))
    twin = tmp_path / "other" / "twin.jsonl"  # same ids in another file
    twin.parent.mkdir()
    shutil.copy(good, twin)
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n{\"x\": 1}\n")
    probes = [
        (["corpus.paths=[/no/such/file.jsonl]"], "does not exist"),
        ([f"corpus.paths=[{good},{good}]"], "twice"),
        ([f"corpus.paths=[{good},{twin}]"], "more than one shard"),
        ([f"corpus.paths=[{junk}]"], "no document was written"),
        (["until=nosuchstage"], "until=nosuchstage"),
        (["pipeline.stages=[ingest,nosuch]"], "unknown stage 'nosuch'"),
        (["embed.max_length=-1"], "embed.max_length=-1"),
    ]
    for i, (args, fragment) in enumerate(probes):
        assert_one_line_error(cli("run", f"run_dir={tmp_path / f'r{i}'}", "until=ingest", "cluster=debug", *args),
                              fragment)
    assert_one_line_error(cli("status", f"run_dir={tmp_path / 'nothing'}"), "not a climb-hpc run folder")
    assert_one_line_error(cli("report"), "report needs run_dir")


def test_dry_run_without_slurm_commands_writes_the_scripts(tmp_path):
    """No srun/sbatch on PATH: a dry run still writes the scripts; a real run says what to do in one line."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    env["PATH"] = ":".join(d for d in env["PATH"].split(":") if not (Path(d) / "srun").exists())
    p = cli("run", f"run_dir={tmp_path / 'dry'}", "cluster=slurm", "dry_run=true", "pipeline=selftest", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    # 20 no-op tasks, packed to fill the 8 slots: 7 elements of up to 3
    assert "#SBATCH --array=0-6%7" in (tmp_path / "dry" / "sbatch" / "noop.sbatch").read_text()
    assert "would submit 20 task(s) of stage noop as 7 array element(s)" in p.stdout
    assert_one_line_error(cli("run", f"run_dir={tmp_path / 'real'}", "cluster=slurm", "pipeline=selftest", env=env),
                          "not found on PATH", "login node")
    assert not (tmp_path / "real").exists()


def test_status_shows_a_failed_finalize(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n\n")  # two blank lines: every record quarantined, finalize refuses
    run = tmp_path / "run"
    assert_one_line_error(cli("run", f"run_dir={run}", f"corpus.paths=[{corpus}]", "until=ingest", "cluster=debug"),
                          "no document was written")
    row = next(r for r in status(RunDir(run)) if r["stage"] == "ingest")
    assert row["failed"] == 1 and row["stage_failure"]["step"] == "finalize" and not row["complete"]
    p = cli("status", f"run_dir={run}")
    assert p.returncode == 0 and "failed" in p.stdout.splitlines()[1] and "finalize failed" in p.stdout


def test_a_task_that_fails_on_input_is_not_retried_and_is_one_line(tmp_path):
    corpus = tmp_path / "c.jsonl.gz"
    corpus.write_bytes(b"\x1f\x8b\x08\x00garbage")
    p = cli("run", f"run_dir={tmp_path / 'run'}", f"corpus.paths=[{corpus}]", "until=ingest", "cluster.max_retries=3")
    assert_one_line_error(p, "stage ingest, task 0", str(corpus))
    assert "retrying" not in p.stderr


# ---------------------------------------------------------------- class: temporaries

def test_a_killed_attempts_temporaries_go_when_the_task_runs_again(tmp_path):
    rd = RunDir(tmp_path)
    target = tmp_path / "out" / "x.json"
    target.parent.mkdir()
    with task_temps(tmp_path, "noop", 3) as d:
        (d / "123.0.x.json").write_text("half")  # what a killed attempt leaves
        atomic_write_json(target, {"a": 1})
        assert not list(target.parent.glob(".*"))  # the temporary is not next to the target
    with task_temps(tmp_path, "noop", 3) as d:
        assert not any(d.iterdir())  # the rerun starts clean
    assert not (tmp_path / "_tmp" / "noop" / "00003" / "r0").exists()
    assert json.loads(target.read_text()) == {"a": 1} and rd.path == tmp_path


def test_temporaries_of_a_killed_local_task_are_gone_after_the_rerun(tmp_path):
    stale = tmp_path / "_tmp" / "noop" / "00001" / "r0" / "999.0.shard.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_text("half-written by a killed attempt")
    run_pipeline(make_cfg(tmp_path, "pipeline=selftest", "cluster=local", "selftest.tasks=3", "until=noop"))
    assert RunDir(tmp_path).stage_complete("noop")
    assert not stale.exists() and not [p for p in tmp_path.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert not [p for p in (tmp_path / "_tmp").rglob("*") if p.is_file()] if (tmp_path / "_tmp").exists() else True


def test_other_commands_refuse_bad_arguments_in_one_line(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert_one_line_error(cli("run", f"run_dir={not_a_folder / 'run'}", "until=ingest"), "cannot use", "run folder")
    assert_one_line_error(cli("run", f"run_dir={tmp_path / ('x' * 300)}", "until=ingest"), "name too long")
    assert_one_line_error(cli("report", f"run_dir={tmp_path}", "max_points=-5"), "at least 1")
    assert_one_line_error(cli("report", f"run_dir={tmp_path}", "dpi=abc"), "whole numbers")
    assert_one_line_error(cli("status", f"run_dir={tmp_path}", "format=yaml"), "format=text|json")
    p = subprocess.run([sys.executable, "-m", "climb_hpc.task", str(tmp_path), "ingest", "x"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 2 and "TASK must be a task number" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("override", [
    "tokenize.tokenizer=/no/such/tokenizer", "minitron.teacher.path=/models/nope-8b", "quality.raters=/no/raters",
    "embed.model=/no/stella", "minitron.importance.mc_path=./nope.jsonl", "target=mc target.path=/no/piqa.jsonl",
])
def test_missing_input_paths_fail_before_the_run_starts(tmp_path, override):
    cfg = make_cfg(tmp_path / "run", *override.split())
    with pytest.raises(ConfigError, match="no such file or folder"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()


def test_unresolvable_interpolations_and_bad_stage_lists_are_config_errors():
    for override, message in (("seed=${nosuch}", "seed: cannot resolve"), ("run_dir=${oc.env:CLIMB_NO_SUCH}", "run_dir"),
                              ("pipeline.stages=[]", "is empty"), ("pipeline.stages=[ingest,ingest]", "more than once")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_config(compose([override]))


@pytest.mark.slurm
def test_an_input_error_on_slurm_is_one_line_and_not_resubmitted(tmp_path, slurm):
    """A Slurm task that fails on a damaged file records why; the controller stops at once (no resubmission)
    with the task's one-line message, as on the local executor."""
    from climb_hpc.pipeline import StageInputError

    corpus = tmp_path / "c.jsonl.gz"
    corpus.write_bytes(b"\x1f\x8b\x08\x00garbage")
    run = tmp_path / "run"
    with pytest.raises(StageInputError, match=re.escape(str(corpus))) as e:
        run_pipeline(make_cfg(run, *SLURM, f"corpus.paths=[{corpus}]", "until=ingest", "cluster.max_retries=3"))
    assert "\n" not in str(e.value) and "stage ingest, task 0" in str(e.value)
    submissions = list((run / "logs" / "ingest" / "slurm").glob("*_submission.sh"))
    assert len(submissions) == 1, submissions  # submitted once: a retry could not help
    assert RunDir(run).failures("ingest")[0]["user_error"] is True


def test_damaged_run_state_and_odd_inputs_are_one_line(tmp_path):
    run = tmp_path / "run"
    assert cli("run", f"run_dir={run}", "pipeline=selftest", "selftest.tasks=2", "until=noop",
               "cluster=debug").returncode == 0
    (run / "manifest.json").write_text("{not json")
    assert_one_line_error(cli("status", f"run_dir={run}"), "manifest.json is not valid JSON")
    (run / "config.yaml").write_text("a: [unclosed\n")
    assert_one_line_error(cli("run", f"run_dir={run}"), "config.yaml cannot be read")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(cli("run", f"run_dir={tmp_path / 'e'}", f"corpus.paths=[{empty}]", "until=ingest",
                              "cluster=debug"), "holds no records")
    weird = tmp_path / "weird"
    weird.mkdir()
    (Path(os.fsdecode(bytes(weird) + b"/bad\xff.jsonl"))).write_text('{"text": "hi"}\n')
    assert_one_line_error(cli("run", f"run_dir={tmp_path / 'w'}", f"corpus.paths=[{weird}]", "until=ingest",
                              "cluster=debug"), "not valid UTF-8")
