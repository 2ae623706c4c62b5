"""The corpus: reading inputs into doc shards (stage ``ingest``) and reading those shards back.

Later stages read the corpus with :func:`doc_shard_paths`, :func:`iter_doc_shards` or
:func:`iter_doc_batches` (corpus order: shard by shard, rows in input order).
"""

from climb_hpc.corpus.ingest import SCHEMA, doc_shard_paths, iter_doc_batches, iter_doc_shards

__all__ = ["SCHEMA", "doc_shard_paths", "iter_doc_batches", "iter_doc_shards"]
