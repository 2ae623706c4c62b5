"""The run folder: atomic writes, markers, failures, the controller lock, config pinning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from climb_hpc.config import ConfigError
from climb_hpc.pipeline import open_run, run_pipeline
from climb_hpc.rundir import RunDir, RunDirLocked, atomic_path, atomic_write, read_json
from tests.conftest import ROOT, make_cfg


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]  # no temp left behind


def test_atomic_path_replaces_folders(tmp_path):
    d = tmp_path / "store.zarr"
    for content in ("one", "two"):
        with atomic_path(d) as tmp:
            tmp.mkdir()
            (tmp / "x").write_text(content)
    assert (d / "x").read_text() == "two"


def test_markers_and_failures(tmp_path):
    rd = RunDir(tmp_path)
    rd.mark_failed("s", 3, error="boom", log="/x.log")
    assert rd.failures("s")[3]["error"] == "boom"
    rd.mark_done("s", 3, seconds=1.0)
    rd.mark_done("s", 12)
    assert rd.done_tasks("s") == {3, 12}
    assert rd.failures("s") == {}  # success clears the failure
    assert not rd.stage_complete("s")
    rd.mark_stage_complete("s")
    assert rd.stage_complete("s")
    assert read_json(tmp_path / "_done" / "s" / "00003")["seconds"] == 1.0


def test_lock_refuses_second_controller(tmp_path):
    cfg = make_cfg(tmp_path / "run", "pipeline=selftest", "cluster=debug", "selftest.tasks=2", "until=noop")
    holder = RunDir(tmp_path / "run")
    holder.acquire_lock()
    try:
        with pytest.raises(RunDirLocked, match="in use by another controller"):
            RunDir(tmp_path / "run").acquire_lock()
        # the CLI turns it into a one-line error and exit code 2, having run nothing
        p = subprocess.run([sys.executable, "-m", "climb_hpc.cli", "run", f"run_dir={tmp_path / 'run'}",
                            "pipeline=selftest", "cluster=debug"], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 2, p.stderr
        assert "in use by another controller" in p.stderr and f"pid {os.getpid()}" in p.stderr
        assert not (tmp_path / "run" / "_done").exists()
    finally:
        holder.release_lock()
    run_pipeline(cfg)  # free again
    assert RunDir(tmp_path / "run").stage_complete("noop")


def test_resume_refuses_a_different_config(tmp_path):
    """A changed value is refused once a stage that depends on it is complete; before that it is accepted
    (a failed first launch can be fixed in place): tests/test_bad_values.py covers that side."""
    run_pipeline(make_cfg(tmp_path, "pipeline=selftest", "cluster=debug", "seed=1", "selftest.tasks=2", "until=noop"))
    with pytest.raises(ConfigError, match=r"seed: 1 -> 2.*stage noop, which depends on them, is complete"):
        open_run(make_cfg(tmp_path, "pipeline=selftest", "selftest.tasks=2", "seed=2"))
    open_run(make_cfg(tmp_path, "pipeline=selftest", "selftest.tasks=2", "seed=1", "cluster=local"))  # where it runs may change


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    """mkstemp makes 0600 files; a run folder shared with a project group must stay readable."""
    import os

    from climb_hpc.rundir import atomic_write

    old = os.umask(0o022)
    try:
        (tmp_path / "plain").write_text("x")
        atomic_write(tmp_path / "atomic", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "atomic").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644
