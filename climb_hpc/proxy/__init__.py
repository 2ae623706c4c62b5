"""Proxy trials: train a small LM on a mixture of the clusters and score it on the target.

``run_mixtures(cfg, run_dir, run_stage, group, mixtures)`` runs N trials as one array (the search
calls it once a round); ``train.run_trial`` is one trial; ``sampler`` draws the training sequences;
``targets`` scores the trained model.
"""

from climb_hpc.proxy.stage import run_mixtures

__all__ = ["run_mixtures"]
