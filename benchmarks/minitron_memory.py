"""Minitron's memory at real width: correction, importance and distillation of Llama-3.1-8B -> 4B-width at full width
(hidden 4096 -> 3072, MLP 14,336 -> 9216, 32 / 8 heads, vocabulary 128,256) with few layers, 2 ranks, ZeRO-3, on the
local Slurm; each phase's measured peak a rank beside ``climb_hpc/minitron/memory.py``'s prediction, and the model's
extrapolation to the paper's shape (32 layers, seq 8192, 256 ranks, the preset's settings).

    export SLURM_CONF=/tmp/climb-hpc-slurm/etc/slurm.conf          # bash hpc/local-slurm.sh start
    .venv/bin/python benchmarks/minitron_memory.py                  # this checkout ("after")
    git worktree add /tmp/before <commit before issue 17>
    .venv/bin/python benchmarks/minitron_memory.py --code /tmp/before --label before   # the same phases, older code
    .venv/bin/python benchmarks/minitron_memory.py --table          # both, side by side, from the saved results

* models: ../shared/data/model_configs/{llama-3.1-8b, llama-3.1-minitron-4b-width}/config.json with ``--layers``
  layers, random weights, saved once as bf16 HF checkpoints under ``--work``; data: a token store of random ids;
* each phase is one ``srun`` of 2 tasks on node1 + node2 (ZeRO-3 student, ZeRO-3 teacher; importance: 1 task), running
  the stages' own phase builders (``correct.correct_phase``, ``distill.distill_phase``, ``importance.compute_importance``)
  of the checkout given by ``--code``, in bf16, micro-batch 1, ``--steps`` optimizer steps, then the final checkpoint;
* measured: each rank's peak resident memory (VmHWM) above its RSS once torch and DeepSpeed were imported and the
  process group was up; modelled: ``memory.training_peak`` / ``scoring_peak`` for the same setting without the GPU
  runtime reserve.

The last line reads ``memory: correct=<GB> distill=<GB> importance=<GB> per GPU at paper shape; model error <pct> %``.
Both ranks share this machine's memory: at 1 layer the correction's bf16 AdamW state alone is ~10 GB a rank.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT.parent / "shared" / "data" / "model_configs"
KEEP = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
        "rms_norm_eps", "rope_theta", "tie_word_embeddings", "max_position_embeddings", "rope_scaling", "bos_token_id",
        "eos_token_id")
PHASES = ("correct", "importance", "distill")
#: ZeRO's buffers on this 24 GiB machine (2 ranks): a 5e7-element reduce bucket, gathered parameters up to the largest
#: one (the 128k x 4096 embedding: 5.3e8); DeepSpeed's defaults (5e8, 1e9) are the paper presets'
BUCKET, LIVE = 50_000_000, 530_000_000


def _kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(key)


# ---------------------------------------------------------------- preparing the models and the data (once)


def config_of(name: str, layers: int, tie: bool = True) -> dict:
    """The published config with ``layers`` layers; ``tie``: one 128k x h matrix for the embedding and the head."""
    c = json.loads((CONFIGS / name / "config.json").read_text())
    return {k: c[k] for k in KEEP if k in c} | {"num_hidden_layers": layers, "architectures": ["LlamaForCausalLM"],
                                                 "tie_word_embeddings": tie}


def prepare(work: Path, layers: int, tokens: int, tie: bool) -> dict[str, Path]:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t = "-tied" if tie else ""
    out = {"teacher": work / f"teacher-{layers}l{t}", "student": work / f"student-{layers}l{t}", "data": work / "data"}
    for key, name in (("teacher", "llama-3.1-8b"), ("student", "llama-3.1-minitron-4b-width")):
        if not (out[key] / "config.json").exists():
            torch.manual_seed(0)
            conf = LlamaConfig(**config_of(name, layers, tie))
            model = LlamaForCausalLM._from_config(conf, dtype=torch.bfloat16)
            model.save_pretrained(str(out[key]))
            del model
    if not (out["data"] / "summary.json").exists():
        out["data"].mkdir(parents=True, exist_ok=True)
        ids = np.random.default_rng(0).integers(0, 128256, size=tokens, dtype=np.int64).astype(np.uint32)
        ids.tofile(out["data"] / "tokens.bin")
        (out["data"] / "summary.json").write_text(json.dumps({"dtype": "uint32", "tokens": tokens}))
    return out


# ---------------------------------------------------------------- one rank of one phase (under srun)


def overrides(phase: str, paths: dict[str, str], a: dict) -> list[str]:
    """Settings both the old and the new code know, the stage's section at this benchmark's size; and the new code's
    own (``a["new"]``): ZeRO's buffers sized for this machine, the loss chunk."""
    sec = "minitron.correct" if phase == "correct" else "minitron.distill"
    new = [f"{sec}.zero_bucket_size={BUCKET}", f"{sec}.zero3_max_live_parameters={LIVE}",
           f"{sec}.loss_chunk_tokens={a['chunk']}"] if a["new"] else []
    common = [f"{sec}.seq_len={a['seq']}", f"{sec}.micro_batch_size=1", f"{sec}.global_batch_size=2",
              f"{sec}.tokens={a['steps'] * 2 * a['seq']}", f"{sec}.val_tokens={2 * (a['seq'] + 1)}",
              f"{sec}.zero_stage=3", f"{sec}.precision=bf16", f"{sec}.activation_checkpointing=true",
              f"{sec}.cpus={a['threads']}", f"{sec}.data={paths['data']}", f"{sec}.ckpt_every=1000", f"{sec}.warmup=1",
              *new]
    if phase == "correct":
        return [*common, "minitron.correct.lr=3e-4", f"minitron.teacher.path={paths['teacher']}"]
    return [*common, "minitron.distill.teacher_zero3=true", f"minitron.distill.teacher={paths['teacher']}",
            f"minitron.distill.student={paths['student']}", "minitron.distill.lr=1e-4"]


