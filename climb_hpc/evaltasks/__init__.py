"""Local lm-evaluation-harness tasks built from a corpus's held-out documents (``climb-hpc build-tasks``).

Two multiple-choice shapes, one task a domain (the corpus's ``source`` field, else the file's name):

* ``climb_cont_<domain>`` (HellaSwag-shaped, metric acc_norm): the opening of a document as the context, its
  true continuation against the continuations of 3 other documents of the domain;
* ``climb_answer_<domain>`` (GSM8K / ARC-shaped, metric acc), for documents that end in a GSM8K-style
  ``#### <answer>`` line: ``Question: <first line>\\nAnswer:`` with its final answer against 3 others.

Only documents the run holds out of proxy training are used: ``heldout_mask(ids, holdout)`` with the run's
``proxy.holdout_fraction`` (the same hash of the id that tokenize applies), so a proxy is never scored on a
document it trained on. They are still documents of the same corpus (same sources, near-duplicates may sit in
training): a domain target measures fit to the domain, not transfer to unseen benchmarks.

Each task is a JSONL of ``{context, choices, answer, id}`` and a task YAML (from ``templates/``) naming it by
absolute path, so ``lm_eval --tasks <name> --include_path <out>`` and ``target=lm_eval
target.include_path=<out>`` take the folder as it is (move it: build again). Deterministic for a seed.
"""

from __future__ import annotations

import json
import re
import string
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from climb_hpc.corpus.heldout import heldout_mask
from climb_hpc.rundir import atomic_write, atomic_write_json

TEMPLATES = Path(__file__).parent / "templates"
KINDS = {"cont": ("continuation.yaml", "acc_norm"), "answer": ("answer.yaml", "acc")}
CHOICES = 4
ANSWER = re.compile(r"\n####\s*([^\n]+?)\s*$")


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    domain: str


def read_corpus(corpus: Path, id_field: str = "id", text_field: str = "text",
                source_field: Optional[str] = "source") -> tuple[list[Doc], int]:
    """The documents of ``corpus`` (a JSONL file or a folder of them, sorted) that have an id, and how many had
    none (those cannot be told held out or not). Numeric ids become decimal strings, as ingest makes them."""
    files = [corpus] if corpus.is_file() else sorted(corpus.rglob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"corpus={corpus}: no .jsonl file there")
    docs, no_id = [], 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                rid, text = row.get(id_field), row.get(text_field)
                if not isinstance(text, str):
                    continue
                if rid is None or isinstance(rid, bool):
                    no_id += 1
                    continue
                rid = str(int(rid)) if isinstance(rid, (int, float)) else str(rid)
                dom = row.get(source_field) if source_field else None
                docs.append(Doc(rid, text, _slug(str(dom) if dom else f.stem)))
    return docs, no_id


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "misc"


def _rng(seed: int, task: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(task.encode())])


