"""Proxy trials: the mixture sampler, the LR schedule, a trial's outputs, the targets (held-out loss, JSONL
loss, multiple choice), and a round of trials as one array on the REAL local Slurm, requeued and preempted
mid-run, ending bit-identical to uninterrupted trials.

The run is the built-in corpus (40 docs a domain) with clusters planted from the true domains (7 clusters),
tokenized with a 600-token BPE; the proxy is a 2-layer, 64-wide Llama.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from climb_hpc.corpus import iter_doc_shards
from climb_hpc.corpus.tokenize import cluster_ids, cluster_stores, store_ids, tokenizer_dir
from climb_hpc.corpus.tokenizer import load_fast
from climb_hpc.pipeline import open_run, stage_runner
from climb_hpc.proxy import run_mixtures
from climb_hpc.proxy.sampler import ClusterStream, MixtureSampler, exact_counts, heldout_mask, training_streams
from climb_hpc.proxy.stage import group_dir, trial_dir
from climb_hpc.proxy.targets import TargetError, choice_logprobs, mc_accuracy, read_mc
from climb_hpc.proxy.train import run_trial
from climb_hpc.rundir import RunDir, read_json
from climb_hpc.scheduler import make_executor
from climb_hpc.training import lr_at
from tests.conftest import SLURM, SMALL_PROXY, clone_run, make_cfg, tokenized_run, wait_for_lines

UNIFORM = {c: 1.0 for c in range(7)}


# ---------------------------------------------------------------- the sampler


def _streams(sizes: dict[int, int]) -> dict[int, ClusterStream]:
    """Cluster c's tokens are all equal to c (so a window tells which cluster it came from)."""
    out = {}
    for c, n in sizes.items():
        tokens = np.full(n, c, dtype=np.uint16)
        out[c] = ClusterStream.from_spans(c, tokens, np.arange(0, n, 10), np.full(n // 10, 10))
    return out


def test_sampler_proportions_match_weights_and_zero_weights_never_draw():
    streams = _streams({0: 5000, 1: 300, 2: 20000, 3: 1000})
    weights = {0: 0.5, 1: 0.25, 2: 0.0, 3: 0.25}
    s = MixtureSampler(streams, weights, seq_len=16, num_sequences=1001, seed=3)
    seqs = s.sequences(0, len(s))
    assert seqs.shape == (1001, 17)
    origin = seqs[:, 0]
    assert (seqs == origin[:, None]).all()  # a sequence comes from one cluster
    share = {c: float((origin == c).mean()) for c in weights}
    assert share[2] == 0.0  # a zero weight is never drawn
    for c, w in weights.items():
        assert abs(share[c] - w) <= 1 / 1001 + 1e-12, (c, share[c], w)  # exact counts, not just within noise
    # the order is shuffled, not blocked: the first 100 sequences already hold every drawn cluster
    assert set(origin[:100].tolist()) == {0, 1, 3}


def test_sampler_is_deterministic_from_the_seed():
    streams = _streams({0: 4000, 1: 4000})
    a = MixtureSampler(streams, {0: 0.3, 1: 0.7}, 32, 50, seed=1)
    b = MixtureSampler(streams, {"0": 3, "1": 7}, 32, 50, seed=1)  # str keys, unnormalised: same mixture
    c = MixtureSampler(streams, {0: 0.3, 1: 0.7}, 32, 50, seed=2)
    assert (a.cluster_of == b.cluster_of).all() and (a.start == b.start).all()
    assert not (a.start == c.start).all()
    assert (a.sequences(10, 5) == a.sequences(0, 20)[10:15]).all()  # a position is a position: resumable


def test_window_follows_the_stream_across_gaps_and_wraps():
    tokens = np.arange(100, dtype=np.uint16)
    # docs [0,10) [10,20) [40,50): the gap 20..39 is held out; stream = 0..19, 40..49
    s = ClusterStream.from_spans(0, tokens, np.array([0, 10, 40]), np.array([10, 10, 10]))
    assert s.total == 30 and len(s.run_start) == 2  # adjacent docs merged into one run
    assert s.window(15, 10).tolist() == [15, 16, 17, 18, 19, 40, 41, 42, 43, 44]
    assert s.window(27, 6).tolist() == [47, 48, 49, 0, 1, 2]


def test_mixture_errors_are_clear():
    streams = _streams({0: 100})
    with pytest.raises(ValueError, match="no training tokens"):
        MixtureSampler(streams, {0: 1.0, 5: 0.5}, 8, 10, 0)
    with pytest.raises(ValueError, match="all zero"):
        MixtureSampler(streams, {0: 0.0}, 8, 10, 0)
    with pytest.raises(ValueError, match=">= 0"):
        MixtureSampler(streams, {0: -1.0}, 8, 10, 0)
    assert exact_counts(np.array([0.5, 0.0, 0.5]), 7).tolist() in ([4, 0, 3], [3, 0, 4])


def test_lr_schedules():
    o = {"lr": 1.0, "min_lr_ratio": 0.1, "warmup": 10, "schedule": "cosine"}
    lrs = [lr_at(s, 100, o) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    w = {**o, "schedule": "wsd", "decay": 0.2}
    lrs = [lr_at(s, 100, w) for s in range(100)]
    assert lrs[10:80] == [1.0] * 70 and lrs[-1] == pytest.approx(0.1) and lrs[85] < lrs[80]


# ---------------------------------------------------------------- a tokenized run


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    return tokenized_run(tmp_path_factory.mktemp("proxy") / "run")


def clone(src: Path, dst: Path, *overrides: str):
    return clone_run(src, dst, *overrides)


def run_group(cfg, group: str, mixtures: list[dict]) -> list[dict]:
    with RunDir(cfg.run_dir) as rd:
        open_run(cfg, rd)
        return run_mixtures(cfg, rd, stage_runner(cfg, rd, make_executor(cfg, rd)), group, mixtures)


def test_heldout_docs_never_reach_training(tokenized):
    """A cluster's training stream is exactly its train stores; the held-out documents (by the id hash,
    decided once by tokenize) are in the heldout stores only."""
    rd = RunDir(tokenized)
    streams = training_streams(rd, cluster_ids(rd), 0.1)
    for c, s in streams.items():
        train = cluster_stores(rd, c, "train")
        held = cluster_stores(rd, c, "heldout")
        assert train and held
        assert s.total == sum(t.num_tokens for t in train)
        assert np.array_equal(s.window(0, s.total), np.concatenate([t.tokens for t in train]))
        train_ids = [i for t in train for i in store_ids(t.prefix).column("id").to_pylist()]
        held_ids = [i for t in held for i in store_ids(t.prefix).column("id").to_pylist()]
        assert not heldout_mask(train_ids, 0.1).any() and heldout_mask(held_ids, 0.1).all()
    with pytest.raises(ValueError, match="hold out 0.1 of the documents"):
        training_streams(rd, cluster_ids(rd), 0.2)


def test_trial_trains_scores_and_writes_its_folder(tokenized, tmp_path):
    cfg = clone(tokenized, tmp_path / "run", "proxy.tokens=40960", "cluster=debug")
    rd = RunDir(cfg.run_dir)
    out = tmp_path / "trial"
    m = run_trial(cfg, rd, out, {0: 1.0, 3: 1.0}, seed=0)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert m["steps"] == len(log) == 40 and [r["step"] for r in log] == list(range(1, 41))
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]]) - 1.0
    t = m["target"]
    assert t["kind"] == "heldout" and t["direction"] == "lower" and t["clusters"] == list(range(7))
    assert set(m["heldout_loss"]) == {str(c) for c in range(7)} and 0 < t["value"] < np.log(600)
    assert read_json(out / "metrics.json") == m and read_json(out / "attempts.json") == [0]
    assert not (out / "ckpt").exists()  # removed once the trial is done (proxy.keep_checkpoint=false)
    # trained on clusters 0 and 3 only: they are predicted better than the others
    held = {int(c): v for c, v in m["heldout_loss"].items()}
    assert max(held[0], held[3]) < min(v for c, v in held.items() if c not in (0, 3))
    assert run_trial(cfg, rd, out, {0: 1.0, 3: 1.0}, seed=0) == m  # done: returns, does not retrain


