"""The GPU suite (issue 17, point 7): five measurements on one GPU, one JSON object a measurement on stdout.

Run it on the device machine (one NVIDIA H200; torch + transformers, no omegaconf / hydra / deepspeed, no network):

    bash benchmarks/gpu_suite.sh                 # all five sections, <= 8 minutes; lines also in $OUT/gpu_suite.jsonl
    bash benchmarks/gpu_suite.sh --toy           # the same code at toy sizes on the CPU (what CI runs, < 1 minute)
    python benchmarks/gpu_suite.py --section distill [--toy]     # one section (the shell runs each in its own process)

The shell script runs each section in a fresh process under ``timeout`` (a failed, killed or timed-out section prints
a JSON line with ``"error"`` and the next one runs). Every measurement holds ``section``, ``name``, ``device``, ``toy``;
measurements on the CPU (``--toy``) give the process's peak RSS where a GPU gives the caching allocator's peaks.
``--toy`` (or ``GPU_SUITE_TOY=1``): 2 layers, hidden 64, vocabulary 1000, sequences of 128 tokens, a few docs, CPU.

1. ``distill``: one distillation micro-step (batch 1, seq 8192), Llama-3.1-8B teacher -> 4B-width student
   (``llama-3.1-8b`` / ``llama-3.1-minitron-4b-width`` config.json, full depth, random bf16 weights, SDPA), under
   ``torch.cuda.set_per_process_memory_fraction(80e9 / total)``: the teacher's hidden states under no_grad, the
   student's with activation checkpointing (non-reentrant, as ``minitron.engine.checkpoint_activations``), the loss
   ``climb_hpc.minitron.losses.distill_sums`` (forward KL at T = 1, the presets' ``lm_weight: 0``, chunks of 1024
   tokens), backward into bf16 gradients. No optimizer step: a 4.5B student's AdamW state (12 bytes a parameter,
   54 GB) does not fit beside the teacher in 80 GB without ZeRO; the share a 256-rank ZeRO run adds to each rank is
   reported as ``modelled_*`` fields, never measured. One warm-up step, then 3 timed steps. MFU: model FLOPs of the
   student's training (``climb_hpc.estimate.train_flops_per_token``: 6N + 12 x layers x seq x attention width,
   PaLM's count) plus the teacher's forward (a third of its own), against ``peak_flops`` (``peak_source`` says
   which); the recompute (checkpointed layers, the loss's head chunks) is in ``hfu`` only.
2. ``importance``: the 8B teacher (bf16, no grad) over one calibration batch of 8 x 4096 tokens:
   ``climb_hpc.minitron.importance.compute_importance`` with ``drop=0`` (no depth scoring: the hooked pass and the
   base-loss pass, losses in chunks of 1024 tokens) where that module imports, else (it needs omegaconf, absent on
   the GPU machine) a forward plus the chunked loss ``climb_hpc.minitron.losses.lm_loss_sum``; ``method`` says
   which. After a small warm-up batch.
3. ``proxy``: the 62M proxy (``climb_hpc/configs/proxy/62m.yaml``, ``climb_hpc.proxy.model.build_model``, vocabulary
   32,000, seq 2048, the config's micro-batch of 32) trained in bf16: the trial's step as
   ``climb_hpc.proxy.train._train`` runs it (autocast, fp32 cross-entropy, clipping, the shared fused AdamW and LR
   schedule of ``climb_hpc.training``) against ``transformers.Trainer(bf16=True)``, same model init, same random
   tokens, same batch and steps; warm-up steps excluded from both (the Trainer timed by a callback).
4. ``kmeans``: faiss-gpu ``faiss.Kmeans`` on 1M x 1024 float32 clustered vectors, K = 1000, 10 iterations, every
   point used (``max_points_per_centroid`` raised), against faiss-cpu and scikit-learn ``KMeans`` (Lloyd, random
   init as faiss, n_init 1, tol 0) on the first 200,000 points (``n`` and ``subsample`` say so; compare
   ``s_per_iter_per_mpoint``). Without faiss (or without its GPU build) those lines say ``"skipped": reason``.
5. ``embed``: an all-MiniLM-L6-v2-shaped ``BertModel`` (6 layers, hidden 384, random weights, bf16, SDPA) embedding
   random documents of 16-256 tokens (mean pooling, L2 norm, copied back to the host): length-sorted batches of 512
   against one document at a time (on an evenly strided subset), docs/s and FLOP utilisation (2 x non-embedding
   params a token + 4 x layers x hidden x t^2 a document, counted over real tokens).

``GPU_SUITE_BLOCK_IMPORTS=omegaconf,hydra,deepspeed`` makes those imports fail here as they do on the GPU machine
(tests/test_gpu_suite.py runs the toy suite so).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's climb_hpc, whatever the environment installed
    sys.path.insert(0, str(ROOT))

SECTIONS = ("distill", "importance", "proxy", "kmeans", "embed")
LOSS_CHUNK = 1024  # tokens a loss chunk: minitron.*.loss_chunk_tokens in climb_hpc/configs/minitron/default.yaml

#: dense bf16 tensor-core peaks (FLOP/s) by device-name fragment: the table of benchmarks/embed_throughput.py
#: (which imports the config library, absent on the GPU machine). H200 = H100 SXM: same chip, more memory.
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
             "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}

#: where the published config.json files live beside a developer's checkout (../shared does not travel to the GPU
#: machine: there the inline copies below are used; tests/test_gpu_suite.py checks they equal the files)
CONFIG_DIRS = (ROOT.parent / "shared" / "data" / "model_configs", ROOT / "shared" / "data" / "model_configs")
_LLAMA31 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}
INLINE_CONFIGS = {
    "llama-3.1-8b": {**_LLAMA31, "hidden_size": 4096, "intermediate_size": 14336},
    "llama-3.1-minitron-4b-width": {**_LLAMA31, "hidden_size": 3072, "intermediate_size": 9216, "head_dim": 128},
}
#: --toy shapes: 2 layers, hidden 64 (the student at 3/4 width, as 3072 / 4096), vocabulary 1000
TOY_LLAMA = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 1}
TOY_WIDTH = {"llama-3.1-8b": (64, 224), "llama-3.1-minitron-4b-width": (48, 144)}

_OUT_FD: int | None = None  # the real stdout: JSON lines only (everything else printed goes to stderr)


def emit(rec: dict[str, Any]) -> None:
    line = json.dumps(rec, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n"
    os.write(_OUT_FD if _OUT_FD is not None else 1, line.encode())


class Ctx:
    """The run's settings: toy or not, the device, and the fields every line carries."""

    def __init__(self, section: str, toy: bool) -> None:
        import torch

        self.section, self.toy = section, toy
        self.cuda = torch.cuda.is_available() and not toy
        if not toy and not self.cuda:
            raise RuntimeError("no CUDA device: the full-size suite needs a GPU (use --toy on a CPU)")
        self.device = torch.device("cuda" if self.cuda else "cpu")
        if not self.cuda:
            torch.set_num_threads(1)  # toy sizes: a second thread only waits (CI shares its 2 cores)
        device = torch.cuda.get_device_name() if self.cuda else f"cpu ({torch.get_num_threads()} thread)"
        self.base = {"section": section, "toy": toy, "device": device, "torch": torch.__version__,
                     "transformers": version("transformers")}  # its metadata: k-means needs no import of it

    def line(self, name: str, **fields: Any) -> dict[str, Any]:
        rec = {**self.base, "name": name, **fields}
        emit(rec)
        return rec

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict[str, Any]:
        """The CUDA caching allocator's peaks (GB) on a GPU; the process's peak RSS on the CPU."""
        if self.cuda:
            import torch

            return {"peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
                    "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 3), "peak_rss_gb": None}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        return {"peak_allocated_gb": None, "peak_reserved_gb": None, "peak_rss_gb": round(rss, 3)}

    def peak(self) -> tuple[float, str]:
        """The bf16 peak an MFU is taken against: the GPU's dense spec, else (CPU) a measured bf16 matmul."""
        import torch

        if self.cuda:
            name = torch.cuda.get_device_name()
            key = next((k for k in GPU_PEAKS if k in name), None)
            if key is not None:
                return GPU_PEAKS[key], f"{key} dense bf16 spec sheet ({GPU_PEAKS[key] / 1e12:.0f} TFLOP/s)"
            return matmul_flops(self, 8192), f"{name}: measured bf16 matmul 8192^3 (no spec in GPU_PEAKS)"
        return matmul_flops(self, 256), "this CPU's measured bf16 matmul 256^3 (toy)"


def matmul_flops(ctx: Ctx, n: int, reps: int = 10) -> float:
    """The best of 3 timings of ``reps`` bf16 n^3 matrix products, in FLOP/s."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16, device=ctx.device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=ctx.device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        ctx.sync()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        ctx.sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best


def count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- 1 + 2: the Llama-3.1 shapes


def llama_config(name: str, toy: bool) -> tuple[Any, str]:
    """The published config.json of ``name`` (or its inline copy), cut to toy size with ``toy``; SDPA, no cache."""
    from transformers import LlamaConfig

    folder = next((d / name for d in CONFIG_DIRS if (d / name / "config.json").is_file()), None)
    if folder is not None:
        d, source = json.loads((folder / "config.json").read_text()), str(folder / "config.json")
    else:
        d, source = dict(INLINE_CONFIGS[name]), "inline copy in benchmarks/gpu_suite.py (../shared not here)"
    if toy:
        hidden, mlp = TOY_WIDTH[name]
        d.update(TOY_LLAMA, hidden_size=hidden, intermediate_size=mlp)
        source += " cut to toy size"
    d["use_cache"] = False
    return LlamaConfig.from_dict(d), source


def build_llama(ctx: Ctx, config: Any) -> Any:
    """Random bf16 weights, created on the device (no host copy of an 8B model)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(ctx.device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")


def checkpoint_activations(model: Any) -> None:
    """Copy of ``climb_hpc.minitron.engine.checkpoint_activations`` (engine imports deepspeed and omegaconf)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def distill(ctx: Ctx) -> None:
    import torch

    from climb_hpc.estimate import train_flops_per_token
    from climb_hpc.minitron.losses import distill_sums

    seq, chunk, warmup, steps = (128, 32, 1, 3) if ctx.toy else (8192, LOSS_CHUNK, 1, 3)
    cap_gb, zero_ranks = 80.0, 256
    if ctx.cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 1e9 / total))
    torch.manual_seed(0)
    (t_cfg, t_src), (s_cfg, s_src) = llama_config("llama-3.1-8b", ctx.toy), llama_config("llama-3.1-minitron-4b-width",
                                                                                         ctx.toy)
    t0 = time.perf_counter()
    teacher = build_llama(ctx, t_cfg).eval().requires_grad_(False)
    student = build_llama(ctx, s_cfg).train()
    checkpoint_activations(student)
    build_s = time.perf_counter() - t0
    ids = torch.randint(0, t_cfg.vocab_size, (1, seq + 1), device=ctx.device)
    x, y = ids[:, :-1], ids[:, 1:]

    def step() -> float:
        with torch.no_grad():
            t_hidden = teacher.model(input_ids=x).last_hidden_state
        s_hidden = student.model(input_ids=x).last_hidden_state
        kl, _ = distill_sums(s_hidden, student.lm_head, t_hidden, teacher.lm_head, y, temperature=1.0, chunk=chunk,
                             with_ce=False)
        loss = kl / y.numel()  # x T^2 = 1
        loss.backward()
        student.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(warmup):
        step()
    times, losses = [], []
    for _ in range(steps):
        ctx.sync()
        t = time.perf_counter()
        losses.append(step())
        ctx.sync()
        times.append(time.perf_counter() - t)
    mean = statistics.mean(times)
    p_s, p_t = count(student), count(teacher)
    s_fpt, t_fpt = train_flops_per_token(s_cfg, seq), train_flops_per_token(t_cfg, seq) / 3
    recompute = s_fpt / 3 + 2 * t_cfg.hidden_size * t_cfg.vocab_size  # the layers' and heads' second forward
    peak, peak_source = ctx.peak()
    mem = ctx.memory()
    share = 12 * p_s / zero_ranks / 1e9
    ctx.line("distill_step", teacher_config=t_src, student_config=s_src, teacher_layers=t_cfg.num_hidden_layers,
             student_layers=s_cfg.num_hidden_layers, teacher_params=p_t, student_params=p_s, seq=seq, micro_batch=1,
             dtype="bf16 weights and gradients", loss="distill_sums forward KL, T=1", loss_chunk=chunk,
             activation_checkpointing=True, memory_cap_gb=cap_gb if ctx.cuda else None, build_s=round(build_s, 2),
             warmup_steps=warmup, step_s=[round(t, 4) for t in times], mean_step_s=round(mean, 4),
             tokens_per_s=round(seq / mean, 1), loss_values=[round(v, 4) for v in losses], **mem,
             model_flops_per_token=s_fpt + t_fpt, flops_counting="student 6N + 12*L*seq*q (estimate."
             "train_flops_per_token) + teacher forward (a third); recompute not in mfu, in hfu",
             mfu=round((s_fpt + t_fpt) * seq / mean / peak, 4),
             hfu=round((s_fpt + t_fpt + recompute) * seq / mean / peak, 4), peak_flops=peak, peak_source=peak_source,
             optimizer="none: forward + backward only (AdamW state of the student does not fit beside the "
                       "teacher in 80 GB without ZeRO)",
             modelled_adamw_state_one_rank_gb=round(12 * p_s / 1e9, 3),
             modelled_zero_ranks=zero_ranks, modelled_zero_optimizer_share_gb=round(share, 4),
             modelled_peak_with_zero_share_gb=round((mem["peak_allocated_gb"] or 0) + share, 3) if ctx.cuda else None,
             modelled_note="12 bytes a student parameter (fp32 master + 2 AdamW moments) / 256 ranks: not measured")


def importance(ctx: Ctx) -> None:
    import torch

    from climb_hpc.estimate import train_flops_per_token
    from climb_hpc.minitron.losses import lm_loss_sum

    batch, seq, chunk = (2, 128, 32) if ctx.toy else (8, 4096, LOSS_CHUNK)
    try:
        from climb_hpc.minitron.importance import compute_importance

        method, why = "compute_importance (drop=0: no depth scoring)", None
    except ImportError as e:  # it imports the stage machinery, and so omegaconf
        compute_importance, method, why = None, "forward + lm_loss_sum (chunked)", f"{type(e).__name__}: {e}"
    torch.manual_seed(0)
    cfg, src = llama_config("llama-3.1-8b", ctx.toy)
    teacher = build_llama(ctx, cfg).eval().requires_grad_(False)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=ctx.device)

    def run(b: torch.Tensor) -> float:
        if compute_importance is not None:
            return float(compute_importance(teacher, [b], drop=0, chunk=chunk)["base_loss"])
        with torch.no_grad():
            hidden = teacher.model(input_ids=b[:, :-1]).last_hidden_state
            return float(lm_loss_sum(hidden, teacher.lm_head, b[:, 1:], chunk)) / b[:, 1:].numel()

    run(ids[:1, : min(seq, 256) + 1])  # warm-up: kernels, cuBLAS handles
    ctx.reset_peak()
    ctx.sync()
    t = time.perf_counter()
    loss = run(ids)
    ctx.sync()
    secs = time.perf_counter() - t
    passes = 2 if compute_importance is not None else 1
    fwd = train_flops_per_token(cfg, seq) / 3
    peak, peak_source = ctx.peak()
    ctx.line("importance_batch", config=src, layers=cfg.num_hidden_layers, params=count(teacher), batch=batch, seq=seq,
             method=method, fallback_reason=why, forward_passes=passes, seconds=round(secs, 4),
             tokens_per_s=round(batch * seq / secs, 1), loss=round(loss, 4), **ctx.memory(),
             mfu=round(fwd * passes * batch * seq / secs / peak, 4), peak_flops=peak, peak_source=peak_source)


# ---------------------------------------------------------------- 3: the proxy against the HF Trainer


def proxy(ctx: Ctx) -> None:
    import torch
    import torch.nn.functional as F
    import yaml
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from climb_hpc.estimate import train_flops_per_token
    from climb_hpc.proxy.model import build_model
    from climb_hpc.training import lr_at, make_optimizer

    confs = ROOT / "climb_hpc" / "configs" / "proxy"
    common, size = (yaml.safe_load((confs / f).read_text()) for f in ("common.yaml", "62m.yaml"))
    mcfg, ocfg = dict(size["model"]), {**common["optim"], **size.get("optim", {})}
    seq, batch, vocab, warmup, steps = int(size["seq_len"]), int(size["micro_batch_size"]), 32000, 2, 8
    if ctx.toy:
        mcfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, head_dim=16)
        seq, batch, vocab, warmup, steps = 128, 4, 1000, 1, 3
    total = warmup + steps
    data = torch.randint(0, vocab, (total * batch, seq + 1), generator=torch.Generator().manual_seed(0))
    peak, peak_source = ctx.peak()
    clip = float(ocfg["grad_clip"])

    # the trial's step (climb_hpc.proxy.train._train), one micro-batch an optimizer step
    model = build_model(mcfg, vocab, 0, seq, seed=0).to(ctx.device)
    fpt = train_flops_per_token(model.config, seq)
    params = count(model)
    opt = make_optimizer(model, ocfg, ctx.device)
    ctx.reset_peak()
    model.train()
    t0 = 0.0
    for i in range(total):
        if i == warmup:
            ctx.sync()
            t0 = time.perf_counter()
        seqs = data[i * batch:(i + 1) * batch].to(ctx.device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(i, total, ocfg)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16):
            logits = model(input_ids=seqs[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), seqs[:, 1:].flatten())
        loss.backward()
        float(loss.detach())
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    ctx.sync()
    ours = steps * batch * seq / (time.perf_counter() - t0)
    common_fields = {"model": "62m" + (" cut to toy size" if ctx.toy else ""), "params": params, "vocab": vocab,
                     "seq": seq, "batch": batch, "warmup_steps": warmup, "timed_steps": steps, "precision": "bf16",
                     "peak_flops": peak, "peak_source": peak_source}
    ctx.line("plain_loop", **common_fields, tokens_per_s=round(ours, 1), mfu=round(ours * fpt / peak, 4),
             final_loss=round(float(loss.detach()), 4), **ctx.memory())
    del model, opt, logits, loss

    # transformers.Trainer(bf16=True): same init, the same sequences in a Dataset (HF shifts the labels itself)
    class Sequences(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": data[i, :-1], "labels": data[i, :-1]}

    stamps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            ctx.sync()
            stamps.append(time.perf_counter())

    model = build_model(mcfg, vocab, 0, seq, seed=0)
    warm = float(ocfg["warmup"])
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, max_steps=total, learning_rate=float(ocfg["lr"]),
            lr_scheduler_type="cosine", warmup_steps=int(round(warm * total)) if warm < 1 else int(warm),
            weight_decay=float(ocfg["weight_decay"]), adam_beta1=float(ocfg["betas"][0]),
            adam_beta2=float(ocfg["betas"][1]), max_grad_norm=clip, logging_steps=total, save_strategy="no",
            report_to=[], seed=0, use_cpu=not ctx.cuda, bf16=True, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=Sequences(), callbacks=[Timer()])
        ctx.reset_peak()
        trainer.train()
    hf = steps * batch * seq / (stamps[-1] - stamps[warmup - 1])
    ctx.line("hf_trainer", **common_fields, tokens_per_s=round(hf, 1), mfu=round(hf * fpt / peak, 4),
             trainer_optim=str(getattr(args.optim, "value", args.optim)), plain_loop_over_trainer=round(ours / hf, 3),
             **ctx.memory())


# ---------------------------------------------------------------- 4: k-means


def kmeans(ctx: Ctx) -> None:
    import numpy as np
    import torch

    n, d, k, niter, cpu_n = (2000, 32, 10, 3, 2000) if ctx.toy else (1_000_000, 1024, 1000, 10, 200_000)
    g = torch.Generator(device=ctx.device).manual_seed(0)
    centers = torch.randn(64, d, generator=g, device=ctx.device)
    x = centers[torch.randint(0, 64, (n,), generator=g, device=ctx.device)]
    x = (x + 0.5 * torch.randn(n, d, generator=g, device=ctx.device)).float().cpu().numpy()
    data = f"{n} x {d} float32, 64 gaussian clusters"

    def report(name: str, rows: int, fit: Callable[[np.ndarray], tuple[float, int]]) -> None:
        xs = np.ascontiguousarray(x[:rows])
        t = time.perf_counter()
        objective, iters = fit(xs)
        secs = time.perf_counter() - t
        ctx.line(name, data=data, k=k, niter=iters, n=rows, subsample=rows < n, seconds=round(secs, 4),
                 s_per_iter_per_mpoint=round(secs / max(1, iters) / (rows / 1e6), 4), objective=float(objective),
                 note=f"first {rows} of the {n} points (a CPU on all of them is too slow for the suite)"
                 if rows < n else None)

    try:
        import faiss
    except ImportError as e:
        faiss, reason = None, f"faiss not importable: {type(e).__name__}: {e}"

    def faiss_fit(gpu: bool) -> Callable[[np.ndarray], tuple[float, int]]:
        def fit(xs: np.ndarray) -> tuple[float, int]:
            km = faiss.Kmeans(d, k, niter=niter, seed=1, gpu=gpu, verbose=False,
                              max_points_per_centroid=len(xs) // k + 1)  # every point, no sampling
            km.train(xs)
            return float(km.obj[-1]), niter
        return fit

    gpu_ok = faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu_ok:
        report("faiss-gpu", n, faiss_fit(True))
    else:
        why = reason if faiss is None else "faiss has no GPU build here (faiss-cpu installed)" \
            if not hasattr(faiss, "StandardGpuResources") else "faiss sees no GPU"
        ctx.line("faiss-gpu", skipped=why)
    if faiss is not None:
        report("faiss-cpu", min(n, cpu_n), faiss_fit(False))
    else:
        ctx.line("faiss-cpu", skipped=reason)

    def sklearn_fit(xs: np.ndarray) -> tuple[float, int]:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd",
                    random_state=0).fit(xs)
        return float(km.inertia_), int(km.n_iter_)

    report("sklearn", min(n, cpu_n), sklearn_fit)


# ---------------------------------------------------------------- 5: MiniLM embedding


def embed(ctx: Ctx) -> None:
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    if ctx.toy:
        cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)
        n_docs, n_naive, bs, lo, hi = 64, 8, 16, 8, 128
    else:  # all-MiniLM-L6-v2's shape (max_seq_length 256)
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512)
        n_docs, n_naive, bs, lo, hi = 100_000, 2000, 512, 16, 256
    torch.manual_seed(0)
    model = BertModel(cfg, add_pooling_layer=False).to(ctx.device, torch.bfloat16).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(lo, hi + 1, n_docs)
    flat = torch.from_numpy(rng.integers(1000 if not ctx.toy else 1, cfg.vocab_size, int(lengths.sum())))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    docs = [flat[s:s + n] for s, n in zip(starts, lengths, strict=True)]
    # 2 FLOPs a weight a token (non-embedding matmuls) + 4 x layers x hidden x t^2 a document of t tokens:
    # benchmarks/embed_throughput.py's model_flops (that module imports the config library)
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size

    def flops(idx: np.ndarray) -> float:
        t = lengths[idx].astype(np.float64)
        return float((2 * params * t + 4 * layers * hidden * t * t).sum())

    @torch.inference_mode()
    def encode(idx: np.ndarray) -> torch.Tensor:
        width = int(lengths[idx].max())
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :lengths[i]] = docs[i]
            mask[r, :lengths[i]] = 1
        ids, mask = ids.to(ctx.device, non_blocking=True), mask.to(ctx.device, non_blocking=True)
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()

    peak, peak_source = ctx.peak()
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + bs] for i in range(0, n_docs, bs)]
    encode(batches[-1])  # warm-up
    ctx.reset_peak()
    t = time.perf_counter()
    for b in batches:
        encode(b)
    ctx.sync()
    batched_s = time.perf_counter() - t
    naive = np.arange(0, n_docs, max(1, n_docs // n_naive))[:n_naive]
    encode(naive[:1])
    t = time.perf_counter()
    for i in naive:
        encode(np.array([i]))
    ctx.sync()
    naive_s = time.perf_counter() - t
    shape = {"model": "all-MiniLM-L6-v2 shape" + (" cut to toy size" if ctx.toy else ""), "layers": layers,
             "hidden": hidden, "dtype": "bf16",
             "attention": model.config._attn_implementation, "doc_tokens": [int(lo), int(hi)], "peak_flops": peak,
             "peak_source": peak_source}
    b_rate, n_rate = n_docs / batched_s, len(naive) / naive_s
    ctx.line("batched", **shape, docs=n_docs, batch=bs, tokens=int(lengths.sum()), seconds=round(batched_s, 4),
             docs_per_s=round(b_rate, 1), flop_utilisation=round(flops(order) / batched_s / peak, 4),
             speedup_over_one_at_a_time=round(b_rate / n_rate, 2), **ctx.memory())
    ctx.line("one_at_a_time", **shape, docs=len(naive), batch=1, tokens=int(lengths[naive].sum()),
             seconds=round(naive_s, 4), docs_per_s=round(n_rate, 1),
             flop_utilisation=round(flops(naive) / naive_s / peak, 4))


RUN = {"distill": distill, "importance": importance, "proxy": proxy, "kmeans": kmeans, "embed": embed}


def main(argv: list[str] | None = None) -> int:
    global _OUT_FD
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=SECTIONS, action="append", help="repeatable; default: all, in one process")
    ap.add_argument("--toy", action="store_true", default=os.environ.get("GPU_SUITE_TOY") == "1")
    a = ap.parse_args(argv)
    for name in filter(None, os.environ.get("GPU_SUITE_BLOCK_IMPORTS", "").split(",")):
        sys.modules[name.strip()] = None  # type: ignore[assignment]  # import fails, as where it is not installed
    sys.stdout.flush()
    _OUT_FD = os.dup(1)
    os.dup2(2, 1)  # libraries' prints (the Trainer's, C++ code's) go to stderr: stdout holds JSON lines alone
    failed = 0
    for section in a.section or SECTIONS:
        try:
            RUN[section](Ctx(section, a.toy))
        except Exception as e:  # one section's failure is a line, not the end of the suite
            failed += 1
            emit({"section": section, "toy": a.toy, "error": f"{type(e).__name__}: {e}"[:2000],
                  "traceback": traceback.format_exc()[-3000:]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
