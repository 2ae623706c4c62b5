"""The Python API: the README's example runs as written, and behaves as the CLI does."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path):
    p = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ingest 7 7 True" in p.stdout  # the built-in corpus: 7 domains, one task each
    assert "corpus      140 docs" in p.stdout
    assert (tmp_path / "runs" / "api_demo" / "_done" / "ingest" / "_stage").exists()


def test_api_raises_the_clis_user_errors(tmp_path):
    from climb_hpc import Pipeline, status
    from climb_hpc.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean embed.max_length"):
        Pipeline.from_overrides([f"run_dir={tmp_path}", "+embed.max_lenght=3"])
    p = Pipeline.from_overrides([f"run_dir={tmp_path / 'r'}", "pipeline=selftest", "cluster=debug",
                                 "selftest.tasks=2", "until=noop"])
    p.run()
    assert [r["complete"] for r in status(p.run_dir) if r["stage"] == "noop"] == [True]
    again = Pipeline.resume(p.run_dir)
    assert again.cfg.selftest.tasks == 2 and again.cfg.pipeline.stages == p.cfg.pipeline.stages
