"""Candidate mixtures for the search: Dirichlet draws around the clusters' token shares.

Every row is a mixture over the k clusters (non-negative, sums to 1). Rows are drawn from Dirichlet
distributions centred on the tempered token shares, then made sparse (tiny weights dropped), capped
(no cluster above ``max_ratio`` x its token share) and de-duplicated.

The cap bounds repetition: a mixed dataset of T tokens takes ``w_c * T`` tokens from cluster c, which
holds ``prior_c * T_total`` tokens; with ``w_c <= max_ratio * prior_c`` and T <= T_total, cluster c is
read at most ``max_ratio`` epochs, so small clusters are never over-sampled into memorisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CAP_ITERS = 32  # clip + renormalise rounds; each round fixes >= 1 more cluster at its cap, so k suffice


def tempered(prior: np.ndarray, temperature: float) -> np.ndarray:
    """``prior ** temperature`` renormalised (temperature < 1 flattens the token shares towards uniform)."""
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError("prior must be a non-empty 1-D array of non-negative finite shares with a positive sum")
    p = p / p.sum()
    t = np.where(p > 0, p ** float(temperature), 0.0)
    return t / t.sum()


def sparsify(w: np.ndarray, min_weight: float) -> np.ndarray:
    """Zero weights below ``min_weight`` and renormalise; keeps the largest weight if all fall below."""
    out = np.where(w >= min_weight, w, 0.0)
    if out.sum() <= 0:
        out = np.zeros_like(w)
        out[int(np.argmax(w))] = 1.0
    return out / out.sum()


def apply_cap(w: np.ndarray, cap: np.ndarray) -> np.ndarray | None:
    """Clip weights to ``cap`` and hand the excess to the uncapped non-zero clusters, until none exceeds its cap.

    Returns None when the row cannot satisfy the cap with its support (all its clusters are capped and the
    caps sum to less than 1); the caller then draws another row.
    """
    w = w.copy()
    fixed = np.zeros(w.shape, dtype=bool)
    for _ in range(_CAP_ITERS):
        over = (w > cap * (1 + 1e-12)) & ~fixed
        if not over.any():
            return w
        fixed |= over
        w[fixed] = cap[fixed]
        free = ~fixed & (w > 0)
        rest = 1.0 - w[fixed].sum()
        if not free.any() or rest <= 0:
            return None
        w[free] *= rest / w[free].sum()
    return None


def is_duplicate(row: np.ndarray, kept: np.ndarray, tol: float) -> bool:
    """True when ``row`` lies within L1 distance ``tol`` of a row of ``kept``."""
    if kept.shape[0] == 0:
        return False
    return bool((np.abs(kept - row).sum(axis=1) <= tol).any())


def draw_row(p: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One Dirichlet row on the support of ``p`` with alpha = strength * k * p."""
    support = p > 0
    alpha = float(strength) * p.size * p[support]
    row = np.zeros(p.size)
    x = rng.dirichlet(alpha)
    if not np.isfinite(x).all() or x.sum() <= 0:  # all-underflow at tiny alpha: put the mass on one cluster
        x = np.zeros_like(alpha)
        x[rng.choice(alpha.size, p=alpha / alpha.sum())] = 1.0
    row[support] = x / x.sum()
    return row


def sample_candidates(
    prior: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    temperature: float = 0.5,
    concentrations: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0),
    min_weight: float = 0.01,
    max_ratio: float = 4.0,
    dedup_tol: float = 1e-3,
) -> np.ndarray:
    """``n`` distinct mixtures (rows sum to 1) around the token shares ``prior`` (length k).

    Each row draws its concentration strength from ``concentrations``: small strengths give sparse,
    far-from-centre mixtures, large ones mixtures close to the tempered shares. Weights below ``min_weight``
    are zeroed (a cluster whose cap is below ``min_weight`` may keep a smaller weight), no cluster exceeds ``max_ratio`` x its share, and rows within L1 distance ``dedup_tol`` of an
    earlier row are dropped and replaced. Deterministic given ``rng``.
    """
    p, cap, strengths = _setup(prior, n, temperature, concentrations, max_ratio)
    out = np.zeros((n, p.size))
    count, attempts, max_attempts = 0, 0, 1000 + 200 * n
    while count < n:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(f"could only draw {count} of {n} distinct candidates; loosen dedup_tol or max_ratio")
        row = apply_cap(sparsify(draw_row(p, rng.choice(strengths), rng), min_weight), cap)
        if row is None or is_duplicate(row, out[:count], dedup_tol):
            continue
        out[count] = row / row.sum()
        count += 1
    return out


