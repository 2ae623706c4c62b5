"""Minitron, reproduced in miniature: prune + distill against training from scratch.

    python benchmarks/minitron_repro.py [--tokens 40000] [--teacher-tokens 400000] [--threads 2]
                                        [--work runs/bench_minitron]

* data:     the built-in corpus (7 domains = 7 clusters, 600-token BPE), ingested and tokenized into a run
            folder; the mixed dataset is made by the ``mix`` stage from 4 clusters (two of which the
            teacher never saw); validation = the mixture's held-out tail (``minitron.data.split``).
* teacher:  a 4-layer, 128-wide Llama (GQA 4 heads / 2 groups) pretrained on clusters 0-2 only, then
            corrected on the mixture at its peak LR / 5 (Minitron's teacher correction).
* pruning:  ``importance.compute_importance`` on 256 mixture windows, then ``prune.prune_model`` to
            ~50 % of the parameters by width (hidden 96, MLP 192, 2 heads) and by depth (2 of 4 layers,
            block importance).
* students: each pruned model distilled (forward KL on logits, T = 1) from the corrected teacher for N
            tokens; the width-pruned one also from the UNcorrected teacher (pruned with its own
            importance); a student of the width-pruned shape from scratch (LM loss) with N and 10 x N.
            Plain torch loops (AdamW, warmup + cosine), same data order everywhere.

Prints every model's LM val loss on the mixture; the last line is ``repro: ok`` or ``repro: short <goals>``.
Goals: distilled width-pruned <= from scratch at 10 x N; width-pruned < depth-pruned; the corrected
teacher gives a lower student loss than the uncorrected one.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEQ, BATCH = 64, 16
TEACHER = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 32}
WIDTH = {"hidden_size": 96, "intermediate_size": 192, "num_attention_heads": 2}
DEPTH = {"depth": {"drop": 2, "metric": "block"}}
PRETRAIN_CLUSTERS = (0, 1, 2)
MIX = "mix.weights={0: 0.25, 1: 0.25, 4: 0.25, 5: 0.25}"
TOKENIZED = ("corpus.builtin.docs_per_domain=200", "tokenize.vocab_size=600", "tokenize.batch_size=16")


def make_run(work: Path) -> Path:
    """Ingest + tokenize the built-in corpus (clusters = domains) and mix it; reused when present."""
    from climb_hpc.clusters.labels import clusters_from_field
    from climb_hpc.config import compose
    from climb_hpc.pipeline import run_pipeline
    from climb_hpc.rundir import RunDir

    run = work / "run"
    if (run / "mix" / "summary.json").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    base = [f"run_dir={run}", "progress=false", "cluster=debug", *TOKENIZED, "mix.tokens=400000", MIX]
    run_pipeline(compose([*base, "pipeline.stages=[ingest,tokenize,mix]", "until=ingest"]))
    clusters_from_field(RunDir(run), "source")
    run_pipeline(compose([*base, "pipeline.stages=[ingest,tokenize,mix]"]))
    return run


def windows(tokens: np.ndarray, n: int, seed: int, end: Optional[int] = None) -> np.ndarray:
    from climb_hpc.minitron.data import TokenWindows

    return TokenWindows(tokens, SEQ, n, seed, end).sequences(0, n)


def train(model: torch.nn.Module, data: np.ndarray, lr: float, teacher: Optional[torch.nn.Module] = None,
          warmup: int = 10) -> torch.nn.Module:
    """AdamW over ``data`` [n, SEQ + 1] in batches of BATCH: LM loss, or forward KL to ``teacher``."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    steps = max(1, len(data) // BATCH)
    for s in range(steps):
        f = (s + 1) / warmup if s < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * f
        seqs = torch.from_numpy(data[s * BATCH:(s + 1) * BATCH])
        logits = model(input_ids=seqs[:, :-1]).logits.float()
        if teacher is None:
            loss = F.cross_entropy(logits.flatten(0, 1), seqs[:, 1:].flatten())
        else:
            with torch.no_grad():
                t = teacher(input_ids=seqs[:, :-1]).logits.float()
            loss = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
            loss = loss / logits.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


