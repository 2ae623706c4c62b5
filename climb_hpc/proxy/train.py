"""One proxy trial: train an LM on a mixture, checkpointing so a preempted trial resumes exactly.

The LM starts fresh from ``proxy.model`` and the seed, or from ``proxy.init``'s weights (every trial the same;
a resumed trial loads its own checkpoint, not the init: ``climb_hpc/proxy/model.py``).

The loop is plain PyTorch on purpose: AdamW, an LR computed from the step (so a resumed run needs no
scheduler state; both from ``climb_hpc.training``, shared with the Minitron engine), gradient accumulation,
bf16 autocast where the hardware has it, the loss from the final hidden states with the output head fused into
the cross-entropy ``proxy.loss_chunk_tokens`` tokens at a time (no whole logits). A checkpoint holds the model,
the optimizer, the step, the loss history and the RNG states; the data position is the step itself (the sampler's plan is fixed by the seed). With the same thread count, a trial stopped and resumed any
number of times ends with exactly the weights and losses of one that never stopped.

Trial folder::

    weights.json      the mixture (cluster -> weight) and the seed
    attempts.json     the step each attempt started from ([0] for a trial never interrupted)
    train_log.jsonl   one line a step: step, loss, lr, tokens, elapsed seconds
    ckpt/state.pt     the last checkpoint (removed at the end unless proxy.keep_checkpoint)
    metrics.json      written last: the target {kind, value, direction}, held-out losses, throughput
    model/            the trained model as an HF checkpoint (proxy.save_model)
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from climb_hpc import preempt
from climb_hpc.minitron.losses import linear_ce_sum
from climb_hpc.proxy.model import count_params, init_folder, proxy_model, train_flops_per_token
from climb_hpc.proxy.sampler import MixtureSampler, training_streams
from climb_hpc.rundir import atomic_path, atomic_write, atomic_write_json, read_json
from climb_hpc.training import lr_at, make_optimizer, task_device, torch_threads

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from climb_hpc.rundir import RunDir


# ---------------------------------------------------------------- schedule


def num_steps(pcfg: Mapping[str, Any]) -> int:
    per_step = int(pcfg["batch_size"]) * int(pcfg["seq_len"])
    return max(1, math.ceil(int(pcfg["tokens"]) / per_step))


# ---------------------------------------------------------------- devices and precision


def pick_device(pcfg: Mapping[str, Any]) -> torch.device:
    return task_device(pcfg)


def native_bf16(device: torch.device) -> bool:
    """Whether this device multiplies bf16 natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def precision_for(pcfg: Mapping[str, Any], device: torch.device) -> str:
    """``proxy.precision``: auto = bf16 autocast where the hardware has native bf16, else fp32."""
    precision = str(pcfg["precision"])
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"proxy.precision={precision!r}: choose auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_for(precision: str, device: torch.device) -> Any:
    """A no-argument context factory: bf16 autocast, or a null context for fp32."""
    if precision == "bf16":
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# ---------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                    history: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        tmp.mkdir()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "history": history, "rng": _rng_state()}, tmp / "state.pt")


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return int(state["step"]), list(state["history"])


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write(path, "".join(json.dumps(h) + "\n" for h in history))


# ---------------------------------------------------------------- the trial


def _tokenizer_info(rd: RunDir) -> dict[str, Any]:
    from climb_hpc.corpus.tokenize import summary_path

    s = read_json(summary_path(rd))
    if s is None:
        raise FileNotFoundError(f"{summary_path(rd)} is missing: run the tokenize stage before proxy trials")
    return s


