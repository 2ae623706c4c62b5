"""climb-hpc: CLIMB data-mixture search and Minitron compression as resumable Slurm batch pipelines."""

__version__ = "0.1.0"
