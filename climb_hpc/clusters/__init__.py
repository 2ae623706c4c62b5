"""CLIMB clustering: quality raters, faiss k-means, assignment, prune + merge."""

from __future__ import annotations

from types import ModuleType

#: faiss comes from an extra, so that an install holds exactly one of its two wheels (same module name).
FAISS_MISSING = ("faiss is not installed; install one build: pip install 'climb-hpc[cpu]' (faiss-cpu) "
                 "or pip install 'climb-hpc[gpu]' (faiss-gpu-cu12, CUDA 12)")


def import_faiss() -> ModuleType:
    """``import faiss``, or a one-line :class:`~climb_hpc.errors.ConfigError` naming the two installs."""
    try:
        import faiss
    except ModuleNotFoundError as e:
        if e.name != "faiss":  # faiss is there but something it needs is not: keep the real error
            raise
        from climb_hpc.errors import ConfigError

        raise ConfigError(FAISS_MISSING) from None
    return faiss