def run_trial(cfg: DictConfig, rd: RunDir, out: Path, weights: Mapping[Union[int, str], float], seed: int) -> dict:
    """Train on ``weights``, score on ``cfg.target``, write ``out/metrics.json``; resumes from ``out/ckpt``."""
    from climb_hpc.corpus.tokenize import cluster_ids, tokenizer_dir
    from climb_hpc.corpus.tokenizer import load_fast
    from climb_hpc.proxy import targets

    done = read_json(out / "metrics.json")
    if done is not None:
        return done
    pcfg, tcfg = cfg.proxy, cfg.target
    targets.check_target(tcfg)
    summary = _tokenizer_info(rd)
    clusters = cluster_ids(rd)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "weights.json", {"weights": {str(k): v for k, v in weights.items()}, "seed": seed})
    device = pick_device(pcfg)
    precision = precision_for(pcfg, device)
    autocast = autocast_for(precision, device)
    seq_len, batch = int(pcfg.seq_len), int(pcfg.batch_size)
    micro = int(pcfg.get("micro_batch_size") or batch)
    if batch % micro:
        raise ValueError(f"proxy.batch_size={batch} is not a multiple of proxy.micro_batch_size={micro}")
    steps = num_steps(pcfg)
    sampler = MixtureSampler(training_streams(rd, clusters, float(pcfg.holdout_fraction)), weights, seq_len,
                             steps * batch, seed)
    with torch_threads(int(pcfg.get("cpus") or 1)):
        resume = (out / "ckpt" / "state.pt").exists()  # then the checkpoint sets every weight, not proxy.init
        model = proxy_model(pcfg, summary["vocab_size"], summary["eos_id"], seq_len, seed, weights=not resume)
        model = model.to(device)
        opt = make_optimizer(model, pcfg.optim, device)
        step, history = 0, []
        if resume:
            step, history = load_checkpoint(out / "ckpt", model, opt)
            print(f"proxy trial {out.name}: resumed from the checkpoint at step {step} of {steps}", flush=True)
        attempts = read_json(out / "attempts.json", default=[])
        atomic_write_json(out / "attempts.json", [*attempts, step])  # the step each attempt began at
        _write_log(out / "train_log.jsonl", history)  # drops steps logged after the checkpoint
        net = model.model if int(pcfg["loss_chunk_tokens"]) > 0 else model  # the body, or the whole LM
        fwd = torch.compile(net) if pcfg.get("compile") else net
        first = step
        train_s = _train(fwd, model, opt, sampler, pcfg, device, autocast, out, step, steps, history)
        model.eval()
        result = targets.evaluate(model, tcfg, rd, clusters=clusters, holdout=float(pcfg.holdout_fraction),
                                  seq_len=seq_len, tokenizer=load_fast(tokenizer_dir(rd)),
                                  eos_id=summary["eos_id"], device=device, autocast=autocast,
                                  loss_chunk=int(pcfg.loss_chunk_tokens))
        if pcfg.get("save_model"):
            with atomic_path(out / "model") as tmp:
                model.save_pretrained(str(tmp))
    tokens = steps * batch * seq_len
    fpt = train_flops_per_token(model.config, seq_len)
    metrics = {**result, "final_train_loss": history[-1]["loss"], "steps": steps, "tokens": tokens,
               "params": count_params(model), "train_flops_per_token": fpt, "device": str(device), "precision": precision,
               "init": str(init_folder(pcfg)) if init_folder(pcfg) else None,  # proxy.init, else a random init
               "threads": torch.get_num_threads() if device.type == "cpu" else None,
               "resumed_at_step": first or None, "train_seconds": round(train_s, 3),  # this attempt's
               "tokens_per_s": round((steps - first) * batch * seq_len / max(train_s, 1e-9), 1),
               "model_flops_per_s": round(fpt * (steps - first) * batch * seq_len / max(train_s, 1e-9))}
    atomic_write_json(out / "metrics.json", metrics)
    if not pcfg.get("keep_checkpoint"):
        shutil.rmtree(out / "ckpt", ignore_errors=True)
    return metrics


def _train(fwd: Any, model: torch.nn.Module, opt: torch.optim.Optimizer, sampler: MixtureSampler,
           pcfg: Mapping[str, Any], device: torch.device, autocast: Any, out: Path, step: int, steps: int,
           history: list[dict[str, Any]]) -> float:
    """Optimizer steps ``step .. steps - 1``; returns the seconds spent. Saves and raises on preemption.

    With ``proxy.loss_chunk_tokens`` > 0, ``fwd`` is the model's body: the loss comes from its final hidden states
    through the output head fused with the cross-entropy, that many tokens at a time
    (:func:`climb_hpc.minitron.losses.linear_ce_sum`); 0: ``fwd`` is the whole LM and the loss is taken from its
    whole logits."""
    seq_len, batch = int(pcfg["seq_len"]), int(pcfg["batch_size"])
    chunk = int(pcfg["loss_chunk_tokens"])
    head = model.get_output_embeddings()
    if chunk > 0 and getattr(head, "bias", None) is not None:
        raise ValueError("proxy.loss_chunk_tokens > 0 needs an output head without a bias; set it to 0")
    micro = int(pcfg.get("micro_batch_size") or batch)
    clip, every = float(pcfg["optim"]["grad_clip"]), int(pcfg["ckpt_every"])
    first_step = step
    model.train()
    t0 = time.perf_counter()
    with open(out / "train_log.jsonl", "a") as logf:
        while step < steps:
            lr = lr_at(step, steps, pcfg["optim"])
            for g in opt.param_groups:
                g["lr"] = lr
            total = 0.0
            for m in range(0, batch, micro):
                seqs = torch.from_numpy(sampler.sequences(step * batch + m, micro)).to(device, non_blocking=True)
                if chunk > 0:
                    with autocast():
                        hidden = fwd(input_ids=seqs[:, :-1]).last_hidden_state
                        loss = linear_ce_sum(hidden, head.weight, seqs[:, 1:], chunk) / (batch * seq_len)
                else:
                    with autocast():
                        logits = fwd(input_ids=seqs[:, :-1]).logits
                    loss = F.cross_entropy(logits.float().flatten(0, 1), seqs[:, 1:].flatten()) * (micro / batch)
                loss.backward()
                total += float(loss.detach())
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            rec = {"step": step, "loss": total, "lr": lr, "tokens": step * batch * seq_len,
                   "elapsed_s": round(time.perf_counter() - t0, 4)}
            history.append(rec)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            stop = preempt.requested()
            if step < steps and (stop or step % every == 0):
                save_checkpoint(out / "ckpt", model, opt, step, history)
            if stop and step < steps:
                raise preempt.Preempted(f"proxy trial {out.name}: saved at step {step} of {steps}")
    secs = time.perf_counter() - t0
    if step > first_step:
        print(f"proxy trial {out.name}: {step - first_step} steps, {(step - first_step) * batch * seq_len:,} tokens "
              f"in {secs:.1f} s; final loss {history[-1]['loss']:.4f}", flush=True)
    return secs

