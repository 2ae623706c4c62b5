"""Proxy trials: train a small LM on a mixture of the clusters and score it on the target.

``run_mixtures(cfg, run_dir, run_stage, group, mixtures)`` runs N trials as one array (the search
calls it once a round); ``train.run_trial`` is one trial; ``sampler`` draws the training sequences;
``targets`` scores the trained model.

``run_mixtures`` is imported on first use (PEP 562), so that ``climb_hpc.proxy.model`` (the model and its FLOPs)
imports without the stage machinery and its config library (benchmarks/gpu_suite.py runs where omegaconf is absent).
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_mixtures"]


def __getattr__(name: str) -> Any:
    if name == "run_mixtures":
        from climb_hpc.proxy.stage import run_mixtures

        return run_mixtures
    raise AttributeError(f"module 'climb_hpc.proxy' has no attribute {name!r}")