def _setup(prior: np.ndarray, n: int, temperature: float, concentrations: Sequence[float],
           max_ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The samplers' checked inputs: (tempered centre, caps, concentration strengths)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if not concentrations or min(concentrations) <= 0:
        raise ValueError("concentrations must be non-empty and positive")
    return tempered(prior, temperature), _caps(prior, max_ratio), np.asarray(concentrations, dtype=np.float64)


def _caps(prior: np.ndarray, max_ratio: float) -> np.ndarray:
    """Each cluster's largest weight: ``max_ratio`` x its token share (no cap when max_ratio is 0/None/inf)."""
    share = np.asarray(prior, dtype=np.float64) / np.sum(prior)
    cap = np.where(share > 0, max_ratio * share, 0.0) if max_ratio and np.isfinite(max_ratio) else np.ones_like(share)
    if cap.sum() < 1 - 1e-9:
        raise ValueError(f"max_ratio={max_ratio} is too small: the caps sum to {cap.sum():.3f} < 1")
    return cap


def _draw_rows(p: np.ndarray, strengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dirichlet rows on the support of ``p``, row i with alpha = strengths[i] * k * p (gamma draws, normalised);
    a row whose draws all underflow puts its mass on one cluster drawn by alpha, as :func:`draw_row` does."""
    support = np.flatnonzero(p > 0)
    alpha = strengths[:, None] * p.size * p[support][None, :]
    g = rng.standard_gamma(alpha)
    total = g.sum(axis=1)
    dead = ~(np.isfinite(total) & (total > 0))
    if dead.any():
        g[dead] = 0.0
        g[dead, rng.choice(support.size, size=int(dead.sum()), p=p[support] / p[support].sum())] = 1.0
        total = g.sum(axis=1)
    rows = np.zeros((len(strengths), p.size))
    rows[:, support] = g / total[:, None]
    return rows


def _sparsify_rows(w: np.ndarray, min_weight: float) -> np.ndarray:
    """:func:`sparsify` on every row."""
    out = np.where(w >= min_weight, w, 0.0)
    empty = out.sum(axis=1) <= 0
    if empty.any():
        out[empty] = 0.0
        out[empty, np.argmax(w[empty], axis=1)] = 1.0
    return out / out.sum(axis=1, keepdims=True)


def _cap_rows(w: np.ndarray, cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`apply_cap` on every row: (capped rows, which rows satisfy the cap)."""
    w = w.copy()
    fixed = np.zeros(w.shape, dtype=bool)
    ok = np.ones(len(w), dtype=bool)
    for _ in range(_CAP_ITERS):
        over = (w > cap * (1 + 1e-12)) & ~fixed & ok[:, None]
        if not over.any():
            return w, ok
        fixed |= over
        w = np.where(fixed, cap, w)
        free = ~fixed & (w > 0)
        rest = 1.0 - (w * fixed).sum(axis=1)
        free_sum = (w * free).sum(axis=1)
        ok &= ~(over.any(axis=1) & ((free_sum <= 0) | (rest <= 0)))
        scale = np.where(ok & (free_sum > 0), rest / np.where(free_sum > 0, free_sum, 1.0), 1.0)
        w = np.where(free, w * scale[:, None], w)
    over = (w > cap * (1 + 1e-12)).any(axis=1)
    return w, ok & ~over


def sample_batch(
    prior: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    temperature: float = 0.5,
    concentrations: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0),
    min_weight: float = 0.01,
    max_ratio: float = 4.0,
    dedup_tol: float = 1e-3,
) -> np.ndarray:
    """``n`` mixtures drawn like :func:`sample_candidates` (same Dirichlet, sparsity and cap; the same keyword
    arguments, so the pool's ``search.sampler`` applies as is) but vectorised and NOT de-duplicated
    (``dedup_tol`` is accepted and ignored): for a large sample scored at once, e.g. the final predictor's argmax.
    Rows that cannot meet the cap are drawn again. Deterministic given ``rng``."""
    del dedup_tol
    p, cap, strengths = _setup(prior, n, temperature, concentrations, max_ratio)
    parts, have = [], 0
    for _ in range(100):
        m = n - have
        if m <= 0:
            break
        rows = _sparsify_rows(_draw_rows(p, rng.choice(strengths, size=m), rng), min_weight)
        rows, ok = _cap_rows(rows, cap)
        parts.append(rows[ok] / rows[ok].sum(axis=1, keepdims=True))
        have += int(ok.sum())
    if have < n:
        raise RuntimeError(f"could only draw {have} of {n} candidates within the caps; raise max_ratio")
    return np.concatenate(parts, axis=0)[:n] if parts else np.zeros((0, p.size))
