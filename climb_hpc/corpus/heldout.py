"""Which documents are held out of training: decided by a hash of the id, the same for every seed.

Tokenize applies it once and stores the two splits apart; nothing downstream hashes ids again.
"""

from __future__ import annotations

import hashlib

import numpy as np


def heldout_mask(ids: list[str], fraction: float) -> np.ndarray:
    """True for the documents held out of training: hash(id) / 2**64 < fraction (seed-independent)."""
    if fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    cut = int(fraction * 2**64)
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") < cut
                        for i in ids), dtype=bool, count=len(ids))
