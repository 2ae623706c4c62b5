"""Clusters from a label the documents already carry (e.g. ``source``), in place of embed + k-means + refine.

For benchmarks and tests that measure what comes after clustering, and for corpora whose domains are
already known (as RegMix's Pile domains are): cluster = index of the label among the sorted labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from climb_hpc.corpus import iter_doc_shards
from climb_hpc.rundir import atomic_path

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir


def clusters_from_field(rd: RunDir, field: str = "source") -> list[str]:
    """Write ``refine/doc_clusters.parquet`` from the ingest docs' ``field``; returns the labels in cluster order."""
    docs = [r for _, t in iter_doc_shards(rd, ["id", field]) for r in t.to_pylist()]
    missing = sum(d[field] is None for d in docs)
    if missing:
        raise ValueError(f"{missing} of {len(docs)} docs have no {field!r}: cannot cluster by it")
    labels = sorted({d[field] for d in docs})
    table = pa.table({"id": [d["id"] for d in docs],
                      "cluster": pa.array([labels.index(d[field]) for d in docs], pa.int64())})
    with atomic_path(rd.stage_dir("refine") / "doc_clusters.parquet") as tmp:
        pq.write_table(table, tmp)
    return labels
