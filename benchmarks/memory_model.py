"""Is the memory model right? ``climb_hpc/minitron/memory.py`` against the measured peak of a real-width Llama on CPU.

A fresh subprocess builds a Llama (HF ``LlamaForCausalLM``, SDPA attention, as ``correct.load_hf`` loads one) from a
published config.json with fewer layers, runs ``--steps`` forward + backward passes of the training objective
(``engine.lm_loss``) without zeroing the gradients (gradient accumulation: the second micro-step runs with every
gradient resident), and reports its peak resident memory (``VmHWM``) above what it held before the model was built.
The model's figure is ``memory.training_peak`` for the same shape, one rank, no DeepSpeed, no optimizer step and no
runtime reserve: weights + gradients + activations + logits and loss buffers.

    .venv/bin/python benchmarks/memory_model.py                       # Llama-3.1-8B at full width, 2 layers, seq 512, bf16
    .venv/bin/python benchmarks/memory_model.py --dtype fp32 --layers 1
    .venv/bin/python benchmarks/memory_model.py --checkpointing       # HF gradient checkpointing on
    python benchmarks/memory_model.py --device cuda --layers 8 --seq 8192   # on a GPU: the allocator's peak

Full width (vocabulary 128,256, hidden 4096, MLP 14,336) holds 1.49e9 parameters at 2 layers: 6 GB of bf16 weights
and gradients, 12 GB in fp32, so the fp32 run uses 1 layer to stay under 12 GiB. The goal: modelled / measured within
0.75 to 1.25. Results on the 2-core CI machine are in docs/preflight.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's climb_hpc, whatever the venv installed
    sys.path.insert(0, str(ROOT))
CONFIG = ROOT.parent / "shared" / "data" / "model_configs" / "llama-3.1-8b" / "config.json"


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(spec: dict) -> dict:
    """In a fresh process: build, train ``steps`` micro-steps, return the peak above the baseline."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from climb_hpc.minitron.engine import checkpoint_activations, lm_loss

    torch.set_num_threads(int(spec.get("threads") or 2))
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    config = LlamaConfig(**spec["config"])
    config.use_cache = False
    ids = torch.randint(0, config.vocab_size, (spec["micro"], spec["seq"] + 1), generator=torch.Generator().manual_seed(0))
    cuda = spec.get("device") == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    ids = ids.to(device)
    lm_loss(torch.zeros(1, 1, 8, device=device), torch.zeros(1, 2, dtype=torch.long, device=device)).item()
    base = 0 if cuda else _status_kb("VmRSS")  # the loss's kernels loaded before the baseline
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with device:
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
    if spec["checkpointing"]:
        checkpoint_activations(model)
    model.train()
    for _ in range(int(spec["steps"])):
        loss = lm_loss(model(input_ids=ids[:, :-1]).logits, ids)
        loss.backward()
        del loss
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if cuda:  # the caching allocator's peak of live tensors (the CUDA context and its slack are not tensors)
        return {"params": params, "peak_bytes": torch.cuda.max_memory_allocated(), "base_bytes": 0}
    return {"params": params, "peak_bytes": (_status_kb("VmHWM") - base) * 1024, "base_bytes": base * 1024}


def spec_of(config: dict, layers: int, seq: int, micro: int, dtype: str, checkpointing: bool, steps: int = 2,
            device: str = "cpu") -> dict:
    keep = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
            "rms_norm_eps", "rope_theta", "tie_word_embeddings", "max_position_embeddings")
    conf = {k: config[k] for k in keep if k in config} | {"num_hidden_layers": layers}
    return {"config": conf, "seq": seq, "micro": micro, "dtype": dtype, "checkpointing": checkpointing, "steps": steps,
            "device": device}


def measure(spec: dict, timeout: float = 1800) -> dict:
    """Run :func:`child` in a fresh interpreter (its peak is its own)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=env)  # this checkout's climb_hpc, whatever the venv installed
    if p.returncode:
        raise RuntimeError(f"the measuring process failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def modelled(spec: dict, params: int):
    """``memory.training_peak`` for the measured setting: one rank, plain torch, no optimizer step, no runtime."""
    from climb_hpc.estimate import dims_of
    from climb_hpc.minitron.memory import Dims, training_peak

    d = Dims.of(dims_of(spec["config"]), params)
    return training_peak(d, spec["micro"], spec["seq"], spec["dtype"], 0, 1, spec["checkpointing"],
                         deepspeed=False, optimizer=False, runtime=False)


def compare(spec: dict) -> dict:
    got = measure(spec)
    peak = modelled(spec, got["params"])
    return {"params": got["params"], "modelled_gb": peak.gb, "measured_gb": got["peak_bytes"] / 1e9,
            "ratio": peak.total / got["peak_bytes"], "terms": peak.text()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--config", default=str(CONFIG), help="a published config.json (default: Llama-3.1-8B)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the peak of torch.cuda.max_memory_allocated instead of the process's RSS")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    spec = spec_of(json.loads(Path(a.config).read_text()), a.layers, a.seq, a.micro, a.dtype, a.checkpointing,
                   device=a.device)
    r = compare(spec)
    print(f"{Path(a.config).parent.name}, {a.layers} layer(s), seq {a.seq}, micro {a.micro}, {a.dtype}, "
          f"checkpointing {'on' if a.checkpointing else 'off'}: {r['params']:,} parameters")
    print(f"  modelled  {r['modelled_gb']:.3f} GB  ({r['terms']})")
    what = "torch.cuda.max_memory_allocated" if a.device == "cuda" else "peak RSS above the baseline"
    print(f"  measured  {r['measured_gb']:.3f} GB  ({what}, 2 micro-steps)")
    print(f"  modelled / measured = {r['ratio']:.3f}  (goal 0.75 to 1.25)")
    return 0 if 0.75 <= r["ratio"] <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
