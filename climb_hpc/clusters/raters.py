"""Document quality raters: one score a document and axis, HIGHER = BETTER.

The default axes (the built-in heuristic and ``climb-hpc train-raters`` models), in this order (the columns of
``quality/quality.zarr``)::

    quality        overall quality of the text
    advertisement  freedom from advertising: 5 = no ads / spam, 0 = pure promotion
    informational  how much factual information the text carries
    educational    how much it teaches (explanations, worked steps, definitions)

The axes are a config value (``quality.axes``); the quality store records the ones it holds (its Zarr
``axes`` attribute, ``layout.json`` and ``summary.json``), and readers take them from there.

Two raters:

* :class:`FastTextRater`: one fastText classifier per axis, read under a :class:`Convention`
  (``quality.convention``) that fixes the file names, the text preprocessing, the label set and how a score
  comes from the predicted labels:

  - ``climb_hpc`` (default; what :func:`train_raters` / ``climb-hpc train-raters`` writes): ``<axis>.bin``,
    text on one line (whitespace runs -> one space, case kept), labels ``__label__0`` ... ``__label__5``,
    score = the expected label under the predicted distribution over all labels (``predict(k=-1)``), a
    continuous value in [0, 5].
  - ``nvidia_climb``: NVIDIA's released Nemotron-CLIMB classifiers (Hugging Face
    ``nvidia/nemotron-climb-fasttext-classifiers``: ``best_model_{quality,advertisement,informational_value,
    cultural_value,educational_value}.bin``), read as NeMo Curator's CLIMB recipe does
    (``tutorials/text/nemotron-climb-data-curation/3_prune.py`` in github.com/NVIDIA-NeMo/Curator, commits
    df61be678 .. 2c20d6304): :func:`nvidia_preprocess` (each newline -> ``<newline>``, a space either side of
    ``. ! ? , ' / ( )``, lowercased, whitespace runs -> one space), labels exactly ``__label__-1`` ...
    ``__label__5`` (the recipe asserts this set), score = the TOP label (``model.predict([text])``, k=1) as a
    number in {-1, ..., 5}. ``quality.score=expected`` gives the expected label instead (not the recipe's).

* :class:`HeuristicRater`: cheap, deterministic text statistics on the four default axes, for runs without
  trained raters (see its docstring for the exact rules).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import numpy as np

AXES: tuple[str, ...] = ("quality", "advertisement", "informational", "educational")
#: the axes of NVIDIA's released classifiers, in their model card's order (quality, advertisement,
#: informational value, cultural value, educational value)
NVIDIA_AXES: tuple[str, ...] = ("quality", "advertisement", "informational_value", "cultural_value", "educational_value")
MAX_SCORE = 5
HEURISTIC_VERSION = 1
RATERS_JSON = "raters.json"
SCORES = ("expected", "argmax")

#: fastText training parameters of ``train-raters`` (any other ``train_supervised`` argument may be given).
#: ``bucket`` (word n-gram hash rows) is 200k rather than fastText's 2M: a model is bucket x dim floats,
#: 51 MB instead of 512 MB at dim 64, and allocating it dominates training time on small label sets.
TRAIN_DEFAULTS: dict[str, Any] = {"epoch": 25, "lr": 0.5, "wordNgrams": 2, "dim": 64, "minCount": 1,
                                  "bucket": 200_000, "loss": "softmax", "thread": 1, "seed": 0, "verbose": 0}


def one_line(text: str) -> str:
    """The ``climb_hpc`` preprocessing: fastText reads one example a line, so whitespace runs become one space."""
    return " ".join(text.split())


#: the characters NeMo Curator's CLIMB recipe spaces out (the same class as its regex, written without escapes)
_NVIDIA_PUNCT = re.compile(r"([.!?,'/()])")


def nvidia_preprocess(text: str) -> str:
    r"""The text NVIDIA's CLIMB classifiers read, as NeMo Curator's recipe makes it (``preprocess_text`` in
    ``tutorials/text/nemotron-climb-data-curation/3_prune.py``), in the same order:

    1. every ``\n`` becomes the token ``<newline>`` (not merged: a blank line is ``<newline><newline>``; no
       space is added, so ``a\nb`` is the one token ``a<newline>b``; ``\r`` stays whitespace);
    2. a space before and after each of ``. ! ? , ' / ( )``;
    3. ``str.lower()`` (Unicode-aware: ``É`` -> ``é``);
    4. runs of whitespace (``str.split()``: spaces, tabs, ``\r``, Unicode spaces) become one space, ends trimmed.
    """
    spaced = _NVIDIA_PUNCT.sub(r" \1 ", text.replace("\n", "<newline>"))
    return " ".join(spaced.lower().split())


@dataclass(frozen=True)
class Convention:
    """How a folder of fastText raters is laid out, what text they read and what their labels mean."""

    name: str
    axes: tuple[str, ...]             # the axes when ``quality.axes`` is null
    labels: tuple[int, ...]           # the label values (``__label__<v>``)
    exact_labels: bool                # a model must carry every label (else: any subset, as small data gives)
    score: str                        # the default score mapping: expected | argmax
    files: tuple[str, ...]            # file name patterns of an axis's model, the first that exists is used
    preprocess: Callable[[str], str]

    @property
    def range(self) -> tuple[int, int]:
        return min(self.labels), max(self.labels)

    def model_file(self, directory: Path, axis: str) -> Optional[Path]:
        return next((directory / f.format(axis=axis) for f in self.files if (directory / f.format(axis=axis)).is_file()),
                    None)

    def file_names(self, axis: str) -> str:
        return " or ".join(f.format(axis=axis) for f in self.files)


CONVENTIONS: dict[str, Convention] = {
    "climb_hpc": Convention("climb_hpc", AXES, tuple(range(0, MAX_SCORE + 1)), False, "expected",
                            ("{axis}.bin",), one_line),
    # NeMo Curator's recipe: file names from its README / e2e.sh (best_model_<axis>.bin); labels and the top-label
    # score from 3_prune.py's FastTextQualityLabeler; <axis>.bin is accepted too
    "nvidia_climb": Convention("nvidia_climb", NVIDIA_AXES, tuple(range(-1, MAX_SCORE + 1)), True, "argmax",
                               ("best_model_{axis}.bin", "{axis}.bin"), nvidia_preprocess),
}


def convention(name: Optional[str]) -> Convention:
    c = CONVENTIONS.get(name or "climb_hpc")
    if c is None:
        raise ValueError(f"quality.convention={name}: choose one of {', '.join(CONVENTIONS)}")
    return c


def score_range(rater: dict[str, Any]) -> tuple[int, int]:
    """(lowest, highest) score of a rater, from its :meth:`Rater.describe` (heuristic: 0-5)."""
    return convention(rater.get("convention")).range


class Rater(Protocol):
    axes: tuple[str, ...]

    def rate(self, texts: Sequence[str]) -> np.ndarray:
        """Scores [len(texts), len(self.axes)] float32, columns in ``self.axes`` order."""

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

    def __init__(self, axes: Optional[Sequence[str]] = None):
        self.axes = tuple(axes) if axes else AXES
        unknown = [a for a in self.axes if a not in AXES]
        if unknown or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"quality.axes={list(self.axes)}: the heuristic rater rates {', '.join(AXES)} "
                             "(each at most once); other axes need fastText raters (quality.raters=DIR)")
        self._cols = [AXES.index(a) for a in self.axes]

    def rate(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), len(AXES)), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = heuristic_scores(t)
        return out[:, self._cols]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "heuristic", "version": HEURISTIC_VERSION}
        return d if self.axes == AXES else {**d, "axes": list(self.axes)}


# ---------------------------------------------------------------- fastText


def label_value(label: str) -> int:
    """``__label__-1`` -> -1."""
    return int(label.removeprefix("__label__"))


def expected_scores(labels: Sequence[Sequence[str]], probs: Sequence[np.ndarray],
                    lo: float = 0, hi: float = MAX_SCORE) -> np.ndarray:
    """E[label] per row, from fastText ``predict(k=-1)`` output (labels ``__label__<int>``), clipped to [lo, hi]."""
    out = np.empty(len(labels), dtype=np.float64)
    for i, (ls, ps) in enumerate(zip(labels, probs, strict=True)):
        vals = np.array([float(label_value(lab)) for lab in ls])
        p = np.clip(np.asarray(ps, dtype=np.float64), 0.0, None)
        out[i] = float((vals * p).sum() / p.sum()) if p.sum() > 0 else float(vals[0])
    return np.clip(out, lo, hi)


def model_files(directory: Union[str, os.PathLike], conv: Convention, axes: Sequence[str]) -> dict[str, Path]:
    """Axis -> its model file; FileNotFoundError naming every missing file and how to get them."""
    d = Path(directory).expanduser().resolve()
    found = {a: conv.model_file(d, a) for a in axes}
    missing = [conv.file_names(a) for a, f in found.items() if f is None]
    if missing:
        how = ("download them from https://huggingface.co/nvidia/nemotron-climb-fasttext-classifiers (docs/quality.md)"
               if conv.name == "nvidia_climb" else
               "make them with `climb-hpc train-raters input=labelled.jsonl output=DIR`")
        raise FileNotFoundError(f"quality.raters={d} (convention {conv.name}): missing {'; '.join(missing)}; {how}")
    return {a: f for a, f in found.items() if f is not None}


class FastTextRater:
    """One fastText model a axis, read under a :class:`Convention` (see the module docstring)."""

    def __init__(self, directory: Union[str, os.PathLike], convention_name: str = "climb_hpc",
                 axes: Optional[Sequence[str]] = None, score: Optional[str] = None):
        import fasttext

        self.conv = convention(convention_name)
        self.axes = tuple(axes) if axes else self.conv.axes
        if len(set(self.axes)) != len(self.axes):
            raise ValueError(f"quality.axes={list(self.axes)}: an axis is named twice")
        self.score = score or self.conv.score
        if self.score not in SCORES:
            raise ValueError(f"quality.score={self.score}: choose one of {', '.join(SCORES)}")
        self.dir = Path(directory).expanduser().resolve()
        self.files = model_files(self.dir, self.conv, self.axes)
        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load-time deprecation warning
        self.models = {a: fasttext.load_model(str(f)) for a, f in self.files.items()}
        for a, m in self.models.items():
            self._check_labels(a, m.labels)

    def _check_labels(self, axis: str, labels: Sequence[str]) -> None:
        want = {f"__label__{v}" for v in self.conv.labels}
        have = set(labels)
        if have - want or (self.conv.exact_labels and have != want):
            raise ValueError(f"{self.files[axis]}: labels {sorted(have, key=label_value)} are not the "
                             f"{self.conv.name} convention's {sorted(want, key=label_value)}; set quality.convention "
                             f"to the convention these models were trained under ({', '.join(CONVENTIONS)})")

    def _column(self, axis: str, lines: Sequence[str]) -> np.ndarray:
        # the binding's own predict: ``model.predict(str)`` breaks on numpy 2 (np.array(copy=False)) and
        # ``model.predict(list)`` (multilinePredict) gives every label the top label's probability. The line
        # ends with "\n" as fastText's Python predict makes it.
        f = self.models[axis].f
        if self.score == "argmax":  # k=1: the label NeMo Curator's recipe takes (model.predict([text])[0][0][0])
            return np.array([label_value(f.predict(line + "\n", 1, 0.0, "strict")[0][1]) for line in lines],
                            dtype=np.float64)
        preds = [f.predict(line + "\n", -1, 0.0, "strict") for line in lines]
        return expected_scores([[lab for _, lab in p] for p in preds], [np.array([pr for pr, _ in p]) for p in preds],
                               *self.conv.range)

    def rate(self, texts: Sequence[str]) -> np.ndarray:
        lines = [self.conv.preprocess(t) for t in texts]
        out = np.empty((len(lines), len(self.axes)), dtype=np.float32)
        if lines:
            for j, a in enumerate(self.axes):
                out[:, j] = self._column(a, lines)
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "fasttext", "dir": str(self.dir),
                             "models": {a: os.path.getsize(f) for a, f in self.files.items()},
                             "trained": (json.loads((self.dir / RATERS_JSON).read_text())
                                         if (self.dir / RATERS_JSON).is_file() else None)}
        if (self.conv.name, self.axes, self.score) != ("climb_hpc", AXES, "expected"):  # (older layouts lack these)
            d.update(convention=self.conv.name, axes=list(self.axes), score=self.score,
                     files={a: f.name for a, f in self.files.items()})
        return d


def load_rater(spec: Union[str, os.PathLike, None], convention_name: Optional[str] = None,
               axes: Optional[Sequence[str]] = None, score: Optional[str] = None) -> Rater:
    """``heuristic`` (or null) -> :class:`HeuristicRater`; a folder of fastText models -> :class:`FastTextRater`."""
    if spec is None or str(spec) in ("", "heuristic"):
        if (convention_name or "climb_hpc") != "climb_hpc":
            raise ValueError(f"quality.convention={convention_name} reads fastText models: set quality.raters to "
                             "the folder holding them (docs/quality.md)")
        return HeuristicRater(axes)
    return FastTextRater(spec, convention_name or "climb_hpc", axes, score)


def rater_from_description(d: dict[str, Any]) -> Rater:
    """The rater a :meth:`Rater.describe` (as stored in the quality layout) was made by."""
    return load_rater(d.get("dir") or "heuristic", d.get("convention"), d.get("axes"), d.get("score"))


def models_bytes(directory: Union[str, os.PathLike], convention_name: Optional[str] = None,
                 axes: Optional[Sequence[str]] = None) -> int:
    """The total size of the model files a :class:`FastTextRater` would load (FileNotFoundError if one is missing)."""
    conv = convention(convention_name)
    return sum(f.stat().st_size for f in model_files(directory, conv, tuple(axes) if axes else conv.axes).values())


# ---------------------------------------------------------------- training


def _score_of(rec: dict[str, Any], axis: str) -> Any:
    scores = rec.get("scores")
    return scores.get(axis) if isinstance(scores, dict) and axis in scores else rec.get(axis)


def read_labelled(path: Union[str, os.PathLike], text_field: str = "text", convention_name: Optional[str] = None,
                  axes: Optional[Sequence[str]] = None) -> dict[str, list[tuple[int, str]]]:
    """Per axis, (label, preprocessed text) from a JSONL of ``{"text": ..., "<axis>": score, ...}``.

    Scores may also sit under ``"scores": {...}``; they are rounded to the nearest integer label and must lie in
    the convention's range (0-5; -1-5 for ``nvidia_climb``). The text is preprocessed as the convention's raters
    read it. A record without a score for an axis is left out of that axis only.
    """
    conv = convention(convention_name)
    axes = tuple(axes) if axes else conv.axes
    lo, hi = conv.range
    data: dict[str, list[tuple[int, str]]] = {a: [] for a in axes}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            text = rec.get(text_field)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{n}: no {text_field!r} string")
            for a in axes:
                s = _score_of(rec, a)
                if s is None:
                    continue
                s = float(s)
                if not lo <= s <= hi or math.isnan(s):
                    raise ValueError(f"{path}:{n}: {a} = {s} is outside {lo}-{hi}")
                data[a].append((int(round(s)), conv.preprocess(text)))
    empty = [a for a in axes if not data[a]]
    if empty:
        raise ValueError(f"{path}: no scores for {', '.join(empty)}; each record needs text and scores "
                         f"{', '.join(axes)} ({lo}-{hi})")
    if conv.exact_labels:
        short = {a: sorted(set(conv.labels) - {y for y, _ in data[a]}) for a in axes}
        short = {a: m for a, m in short.items() if m}
        if short:
            raise ValueError(f"{path}: the {conv.name} convention needs every label {conv.range[0]}..{conv.range[1]} "
                             f"on every axis; missing {short}")
    return data


def train_raters(input_path: Union[str, os.PathLike], output_dir: Union[str, os.PathLike],
                 text_field: str = "text", convention_name: Optional[str] = None,
                 axes: Optional[Sequence[str]] = None, **params: Any) -> dict[str, Any]:
    """Train one supervised fastText model a axis into ``output_dir`` (the convention's file names, default
    ``<axis>.bin``; ``best_model_<axis>.bin`` for ``nvidia_climb``) and write ``raters.json``.

    ``params`` override :data:`TRAIN_DEFAULTS` (fastText's ``train_supervised`` arguments). With
    ``thread=1`` and a fixed ``seed`` the models are reproducible.
    """
    import fasttext

    from climb_hpc.rundir import atomic_path, atomic_write_json

    conv = convention(convention_name)
    data = read_labelled(input_path, text_field, conv.name, axes)
    args = {**TRAIN_DEFAULTS, **params}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"input": str(Path(input_path).resolve()), "params": args, "convention": conv.name,
                            "labels": f"__label__{conv.range[0]}..{conv.range[1]}",
                            "score": ("expected label under predict(k=-1)" if conv.score == "expected"
                                      else "top label, predict(k=1)"), "axes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for a, rows in data.items():
            train_file = Path(tmp) / f"{a}.txt"
            train_file.write_text("".join(f"__label__{y} {t}\n" for y, t in rows), encoding="utf-8")
            t0 = time.perf_counter()
            model = fasttext.train_supervised(input=str(train_file), **args)
            with atomic_path(out / conv.files[0].format(axis=a)) as p:
                model.save_model(str(p))
            info["axes"][a] = {"examples": len(rows), "label_counts": dict(sorted(Counter(y for y, _ in rows).items())),
                               "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_json(out / RATERS_JSON, info)
    return info
