"""Distillation step time: DeepSpeed ZeRO 1/2/3 against a plain torch DDP loop, on 2 ranks.

Goal (the issue): step time and tokens/s of distillation for ZeRO 1/2/3 on 2 ranks against a plain torch
DDP loop of the same model, side by side (ratios printed).

    python benchmarks/distill_step.py [--ranks 2] [--steps 30] [--warmup 5] [--seq-len 128] [--micro-batch 8]
                                      [--global-batch 16] [--threads 1] [--teacher-zero3] [--precision auto]

* models:  the teacher is a Llama of ``configs/minitron/default.yaml`` ``teacher.model`` dims (hidden 256,
           4 layers), the student the same at half width (hidden 128, 2 heads); both built by
           ``climb_hpc.proxy.model.build_model`` (same seeds in every variant -> same initial weights).
           The teacher is a frozen plain module, a full copy on each rank (``--teacher-zero3`` adds a variant
           whose teacher is a ZeRO-3 engine without optimizer, as ``minitron.distill.teacher_zero3``).
* step:    ``climb_hpc.minitron.distill.DistillObjective`` (forward KL(teacher || student) on logits / T,
           times T^2, in chunks of ``--chunk`` tokens: ``losses.distill_sums``), one optimizer step of the global batch (gradient accumulation when
           global > micro x ranks), gradient clipping 1.0, the engine's AdamW (``make_optimizer``:
           ``torch.optim.AdamW(foreach=True)``, weight decay on matrices), constant LR.
* data:    seeded windows (``minitron.data.TokenWindows``) over a random token stream; rank r takes the same
           micro-batches (``minitron.data.micro_batch``) in every variant.
* ZeRO:    ``deepspeed.initialize`` with ``minitron.ds.ds_config`` (stage 1, 2, 3; ZeRO-3 persistence
           threshold 0 as in the default config) after ``ds.prepare()`` (no shm op build, gloo on CPU).
* DDP:     ``torch.nn.parallel.DistributedDataParallel`` around the same student, ``no_sync`` on all but the
           last micro-batch, ``clip_grad_norm_(foreach=True)``, ``opt.step()``.
* timing:  the ranks are spawned once (``torch.multiprocessing.spawn`` with RANK/WORLD_SIZE/MASTER_* set;
           ``OMP_NUM_THREADS`` and torch threads = cores // ranks by default) and run the variants in turn,
           each with freshly built models: ``--warmup`` steps, then ``--steps`` timed optimizer steps; a
           step's time is the slowest rank's; the median is reported (the best of --rounds passes, run forwards then backwards);
           tokens/s = global batch x seq / median.
           fp32 on CPU; on a GPU, ``--precision auto`` means bf16 (DeepSpeed's bf16 mode for ZeRO, autocast
           for DDP, the teacher cast to bf16). The loss column (first -> last step, mean over ranks) is a
           sanity check: same init, same data, same optimizer -> the same numbers in every variant.

What to expect on CPU: gloo has no fast reduce-scatter/all-gather, so ZeRO's extra collectives (stage 2:
reduce-scatter of gradients + all-gather of updated partitions; stage 3: an all-gather of every layer's
parameters in forward AND backward, plus a re-partition) cost time against DDP's one bucketed all-reduce,
and at this tiny size the communication and bookkeeping dominate. ZeRO is not there for speed: it is
there for memory. The memory table gives, per rank, the bytes of parameters + gradients + optimizer
states (fp32; DeepSpeed also keeps an fp32 master partition of the trained parameters), computed from
the partitioning (P = student parameters, N = ranks): DDP 4P + 4P + 8P (+ 4P of DDP's gradient
buckets); ZeRO-1 4P + 4P + 12P/N; ZeRO-2 4P + 4P/N + 12P/N; ZeRO-3 4P/N + 4P/N + 12P/N; plus the
teacher's 4T (4T/N as a ZeRO-3 engine); and the measured peak RSS of each rank (VmHWM, reset before
each variant; the variants share the processes, so it includes what the allocator kept from earlier ones).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TEACHER = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
           "initializer_range": 0.02, "tie_word_embeddings": True}
VARIANTS = ("ddp", "zero1", "zero2", "zero3")


def minitron_dims() -> tuple[dict[str, Any], dict[str, Any]]:
    """(teacher, student) model dims: the default config's teacher, the student at half width."""
    try:
        from omegaconf import OmegaConf

        t = dict(OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "minitron" / "default.yaml").teacher.model))
    except Exception:  # noqa: BLE001 - the config is a convenience; fall back to its values
        t = dict(TEACHER)
    s = dict(t)
    s["hidden_size"] = t["hidden_size"] // 2
    s["intermediate_size"] = t["intermediate_size"] // 2
    s["num_attention_heads"] = max(1, t["num_attention_heads"] // 2)
    s["num_key_value_heads"] = max(1, int(t.get("num_key_value_heads") or t["num_attention_heads"]) // 2)
    return t, s


def section(a: argparse.Namespace, stage: int, gpu: bool) -> dict[str, Any]:
    """A ``minitron.distill``-like section for ``ds.ds_config`` / ``make_optimizer``."""
    return {"zero_stage": stage, "micro_batch_size": a.micro_batch, "global_batch_size": a.global_batch,
            "seq_len": a.seq_len, "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8,
            "grad_clip": 1.0, "precision": a.precision, "zero3_persistence_threshold": 0,
            "zero_bucket_size": 500_000_000, "zero3_max_live_parameters": 1_000_000_000,
            "gpus": 1 if gpu else 0, "temperature": a.temperature}


def _peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM) so that the next variant's peak is its own (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(rank: int, variants: list[str], a: argparse.Namespace, port: int, out: str) -> None:
    from climb_hpc.scheduler.distributed import local_env

    os.environ.update(local_env(rank, a.ranks, port))
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    from climb_hpc.minitron import ds

    gpu = torch.cuda.is_available() and not a.cpu
    s = section(a, 2, gpu)
    results = []
    with ds.distributed(s):
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
        order = [v for k in range(a.rounds) for v in (variants if k % 2 == 0 else variants[::-1])]
        for v in order:  # forwards then backwards: slow drift of a shared machine hits every variant alike
            gc.collect()
            _peak_rss_reset()
            dist.barrier()
            t0 = time.perf_counter()
            r = run_variant(rank, v, a, gpu)
            if rank == 0:
                r["wall_s"] = time.perf_counter() - t0
                results.append(r)
                print(f"  {v:9s} {r['step_s'] * 1e3:8.1f} ms/step  {r['tokens_per_s']:9,.0f} tokens/s  "
                      f"loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}  ({r['wall_s']:.0f} s wall)", flush=True)
        if rank == 0:
            Path(out).write_text(json.dumps(results))
        dist.barrier()
    dist.destroy_process_group()


def run_variant(rank: int, variant: str, a: argparse.Namespace, gpu: bool) -> dict[str, Any]:
    """Build teacher + student for ``variant``, run warmup + timed steps; the result (on every rank)."""
    import torch.distributed as dist

    from climb_hpc.minitron import ds
    from climb_hpc.minitron.data import TokenWindows, micro_batch
    from climb_hpc.minitron.distill import DistillObjective
    from climb_hpc.minitron.engine import Trainable, make_optimizer
    from climb_hpc.proxy.model import build_model

    stage = 3 if variant.startswith("zero3") else int(variant[-1]) if variant.startswith("zero") else 0
    s = section(a, stage, gpu)
    bf16 = ds.use_bf16(s)
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    tdims, sdims = minitron_dims()
    teacher = build_model(tdims, a.vocab, 0, a.seq_len, seed=1)
    teacher.requires_grad_(False)
    teacher.eval()
    n_teacher = sum(p.numel() for p in teacher.parameters())
    if variant.endswith("+t3"):
        import deepspeed

        teacher, *_ = deepspeed.initialize(model=teacher, config=ds.inference_config(s))
        teacher.eval()
    else:
        teacher = teacher.to(device, dtype=torch.bfloat16 if bf16 else torch.float32)
    objective = DistillObjective(teacher, a.temperature, 0.0, 0.0, int(tdims["hidden_size"]))
    module = Trainable(build_model(sdims, a.vocab, 0, a.seq_len, seed=2), chunk=a.chunk)
    n_student = sum(p.numel() for p in module.parameters())
    accum = ds.grad_accumulation(s, world)
    if variant == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(module.to(device), device_ids=[device.index] if gpu else None)
        opt = make_optimizer(model.module, s, gpu)
        params = [p for p in model.parameters() if p.requires_grad]

        def fwd(*args: Any) -> Any:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return model(*args)

        def step(batches: list[torch.Tensor]) -> float:
            total = 0.0
            for m, seqs in enumerate(batches):
                with model.no_sync() if m < len(batches) - 1 else contextlib.nullcontext():
                    loss, _ = objective.loss(fwd, seqs)
                    (loss / len(batches)).backward()
                total += float(loss.detach()) / len(batches)
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return total
    else:
        import deepspeed

        opt = make_optimizer(module, s, gpu)
        engine, *_ = deepspeed.initialize(model=module, optimizer=opt, config=ds.ds_config(s, world))
        engine.train()

        def step(batches: list[torch.Tensor]) -> float:
            total = 0.0
            for seqs in batches:
                loss, _ = objective.loss(engine, seqs)
                engine.backward(loss)
                engine.step()
                total += float(loss.detach()) / len(batches)
            return total

    n_steps = a.warmup + a.steps
    tokens = np.random.default_rng(0).integers(0, a.vocab, size=max(200_000, 4 * a.seq_len), dtype=np.int64)
    plan = TokenWindows(tokens, a.seq_len, n_steps * a.global_batch, seed=0)
    times, losses = [], []
    for i in range(n_steps):
        batches = [torch.from_numpy(micro_batch(plan, i, m, rank, world, a.micro_batch, a.global_batch)).to(device)
                   for m in range(accum)]
        if gpu:
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        loss = step(batches)
        if gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
        losses.append(loss)
    t = torch.tensor(times, dtype=torch.float64)
    lo = torch.tensor(losses, dtype=torch.float64)
    if gpu:
        t, lo = t.to(device), lo.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
    dist.all_reduce(lo)
    rss_all: list[Any] = [None] * world
    dist.all_gather_object(rss_all, _peak_rss_mib())
    med = statistics.median(t.cpu().tolist())
    return {"variant": variant, "step_s": med, "tokens_per_s": a.global_batch * a.seq_len / med,
            "loss_first": float(lo[0]) / world, "loss_last": float(lo[-1]) / world, "rss_mib": rss_all,
            "n_student": n_student, "n_teacher": n_teacher, "world": world, "accum": accum,
            "precision": "bf16" if bf16 else "fp32", "device": str(device.type), "threads": torch.get_num_threads()}


def memory_mib(variant: str, p: int, t: int, n: int) -> dict[str, float]:
    """Analytic per-rank MiB (fp32) of params / grads / optimizer (DeepSpeed's fp32 master + Adam m, v) / teacher."""
    mib = 4 / 2**20
    if variant == "ddp":
        parts = {"params": p, "grads": p + p, "optim": 2 * p}  # grads + DDP's bucket copy
    elif variant == "zero1":
        parts = {"params": p, "grads": p, "optim": 3 * p / n}
    elif variant == "zero2":
        parts = {"params": p, "grads": p / n, "optim": 3 * p / n}
    else:
        parts = {"params": p / n, "grads": p / n, "optim": 3 * p / n}
    parts["teacher"] = t / n if variant.endswith("+t3") else t
    out = {k: v * mib for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def main() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--global-batch", type=int, default=None, help="default: micro-batch x ranks (no accumulation)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads a rank; default cores // ranks")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary (the run tokenizer's default is 8192)")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--chunk", type=int, default=1024, help="loss_chunk_tokens: the losses on this many tokens at a time")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--teacher-zero3", action="store_true", help="add ZeRO-3 student + ZeRO-3 teacher engine")
    ap.add_argument("--cpu", action="store_true", help="stay on CPU even with a GPU")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the variants (alternating order); best kept")
    ap.add_argument("--variants", nargs="+", default=None, help=f"subset of {', '.join(VARIANTS)}, zero3+t3")
    a = ap.parse_args()
    a.global_batch = a.global_batch or a.micro_batch * a.ranks
    a.threads = a.threads or max(1, cores // a.ranks)
    variants = list(a.variants or VARIANTS) + (["zero3+t3"] if a.teacher_zero3 and not a.variants else [])
    if "ddp" not in variants:
        variants.insert(0, "ddp")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by the spawned ranks
    import torch.multiprocessing as mp

    from climb_hpc.scheduler.distributed import free_port

    gpu = torch.cuda.is_available() and not a.cpu
    if gpu and torch.cuda.device_count() < a.ranks:
        raise SystemExit(f"{a.ranks} ranks need {a.ranks} GPUs, found {torch.cuda.device_count()} (or use --cpu)")
    print(f"distill_step: {a.ranks} ranks x {a.threads} threads ({cores} cores), "
          f"{'GPU' if gpu else 'CPU gloo'}, micro {a.micro_batch} x seq {a.seq_len}, global {a.global_batch}, "
          f"{a.warmup} warmup + {a.steps} timed steps, T={a.temperature}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.json")
        mp.spawn(worker, args=(variants, a, free_port(), out), nprocs=a.ranks, join=True)
        runs: list[dict[str, Any]] = json.loads(Path(out).read_text())
    rows = [min((r for r in runs if r["variant"] == v), key=lambda r: r["step_s"]) for v in variants]  # best round
    base = next(r for r in rows if r["variant"] == "ddp")
    p, t, n = base["n_student"], base["n_teacher"], base["world"]
    print(f"\nstudent {p / 1e6:.2f} M params, teacher {t / 1e6:.2f} M (frozen), {n} ranks, {base['precision']} "
          f"on {base['device']}, grad accumulation {base['accum']}")
    print(f"\n{'variant':9s} {'step ms':>8s} {'tokens/s':>9s} {'vs DDP':>7s} {'loss 1st->last':>16s} | "
          f"{'params':>6s} {'grads':>6s} {'optim':>6s} {'teacher':>7s} {'total':>6s} MiB/rank | peak RSS MiB/rank")
    for r in rows:
        m = memory_mib(r["variant"], p, t, n)
        print(f"{r['variant']:9s} {r['step_s'] * 1e3:8.1f} {r['tokens_per_s']:9,.0f} "
              f"{r['tokens_per_s'] / base['tokens_per_s']:6.2f}x {r['loss_first']:7.4f}->{r['loss_last']:7.4f} | "
              f"{m['params']:6.1f} {m['grads']:6.1f} {m['optim']:6.1f} {m['teacher']:7.1f} {m['total']:6.1f}          | "
              + " ".join(f"{x:.0f}" for x in r["rss_mib"]))
    print("\nmemory: analytic fp32 bytes of the partitioning (optim = fp32 master + Adam m, v; DDP: Adam only, its "
          "grads include the bucket copy); RSS includes the framework, the activations and the logits")
    ratios = {r["variant"]: r["tokens_per_s"] / base["tokens_per_s"] for r in rows}
    print("distill_step: " + " ".join(f"{v.replace('+', '_')}={ratios[v]:.2f}x" for v in variants if v != "ddp")
          + " of DDP tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
