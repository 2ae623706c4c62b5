"""The Minitron training engine: one DeepSpeed loop for teacher pretraining, correction and distillation.

A ``Phase`` says what to train (an HF causal LM, wrapped with an optional hidden-state projection), on
what (``data.PhaseData``), with which objective (``LMObjective`` or the distillation objective), and
where to write. The engine:

* builds the model and a client ``torch.optim.AdamW`` (weight decay on matrices), wraps both with
  ``deepspeed.initialize`` (ZeRO stage from config), sets the LR of each step from the step itself
  (``climb_hpc.training.lr_at``, as the proxies: warmup then cosine or WSD; no scheduler state to restore);
* runs gradient accumulation through DeepSpeed (``engine.backward``/``engine.step`` per micro-batch);
* logs one line a step to ``<work>/train_log.jsonl`` (rank 0);
* every ``ckpt_every`` steps, and at once when any rank saw a preemption request (``ds.agree``),
  saves ``<work>/ckpt/step<N>`` on ALL ranks (DeepSpeed writes ``latest``), then raises ``Preempted``
  if that was the reason; a rerun loads ``latest`` and continues from its step, so a run resumed any
  number of times ends with exactly the weights of one never stopped (same world size and threads);
* computes every loss from the final hidden states, a chunk of ``loss_chunk_tokens`` tokens at a time
  (``losses.py``): no whole-sequence logits;
* builds the model sharded under ZeRO-3 (``ds.zero3_construction``: ``zero.Init`` through ``HfDeepSpeedConfig``);
* at the end writes the HF checkpoint a parameter at a time (``ds.save_hf``: ``save_dtype``, bf16 by default,
  safetensors shards of ``save_shard_gb`` with an index, + the run's tokenizer) to ``model_dir``, and
  ``<work>/metrics.json`` LAST (with each rank's peak memory).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from climb_hpc import preempt
from climb_hpc.minitron import PhaseFiles, ds
from climb_hpc.minitron.data import PhaseData, micro_batch
from climb_hpc.minitron.losses import distill_sums, lm_loss_sum
from climb_hpc.rundir import atomic_path, atomic_write, atomic_write_json, read_json
from climb_hpc.training import lr_at
from climb_hpc.training import make_optimizer as adamw


class Teacher(NamedTuple):
    """What the student's loss needs of a frozen teacher: its last hidden states (after the final norm) and its head."""

    hidden: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]


class Trainable(torch.nn.Module):
    """The HF model DeepSpeed trains, plus an optional learned projection of its last hidden state
    (student width -> teacher width) for the hidden-state loss; only ``model`` is saved as HF.

    Its forward returns the loss terms, computed from the final hidden states by the chunked losses
    (``losses.py``, ``chunk`` tokens at a time): the whole sequence's logits never exist. The terms are computed
    inside the module's forward, so that under ZeRO-3 every parameter they use is gathered by DeepSpeed's hooks as
    in any forward."""

    def __init__(self, model: torch.nn.Module, proj_to: Optional[int] = None, chunk: int = 0):
        super().__init__()
        self.model = model
        self.proj = torch.nn.Linear(model.config.hidden_size, proj_to, bias=False) if proj_to else None
        self.chunk = int(chunk)

    def forward(self, input_ids: torch.Tensor, targets: Optional[torch.Tensor] = None,
                teacher: Optional[Teacher] = None, temperature: float = 1.0,
                with_lm: bool = True) -> torch.Tensor | dict[str, torch.Tensor]:
        """``targets`` None: the logits (small batches: tests, ``Engine.logits``). Else the mean loss terms a token:
        ``lm``; with a ``teacher``, ``kl`` (x T^2), ``lm`` (0 unless ``with_lm``) and ``hidden`` (with a projection)."""
        hidden = self.model.model(input_ids=input_ids).last_hidden_state
        head = self.model.get_output_embeddings()
        if targets is None:
            return head(hidden)
        n = targets.numel()
        if teacher is None:
            return {"lm": lm_loss_sum(hidden, head, targets, self.chunk) / n}
        t = float(temperature)
        kl, ce = distill_sums(hidden, head, teacher.hidden, teacher.head, targets, t, self.chunk, with_lm)
        terms = {"kl": kl / n * (t * t), "lm": ce / n}
        if self.proj is not None:
            cos = F.cosine_similarity(self.proj(hidden).float(), teacher.hidden.float(), dim=-1)
            terms["hidden"] = 1.0 - cos.mean()
        return terms


