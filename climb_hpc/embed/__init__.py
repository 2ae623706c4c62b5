"""Stage ``embed``: documents -> L2-normalised float16 embeddings in a sharded Zarr v3 array.

    encoder.py  the encoder (HF AutoModel + mean pooling, or sentence-transformers), length bucketing
    store.py    embed/embeddings.zarr: row layout, creation (controller), whole-shard writes (tasks)
    stage.py    prepare / num_tasks / run / finalize

Later stages read the output with :func:`open_embeddings` (rows in corpus order) and
:func:`load_id_to_row` (id -> row). This module imports neither torch nor transformers.
"""

from climb_hpc.embed.store import load_id_to_row, load_layout, open_embeddings, store_path

__all__ = ["load_id_to_row", "load_layout", "open_embeddings", "store_path"]