def split_doc(text: str, max_context: int = 300, max_ending: int = 100, min_ending: int = 20
              ) -> Optional[tuple[str, str]]:
    """(context, ending): the text cut at a word boundary near its middle (at most ``max_context`` chars in),
    and up to ``max_ending`` chars after it, ending at a word boundary; None for a text too short."""
    t = text.strip()
    cut = min(len(t) // 2, max_context)
    ws = max(t.rfind(" ", 0, cut + 1), t.rfind("\n", 0, cut + 1))
    if ws <= 0:
        return None
    context, rest = t[:ws].rstrip(), t[ws:].lstrip()
    ending = rest[:max_ending]
    if len(rest) > max_ending:
        end = max(ending.rfind(" "), ending.rfind("\n"))
        ending = ending[:end] if end > 0 else ending
    ending = ending.rstrip()
    if not context or len(ending) < min_ending:
        return None
    return context, ending


def final_answer(text: str) -> Optional[tuple[str, str]]:
    """(question, answer) of a GSM8K-style document (question on the first line, ``#### answer`` last)."""
    m = ANSWER.search(text.rstrip())
    question = text.strip().split("\n", 1)[0].strip()
    if not m or not question or question.startswith("####"):
        return None
    return question, m.group(1).strip()


def _pairs(kind: str, docs: list[Doc]) -> list[tuple[Doc, str, str]]:
    """(doc, context, true choice) for the docs of a task kind."""
    out = []
    for d in docs:
        if kind == "cont":
            cut = split_doc(d.text)
            if cut:
                out.append((d, cut[0], cut[1]))
        else:
            qa = final_answer(d.text)
            if qa:
                out.append((d, f"Question: {qa[0]}\nAnswer:", qa[1]))
    return out


def make_items(task: str, pairs: list[tuple[Doc, str, str]], items: Optional[int], seed: int
               ) -> list[dict[str, Any]]:
    """Up to ``items`` questions (a seeded sample of ``pairs``): the true choice and 3 distinct others drawn from
    the other pairs, at a seeded position."""
    rng = _rng(seed, task)
    chosen = range(len(pairs)) if items is None or items >= len(pairs) else sorted(
        rng.permutation(len(pairs))[:items].tolist())
    rows = []
    for i in chosen:
        doc, context, true = pairs[i]
        others: list[str] = []
        for j in rng.permutation(len(pairs)).tolist():
            cand = pairs[j][2]
            if j != i and cand != true and cand not in others:
                others.append(cand)
            if len(others) == CHOICES - 1:
                break
        if len(others) < CHOICES - 1:
            continue
        answer = int(rng.integers(CHOICES))
        rows.append({"id": doc.id, "context": context, "choices": others[:answer] + [true] + others[answer:],
                     "answer": answer})
    return rows


def task_yaml(kind: str, task: str, data: Path) -> str:
    text = (TEMPLATES / KINDS[kind][0]).read_text(encoding="utf-8")
    return string.Template(text).substitute(task=task, data=json.dumps(str(data.resolve())))


def _by_domain(docs: list[Doc]) -> Iterator[tuple[str, list[Doc]]]:
    domains: dict[str, list[Doc]] = {}
    for d in docs:
        domains.setdefault(d.domain, []).append(d)
    yield from sorted(domains.items())


def build(corpus: Path, out: Path, holdout: float, seed: int = 0, items: Optional[int] = 1000,
          domains: Optional[list[str]] = None, kinds: tuple[str, ...] = tuple(KINDS), id_field: str = "id",
          text_field: str = "text", source_field: Optional[str] = "source") -> dict[str, Any]:
    """Write the tasks of ``corpus``'s held-out docs to ``out`` (``<task>.jsonl`` + ``<task>.yaml`` each, and
    ``tasks.json``, the manifest); returns the manifest."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout}: give the run's proxy.holdout_fraction (between 0 and 1)")
    docs, no_id = read_corpus(Path(corpus), id_field, text_field, source_field)
    held = heldout_mask([d.id for d in docs], holdout)
    kept = [d for d, h in zip(docs, held, strict=True) if h]
    if domains:
        want = {_slug(x) for x in domains}
        kept = [d for d in kept if d.domain in want]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for domain, ddocs in _by_domain(kept):
        for kind in kinds:
            name = f"climb_{kind}_{domain}"
            rows = make_items(name, _pairs(kind, ddocs), items, seed)
            if not rows:
                if kind == "cont" or any(final_answer(d.text) for d in ddocs):
                    skipped[name] = f"fewer than {CHOICES} usable held-out docs"
                continue
            data = out / f"{name}.jsonl"
            atomic_write(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            atomic_write(out / f"{name}.yaml", task_yaml(kind, name, data))
            tasks[name] = {"kind": kind, "domain": domain, "items": len(rows), "metric": KINDS[kind][1],
                           "data": str(data.resolve())}
    manifest = {"corpus": str(Path(corpus).resolve()), "holdout": holdout, "seed": seed, "items": items,
                "docs": len(docs), "heldout_docs": int(held.sum()), "docs_without_id": no_id,
                "tasks": tasks, "skipped": skipped}
    atomic_write_json(out / "tasks.json", manifest)
    return manifest


def target_overrides(manifest: dict[str, Any], out: Path, kinds: tuple[str, ...] = ("cont",)) -> list[str]:
    """``target=lm_eval`` overrides that score the built tasks of ``kinds`` (averaged, each its own metric)."""
    specs = ",".join(f"{{name:{n},metric:{t['metric']}}}" for n, t in manifest["tasks"].items() if t["kind"] in kinds)
    return ["target=lm_eval", f"target.include_path={Path(out).resolve()}", f"target.tasks=[{specs}]"]


def cli(args: list[str]) -> int:
    """``build-tasks corpus=PATH out=DIR [holdout=F] [seed=N] [items=N|all] [domains=a,b] [kinds=cont,answer]
    [id_field=id] [text_field=text] [source_field=source]``; holdout defaults to the config's
    proxy.holdout_fraction (give the run's own when it differs)."""
    from climb_hpc.config import ConfigError, compose

    kv = {}
    for a in args:
        if "=" not in a:
            raise ConfigError(f"build-tasks: expected key=value, got {a!r}")
        k, v = a.split("=", 1)
        kv[k] = v
    known = {"corpus", "out", "holdout", "seed", "items", "domains", "kinds", "id_field", "text_field", "source_field"}
    if set(kv) - known or not {"corpus", "out"} <= set(kv):
        raise ConfigError(f"build-tasks: give corpus=PATH out=DIR, and optionally {', '.join(sorted(known - {'corpus', 'out'}))}"
                          + (f"; unknown: {', '.join(sorted(set(kv) - known))}" if set(kv) - known else ""))
    kinds = tuple(x for x in kv.get("kinds", ",".join(KINDS)).split(",") if x)
    if set(kinds) - set(KINDS):
        raise ConfigError(f"build-tasks kinds={kv['kinds']}: choose among {', '.join(KINDS)}")
    holdout = float(kv["holdout"]) if "holdout" in kv else float(compose([]).proxy.holdout_fraction)
    items = None if kv.get("items") in ("all", "null") else int(kv.get("items", 1000))
    m = build(Path(kv["corpus"]).expanduser(), Path(kv["out"]).expanduser(), holdout, int(kv.get("seed", 0)),
              items, [x for x in kv["domains"].split(",") if x] if kv.get("domains") else None, kinds,
              kv.get("id_field", "id"), kv.get("text_field", "text"), kv.get("source_field", "source") or None)
    print(f"{len(m['tasks'])} task(s) from {m['heldout_docs']:,} held-out docs of {m['docs']:,} (holdout={holdout}) "
          f"in {Path(kv['out']).resolve()}:")
    for name, t in m["tasks"].items():
        print(f"  {name:<28} {t['items']:>6} items  metric {t['metric']}")
    for name, why in m["skipped"].items():
        print(f"  {name:<28} skipped: {why}")
    if m["docs_without_id"]:
        print(f"  ({m['docs_without_id']} docs without an id skipped: they cannot be told held out)")
    print("score trials on them: " + " ".join(repr(o) if "[" in o else o for o in target_overrides(m, Path(kv["out"]))))
    return 0
