"""CLIMB mixture search, the pure part: candidate sampler, LightGBM predictor, search strategies.

Nothing here knows about Slurm or training: a strategy asks an ``evaluate(indices)`` callback for the
values of a batch of pool candidates (in production, one Slurm job array of proxy trials a round; in
``benchmarks/search_replay.py``, recorded losses). Import the submodules directly:
``climb_hpc.search.candidates``, ``climb_hpc.search.predictor``, ``climb_hpc.search.strategies``.
"""