def test_fused_chunked_loss_trains_as_the_whole_logits_do(tokenized, tmp_path):
    """proxy.loss_chunk_tokens > 0 (the output head fused with the cross-entropy, chunk by chunk, a partial last
    chunk included) follows the whole-logits loss step for step in fp32, with gradient accumulation, and its
    chunked held-out evaluation scores the same."""
    logs, metrics = {}, {}
    for chunk in (0, 100):  # a micro-batch of 4 x 128 tokens: 5 chunks of 100 and one of 12
        cfg = clone(tokenized, tmp_path / f"run{chunk}", "proxy.tokens=8192", "proxy.precision=fp32",
                    "proxy.micro_batch_size=4", f"proxy.loss_chunk_tokens={chunk}")
        out = tmp_path / f"trial{chunk}"
        metrics[chunk] = run_trial(cfg, RunDir(cfg.run_dir), out, UNIFORM, seed=0)
        logs[chunk] = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(logs[0]) == len(logs[100]) == 8
    np.testing.assert_allclose(logs[100], logs[0], rtol=1e-5)
    np.testing.assert_allclose(metrics[100]["target"]["value"], metrics[0]["target"]["value"], rtol=1e-5)
    assert metrics[100]["heldout_loss"].keys() == metrics[0]["heldout_loss"].keys()


