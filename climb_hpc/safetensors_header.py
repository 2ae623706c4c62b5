"""Parameter counts, tensor shapes and dtypes of an HF checkpoint folder read from its ``*.safetensors`` headers:
no torch, no weights loaded (the report, ``climb-hpc plan`` and ``proxy.init``'s checks use it on checkpoints of
any size)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Optional


def read_header(f: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file: tensor name -> {dtype, shape, data_offsets} (and
    ``__metadata__``). ValueError naming the file when it is not a safetensors header."""
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError(f"{f.name}: truncated safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > 100_000_000:
            raise ValueError(f"{f.name}: implausible safetensors header size {n}")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{f.name}: bad safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{f.name}: bad safetensors header (not a JSON object)")
    return header


def tensors(folder: Path) -> dict[str, dict[str, Any]]:
    """Every tensor stored in ``folder/*.safetensors``: name -> {dtype, shape, file}; {} when there is none."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        for k, v in read_header(f).items():
            if k == "__metadata__":
                continue
            try:
                out[k] = {"dtype": str(v["dtype"]), "shape": [int(d) for d in v["shape"]], "file": f.name}
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{f.name}: bad safetensors header ({e!r} in tensor {k})") from None
    return out


def stored_params(folder: Path, skip: str = "") -> Optional[int]:
    """Parameters stored in ``folder/*.safetensors``, tensors whose name contains ``skip`` left out (when set).

    Tied embeddings are stored once by ``save_pretrained``, so this counts unique parameters. None when the
    folder holds no safetensors file; ValueError naming the file when a header is not a safetensors header."""
    if not any(folder.glob("*.safetensors")):
        return None
    return sum(math.prod(t["shape"]) for k, t in tensors(folder).items() if not (skip and skip in k))