def val_loss(model: torch.nn.Module, val: np.ndarray) -> float:
    from climb_hpc.minitron.importance import lm_loss_of

    return lm_loss_of(model, [torch.from_numpy(val[i:i + 32]) for i in range(0, len(val), 32)])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=40_000, help="N: distillation tokens a student")
    ap.add_argument("--teacher-tokens", type=int, default=400_000, help="teacher pretraining tokens")
    ap.add_argument("--correct-tokens", type=int, default=100_000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_minitron")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import copy

    from climb_hpc.corpus.tokenize import load_cluster
    from climb_hpc.minitron.data import split
    from climb_hpc.minitron.importance import compute_importance
    from climb_hpc.minitron.prune import num_params, prune_model
    from climb_hpc.proxy.model import build_model
    from climb_hpc.rundir import RunDir, read_json
    from climb_hpc.search.mix import load_mixed

    t0 = time.time()
    rd = RunDir(make_run(a.work))
    summ = read_json(rd.path / "tokenize" / "summary.json")
    mixed, _, _ = load_mixed(rd)
    end, val = split(mixed, 20_000, SEQ)
    pre = np.concatenate([np.asarray(load_cluster(rd, c)[0]) for c in PRETRAIN_CLUSTERS])
    per = SEQ * 1  # tokens a window contributes
    n_win = max(BATCH, a.tokens // per)

    teacher = build_model(TEACHER, summ["vocab_size"], summ["eos_id"], SEQ, seed=0)
    train(teacher, windows(pre, a.teacher_tokens // per, 1), a.lr)
    corrected = train(copy.deepcopy(teacher), windows(mixed, a.correct_tokens // per, 2, end), a.lr / 5)
    calib = [torch.from_numpy(w) for w in np.split(windows(mixed, 256, 3, end), 16)]
    results: dict[str, float] = {"teacher (uncorrected)": val_loss(teacher, val),
                                 "teacher (corrected)": val_loss(corrected, val)}
    print(f"teachers trained in {time.time() - t0:.0f} s; {num_params(teacher):,} parameters", flush=True)

    imp_c = compute_importance(corrected, calib, drop=2)
    imp_u = compute_importance(teacher, calib, drop=2)
    data = windows(mixed, n_win, 4, end)
    students: dict[str, Any] = {}
    for name, src, imp, tgt in (("width, corrected", corrected, imp_c, WIDTH),
                                ("depth, corrected", corrected, imp_c, DEPTH),
                                ("width, uncorrected", teacher, imp_u, WIDTH)):
        s = prune_model(src, imp, tgt)
        results[f"pruned {name} (before distillation)"] = val_loss(s, val)
        students[name] = train(s, data, a.lr, teacher=src)
        results[f"distilled {name}, N"] = val_loss(students[name], val)
        print(f"  {name}: {num_params(s):,} parameters ({num_params(s) / num_params(teacher):.0%})", flush=True)
    shape = {**TEACHER, **WIDTH}
    results["scratch, N"] = val_loss(train(build_model(shape, summ["vocab_size"], summ["eos_id"], SEQ, seed=5),
                                           data, a.lr), val)
    results["scratch, 10N"] = val_loss(train(build_model(shape, summ["vocab_size"], summ["eos_id"], SEQ, seed=5),
                                             windows(mixed, 10 * n_win, 4, end), a.lr), val)

    print(f"\nLM val loss on the mixture (N = {n_win * SEQ:,} tokens; {time.time() - t0:.0f} s):")
    for k, v in results.items():
        print(f"  {k:<45} {v:.4f}")
    short = []
    if not results["distilled width, corrected, N"] <= results["scratch, 10N"]:
        short.append("width<=scratch10N")
    if not results["distilled width, corrected, N"] < results["distilled depth, corrected, N"]:
        short.append("width<depth")
    if not results["distilled width, corrected, N"] < results["distilled width, uncorrected, N"]:
        short.append("corrected<uncorrected")
    print("repro: ok" if not short else f"repro: short {' '.join(short)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
