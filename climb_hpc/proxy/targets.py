"""What a proxy trial is scored on (``cfg.target``): LM loss on held-out docs or a JSONL, multiple-choice
accuracy by log-likelihood, or lm-evaluation-harness tasks (:mod:`climb_hpc.proxy.lm_eval_target`).

LM loss is the mean next-token NLL (nats) over a packed stream: ``[EOS] + doc + EOS + doc + EOS ...`` cut
into windows of ``seq_len + 1`` tokens that overlap by one, so every token but the first is predicted once.

Multiple choice follows lm-evaluation-harness: each choice is scored as a continuation of the context,
``sum log p(choice tokens | EOS + context)``, optionally divided by the choice's length in characters
(``normalize: char``, lm-eval's acc_norm) or tokens; the prediction is the best-scoring choice. A space
is put between context and choice unless one of them already has it. Several files (``target.files``) are
averaged, each with its own normalisation; ``target.max_items`` of a longer file are a seeded sample.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from climb_hpc.minitron.losses import lm_loss_sum
from climb_hpc.proxy.target_errors import TargetError

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

DIRECTION = {"heldout": "lower", "jsonl": "lower", "mc": "higher", "lm_eval": "higher"}


# ---------------------------------------------------------------- LM loss on a packed stream


@torch.no_grad()
def packed_loss(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int,
                device: torch.device, autocast: Any = contextlib.nullcontext, loss_chunk: int = 0) -> dict[str, float]:
    """Mean next-token NLL of ``tokens`` (1-D ids) in windows of ``seq_len + 1`` overlapping by one.

    ``loss_chunk`` > 0: from the final hidden states through the output head that many tokens at a time
    (:func:`climb_hpc.minitron.losses.lm_loss_sum`), never a batch's whole logits; 0: from the whole logits."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise TargetError("nothing to score: fewer than 2 target tokens")
    starts = list(range(0, len(tokens) - 1, seq_len))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(starts), batch_size):
            chunk = [tokens[s:s + seq_len + 1] for s in starts[i:i + batch_size]]
            width = max(len(c) for c in chunk)
            batch = np.full((len(chunk), width), -100, dtype=np.int64)
            for r, c in enumerate(chunk):
                batch[r, :len(c)] = c
            x = torch.from_numpy(batch[:, :-1]).to(device).clamp_min(0)  # pads (-100) sit after real tokens: causal
            y = torch.from_numpy(batch[:, 1:]).to(device)
            with autocast():
                if loss_chunk > 0:
                    hidden = model.model(input_ids=x).last_hidden_state
                    nll = lm_loss_sum(hidden, model.get_output_embeddings(), y, loss_chunk)
                else:
                    logits = model(input_ids=x).logits
            if loss_chunk <= 0:
                nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((y != -100).sum())
    finally:
        model.train(was_training)
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}


def heldout_streams(rd: RunDir, clusters: list[int], fraction: Optional[float], max_tokens: int, eos_id: int
                    ) -> dict[int, np.ndarray]:
    """Per cluster: ``[EOS]`` + its held-out docs (each + EOS) in corpus order, at most ``max_tokens`` a cluster
    (its ``heldout`` stores from tokenize, read only as far as needed)."""
    from climb_hpc.corpus.tokenize import cluster_stores
    from climb_hpc.proxy.sampler import stored_holdout

    fraction = stored_holdout(rd, fraction)
    out = {}
    for c in clusters:
        parts, n = [np.array([eos_id], np.int64)], 1
        for store in cluster_stores(rd, c, "heldout"):
            if n >= max_tokens:
                break
            take = int(min(store.num_tokens, max_tokens - n))
            parts.append(np.asarray(store.tokens[:take], np.int64))
            n += take
        if n < 2:
            raise TargetError(f"cluster {c} has no held-out documents at proxy.holdout_fraction={fraction}; "
                              "raise it, or score on other clusters (target.clusters)")
        out[c] = np.concatenate(parts)
    return out


def read_jsonl(path: str | Path, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """The records of a JSONL file, the first ``limit`` of them (None: all)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TargetError(f"target file {p} does not exist")
    rows = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TargetError(f"{p} line {n} is not JSON: {e}") from None
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise TargetError(f"target file {p} has no records")
    return rows


def jsonl_stream(path: str | Path, field: str, tokenizer: Any, eos_id: int, max_tokens: int) -> np.ndarray:
    """``[EOS]`` + each record's ``field`` tokenized (+ EOS), up to ``max_tokens`` tokens."""
    ids: list[int] = [eos_id]
    for n, row in enumerate(read_jsonl(path), 1):
        text = row.get(field)
        if not isinstance(text, str):
            raise TargetError(f"{path} record {n} has no string field {field!r} (target.text_field)")
        ids.extend(tokenizer.encode(text, add_special_tokens=False).ids)
        ids.append(eos_id)
        if len(ids) >= max_tokens:
            break
    return np.asarray(ids[:max_tokens], dtype=np.int64)


# ---------------------------------------------------------------- multiple choice


def seeded_subset(n: int, k: Optional[int], seed: int) -> list[int]:
    """``k`` of ``range(n)`` chosen by a seeded permutation, in index order; all when ``k`` is None or >= n."""
    if k is None or int(k) >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(int(seed)).permutation(n)[:int(k)])


