"""Token stores in Megatron's indexed-dataset format: ``PREFIX.bin`` + ``PREFIX.idx`` (MMIDIDX).

This is the layout megatron-core's ``IndexedDataset(PREFIX)`` reads, and so Megatron-LM's ``--data-path``,
NeMo's and Megatron-Bridge's ``paths``: ``.bin`` holds the token ids of every document back to back
(here each document is followed by the EOS id, as Megatron's ``preprocess_data.py --append-eod`` does);
``.idx`` holds a header, then per sequence its length (int32) and byte offset (int64), then the document
boundaries (int64, one sequence a document). Token dtype is Megatron's rule: uint16 below 65500 ids,
else int32. Writing and reading here need no torch; tests check the files with megatron-core itself.
The document ids live beside the store in ``PREFIX.ids.parquet`` (one row a document, in store order).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Union

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
_HEADER = len(MAGIC) + 8 + 1 + 8 + 8


def token_dtype(vocab_size: int) -> np.dtype:
    """Megatron's ``optimal_dtype``: uint16 when the vocabulary has fewer than 65500 ids, else int32."""
    return np.dtype(np.uint16 if int(vocab_size) < 65500 else np.int32)


def paths(prefix: Union[str, Path]) -> tuple[Path, Path]:
    p = str(prefix)
    return Path(p + ".bin"), Path(p + ".idx")


class StoreWriter:
    """Append documents to ``PREFIX.bin``; ``close()`` writes ``PREFIX.idx``. Write into a temporary folder
    that is renamed when complete (the caller's job): a half-written store is never visible."""

    def __init__(self, prefix: Union[str, Path], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"token dtype {self.dtype} has no Megatron code")
        self.bin_path, self.idx_path = paths(prefix)
        self._bin = open(self.bin_path, "wb")  # noqa: SIM115 (closed in close())
        self._lengths = array("i")  # 4 bytes a document (a list of ints would take ~36)
        self.num_tokens = 0

    def add(self, tokens: Union[np.ndarray, list[int]]) -> None:
        """One document (already followed by its EOS when the caller wants one)."""
        a = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(a.tobytes())
        self._lengths.append(len(a))
        self.num_tokens += len(a)

    def __len__(self) -> int:
        return len(self._lengths)

    def close(self) -> None:
        self._bin.close()
        write_index(self.idx_path, self.dtype, np.frombuffer(self._lengths, np.int32))

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._bin.close()


def write_index(path: Path, dtype: np.dtype, lengths: np.ndarray) -> None:
    """An MMIDIDX index for documents of ``lengths`` tokens each (one sequence a document)."""
    lengths = np.asarray(lengths, np.int32)
    pointers = np.zeros(len(lengths), np.int64)
    if len(lengths):
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    doc_index = np.arange(len(lengths) + 1, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", DTYPE_CODES[np.dtype(dtype)]))
        f.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(doc_index)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_index.tobytes())


class Store:
    """A read-only store: ``tokens`` (memmap of the .bin), ``lengths`` and ``offsets`` (in tokens) per document.

    Each memmap holds a file descriptor, and a proxy trial opens every train store of every cluster (up to
    clusters x ``tokenize.max_parts``): so the .bin is mapped on first use and the .idx only when a
    document's bounds are asked for (a training stream needs neither the index nor more than one map)."""

    def __init__(self, prefix: Union[str, Path]):
        self.prefix = Path(prefix)
        self.bin_path, self.idx_path = paths(prefix)
        with open(self.idx_path, "rb") as f:
            head = f.read(_HEADER)
        if head[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{self.idx_path} is not a Megatron MMIDIDX index")
        self.dtype = CODE_DTYPES[head[len(MAGIC) + 8]]
        self._n = struct.unpack("<Q", head[len(MAGIC) + 9:len(MAGIC) + 17])[0]
        size = self.bin_path.stat().st_size
        if size % self.dtype.itemsize:
            raise ValueError(f"{self.bin_path} has {size} bytes: not whole {self.dtype} tokens")
        self.num_tokens = size // self.dtype.itemsize

    def __len__(self) -> int:
        return int(self._n)

    @cached_property
    def tokens(self) -> np.ndarray:
        return np.memmap(self.bin_path, dtype=self.dtype, mode="r") if self.num_tokens else np.zeros(0, self.dtype)

    @cached_property
    def lengths(self) -> np.ndarray:
        idx = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        lengths = idx[_HEADER:_HEADER + 4 * self._n].view(np.int32)
        if int(lengths.sum(dtype=np.int64)) != self.num_tokens:
            raise ValueError(f"{self.bin_path} has {self.num_tokens} tokens; its index says "
                             f"{int(lengths.sum(dtype=np.int64))}")
        return lengths

    @cached_property
    def offsets(self) -> np.ndarray:
        idx = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        return idx[_HEADER + 4 * self._n:_HEADER + 12 * self._n].view(np.int64) // self.dtype.itemsize

    def doc(self, i: int) -> np.ndarray:
        a = int(self.offsets[i])
        return np.asarray(self.tokens[a:a + int(self.lengths[i])])


class Concat:
    """Several token arrays read as one: ``len()`` and contiguous slices across their boundaries."""

    def __init__(self, parts: Iterable[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.cum = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        self.dtype = self.parts[0].dtype if self.parts else np.dtype(np.int64)

    def __len__(self) -> int:
        return int(self.cum[-1])

    def __getitem__(self, s: slice) -> np.ndarray:
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise TypeError("Concat supports contiguous slices only")
        a, b, _ = s.indices(len(self))
        out = []
        while a < b:
            r = int(np.searchsorted(self.cum, a, side="right")) - 1
            take = min(b, int(self.cum[r + 1])) - a
            lo = a - int(self.cum[r])
            out.append(np.asarray(self.parts[r][lo:lo + take]))
            a += take
        return np.concatenate(out) if len(out) != 1 else out[0]
