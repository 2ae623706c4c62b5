"""Cluster scoring against a reference labelling (the corpus ``source``), for tests and benchmarks only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def purity(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Fraction of documents whose cluster's majority true label is their own."""
    y = np.asarray(labels_true, dtype=object)
    c = np.asarray(labels_pred)
    if len(y) != len(c):
        raise ValueError(f"{len(y)} true labels, {len(c)} predicted")
    if len(y) == 0:
        return 0.0
    _, yi = np.unique(y.astype(str), return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((ci.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, yi), 1)
    return float(table.max(axis=1).sum() / len(y))


def scores(labels_true: Sequence, labels_pred: Sequence) -> dict[str, float]:
    """purity, homogeneity, completeness, NMI, ARI and the cluster count."""
    from sklearn import metrics

    return {
        "purity": purity(labels_true, labels_pred),
        "homogeneity": float(metrics.homogeneity_score(labels_true, labels_pred)),
        "completeness": float(metrics.completeness_score(labels_true, labels_pred)),
        "nmi": float(metrics.normalized_mutual_info_score(labels_true, labels_pred)),
        "ari": float(metrics.adjusted_rand_score(labels_true, labels_pred)),
        "clusters": int(len(np.unique(np.asarray(labels_pred)))),
    }
