"""Clusters from a field the documents already carry (``clusters.refine.from_field``, e.g. ``source``), in
place of embed + k-means + refine's pruning and merging.

For corpora whose domains are already known (as RegMix's Pile domains are), and for benchmarks and tests
that measure what comes after clustering: cluster = index of the value among the sorted values.

Both helpers stream: :func:`field_values` holds the distinct values only, :func:`field_clusters` maps one
piece of a shard at a time (``climb_hpc.clusters.refine.run_from_field``), so no corpus-sized list is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from climb_hpc.corpus import doc_shard_paths
from climb_hpc.errors import InputError

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir


def field_values(rd: RunDir, field: str = "source", batch_rows: int = 1 << 20) -> list[Any]:
    """The sorted distinct values of ``field`` over the corpus (the clusters, in id order); an InputError
    when a doc has none. Memory: one batch of the column and the distinct values."""
    values: set[Any] = set()
    missing = total = 0
    for path in doc_shard_paths(rd):
        names = pq.read_schema(path).names
        if field not in names:
            raise InputError(f"the ingest shards have no {field!r} column ({', '.join(names)}): cannot cluster by "
                             "it (clusters.refine.from_field)")
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[field]):
            col = batch.column(0)
            missing += col.null_count
            total += len(col)
            values.update(v for v in pc.unique(col).to_pylist() if v is not None)
    if missing:
        raise InputError(f"{missing} of {total} docs have no {field!r}: cannot cluster by it "
                         "(clusters.refine.from_field)")
    return sorted(values)


def field_clusters(column: pa.Array, labels: list[Any]) -> np.ndarray:
    """The cluster (index in ``labels``) of each value of ``column``, int32."""
    index = pc.index_in(column, value_set=pa.array(labels, type=column.type))
    if index.null_count:
        raise InputError(f"{index.null_count} docs have a value outside the {len(labels)} planned clusters "
                         "(the corpus changed between refine's two passes?)")
    return index.to_numpy(zero_copy_only=False).astype(np.int32)