Forward = Callable[..., Any]


class Objective(Protocol):
    """What a phase minimises. ``loss`` -> (scalar to backprop, floats to log); ``evaluate`` ->
    name -> (sum, count) over a validation batch, token-weighted means are taken across ranks.
    ``fwd`` is the (DeepSpeed-wrapped) ``Trainable``."""

    proj_to: Optional[int]

    def loss(self, fwd: Forward, seqs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, fwd: Forward, seqs: torch.Tensor) -> dict[str, tuple[float, float]]: ...


def lm_loss(logits: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    """The plain reference: next-token cross-entropy from whole logits (of ``seqs[:, :-1]``), averaged over tokens."""
    return F.cross_entropy(logits.float().flatten(0, 1), seqs[:, 1:].flatten())


class LMObjective:
    proj_to = None

    def loss(self, fwd: Forward, seqs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = fwd(seqs[:, :-1], seqs[:, 1:])["lm"]
        return loss, {"lm": float(loss.detach())}

    def evaluate(self, fwd: Forward, seqs: torch.Tensor) -> dict[str, tuple[float, float]]:
        n = seqs[:, 1:].numel()
        return {"lm": (float(fwd(seqs[:, :-1], seqs[:, 1:])["lm"]) * n, n)}


@dataclass
class Phase:
    name: str                                   # label in logs and metrics
    section: Mapping[str, Any]                  # batch, optimizer, schedule, zero, ckpt_every, cpus, ...
    work: Path                                  # ckpt/, train_log.jsonl, attempts.json, metrics.json
    model_dir: Path                             # the final HF checkpoint
    build: Callable[[], torch.nn.Module]        # the HF causal LM to train (fp32, CPU)
    data: Callable[[int], PhaseData]            # number of training sequences -> the data
    objective: Objective
    seed: int
    tokenizer_dir: Optional[Path] = None        # copied into model_dir
    info: dict[str, Any] = field(default_factory=dict)  # extra metrics (teacher path, ...)


def checkpoint_activations(model: torch.nn.Module) -> None:
    """HF activation checkpointing, non-reentrant: each layer keeps its input and recomputes the rest in the backward
    (``activation_checkpointing_enable`` since transformers 5.2x, ``gradient_checkpointing_enable`` before)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def num_steps(section: Mapping[str, Any]) -> int:
    return max(1, math.ceil(int(section["tokens"]) / (int(section["global_batch_size"]) * int(section["seq_len"]))))


def make_optimizer(module: torch.nn.Module, section: Mapping[str, Any], gpu: bool) -> torch.optim.AdamW:
    """The proxies' AdamW (``climb_hpc.training``: decay on matrices only; fused on GPU, foreach on CPU) over
    ``section``'s settings."""
    return adamw(module, section, torch.device("cuda" if gpu else "cpu"))


def _host() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class Engine:
    """One phase on DeepSpeed. Call inside ``ds.distributed``: ``Engine(phase).run()``, or step by step
    (``fit``, ``finish``) to look at the in-memory model too (``logits``)."""

    def __init__(self, phase: Phase):
        import deepspeed
        import torch.distributed as dist

        self.phase, s = phase, phase.section
        self.rank, self.world = ds.rank(), ds.world_size()
        self.steps = num_steps(s)
        self.micro, self.global_batch = int(s["micro_batch_size"]), int(s["global_batch_size"])
        self.accum = ds.grad_accumulation(s, self.world)
        self.every = int(s.get("ckpt_every") or 0)
        self.data = phase.data(self.steps * self.global_batch)
        torch.manual_seed(phase.seed)
        config = ds.ds_config(s, self.world)
        with ds.zero3_construction(config):  # ZeRO-3: built and loaded sharded, no rank holds the whole model
            model = phase.build()
            self.module = Trainable(model, phase.objective.proj_to, int(s.get("loss_chunk_tokens") or 0))
        if s.get("activation_checkpointing"):
            checkpoint_activations(model)
        self.opt = make_optimizer(self.module, s, ds.on_gpu(s))
        self.engine, *_ = deepspeed.initialize(model=self.module, optimizer=self.opt, config=config)
        self.device = self.engine.device
        self.step, self.history = 0, []
        self.train_s = 0.0
        self.ckpt = phase.work / "ckpt"
        hosts: list[Any] = [None] * self.world
        if dist.is_initialized() and self.world > 1:
            dist.all_gather_object(hosts, _host())
        else:
            hosts = [_host()]
        self.hosts = hosts

    # ---------------------------------------------------------------- pieces
    def _fwd(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)

    def _batch(self, arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(arr).to(self.device)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The trained model's logits (eval mode, no grad); collective under ZeRO-3."""
        self.engine.eval()
        with torch.no_grad():
            out = self._fwd(ids.to(self.device)).float().cpu()
        self.engine.train()
        return out

    def validate(self) -> dict[str, float]:
        """Token-weighted validation metrics over the held-out windows (split across ranks)."""
        val = self.data.val
        usable = (len(val) // self.world) * self.world
        if usable == 0:
            raise ValueError(f"{len(val)} validation windows for {self.world} ranks: raise val_tokens")
        mine = val[:usable][self.rank::self.world]
        sums: dict[str, list[float]] = {}
        self.engine.eval()
        with torch.no_grad():
            for i in range(0, len(mine), self.micro):
                for k, (a, n) in self.phase.objective.evaluate(self._fwd, self._batch(mine[i:i + self.micro])).items():
                    acc = sums.setdefault(k, [0.0, 0.0])
                    acc[0] += a
                    acc[1] += n
        self.engine.train()
        return {k: ds.all_mean(a, n) for k, (a, n) in sorted(sums.items())}

    def _save(self) -> None:
        tag = f"step{self.step}"
        self.engine.save_checkpoint(str(self.ckpt), tag=tag, client_state={"step": self.step})
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
        if self.rank == 0:  # keep only the newest tag
            for old in self.ckpt.glob("step*"):
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> int:
        """Load ``<work>/ckpt/latest`` if there is one; the step it was saved at (0 for a fresh start)."""
        if (self.ckpt / "latest").exists():
            path, client = self.engine.load_checkpoint(str(self.ckpt), load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"{self.ckpt}: DeepSpeed could not load the checkpoint named in 'latest'")
            self.step = int(client["step"])
        log = PhaseFiles(self.phase.work).train_log
        if self.rank == 0:
            lines = log.read_text().splitlines() if log.exists() else []
            self.history = [json.loads(x) for x in lines if x.strip()]
            self.history = [h for h in self.history if h["step"] <= self.step]  # drop steps after the checkpoint
            atomic_write(log, "".join(json.dumps(h) + "\n" for h in self.history))
            attempts = read_json(self.phase.work / "attempts.json", default=[])
            atomic_write_json(self.phase.work / "attempts.json", [*attempts, self.step])
        return self.step

    # ---------------------------------------------------------------- the loop
    def fit(self) -> None:
        """Optimizer steps from the current one to the end; saves and raises ``Preempted`` on request."""
        s, phase = self.phase.section, self.phase
        first = self.step
        if first == 0:
            before = self.validate()
            if self.rank == 0:
                atomic_write_json(phase.work / "val_before.json", before)
        t0 = time.perf_counter()
        logf = open(PhaseFiles(phase.work).train_log, "a") if self.rank == 0 else None
        try:
            self.engine.train()
            while self.step < self.steps:
                lr = lr_at(self.step, self.steps, s)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                parts: dict[str, float] = {}
                total = 0.0
                for m in range(self.accum):
                    seqs = self._batch(micro_batch(self.data.train, self.step, m, self.rank, self.world, self.micro,
                                                   self.global_batch))
                    loss, comps = phase.objective.loss(self._fwd, seqs)
                    self.engine.backward(loss)
                    self.engine.step()
                    total += float(loss.detach()) / self.accum
                    for k, v in comps.items():
                        parts[k] = parts.get(k, 0.0) + v / self.accum
                self.step += 1
                means = self._rank_mean([total, *parts.values()])
                rec = {"step": self.step, "loss": means[0], **dict(zip(parts, means[1:], strict=True)), "lr": lr,
                       "tokens": self.step * self.global_batch * int(s["seq_len"]),
                       "elapsed_s": round(time.perf_counter() - t0, 4)}
                if logf is not None:
                    self.history.append(rec)
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                stop = ds.agree(preempt.requested())
                if self.step < self.steps and (stop or (self.every and self.step % self.every == 0)):
                    self._save()
                if stop and self.step < self.steps:
                    raise preempt.Preempted(f"{phase.name}: saved at step {self.step} of {self.steps}")
        finally:
            self.train_s += time.perf_counter() - t0
            if logf is not None:
                logf.close()
        if self.rank == 0 and self.step > first:
            print(f"{phase.name}: steps {first}..{self.step} in {self.train_s:.1f} s; final loss "
                  f"{self.history[-1]['loss']:.4f}", flush=True)

    def _rank_mean(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if dist.is_initialized() and self.world > 1:
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t)
        return [float(x) / self.world for x in t.cpu()]

    def finish(self) -> dict[str, Any]:
        """Validation after training, the HF checkpoint, then metrics.json (last). Returns the metrics."""
        import torch.distributed as dist

        phase, s = self.phase, self.phase.section
        after = self.validate()
        dtype = SAVE_DTYPES[str(s.get("save_dtype") or "bf16")]
        metrics: dict[str, Any] = {}
        shard_bytes = float(s.get("save_shard_gb") or 5.0) * 1e9
        saved: dict[str, Any] = {}
        if self.rank == 0:
            with atomic_path(phase.model_dir) as tmp:
                saved = ds.save_hf(self.engine, tmp, dtype, shard_bytes)
                if phase.tokenizer_dir is not None and phase.tokenizer_dir.is_dir():
                    for f in phase.tokenizer_dir.iterdir():
                        if f.is_file():
                            shutil.copy2(f, tmp / f.name)
        else:
            ds.save_hf(self.engine, None, dtype, shard_bytes)  # takes part in the gathers, writes nothing
        peaks = self.peak_memory_gb()  # collective
        if self.rank == 0:
            attempts = read_json(phase.work / "attempts.json", default=[0])
            tokens = self.steps * self.global_batch * int(s["seq_len"])
            metrics = {
                "phase": phase.name, "val_before": read_json(phase.work / "val_before.json"), "val_after": after,
                "steps": self.steps, "tokens": tokens, "global_batch_size": self.global_batch,
                "micro_batch_size": self.micro, "grad_accumulation": self.accum, "seq_len": int(s["seq_len"]),
                "lr_peak": float(s["lr"]), "schedule": str(s["schedule"]),
                "final_train_loss": self.history[-1]["loss"] if self.history else None,
                "world_size": self.world, "hosts": self.hosts, "zero_stage": int(s["zero_stage"]),
                "precision": "bf16" if ds.use_bf16(s) else "fp32", "device": str(self.device),
                "threads": torch.get_num_threads(), "data": self.data.source, "attempts": attempts,
                "resumed_at_step": attempts[-1] or None, "saved": saved, "peak_memory_gb": peaks,
                "train_seconds": round(self.train_s, 3), "model_dir": str(phase.model_dir), **phase.info,
            }
            atomic_write_json(PhaseFiles(phase.work).metrics, metrics)
            if not s.get("keep_checkpoint"):
                shutil.rmtree(self.ckpt, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        return metrics

    def peak_memory_gb(self) -> list[float]:
        """Each rank's peak so far: GPU memory allocated on a GPU, else the process's peak resident set (RSS). Collective."""
        import resource

        import torch.distributed as dist

        if self.device.type == "cuda":
            mine = torch.cuda.max_memory_allocated(self.device) / 1e9
        else:
            mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux
        peaks: list[Any] = [round(mine, 3)]
        if dist.is_initialized() and self.world > 1:
            peaks = [None] * self.world
            dist.all_gather_object(peaks, round(mine, 3))
        return peaks

    def run(self) -> dict[str, Any]:
        self.resume()
        self.fit()
        return self.finish()


#: ``save_dtype``: the dtype of the final HF checkpoint's weights
SAVE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def phase_seed(seed: int, name: str) -> int:
    return int(zlib.crc32(f"{seed}:{name}".encode()))


def run_phase(phase: Phase) -> dict[str, Any]:
    """Train ``phase`` unless its metrics.json exists (then return them): the idempotent entry point.
    Call it inside ``ds.distributed``."""
    done = read_json(PhaseFiles(phase.work).metrics)
    if done is not None and phase.model_dir.exists():
        return done
    phase.work.mkdir(parents=True, exist_ok=True)
    return Engine(phase).run()