def test_jsonl_and_cluster_targets(tokenized, tmp_path):
    jsonl = tmp_path / "target.jsonl"
    docs = [r for _, t in iter_doc_shards(RunDir(tokenized), ["text", "source"]) for r in t.to_pylist()]
    jsonl.write_text("".join(json.dumps({"body": d["text"]}) + "\n" for d in docs[:30]))
    cfg = clone(tokenized, tmp_path / "run", "proxy.tokens=8192", "target.kind=jsonl", f"target.path={jsonl}",
                "target.text_field=body")
    m = run_trial(cfg, RunDir(cfg.run_dir), tmp_path / "t1", UNIFORM, seed=0)
    assert m["target"]["kind"] == "jsonl" and m["target"]["direction"] == "lower" and m["target"]["tokens"] > 100
    cfg2 = clone(tokenized, tmp_path / "run2", "proxy.tokens=8192", "target.clusters=[2,5]")
    m2 = run_trial(cfg2, RunDir(cfg2.run_dir), tmp_path / "t2", UNIFORM, seed=0)
    h = m2["heldout_loss"]
    tok = m2["target"]["tokens"]
    assert m2["target"]["clusters"] == [2, 5] and min(h["2"], h["5"]) - 1e-6 <= m2["target"]["value"] <= max(h["2"], h["5"]) + 1e-6
    assert tok > 0
    bad = clone(tokenized, tmp_path / "run3", "target.kind=jsonl")
    with pytest.raises(TargetError, match="target.path"):
        run_trial(bad, RunDir(bad.run_dir), tmp_path / "t3", UNIFORM, seed=0)


# ---------------------------------------------------------------- multiple choice


