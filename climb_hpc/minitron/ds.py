"""DeepSpeed helpers: the CPU workarounds, the ZeRO config from our config, sharded construction (zero.Init),
the HF checkpoint written a parameter at a time, and the cross-rank preemption vote.

On CPU DeepSpeed trains with gloo, but three traps need handling first (dep-probe NOTES §2):
``init_distributed`` JIT-compiles a shared-memory comm op (needs g++, +30 s), FusedAdam/CPUAdam are
JIT-compiled too (we pass a client ``torch.optim.AdamW``), and a single process without a launcher
needs the rendezvous variables set.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import torch

_RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def on_gpu(section: Mapping[str, Any]) -> bool:
    """The task was given GPUs (its resolved resources): it runs on them or fails, never on the CPU."""
    from climb_hpc.training import task_device

    return task_device(section).type == "cuda"


def planned_precision(section: Mapping[str, Any]) -> str:
    """``precision`` as the task will run it: auto = bf16 when the task has GPUs, fp32 on CPUs."""
    p = str(section.get("precision", "auto"))  # minitron.importance declares none: auto
    if p not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision={p!r}: choose auto, fp32 or bf16")
    if p == "auto":
        return "bf16" if int(section.get("gpus") or 0) > 0 else "fp32"
    return p


def prepare() -> dict[str, str]:
    """Patch the CPU shm op build away and give a launcher-less process rank 0 of 1.

    Returns the environment variables it set (``distributed`` removes them again)."""
    importlib.import_module("deepspeed.comm.torch")
    if not torch.cuda.is_available():
        # `import deepspeed.comm.torch as m` would bind the real torch (deepspeed.comm re-exports it)
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    added: dict[str, str] = {}
    if "RANK" not in os.environ:
        from climb_hpc.scheduler.distributed import free_port, local_env

        added = {k: v for k, v in local_env(0, 1, free_port()).items() if k in _RENDEZVOUS}
        os.environ.update(added)
    return added


@contextlib.contextmanager
def distributed(section: Mapping[str, Any]) -> Iterator[None]:
    """An initialised process group for the body (gloo on CPU, NCCL on GPU).

    The group is kept for the life of the process, never destroyed: DeepSpeed caches its groups, so
    a second phase in the same process (teacher pretraining then correction; the in-process debug
    executor) must find the same one. Rendezvous variables this call invented are removed afterwards,
    so that child processes do not inherit them."""
    import deepspeed
    import torch.distributed as dist

    added = prepare()
    if on_gpu(section):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu(section) else "gloo", verbose=False)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def use_bf16(section: Mapping[str, Any]) -> bool:
    """``precision``: auto = bf16 on the task's GPUs, fp32 on CPU; or fp32 / bf16 explicitly."""
    return planned_precision(section) == "bf16"


def model_dtype(section: Mapping[str, Any]) -> torch.dtype:
    """The dtype models are loaded in: bf16 when the phase trains in bf16 (DeepSpeed keeps the fp32 master weights in
    its optimizer, sharded), else fp32."""
    return torch.bfloat16 if use_bf16(section) else torch.float32


@contextlib.contextmanager
def zero3_construction(config: Optional[Mapping[str, Any]]) -> Iterator[None]:
    """While open, HF's ``from_pretrained`` / ``from_config`` build a model partitioned across the ranks
    (``deepspeed.zero.Init``) and load its weights into the shards, when ``config`` (a DeepSpeed config) is ZeRO-3:
    no rank ever holds the whole model. Otherwise nothing changes. transformers reads the config through a global
    weak reference (``HfDeepSpeedConfig``), dropped again on exit so that later loads in the process are plain."""
    if not config or int(config.get("zero_optimization", {}).get("stage", 0)) != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(copy.deepcopy(dict(config)))
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del keep


def grad_accumulation(section: Mapping[str, Any], world: int) -> int:
    micro, glob = int(section["micro_batch_size"]), int(section["global_batch_size"])
    if glob % (micro * world):
        raise ValueError(f"global_batch_size={glob} is not a multiple of micro_batch_size={micro} x "
                         f"world size {world}")
    return glob // (micro * world)