def read_mc(path: str | Path, max_items: Optional[int] = None, seed: int = 0) -> list[dict[str, Any]]:
    """Validated ``{context, choices, answer}`` records; ``answer`` is an index or the text of a choice. A file of
    more than ``max_items`` records gives a seeded sample of them (:func:`seeded_subset`), in file order."""
    rows = read_jsonl(path)
    items = []
    for i in seeded_subset(len(rows), max_items, seed):
        row, n = rows[i], i + 1
        ctx, choices, ans = row.get("context"), row.get("choices"), row.get("answer")
        if not isinstance(ctx, str) or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) and c for c in choices):
            raise TargetError(f"{path} record {n}: need {{context: str, choices: [str, str, ...], answer}}")
        if isinstance(ans, str) and ans in choices:
            ans = choices.index(ans)
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
            raise TargetError(f"{path} record {n}: answer {ans!r} is neither a choice index nor a choice's text")
        items.append({"context": ctx, "choices": choices, "answer": ans})
    return items


def _continuation(context: str, choice: str) -> str:
    return choice if (not context or context[-1].isspace() or choice[0].isspace()) else " " + choice


@torch.no_grad()
def choice_logprobs(model: torch.nn.Module, tokenizer: Any, eos_id: int, context: str, choices: list[str],
                    max_len: int, device: torch.device, autocast: Any = contextlib.nullcontext
                    ) -> list[tuple[float, int]]:
    """(sum log p(choice | context), number of choice tokens) per choice."""
    ctx = [eos_id] + tokenizer.encode(context, add_special_tokens=False).ids
    seqs, conts = [], []
    for choice in choices:
        cont = tokenizer.encode(_continuation(context, choice), add_special_tokens=False).ids
        if not cont:
            raise TargetError(f"choice {choice!r} tokenizes to nothing")
        seq = (ctx + cont)[-(max_len + 1):]
        seqs.append(seq)
        conts.append(min(len(cont), len(seq) - 1))
    width = max(len(s) for s in seqs)
    batch = torch.full((len(seqs), width), eos_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        batch[r, :len(s)] = torch.tensor(s)
    batch = batch.to(device)
    with autocast():
        logits = model(input_ids=batch[:, :-1]).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for r, (s, k) in enumerate(zip(seqs, conts, strict=True)):
        pos = torch.arange(len(s) - 1 - k, len(s) - 1, device=device)
        out.append((float(logp[r, pos, batch[r, pos + 1]].sum()), k))
    return out


def mc_accuracy(model: torch.nn.Module, tokenizer: Any, eos_id: int, items: list[dict[str, Any]], max_len: int,
                device: torch.device, normalize: str = "char", autocast: Any = contextlib.nullcontext
                ) -> dict[str, Any]:
    """Accuracy of picking the best-scoring choice; ``normalize``: none | token | char."""
    if normalize not in ("none", "token", "char"):
        raise TargetError(f"target.normalize={normalize!r}: choose none, token or char")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for item in items:
            scores = []
            for choice, (lp, k) in zip(item["choices"], choice_logprobs(
                    model, tokenizer, eos_id, item["context"], item["choices"], max_len, device, autocast),
                    strict=True):
                scores.append(lp if normalize == "none" else lp / (k if normalize == "token" else len(choice)))
            correct += int(int(np.argmax(scores)) == item["answer"])
    finally:
        model.train(was_training)
    return {"accuracy": correct / len(items), "items": len(items), "normalize": normalize}


# ---------------------------------------------------------------- the target of a trial


def mc_files(tcfg: Mapping[str, Any]) -> list[dict[str, str]]:
    """``target.files`` as ``[{path, normalize}]`` (a file's normalize defaults to ``target.normalize``), or
    ``target.path`` alone."""
    files = tcfg["files"]
    if not files:
        if not tcfg["path"]:
            raise TargetError("target.kind=mc needs target.path (a JSONL file) or "
                              "target.files=[{path: a.jsonl, normalize: char}, ...]")
        return [{"path": str(tcfg["path"]), "normalize": str(tcfg["normalize"])}]
    if tcfg["path"]:
        raise TargetError("target.path and target.files are both set: give one file as target.path, or all in files")
    out = []
    for i, f in enumerate(files):
        if isinstance(f, str):
            f = {"path": f}
        if not hasattr(f, "keys") or not f.get("path") or set(f.keys()) - {"path", "normalize"}:
            raise TargetError(f"target.files[{i}]={f!r}: give {{path: file.jsonl, normalize: char|token|none}}")
        norm = str(f.get("normalize") or tcfg["normalize"])
        if norm not in ("none", "token", "char"):
            raise TargetError(f"target.files[{i}].normalize={norm!r}: choose none, token or char")
        out.append({"path": str(f["path"]), "normalize": norm})
    return out


def check_target(tcfg: Mapping[str, Any], deep: bool = True) -> str:
    """The target's kind, or :class:`TargetError` for what would fail every trial. ``deep``: lm_eval tasks are
    looked up and loaded (names, metrics, data files: a few seconds); else only the config's shape."""
    kind = str(tcfg.get("kind"))
    if kind not in DIRECTION:
        raise TargetError(f"target.kind={kind!r}: choose heldout, jsonl, mc or lm_eval")
    if kind == "jsonl" and not tcfg.get("path"):
        raise TargetError(f"target.kind={kind} needs target.path (a JSONL file)")
    if kind == "mc":
        for f in mc_files(tcfg):
            if not Path(f["path"]).expanduser().is_file():
                raise TargetError(f"target file {f['path']} does not exist")
    if kind == "lm_eval":
        from climb_hpc.proxy import lm_eval_target

        lm_eval_target.task_specs(tcfg)
        lm_eval_target.include_dir(tcfg)
        lm_eval_target.require_lm_eval()
        if deep:
            lm_eval_target.check(tcfg)
    return kind


def evaluate(model: torch.nn.Module, tcfg: Mapping[str, Any], rd: RunDir, *, clusters: list[int], holdout: float,
             seq_len: int, tokenizer: Any, eos_id: int, device: torch.device,
             autocast: Any = contextlib.nullcontext, loss_chunk: int = 0) -> dict[str, Any]:
    """``{"target": {kind, value, direction}, ...details}`` for ``cfg.target``; ``loss_chunk``: see :func:`packed_loss`.

    Unless ``target.cluster_losses`` is false, a trial also records the held-out loss of each cluster
    (``heldout_loss``; ``max_tokens / clusters`` tokens each), whatever the target: what a report or a
    later predictor can use."""
    kind = check_target(tcfg)
    bs, max_tokens = int(tcfg["batch_size"]), int(tcfg["max_tokens"])
    per = {}
    if holdout > 0 and (kind == "heldout" or tcfg["cluster_losses"]):
        streams = heldout_streams(rd, clusters, holdout, max(2, max_tokens // max(1, len(clusters))), eos_id)
        per = {c: packed_loss(model, s, seq_len, bs, device, autocast, loss_chunk) for c, s in streams.items()}
    out: dict[str, Any] = {"heldout_loss": {str(c): round(v["loss"], 6) for c, v in per.items()}}
    if kind == "heldout":
        chosen = [int(c) for c in tcfg.get("clusters") or clusters]
        unknown = sorted(set(chosen) - set(per))
        if unknown:
            raise TargetError(f"target.clusters {unknown} are not clusters of this run ({clusters}), or "
                              "proxy.holdout_fraction is 0")
        n = sum(per[c]["tokens"] for c in chosen)
        value = sum(per[c]["loss"] * per[c]["tokens"] for c in chosen) / n
        out["target"] = {"kind": kind, "clusters": chosen, "tokens": n, "value": value}
    elif kind == "jsonl":
        stream = jsonl_stream(tcfg["path"], str(tcfg["text_field"]), tokenizer, eos_id, max_tokens)
        r = packed_loss(model, stream, seq_len, bs, device, autocast, loss_chunk)
        out["target"] = {"kind": kind, "path": str(tcfg["path"]), "tokens": r["tokens"], "value": r["loss"]}
    elif kind == "mc":
        files = []
        for f in mc_files(tcfg):
            items = read_mc(f["path"], int(tcfg["max_items"]), int(tcfg["seed"]))
            r = mc_accuracy(model, tokenizer, eos_id, items, seq_len, device, f["normalize"], autocast)
            files.append({"path": f["path"], "items": r["items"], "normalize": r["normalize"], "value": r["accuracy"]})
        out["target"] = {"kind": kind, "files": files, "value": float(np.mean([f["value"] for f in files]))}
        if len(files) == 1:  # one file: its fields at the top, as before target.files
            out["target"].update({k: files[0][k] for k in ("path", "items", "normalize")})
    else:
        from climb_hpc.proxy.lm_eval_target import score

        out["target"] = score(model, tcfg, tokenizer, eos_id, autocast)
    out["target"]["direction"] = DIRECTION[kind]
    return out