def test_multiple_choice_ranks_the_planted_answer_first(tokenized, tmp_path):
    """A model trained on 'the sky is blue.' etc. picks those endings over the distractors."""
    from climb_hpc.proxy.model import build_model

    torch.manual_seed(0)
    facts = {"the sky is": "blue.", "grass is": "green.", "snow is": "white.", "coal is": "black."}
    tok = load_fast(tokenizer_dir(RunDir(tokenized)))
    stream: list[int] = []
    for _ in range(60):
        for ctx, ans in facts.items():
            stream += [0, *tok.encode(f"{ctx} {ans}").ids]
    data = torch.tensor(stream)
    cfg = make_cfg(tokenized, *SMALL_PROXY)
    model = build_model(cfg.proxy.model, tok.get_vocab_size(), 0, 128, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        i = torch.randint(0, len(data) - 33, (8,))
        x = torch.stack([data[j:j + 33] for j in i])
        loss = torch.nn.functional.cross_entropy(model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    colours = ["blue.", "green.", "white.", "black."]
    items = [{"context": ctx, "choices": colours, "answer": colours.index(ans)} for ctx, ans in facts.items()]
    for norm in ("none", "token", "char"):
        r = mc_accuracy(model, tok, 0, items, 128, torch.device("cpu"), norm)
        assert r == {"accuracy": 1.0, "items": 4, "normalize": norm}
    lp = choice_logprobs(model, tok, 0, "the sky is", ["green.", "blue."], 128, torch.device("cpu"))
    assert lp[1][0] > lp[0][0]
    untrained = build_model(cfg.proxy.model, tok.get_vocab_size(), 0, 128, seed=1)
    assert mc_accuracy(untrained, tok, 0, items, 128, torch.device("cpu"))["accuracy"] < 1.0


def test_multiple_choice_file_is_validated(tmp_path):
    f = tmp_path / "mc.jsonl"
    f.write_text(json.dumps({"context": "a", "choices": ["x", "y"], "answer": "y"}) + "\n")
    assert read_mc(f) == [{"context": "a", "choices": ["x", "y"], "answer": 1}]
    f.write_text(json.dumps({"context": "a", "choices": ["x", "y"], "answer": 2}) + "\n")
    with pytest.raises(TargetError, match="record 1"):
        read_mc(f)
    f.write_text('{"context": "a", "choices": ["x"]}\n')
    with pytest.raises(TargetError, match="choices"):
        read_mc(f)


# ---------------------------------------------------------------- a round on the real Slurm


def _weights_digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_round_is_one_array_and_requeued_trials_end_bit_identical(tokenized, tmp_path):
    """Two trials go out as one array (%2 throttle) and run to the end: the reference. Then the same
    mixtures run again in another group: trial 0 is requeued by `scontrol requeue` (killed,
    resumes from its last periodic checkpoint), trial 1 gets the preemption signal (saves at once and is
    requeued). Both must end with exactly the reference's loss curve, metric and weights.

    A trial is ~25 s: Slurm's requeue lets a step run on for up to 12 s after SIGTERM (submitit ignores it),
    so a shorter trial could finish before it is killed."""
    mixtures = [{0: 0.7, 4: 0.3}, {1: 1.0, 2: 1.0, 6: 2.0}]
    cfg = clone(tokenized, tmp_path / "run", *SLURM, "cluster.array_parallelism=2", "proxy.tokens=819200",
                "proxy.ckpt_every=25", "proxy.save_model=true")  # 800 steps
    ref = run_group(cfg, "reference", mixtures)
    script = next((Path(cfg.run_dir) / "logs" / "proxy" / "reference" / "slurm").glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1%2" in script
    assert [r["trial"] for r in ref] == [0, 1] and ref[0]["value"] != ref[1]["value"]

    box: dict = {}
    th = threading.Thread(target=lambda: box.update(r=run_group(cfg, "interrupted", mixtures)))
    th.start()
    for t in (0, 1):
        wait_for_lines(trial_dir(RunDir(cfg.run_dir), "interrupted", t) / "train_log.jsonl", 60)
    jobs = {int(t): j for t, j in read_json(Path(cfg.run_dir) / "_jobs" / "proxy" / "interrupted.json").items()}
    subprocess.run(["scontrol", "requeue", jobs[0]], check=True)
    subprocess.run(["scancel", "--signal=USR2", jobs[1]], check=True)
    th.join(600)
    assert not th.is_alive() and len(box["r"]) == 2
    rd = RunDir(cfg.run_dir)
    for t in (0, 1):
        a, b = trial_dir(rd, "reference", t), trial_dir(rd, "interrupted", t)
        attempts = read_json(b / "attempts.json")
        assert len(attempts) == 2 and attempts[0] == 0 and attempts[1] >= 25, f"trial {t} did not resume: {attempts}"
        losses = [[json.loads(x)["loss"] for x in (d / "train_log.jsonl").read_text().splitlines()] for d in (a, b)]
        assert len(losses[0]) == 800 and losses[0] == losses[1], f"trial {t}: loss curves differ"
        assert box["r"][t]["value"] == ref[t]["value"]
        assert box["r"][t]["metrics"]["heldout_loss"] == ref[t]["metrics"]["heldout_loss"]
        assert _weights_digest(a / "model") == _weights_digest(b / "model"), f"trial {t}: weights differ"
    restarts = {t: read_json(Path(cfg.run_dir) / "_done" / "proxy" / "interrupted" / f"{t:05d}")["restarts"]
                for t in (0, 1)}
    assert restarts == {0: 1, 1: 1}
    results = read_json(group_dir(rd, "interrupted") / "results.json")
    assert [r["weights"] for r in results] == [{"0": 0.7, "4": 0.3}, {"1": 0.25, "2": 0.25, "6": 0.5}]


def test_a_group_keeps_its_trials(tokenized, tmp_path):
    """Same mixtures: resumes (nothing rerun); other mixtures under the same name: refused; unknown clusters:
    refused before anything runs."""
    cfg = clone(tokenized, tmp_path / "run", "cluster=debug", "proxy.tokens=4096")
    first = run_group(cfg, "g", [UNIFORM])
    stamp = (trial_dir(RunDir(cfg.run_dir), "g", 0) / "metrics.json").stat().st_mtime_ns
    assert run_group(cfg, "g", [UNIFORM]) == first
    assert (trial_dir(RunDir(cfg.run_dir), "g", 0) / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(RuntimeError, match="cannot change"):
        run_group(cfg, "g", [{0: 1.0}])
    with pytest.raises(ValueError, match=r"clusters \[9\]"):
        run_group(cfg, "h", [{9: 1.0}])
