"""Clusters from a field the documents already carry (``clusters.refine.from_field``, e.g. ``source``), in
place of embed + k-means + refine's pruning and merging.

For corpora whose domains are already known (as RegMix's Pile domains are), and for benchmarks and tests
that measure what comes after clustering: cluster = index of the value among the sorted values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from climb_hpc.corpus import iter_doc_shards
from climb_hpc.errors import InputError

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir


def clusters_from_field(rd: RunDir, field: str = "source") -> tuple[pa.Array, np.ndarray, list[str]]:
    """(ids, cluster of each doc, the values in cluster order), in corpus order, from the ingest docs."""
    ids, values = [], []
    for _, t in iter_doc_shards(rd, ["id", field]):
        ids.append(t.column("id"))
        values += t.column(field).to_pylist()
    missing = sum(v is None for v in values)
    if missing:
        raise InputError(f"{missing} of {len(values)} docs have no {field!r}: cannot cluster by it "
                         "(clusters.refine.from_field)")
    labels = sorted(set(values))
    index = {v: i for i, v in enumerate(labels)}
    cluster = np.array([index[v] for v in values], dtype=np.int32)
    return pa.chunked_array(ids, pa.string()).combine_chunks(), cluster, labels
