"""Document quality raters: four scores a document, each 0-5, HIGHER = BETTER.

Axes, in this order (the columns of ``quality/quality.zarr``)::

    quality        overall quality of the text
    advertisement  freedom from advertising: 5 = no ads / spam, 0 = pure promotion
    informational  how much factual information the text carries
    educational    how much it teaches (explanations, worked steps, definitions)

Two raters:

* :class:`FastTextRater`: one fastText classifier per axis (``<dir>/<axis>.bin``, the paper's
  raters trained on LLM annotations). Labels are ``__label__0`` ... ``__label__5``; the score is the
  expected label under the predicted distribution over all labels (``predict(k=-1)``), so it is a
  continuous value in [0, 5] rather than the arg-max class.
  :func:`train_raters` (``climb-hpc train-raters``) makes such a folder from a labelled JSONL.
* :class:`HeuristicRater`: cheap, deterministic text statistics, for runs without trained raters
  (see its docstring for the exact rules).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np

AXES: tuple[str, ...] = ("quality", "advertisement", "informational", "educational")
MAX_SCORE = 5
HEURISTIC_VERSION = 1
RATERS_JSON = "raters.json"

#: fastText training parameters of ``train-raters`` (any other ``train_supervised`` argument may be given).
#: ``bucket`` (word n-gram hash rows) is 200k rather than fastText's 2M: a model is bucket x dim floats,
#: 51 MB instead of 512 MB at dim 64, and allocating it dominates training time on small label sets.
TRAIN_DEFAULTS: dict[str, Any] = {"epoch": 25, "lr": 0.5, "wordNgrams": 2, "dim": 64, "minCount": 1,
                                  "bucket": 200_000, "loss": "softmax", "thread": 1, "seed": 0, "verbose": 0}


class Rater(Protocol):
    def rate(self, texts: Sequence[str]) -> np.ndarray:
        """Scores [len(texts), 4] float32 in [0, 5], columns in ``AXES`` order."""

    def describe(self) -> dict[str, Any]:
        """What the scores depend on (recorded in the quality layout and checked on resume)."""


# ---------------------------------------------------------------- heuristic

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_URL = re.compile(r"https?://\S+|www\.\S+|\b\S+\.(?:com|net|biz|info|shop|xyz)\b", re.IGNORECASE)
_SENT_END = re.compile(r"[.?!:;]\s*$|[.?!]\s")
# strong promotion signals: one hit in a short text is enough to make it an ad
_PROMO = re.compile(
    r"\b(?:buy now|order now|shop now|act now|call now|click(?: here| now| below)?|subscribe|sign up|"
    r"limited[- ]time|special offer|best price|lowest price|free shipping|free trial|cheap|hurry|"
    r"don'?t miss|promo(?: code)?|coupon|deal of the day|risk[- ]free|guaranteed|money back|"
    r"100% free|winner|casino|viagra|earn \$|make money|work from home|visit our|our store|"
    r"add to cart|in stock|sponsored)\b",
    re.IGNORECASE,
)
# weak signals: ordinary words that clean text uses too (a word problem about a sale); they count a little
_WEAK = re.compile(r"\b(?:discount|sale|offer|deal|price|save|free|bonus|brand)\b|%\s*off\b", re.IGNORECASE)
_SYMBOL_SPAM = re.compile(r"\${2,}|!{2,}|\?{2,}|\*{3,}")
_EXPLAIN = re.compile(
    r"\b(?:because|therefore|thus|hence|so that|which|means|since|due to|results? in|caused? by|"
    r"defined|definition|is called|known as|for example|such as|e\.g\.|i\.e\.|in other words|"
    r"consists? of|depends? on|shows?|measured|contains?|returns?|provided that|shall|unless|"
    r"whereas|if|then|when|while)\b",
    re.IGNORECASE,
)
_TEACH = re.compile(
    r"\b(?:solution|answer|step|method|example|explain\w*|note|first|next|then|finally|calculate\w*|"
    r"compute\w*|formula|equals?|rule|lesson|learn\w*|understand\w*|problem|exercise|procedure|"
    r"instructions?|how to|why|definition|docstring|return the|section|article)\b|=|^\s*(?:\d+[.)]|-|\*)\s",
    re.IGNORECASE | re.MULTILINE,
)


def _clip(x: float) -> float:
    return float(min(MAX_SCORE, max(0.0, x)))


def text_features(text: str) -> dict[str, float]:
    """The statistics the heuristic rater uses; all cheap (a few regex passes)."""
    words = _WORD.findall(text)
    n_words = len(words)
    visible = sum(1 for ch in text if not ch.isspace())
    alpha = sum(1 for ch in text if ch.isalpha())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line_counts = Counter(lines)
    dup_lines = sum(c - 1 for c in line_counts.values()) / max(1, len(lines))
    lower = [w.lower() for w in words]
    trigrams = list(zip(lower, lower[1:], lower[2:], strict=False))
    dup_trigrams = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    caps = sum(1 for w in words if len(w) >= 3 and w.isupper()) / max(1, n_words)
    per100 = 100.0 / max(n_words, 20)  # densities per 100 words; a very short text counts as 20 words
    sentences = [s for s in re.split(r"(?<=[.?!])\s+|\n+", text) if _WORD.search(s)]
    sent_words = n_words / max(1, len(sentences))
    ended = sum(1 for ln in lines if _SENT_END.search(ln)) / max(1, len(lines))
    return {
        "chars": float(len(text)),
        "words": float(n_words),
        "alpha_frac": alpha / max(1, visible),
        "dup_lines": dup_lines,
        "dup_trigrams": dup_trigrams,
        "caps_frac": caps,
        "urls": float(len(_URL.findall(text))),
        "promo": float(len(_PROMO.findall(text))),
        "weak_promo_per100": len(_WEAK.findall(text)) * per100,
        "symbol_spam": float(len(_SYMBOL_SPAM.findall(text))),
        "numbers_per100": len(_NUMBER.findall(text)) * per100,
        "explain_per100": len(_EXPLAIN.findall(text)) * per100,
        "teach_per100": len(_TEACH.findall(text)) * per100,
        "sentence_words": sent_words,
        "ended_lines": ended,
        "mean_word_len": sum(map(len, words)) / max(1, n_words),
    }


def _ad_penalty(f: dict[str, float]) -> float:
    """0 for clean text, >= 5 for spam. Strong signals count in full up to ~100 words, then per 100 words."""
    strong = 1.5 * f["promo"] + 1.5 * f["urls"] + 1.0 * f["symbol_spam"]
    scale = min(1.0, 100.0 / max(f["words"], 1.0)) ** 0.5  # a long article with one link is not an ad
    return strong * max(scale, 0.25) + 0.15 * f["weak_promo_per100"] + 4.0 * max(0.0, f["caps_frac"] - 0.25)


def heuristic_scores(text: str) -> tuple[float, float, float, float]:
    f = text_features(text)
    ad = _ad_penalty(f)
    advertisement = _clip(5.0 - ad)
    # overall quality: enough text, mostly letters, not repetitive, not shouting, not an ad
    q = 5.0
    q -= 2.0 * max(0.0, 1.0 - f["words"] / 40.0)                    # very short texts
    q -= 4.0 * max(0.0, 0.55 - f["alpha_frac"])                      # symbol / digit soup
    q -= 4.0 * max(0.0, f["dup_lines"] - 0.3)                        # copy-pasted lines
    q -= 4.0 * max(0.0, f["dup_trigrams"] - 0.5)                     # boilerplate / word loops
    q -= 4.0 * max(0.0, f["caps_frac"] - 0.3)                        # shouting
    q -= 0.6 * ad                                                    # spam is low quality
    q -= 0.5 * max(0.0, f["mean_word_len"] - 12.0)                   # gibberish tokens
    # informational: facts (numbers, named quantities), explanatory connectives, well-formed sentences
    structure = min(1.0, f["ended_lines"] + 0.3) if 4 <= f["sentence_words"] <= 60 else 0.4
    info = (1.5 + 1.5 * min(1.0, f["numbers_per100"] / 4.0) + 1.0 * min(1.0, f["explain_per100"] / 2.0)
            + 1.0 * structure - 0.8 * ad - 1.5 * max(0.0, 1.0 - f["words"] / 40.0))
    # educational: teaching markers (steps, solutions, definitions, formulas) on top of information
    edu = (2.0 + 1.75 * min(1.0, f["teach_per100"] / 3.0) + 0.5 * min(1.0, f["explain_per100"] / 2.0)
           + 0.75 * min(1.0, f["numbers_per100"] / 4.0) - 0.8 * ad - 1.5 * max(0.0, 1.0 - f["words"] / 40.0))
    return _clip(q), advertisement, _clip(info), _clip(edu)


class HeuristicRater:
    """The built-in rater: text statistics mapped to 0-5 per axis. Deterministic, ~1 MB of text/s a core.

    * advertisement = 5 - ad penalty. Strong signals (promotional phrases such as "buy now", "click
      here", "free shipping", "limited time"; URLs; ``$$``, ``!!``) cost 1-1.5 each, scaled
      down by sqrt(100 / words) for texts past 100 words (a long article with one link is not an ad);
      weak words a clean text also uses (sale, discount, price, free, % off, ...) cost 0.15 per 100 words;
      more than 25% ALL-CAPS words costs 4 per unit of excess fraction.
    * quality = 5 minus penalties: under 40 words (up to 2), under 55% letters among visible chars,
      over 30% duplicated lines, over 50% repeated word trigrams, over 30% ALL-CAPS words, words
      averaging over 12 chars, and 0.6 x the ad penalty.
    * informational = 1.5 + up to 1.5 for numbers (4 per 100 words saturate) + up to 1 for
      explanatory connectives (because, therefore, which, means, such as, ...) + up to 1 for sentence
      structure (lines ending as sentences, 4-60 words a sentence), minus 0.8 x ad penalty and a
      short-text penalty.
    * educational = 2 + up to 1.75 for teaching markers (solution, step, example, formula, ``=``,
      numbered or bulleted lists, ...) + up to 0.5 for explanations + up to 0.75 for numbers, minus
      the same penalties.

    All clipped to [0, 5]. Clean prose, code, recipes, reports and contracts score >= 3 on every
    axis; "BUY NOW!!! click http://... discount $$$" scores 0 on advertisement and < 2 on quality.
    """

    def rate(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), len(AXES)), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = heuristic_scores(t)
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "heuristic", "version": HEURISTIC_VERSION}


# ---------------------------------------------------------------- fastText


def _one_line(text: str) -> str:
    """fastText reads one example a line: newlines become spaces."""
    return " ".join(text.split())


def expected_scores(labels: Sequence[Sequence[str]], probs: Sequence[np.ndarray]) -> np.ndarray:
    """E[label] per row, from fastText ``predict(k=-1)`` output (labels ``__label__<int>``)."""
    out = np.empty(len(labels), dtype=np.float64)
    for i, (ls, ps) in enumerate(zip(labels, probs, strict=True)):
        vals = np.array([float(lab.removeprefix("__label__")) for lab in ls])
        p = np.clip(np.asarray(ps, dtype=np.float64), 0.0, None)
        out[i] = float((vals * p).sum() / p.sum()) if p.sum() > 0 else float(vals[0])
    return np.clip(out, 0, MAX_SCORE)


class FastTextRater:
    """One fastText model a axis, from ``<dir>/<axis>.bin``."""

    def __init__(self, directory: Union[str, os.PathLike]):
        import fasttext

        self.dir = Path(directory).resolve()
        missing = [a for a in AXES if not (self.dir / f"{a}.bin").is_file()]
        if missing:
            raise FileNotFoundError(f"quality.raters={self.dir}: missing {', '.join(f'{a}.bin' for a in missing)}; "
                                    "make them with `climb-hpc train-raters input=labelled.jsonl output=DIR`")
        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load-time deprecation warning
        self.models = {a: fasttext.load_model(str(self.dir / f"{a}.bin")) for a in AXES}

    def rate(self, texts: Sequence[str]) -> np.ndarray:
        lines = [_one_line(t) for t in texts]
        out = np.empty((len(lines), len(AXES)), dtype=np.float32)
        if not lines:
            return out
        for j, a in enumerate(AXES):
            # the binding's own predict: ``model.predict(str)`` breaks on numpy 2 (np.array(copy=False)) and
            # ``model.predict(list)`` (multilinePredict) gives every label the top label's probability
            preds = [self.models[a].f.predict(line + "\n", -1, 0.0, "strict") for line in lines]
            out[:, j] = expected_scores([[lab for _, lab in p] for p in preds],
                                        [np.array([pr for pr, _ in p]) for p in preds])
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": "fasttext", "dir": str(self.dir),
                "models": {a: os.path.getsize(self.dir / f"{a}.bin") for a in AXES},
                "trained": (json.loads((self.dir / RATERS_JSON).read_text())
                            if (self.dir / RATERS_JSON).is_file() else None)}


def load_rater(spec: Union[str, os.PathLike, None]) -> Rater:
    """``heuristic`` (or null) -> :class:`HeuristicRater`; a folder with the four .bin -> :class:`FastTextRater`."""
    if spec is None or str(spec) in ("", "heuristic"):
        return HeuristicRater()
    return FastTextRater(spec)


# ---------------------------------------------------------------- training


def _score_of(rec: dict[str, Any], axis: str) -> Any:
    scores = rec.get("scores")
    return scores.get(axis) if isinstance(scores, dict) and axis in scores else rec.get(axis)


def read_labelled(path: Union[str, os.PathLike], text_field: str = "text") -> dict[str, list[tuple[int, str]]]:
    """Per axis, (label, one-line text) from a JSONL of ``{"text": ..., "<axis>": 0-5, ...}``.

    Scores may also sit under ``"scores": {...}``; they are rounded to the nearest integer label. A
    record without a score for an axis is left out of that axis only.
    """
    data: dict[str, list[tuple[int, str]]] = {a: [] for a in AXES}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            text = rec.get(text_field)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{n}: no {text_field!r} string")
            for a in AXES:
                s = _score_of(rec, a)
                if s is None:
                    continue
                s = float(s)
                if not 0 <= s <= MAX_SCORE or math.isnan(s):
                    raise ValueError(f"{path}:{n}: {a} = {s} is outside 0-{MAX_SCORE}")
                data[a].append((int(round(s)), _one_line(text)))
    empty = [a for a in AXES if not data[a]]
    if empty:
        raise ValueError(f"{path}: no scores for {', '.join(empty)}; each record needs text and scores "
                         f"{', '.join(AXES)} (0-{MAX_SCORE})")
    return data


def train_raters(input_path: Union[str, os.PathLike], output_dir: Union[str, os.PathLike],
                 text_field: str = "text", **params: Any) -> dict[str, Any]:
    """Train one supervised fastText model a axis; writes ``<axis>.bin`` and ``raters.json`` into ``output_dir``.

    ``params`` override :data:`TRAIN_DEFAULTS` (fastText's ``train_supervised`` arguments). With
    ``thread=1`` and a fixed ``seed`` the models are reproducible.
    """
    import fasttext

    from climb_hpc.rundir import atomic_path, atomic_write_json

    data = read_labelled(input_path, text_field)
    args = {**TRAIN_DEFAULTS, **params}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"input": str(Path(input_path).resolve()), "params": args, "labels": "__label__0..5",
                            "score": "expected label under predict(k=-1)", "axes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for a in AXES:
            train_file = Path(tmp) / f"{a}.txt"
            train_file.write_text("".join(f"__label__{y} {t}\n" for y, t in data[a]), encoding="utf-8")
            t0 = time.perf_counter()
            model = fasttext.train_supervised(input=str(train_file), **args)
            with atomic_path(out / f"{a}.bin") as p:
                model.save_model(str(p))
            info["axes"][a] = {"examples": len(data[a]), "label_counts": dict(sorted(Counter(y for y, _ in data[a]).items())),
                               "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_json(out / RATERS_JSON, info)
    return info
