"""Minitron, reproduced in miniature: prune + distill against training from scratch.

    python benchmarks/minitron_repro.py [--tokens 50000] [--teacher-tokens 3000000] [--correct-tokens 1000000]
                                        [--threads 2] [--work runs/bench_minitron]

* data:     ../shared/data/corpus (5 sources = 5 clusters, 2048-token BPE), ingested and tokenized into a run
            folder; the mixed dataset is made by the ``mix`` stage from 4 clusters (two of which the
            teacher never saw); validation = the held-out documents of the mixture's clusters (10 % by a hash
            of the doc id), which neither the mix nor the teacher's pretraining ever contains.
* teacher:  an 8-layer, 128-wide Llama (GQA 4 heads / 2 groups, 1.84M parameters) pretrained on code, math and
            science only (3M tokens), then corrected on the mixture (1M tokens) at its peak LR / 5 (Minitron's
            teacher correction). Both are cached in --work: a rerun trains only the students.
* pruning:  ``importance.compute_importance`` on 256 mixture windows, then ``prune.prune_model`` by width
            (hidden 128 -> 96, MLP 384 -> 224, every head kept, as Minitron's best 4B does: 55 % of the
            parameters) and by depth (the 4 contiguous layers of 8 whose removal costs the least LM loss: 57 %;
            the tied 2048 x 128 embedding is why half the layers keep more than half the parameters).
* students: each pruned model distilled (forward KL on logits, T = 1) from its teacher for N tokens at LR 1e-3;
            the width-pruned one also from the UNcorrected teacher (pruned with its own importance); a
            student of the width-pruned shape from scratch (LM loss, LR 3e-3) with N and 10 x N tokens.
            Plain torch loops (AdamW, warmup + cosine), the same data order everywhere.

Prints every model's LM val loss on the mixture; the last line is ``repro: ok`` or ``repro: short <goals>``.
Goals: distilled width-pruned <= from scratch at 10 x N; width-pruned < depth-pruned; the corrected
teacher gives a lower student loss than the uncorrected one.

Measured 2026-11-24 (2 cores, shared with other jobs: 50 min, 40 of them the teachers), N = 49,984 tokens:

    teacher (uncorrected)                            4.4290
    teacher (corrected)                              3.9335
    pruned width, corrected (before distillation)    5.3618
    distilled width, corrected, N                    4.3000   <- best student
    pruned depth, corrected (before distillation)    4.9904
    distilled depth, corrected, N                    4.3689
    pruned width, uncorrected (before distillation)  5.3846
    distilled width, uncorrected, N                  4.6411
    scratch, N                                       6.5609
    scratch, 10N                                     5.2520
    repro: ok
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
TEACHER = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 8, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 32}
# Both students keep ~55-57 % of the teacher's 1.84M parameters (the 262k tied embedding bounds depth pruning: half
# the layers keeps 57 %). Width keeps every head, as Minitron's best 4B does, and is the slightly smaller one.
WIDTH = {"hidden_size": 96, "intermediate_size": 224}
DEPTH = {"depth": {"drop": 4, "metric": "loss"}}
CORPUS = ROOT.parent / "shared" / "data" / "corpus"
# clusters = the corpus's sources, sorted: 0 code, 1 fiction, 2 math, 3 news, 4 science
PRETRAIN_CLUSTERS = (0, 2, 4)
MIX = "mix.weights={0: 0.25, 1: 0.25, 3: 0.25, 4: 0.25}"  # fiction and news: never seen by the teacher
TOKENIZED = ("tokenize.vocab_size=2048", "tokenize.batch_size=256")
HOLDOUT = 0.1  # docs held out of everything trained on (by a hash of the id); the validation set


def make_run(work: Path) -> Path:
    """Ingest + tokenize the real corpus (clusters = sources) and mix it; reused when present."""
    from climb_hpc.config import compose
    from climb_hpc.pipeline import run_pipeline

    run = work / "run"
    if (run / "mix" / "summary.json").is_file() and (run / "holdout.txt").is_file() \
            and (run / "holdout.txt").read_text() == f"{HOLDOUT} {CORPUS}":
        return run
    shutil.rmtree(run, ignore_errors=True)
    if not CORPUS.is_dir():
        raise SystemExit(f"{CORPUS} is missing: this benchmark runs on ../shared/data/corpus")
    base = [f"run_dir={run}", "progress=false", "cluster=debug", f"corpus.paths=[{CORPUS}]", *TOKENIZED,
            "mix.tokens=2000000", "mix.materialize=true", MIX,
            f"proxy.holdout_fraction={HOLDOUT}"]
    run_pipeline(compose([*base, "pipeline.stages=[ingest,refine,tokenize,mix]", "clusters.refine.from_field=source"]))
    (run / "holdout.txt").write_text(f"{HOLDOUT} {CORPUS}")
    return run


def heldout_windows(rd: Any, clusters: list[int], eos: int) -> np.ndarray:
    """Non-overlapping windows of the held-out docs of ``clusters``: never in the mix, never pretrained on."""
    from climb_hpc.proxy.targets import heldout_streams

    stream = np.concatenate(list(heldout_streams(rd, clusters, HOLDOUT, 10**9, eos).values()))
    return np.stack([stream[i:i + SEQ + 1] for i in range(0, len(stream) - SEQ - 1, SEQ)])


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
    ap.add_argument("--tokens", type=int, default=50_000, help="N: distillation tokens a student")
    ap.add_argument("--teacher-tokens", type=int, default=3_000_000, help="teacher pretraining tokens")
    ap.add_argument("--correct-tokens", type=int, default=1_000_000)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak LR of pretraining and of the scratch students")
    ap.add_argument("--distill-lr", type=float, default=1e-3, help="peak LR of distillation (pruned students)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_minitron")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import copy

    from climb_hpc.minitron.data import load_tokens
    from climb_hpc.minitron.importance import compute_importance
    from climb_hpc.minitron.prune import num_params, prune_model
    from climb_hpc.proxy.model import build_model
    from climb_hpc.proxy.sampler import MixtureSampler, training_streams
    from climb_hpc.rundir import RunDir, read_json
    from climb_hpc.search.mix import outputs as mix_outputs

    t0 = time.time()
    rd = RunDir(make_run(a.work))
    summ = read_json(rd.path / "tokenize" / "summary.json")
    mixed, _ = load_tokens(rd, str(mix_outputs(rd).shards_megatron.parent))  # the materialised mix: its shards
    end = None  # the mix holds no held-out doc: validation is the held-out docs of the mixture's clusters
    mix_clusters = sorted(int(c) for c in read_json(rd.path / "mixture.json")["clusters"])
    val = heldout_windows(rd, mix_clusters, summ["eos_id"])
    pretrain = training_streams(rd, list(PRETRAIN_CLUSTERS), HOLDOUT)
    per = SEQ * 1  # tokens a window contributes
    n_win = max(BATCH, a.tokens // per)

    teacher = build_model(TEACHER, summ["vocab_size"], summ["eos_id"], SEQ, seed=0)
    corrected = copy.deepcopy(teacher)
    cache = a.work / f"teachers_{a.teacher_tokens}_{a.correct_tokens}_{a.lr}.pt"  # the slow part, reused
    if cache.is_file():
        states = torch.load(cache)
        teacher.load_state_dict(states["teacher"])
        corrected.load_state_dict(states["corrected"])
        teacher.eval(), corrected.eval()
    else:
        n_pre = a.teacher_tokens // per
        train(teacher, MixtureSampler(pretrain, {c: pretrain[c].total for c in pretrain}, SEQ, n_pre, 1)
              .sequences(0, n_pre), a.lr)
        corrected.load_state_dict(teacher.state_dict())
        train(corrected, windows(mixed, a.correct_tokens // per, 2, end), a.lr / 5)
        torch.save({"teacher": teacher.state_dict(), "corrected": corrected.state_dict()}, cache)
    calib = [torch.from_numpy(w) for w in np.split(windows(mixed, 256, 3, end), 16)]
    results: dict[str, float] = {"teacher (uncorrected)": val_loss(teacher, val),
                                 "teacher (corrected)": val_loss(corrected, val)}
    print(f"teachers trained in {time.time() - t0:.0f} s; {num_params(teacher):,} parameters", flush=True)

    imp_c = compute_importance(corrected, calib, drop=DEPTH["depth"]["drop"])
    imp_u = compute_importance(teacher, calib, drop=DEPTH["depth"]["drop"])
    data = windows(mixed, n_win, 4, end)
    students: dict[str, Any] = {}
    for name, src, imp, tgt in (("width, corrected", corrected, imp_c, WIDTH),
                                ("depth, corrected", corrected, imp_c, DEPTH),
                                ("width, uncorrected", teacher, imp_u, WIDTH)):
        s = prune_model(src, imp, tgt)
        results[f"pruned {name} (before distillation)"] = val_loss(s, val)
        students[name] = train(s, data, a.distill_lr, teacher=src)
        results[f"distilled {name}, N"] = val_loss(students[name], val)
        print(f"  {name}: {num_params(s):,} parameters ({num_params(s) / num_params(teacher):.0%})", flush=True)
    shape = {**TEACHER, **WIDTH}
    results["scratch, N"] = val_loss(train(build_model(shape, summ["vocab_size"], summ["eos_id"], SEQ, seed=5),
                                           data, a.lr), val)
    results["scratch, 10N"] = val_loss(train(build_model(shape, summ["vocab_size"], summ["eos_id"], SEQ, seed=5),
                                             windows(mixed, 10 * n_win, 4, end), a.lr), val)

    print(f"\nLM val loss on the mixture's held-out docs ({val.size:,} tokens; N = {n_win * SEQ:,} tokens; "
          f"{time.time() - t0:.0f} s):")
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
