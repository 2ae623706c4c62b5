"""benchmarks/gpu_suite.sh stays working: its five sections at toy size on the CPU, the same code the GPU runs.

The suite runs as on the GPU machine, where omegaconf, hydra and deepspeed are not installed
(``GPU_SUITE_BLOCK_IMPORTS`` makes their imports fail here): each section prints its JSON lines with the
expected keys and no error; faiss-gpu is skipped where faiss has no GPU build, faiss-cpu and scikit-learn run.
The importance section's other path (``compute_importance``, where omegaconf imports) runs in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_suite

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"section", "name", "toy", "device", "torch", "transformers"}
MEMORY = {"peak_allocated_gb", "peak_reserved_gb", "peak_rss_gb"}
KMEANS = {"data", "k", "niter", "n", "subsample", "seconds", "s_per_iter_per_mpoint", "objective"}
EXPECTED = {
    ("distill", "distill_step"): {"teacher_params", "student_params", "teacher_layers", "student_layers", "seq",
                                  "step_s", "mean_step_s", "tokens_per_s", "mfu", "hfu", "peak_flops", "peak_source",
                                  "model_flops_per_token", "modelled_zero_optimizer_share_gb", "modelled_zero_ranks",
                                  "modelled_adamw_state_one_rank_gb", "loss_values", *MEMORY},
    ("importance", "importance_batch"): {"method", "batch", "seq", "seconds", "tokens_per_s", "loss", "mfu",
                                         *MEMORY},
    ("proxy", "plain_loop"): {"tokens_per_s", "mfu", "batch", "seq", "timed_steps", "params", *MEMORY},
    ("proxy", "hf_trainer"): {"tokens_per_s", "mfu", "plain_loop_over_trainer", "trainer_optim", *MEMORY},
    ("kmeans", "faiss-cpu"): KMEANS,
    ("kmeans", "sklearn"): KMEANS,
    ("embed", "batched"): {"docs", "docs_per_s", "flop_utilisation", "speedup_over_one_at_a_time", "tokens",
                           *MEMORY},
    ("embed", "one_at_a_time"): {"docs", "docs_per_s", "flop_utilisation", "tokens"},
}


def has_faiss_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def test_toy_suite(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path),
           "GPU_SUITE_BLOCK_IMPORTS": "omegaconf,hydra,deepspeed"}
    env.pop("GPU_SUITE_SECTIONS", None)
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--toy"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=170)
    lines = [json.loads(ln) for ln in p.stdout.splitlines()]  # stdout holds JSON lines alone
    errors = [ln for ln in lines if "error" in ln]
    assert not errors and p.returncode == 0, f"{errors}\n{p.stderr[-3000:]}"
    assert (tmp_path / "gpu_suite.jsonl").read_text() == p.stdout
    got = {(ln["section"], ln["name"]): ln for ln in lines}
    assert {s for s, _ in got} == set(gpu_suite.SECTIONS)
    for key, fields in EXPECTED.items():
        assert key in got, f"no line for {key}: {sorted(got)}"
        assert not (COMMON | fields) - set(got[key]), f"{key} lacks {(COMMON | fields) - set(got[key])}"
        assert got[key]["toy"] is True
    assert got[("importance", "importance_batch")]["method"].startswith("forward + lm_loss_sum")
    if has_faiss_gpu():
        assert "seconds" in got[("kmeans", "faiss-gpu")]
    else:
        assert got[("kmeans", "faiss-gpu")]["skipped"]
    d = got[("distill", "distill_step")]
    assert d["modelled_zero_optimizer_share_gb"] == pytest.approx(12 * d["student_params"] / 256 / 1e9, abs=1e-4)
    assert len(d["step_s"]) == 3 and all(v == v for v in d["loss_values"])  # 3 timed steps, no NaN


def test_importance_with_compute_importance(capfd: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        gpu_suite.importance(gpu_suite.Ctx("importance", toy=True))
    finally:
        torch.set_num_threads(threads)
    (line,) = [json.loads(ln) for ln in capfd.readouterr().out.splitlines() if ln.startswith("{")]
    assert line["method"].startswith("compute_importance") and line["forward_passes"] == 2
    assert line["loss"] > 0 and line["tokens_per_s"] > 0


@pytest.mark.parametrize("name", sorted(gpu_suite.INLINE_CONFIGS))
def test_inline_configs_are_the_published_ones(name: str) -> None:
    """The GPU machine does not get ../shared: the suite's inline copies must equal the published config.json."""
    path = next((d / name / "config.json" for d in gpu_suite.CONFIG_DIRS if (d / name / "config.json").is_file()),
                None)
    if path is None:
        pytest.skip(f"no {name}/config.json in {[str(d) for d in gpu_suite.CONFIG_DIRS]}")
    assert gpu_suite.INLINE_CONFIGS[name] == json.loads(path.read_text())
