"""benchmarks/scale_data_path.py stays working: its corpus, its ratios and, end to end, its last line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import scale_data_path as bench

ROOT = Path(__file__).resolve().parents[1]


def test_corpus_files_hold_fixed_docs(tmp_path):
    folder = bench.write_corpus(tmp_path / "c", 250, 100)
    files = sorted(folder.glob("*.jsonl"))
    recs = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [len(f.read_text().splitlines()) for f in files] == [100, 100, 50]
    assert len({r["id"] for r in recs}) == 250 and {r["source"] for r in recs} <= {f"topic{t}" for t in range(8)}
    assert all(20 <= len(r["text"].split()) <= 80 for r in recs)
    mtime = files[0].stat().st_mtime_ns
    bench.write_corpus(tmp_path / "c", 250, 100)  # complete: kept as it is
    assert files[0].stat().st_mtime_ns == mtime


def test_ratios_worst_stage_and_whole_path():
    def stage(seconds, rss, task_rss, rchar):
        return {"seconds": seconds, "max_rss_bytes": rss, "user_seconds": 1.0, "system_seconds": 0.0,
                "task_max_rss_bytes": task_rss, "task_max_rchar": rchar, "task_cpu_seconds": 1.0}

    res = {"runs": {"1": {"n_docs": 100, "stages": {"a": stage(1, 100, 10, 5), "b": stage(1, 100, 10, 5)}},
                    "16": {"n_docs": 1600, "stages": {"a": stage(16, 150, 10, 5), "b": stage(48, 100, 30, 20)}}}}
    r = bench.ratios(res, "16")
    assert r["controller_rss"] == 1.5 and r["bytes_per_task"] == 4 and r["task_rss"] == 3
    assert r["wall_per_doc"] == pytest.approx(2.0) and r["stages"]["a"]["wall_per_doc"] == pytest.approx(1.0)
    assert r["cpu_per_doc"] == pytest.approx(1 / 16)  # the same CPU seconds for 16x the docs


@pytest.mark.slow
def test_benchmark_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_data_path.py"), "--n", "400", "--scales", "1,4",
                        "--docs-per-file", "400", "--k", "4", "--work", str(tmp_path), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"scale: controller_rss x[\d.]+ bytes_per_task x[\d.]+ wall_per_doc x[\d.]+ \(4N vs N\)", last)
    res = json.loads(out.read_text())
    stages = res["runs"]["4"]["stages"]
    assert list(stages)[:7] == ["ingest", "quality", "kmeans", "assign", "refine", "tokenize", "mix"]
    assert stages["ingest"]["tasks"] == 4 and stages["ingest"]["task_records"] == 4  # a task per file of 400 docs
    assert all(s["max_rss_bytes"] > 10 << 20 and s["task_max_rchar"] > 0 for s in stages.values())
    assert not list(tmp_path.glob("run_*/"))  # run folders removed unless --keep
