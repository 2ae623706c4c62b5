"""Parameter counts of an HF checkpoint folder read from its ``*.safetensors`` headers: no torch, no weights
loaded (the report and ``climb-hpc plan`` use it on checkpoints of any size)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Optional


def stored_params(folder: Path, skip: str = "") -> Optional[int]:
    """Parameters stored in ``folder/*.safetensors``, tensors whose name contains ``skip`` left out (when set).

    Tied embeddings are stored once by ``save_pretrained``, so this counts unique parameters. None when the
    folder holds no safetensors file; ValueError naming the file when a header is not a safetensors header."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError(f"{f.name}: truncated safetensors file")
            n = struct.unpack("<Q", head)[0]
            if n > 100_000_000:
                raise ValueError(f"{f.name}: implausible safetensors header size {n}")
            try:
                header = json.loads(fh.read(n))
                total += sum(math.prod(int(d) for d in v["shape"]) for k, v in header.items()
                             if k != "__metadata__" and not (skip and skip in k))
            except (UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{f.name}: bad safetensors header ({e})") from None
    return total