def ds_config(section: Mapping[str, Any], world: int, client_optimizer: bool = True) -> dict[str, Any]:
    """The DeepSpeed config of a phase: ZeRO stage, batch sizes, clipping, precision.

    With ``client_optimizer`` (the default) the caller passes a ``torch.optim.AdamW``; otherwise the
    config names AdamW, with ``torch_adam`` on CPU (DeepSpeed's FusedAdam would JIT-compile a C++ op)."""
    stage = int(section["zero_stage"])
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage={stage}: choose 0, 1, 2 or 3")
    zero: dict[str, Any] = {"stage": stage, "reduce_bucket_size": int(section["zero_bucket_size"]),
                            "allgather_bucket_size": int(section["zero_bucket_size"])}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = int(section["zero3_persistence_threshold"])
        zero["stage3_max_live_parameters"] = int(section["zero3_max_live_parameters"])
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    bf16 = use_bf16(section)
    cfg: dict[str, Any] = {
        "train_batch_size": int(section["global_batch_size"]),
        "train_micro_batch_size_per_gpu": int(section["micro_batch_size"]),
        "gradient_accumulation_steps": grad_accumulation(section, world),
        "gradient_clipping": float(section["grad_clip"] or 0.0),
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if not client_optimizer:
        cfg["optimizer"] = {"type": "AdamW", "params": {
            "lr": float(section["lr"]), "betas": list(section["betas"]),
            "eps": float(section["eps"]), "weight_decay": float(section["weight_decay"]),
            "torch_adam": not on_gpu(section)}}
    return cfg


def inference_config(section: Mapping[str, Any]) -> dict[str, Any]:
    """A ZeRO-3 engine with no optimizer: a frozen model sharded across ranks (the distillation teacher)."""
    return {"train_micro_batch_size_per_gpu": int(section["micro_batch_size"]),
            "bf16": {"enabled": use_bf16(section)}, "fp16": {"enabled": False},
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold":
                                  int(section["zero3_persistence_threshold"]),
                                  "stage3_max_live_parameters": int(section["zero3_max_live_parameters"])},
            "steps_per_print": 2**62}


def full_parameters(engine: Any, prefix: str = "") -> Iterator[tuple[str, Optional[torch.Tensor]]]:
    """(name, full fp32 value on rank 0 / None elsewhere) of each parameter of ``engine.module`` under ``prefix``, one
    at a time, for ZeRO 0-3: no rank ever holds more than one whole parameter. Collective: every rank must consume
    it to the end. fp32 master weights come from the optimizer's partitions (``safe_get_full_fp32_param``), else
    from the (gathered) parameter itself. Tied parameters come once, under their first name."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    zero3 = engine.zero_optimization_stage() == 3
    for name, p in engine.module.named_parameters():  # the same order on every rank
        if not name.startswith(prefix):
            continue
        has_master = hasattr(p, "_z3_optimizer") or hasattr(p, "_hp_mapping")
        value = safe_get_full_fp32_param(p) if has_master else None
        if value is None:
            ctx = deepspeed.zero.GatheredParameters([p], modifier_rank=None) if zero3 else contextlib.nullcontext()
            with ctx:
                value = p.detach().float().cpu().clone() if rank() == 0 else None
        yield name[len(prefix):], (value.detach().float().cpu() if rank() == 0 and value is not None else None)


def save_hf(engine: Any, out: Optional[Path], dtype: torch.dtype, max_shard_bytes: float) -> dict[str, Any]:
    """Write ``engine.module.model`` as an HF checkpoint into ``out`` (rank 0; collective): safetensors in ``dtype``,
    a parameter at a time, split into shards of at most ``max_shard_bytes`` with ``model.safetensors.index.json``
    (one shard: ``model.safetensors``, as ``save_pretrained`` names it), and config.json recording ``dtype``. No
    second model is built. Returns {files, bytes, dtype} on rank 0."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    for name, value in full_parameters(engine, "model."):
        if value is None:
            continue
        t = value.to(dtype).contiguous()
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            assert out is not None
            _write_shard(shards, out, save_file)
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
        total += t.nbytes
    if rank() != 0 or out is None:
        return {}
    _write_shard(shards, out, save_file)
    n = len(shards)
    weight_map: dict[str, str] = {}
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for i, final in enumerate(names):
        (out / f"part-{i}.safetensors").rename(out / final)
        weight_map.update({k: final for k in shards[i]})
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    model = engine.module.model
    config = copy.deepcopy(model.config)
    config.dtype = dtype
    config.save_pretrained(str(out))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out))
    return {"files": names, "bytes": total, "dtype": str(dtype).replace("torch.", "")}


def _write_shard(shards: list[dict[str, torch.Tensor]], out: Path, save_file: Any) -> None:
    """Write the newest shard to ``part-<i>.safetensors`` and drop its tensors (their names stay for the index)."""
    i = len(shards) - 1
    out.mkdir(parents=True, exist_ok=True)
    save_file(shards[i], str(out / f"part-{i}.safetensors"), metadata={"format": "pt"})
    shards[i] = {k: torch.empty(0) for k in shards[i]}


def agree(flag: bool) -> bool:
    """True on every rank if it is true on any (all-reduce MAX): all ranks then save at the same step."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_mean(total: float, count: float) -> float:
    """Sum ``total`` and ``count`` over ranks; their ratio (a token-weighted mean)."""
    import torch.distributed as dist

    t = torch.tensor([float(total), float(count)], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return float(t[0] / max(float(t[1]), 1e-12))
