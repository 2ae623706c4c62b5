"""Training helpers that the proxy trials (``climb_hpc/proxy/train.py``) and the Minitron engine
(``climb_hpc/minitron/engine.py``) share, so that both train with the same optimizer and schedule:

* ``lr_at``: the LR of a step computed from the step itself (linear warmup, then cosine or WSD), so a resumed
  run needs no scheduler state;
* ``make_optimizer``: AdamW with weight decay on matrices only;
* ``torch_threads``: pin torch's intra-op thread count for the length of a task (results depend on it).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch


def lr_at(step: int, total: int, ocfg: Mapping[str, Any]) -> float:
    """LR of optimizer step ``step`` (0-based): linear warmup, then cosine or WSD down to lr * min_lr_ratio."""
    peak, floor = float(ocfg["lr"]), float(ocfg["lr"]) * float(ocfg["min_lr_ratio"])
    w = float(ocfg["warmup"])
    warmup = int(round(w * total)) if w < 1 else int(w)
    if step < warmup:
        return peak * (step + 1) / warmup
    schedule = str(ocfg["schedule"])
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup - 1)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if schedule == "wsd":
        decay = max(1, int(round(float(ocfg["decay"]) * total)))
        start = total - decay
        if step < start:
            return peak
        return peak + (floor - peak) * (step - start + 1) / decay
    raise ValueError(f"proxy.optim.schedule={schedule!r}: choose cosine or wsd")


def make_optimizer(model: torch.nn.Module, ocfg: Mapping[str, Any], device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused kernels on GPU, foreach on CPU (dep-probe trap 2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": float(ocfg["weight_decay"])},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=float(ocfg["lr"]), betas=tuple(ocfg["betas"]),
                             eps=float(ocfg["eps"]), **kind)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Pin torch's intra-op threads (results depend on the thread count; the debug executor shares a process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def task_device(section: Mapping[str, Any]) -> torch.device:
    """The device of a task given ``section["gpus"]`` GPUs (its resolved resources): CUDA when it has GPUs,
    else the CPU. A task given GPUs that torch cannot see fails: it never trains on the CPU of a GPU node."""
    gpus = int(section.get("gpus") or 0)
    if gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"this task was given {gpus} GPU(s), but torch {torch.__version__} sees no CUDA device "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): install a CUDA build "
                           "of torch, or give the stage gpus: 0 to run on CPUs")
    return torch.device("cuda", torch.cuda.current_device())