def worker(a: dict) -> dict:
    """One rank: import, join the group, take the baseline, run the phase; the peak above the baseline."""
    sys.path.insert(0, a["code"])
    os.chdir(a["code"])
    import torch

    from climb_hpc.config import compose
    from climb_hpc.minitron import ds
    from climb_hpc.rundir import RunDir
    from climb_hpc.scheduler.distributed import slurm_env

    torch.set_num_threads(a["threads"])
    os.environ.update(slurm_env())
    phase, paths = a["phase"], a["paths"]
    run = Path(a["work"]) / f"run-{a['label']}-{phase}"
    rd = RunDir(run)
    t0 = time.perf_counter()
    if phase == "importance":
        from climb_hpc.minitron.correct import load_hf
        from climb_hpc.minitron.data import TokenWindows, load_tokens
        from climb_hpc.minitron.importance import compute_importance

        base = _kb("VmRSS")
        kw = {"dtype": torch.bfloat16} if "dtype" in inspect.signature(load_hf).parameters else {}
        model = load_hf(paths["teacher"], **kw)
        tokens, _ = load_tokens(rd, paths["data"])
        plan = TokenWindows(tokens, a["seq"], a["samples"], 0)
        batches = [torch.from_numpy(plan.sequences(i, 1)) for i in range(a["samples"])]
        ck = {"chunk": a["chunk"]} if "chunk" in inspect.signature(compute_importance).parameters else {}
        # the new code loads bf16 as on a GPU; the old one scored in fp32 (it had no other precision)
        compute_importance(model, batches, drop=1, **ck)
        return {"rank": 0, "peak_gb": (_kb("VmHWM") - base) * 1024 / 1e9, "base_gb": base * 1024 / 1e9,
                "seconds": round(time.perf_counter() - t0, 1)}
    a["new"] = "zero_bucket_size" in Path(a["code"], "climb_hpc", "configs", "minitron", "default.yaml").read_text()
    cfg = compose([f"run_dir={run}", "cluster=debug", *overrides(phase, paths, a)])
    section = cfg.minitron.correct if phase == "correct" else cfg.minitron.distill
    from climb_hpc.minitron.engine import Engine

    with ds.distributed(section):
        import torch.distributed as dist

        dist.barrier()
        base = _kb("VmRSS")
        if phase == "correct":
            from climb_hpc.minitron.correct import correct_phase

            ph = correct_phase(cfg, rd, Path(paths["teacher"]))
        else:
            from climb_hpc.minitron.distill import distill_phase

            ph = distill_phase(cfg, rd)
        ph.work.mkdir(parents=True, exist_ok=True)
        Engine(ph).run()
        peak = (_kb("VmHWM") - base) * 1024 / 1e9
    return {"rank": int(os.environ["RANK"]), "peak_gb": peak, "base_gb": base * 1024 / 1e9,
            "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------- the driver


def measure(phase: str, a: argparse.Namespace, paths: dict[str, Path]) -> list[dict]:
    spec = {"phase": phase, "code": str(Path(a.code).resolve()), "label": a.label, "work": str(a.work),
            "paths": {k: str(v) for k, v in paths.items()}, "seq": a.seq, "steps": a.steps, "threads": a.threads,
            "samples": a.samples, "chunk": a.chunk}
    n = 1 if phase == "importance" else 2
    cmd = ["srun", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1", f"--cpus-per-task={a.threads}",
           "--mem=0", f"--time={a.time_min}", sys.executable, str(Path(__file__).resolve()), "--worker",
           json.dumps(spec)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(a.work))
    if p.returncode:
        return [{"error": f"rc {p.returncode}: {p.stderr[-1500:]}"}]
    ranks = [json.loads(x[len("RESULT "):]) for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    print(f"  {phase}: {time.time() - t0:.0f} s, peaks {[round(r['peak_gb'], 2) for r in ranks]} GB", flush=True)
    return sorted(ranks, key=lambda r: r["rank"])


def dims(name: str, layers: int, tie: bool):
    from climb_hpc.estimate import dims_of
    from climb_hpc.minitron.memory import Dims

    c = config_of(name, layers, tie)
    d = dims_of(c)
    h, v, i, L = d["hidden_size"], d["vocab_size"], d["intermediate_size"], d["num_hidden_layers"]
    q, kv = d["num_attention_heads"] * d["head_dim"], d["num_key_value_heads"] * d["head_dim"]
    per_layer = h * (2 * q + 2 * kv) + 3 * h * i + 2 * h
    params = v * h * (1 if c.get("tie_word_embeddings") else 2) + L * per_layer + h
    return Dims.of(d, params)


def predicted(phase: str, layers: int, seq: int, ranks: int, chunk: int, precision: str = "bf16",
              runtime: bool = False, checkpointing: bool = True, micro: int = 1, teacher_zero3: bool = True,
              bucket: float = BUCKET, live: float = LIVE, tie: bool = False, zero: int = 3):
    from climb_hpc.minitron.memory import scoring_peak, training_peak

    t, s = dims("llama-3.1-8b", layers, tie), dims("llama-3.1-minitron-4b-width", layers, tie)
    if phase == "importance":
        return scoring_peak(t, micro, seq, precision, runtime=runtime, chunk=chunk)
    if phase == "correct":
        return training_peak(t, micro, seq, precision, zero, ranks, checkpointing, "lm", runtime=runtime, chunk=chunk,
                             bucket=bucket, live=live)
    return training_peak(s, micro, seq, precision, zero, ranks, checkpointing, "distill", teacher=t,
                         teacher_zero3=teacher_zero3, runtime=runtime, chunk=chunk, bucket=bucket, live=live)


def paper() -> dict[str, float]:
    """The model at the paper's shape with the preset's settings (minitron=llama31_8b_to_4b_width: its ZeRO stages,
    checkpointing, chunks, micro-batches), 256 ranks, the published (untied) configs: ``climb-hpc preflight``'s
    figures for that preset."""
    sys.path.insert(0, str(ROOT))
    from climb_hpc.config import compose

    m = compose(["minitron=llama31_8b_to_4b_width"]).minitron
    out = {}
    for phase in PHASES:
        if phase == "importance":
            i = m.importance
            peak = predicted(phase, 32, int(i.seq_len), 1, int(i.loss_chunk_tokens), runtime=True,
                             micro=int(i.micro_batch_size or i.batch_size))
        else:
            s = m.correct if phase == "correct" else m.distill
            peak = predicted(phase, 32, int(s.seq_len), 256, int(s.loss_chunk_tokens), runtime=True,
                             checkpointing=bool(s.activation_checkpointing), micro=int(s.micro_batch_size),
                             teacher_zero3=bool(s.get("teacher_zero3", False)), bucket=float(s.zero_bucket_size),
                             live=float(s.zero3_max_live_parameters), zero=int(s.zero_stage))
        out[phase] = peak.gb
    return out


def table(work: Path, layers: int, seq: int, chunk: int, tie: bool) -> float:
    """Print measured (before / after) beside modelled; return the model's largest error on "after" (%)."""
    res = {lab: json.loads(p.read_text()) for lab in ("before", "after") if (p := work / f"result-{lab}.json").exists()}
    print(f"\n{layers} layer(s), {'tied' if tie else 'untied'} embeddings, seq {seq}, micro-batch 1, bf16, 2 ranks ZeRO-3 "
          f"(importance: 1 process), losses in chunks of {chunk}; GB a rank, peak RSS above the baseline")
    print("| phase | before (measured) | after (measured) | after (modelled) | modelled / measured |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for phase in PHASES:
        cells = []
        for lab in ("before", "after"):
            r = res.get(lab, {}).get(phase)
            ok = r and all("peak_gb" in x for x in r)
            cells.append(f"{max(x['peak_gb'] for x in r):.2f}" if ok else ("failed" if r else "-"))
        after = res.get("after", {}).get(phase)
        model = predicted(phase, layers, seq, 2, chunk, tie=tie).gb
        if after and all("peak_gb" in x for x in after):
            meas = max(x["peak_gb"] for x in after)
            worst = max(worst, abs(model - meas) / meas * 100)
            ratio = f"{model / meas:.2f}"
        else:
            ratio = "-"
        print(f"| {phase} | {cells[0]} | {cells[1]} | {model:.2f} | {ratio} |")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose climb_hpc runs the phases")
    ap.add_argument("--label", default="after")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "minitron_memory")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8, help="importance: calibration sequences (one a forward)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=256, help="loss_chunk_tokens (the new code)")
    ap.add_argument("--time-min", type=int, default=30)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--untied", action="store_true",
                    help="the published configs' separate embedding and head (2 x 128k x h: does not fit 2 ranks here)")
    ap.add_argument("--table", action="store_true", help="only print the table from the saved results")
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0
    sys.path.insert(0, str(ROOT))
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    if not a.table:
        paths = prepare(a.work, a.layers, 2_000_000, not a.untied)
        print(f"{a.label}: {a.code}, {a.layers} layer(s), seq {a.seq}", flush=True)
        path = a.work / f"result-{a.label}.json"
        got = json.loads(path.read_text()) if path.exists() else {}
        for phase in a.phases.split(","):
            got[phase] = measure(phase, a, paths)
            path.write_text(json.dumps(got, indent=1))
    worst = table(a.work, a.layers, a.seq, a.chunk, not a.untied)
    p = paper()
    print(f"memory: correct={p['correct']:.1f} distill={p['distill']:.1f} importance={p['importance']:.1f} per GPU at "
          f"paper shape; model error {worst:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
