"""Stage ``quality``: ingest docs -> ``quality/quality.zarr`` [n_docs, n_axes] float32, higher = better.

Columns: the rater's axes, in order (``quality.axes``; by default quality, advertisement (5 = free of ads),
informational, educational, scores 0-5; NVIDIA's CLIMB classifiers, ``quality=nvidia_climb``: quality,
advertisement, informational_value, cultural_value, educational_value, scores -1..5; see
:mod:`climb_hpc.clusters.raters`). The names are recorded in the array's ``axes`` attribute (with ``range``),
``layout.json`` and ``summary.json``: readers take them from there. Rows and tasks are those of the embed layout (``embed/layout.json``):
row r is the r-th document in corpus order, task t writes the rows of embed task t — whole Zarr shards
of ``rows_per_shard`` rows, one writer each — so the rules of :mod:`climb_hpc.embed.store` hold here
too (controller creates the array once, a task deletes and rewrites its own shard files).

Layout under ``<run_dir>/quality/``::

    layout.json               n_docs, axes, shard/chunk rows, task -> rows, the rater (checked on resume)
    quality.zarr/             Zarr v3, float32 [n_docs, n_axes], shards (rows_per_shard, n_axes); attributes
                              axes, range
    stats/task_{t:05d}.json   docs, seconds, docs/s, and ``scores``: the task's per-axis sum / min / max /
                              count >= 3 of the rows it wrote (:func:`score_summary`)
    summary.json              per-axis mean / min / max / fraction >= 3, docs/s (finalize)

finalize reduces the tasks' ``scores`` summaries (O(tasks x axes), however big the corpus: the 1e9 x 4
float32 array is 16 GB at 4 axes) and checks every Zarr shard file exists; a task whose stats lack ``scores`` (made
before they existed) is summarised from its own rows, one task's rows in memory at a time.

Raters (``quality.raters``): ``heuristic`` (built in, default) or a folder of fastText models, one an
axis, named as ``quality.convention`` says (``<axis>.bin`` from ``climb-hpc train-raters``;
``best_model_<axis>.bin`` as NVIDIA released them). A relative folder is resolved against the controller's
working directory when the stage is planned, and tasks use that absolute path.

Memory: a task loads every axis's model at once, so with ``mem_gb: null`` and fastText raters the stage
requests the models' total file size x ``MODEL_MEM_FACTOR`` plus ``quality.mem_margin_gb`` (fastText holds a
.bin's matrices in memory at about their file size; the margin is the task's texts and the interpreter),
rounded up to a whole GB (:func:`models_mem_gb`). NVIDIA's five classifiers are ~6.8 GB each: 37 GB a task.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from omegaconf import DictConfig

from climb_hpc.clusters.raters import Rater, load_rater, models_bytes, rater_from_description, score_range
from climb_hpc.config import section
from climb_hpc.embed import store as embed_store
from climb_hpc.estimate import Inputs, Ledger, Work, rate
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    import zarr

    from climb_hpc.rundir import RunDir

NAME = "quality"
DTYPE = "float32"
LAYOUT_VERSION = 1
#: resident memory of a loaded fastText model per byte of its .bin file (the matrices dominate both)
MODEL_MEM_FACTOR = 1.1


# ---------------------------------------------------------------- paths


@dataclass(frozen=True)
class Outputs:
    """What quality writes under ``<run_dir>/quality/`` (the layout above)."""

    dir: Path

    @property
    def store(self) -> Path:
        return self.dir / "quality.zarr"

    @property
    def layout(self) -> Path:
        return self.dir / "layout.json"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def stats(self, task: int) -> Path:
        return self.dir / "stats" / f"task_{task:05d}.json"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def quality_dir(rd: RunDir) -> Path:
    return outputs(rd).dir


def store_path(rd: RunDir) -> Path:
    return outputs(rd).store


def layout_path(rd: RunDir) -> Path:
    return outputs(rd).layout


def stats_path(rd: RunDir, task: int) -> Path:
    return outputs(rd).stats(task)


def summary_path(rd: RunDir) -> Path:
    return outputs(rd).summary


def open_quality(rd: RunDir) -> zarr.Array:
    """The scores [n_docs, n_axes] float32, rows in corpus order (ids: ``embed.load_id_to_row``); the column
    names are its ``axes`` attribute."""
    import zarr

    return zarr.open_array(str(store_path(rd)), mode="r")


# ---------------------------------------------------------------- config


def _q(cfg: DictConfig) -> DictConfig:
    return section(cfg, "quality")


def rater_spec(cfg: DictConfig) -> str:
    """``heuristic`` or the absolute path of the fastText raters folder."""
    spec = _q(cfg).get("raters") or "heuristic"
    return "heuristic" if str(spec) == "heuristic" else str(Path(str(spec)).expanduser().resolve())


def make_rater(cfg: DictConfig) -> Rater:
    """The rater ``quality.{raters,convention,axes,score}`` configure (loads its models)."""
    q = _q(cfg)
    axes = list(q.axes) if q.axes else None
    return load_rater(rater_spec(cfg), q.convention, axes, q.score)


def models_mem_gb(cfg: DictConfig) -> Optional[int]:
    """GB a task needs for the fastText models it loads (all axes at once) plus ``quality.mem_margin_gb``, from
    the files' sizes; None for the heuristic rater, or when a model file is missing (``prepare`` then refuses
    the stage, naming it)."""
    spec = rater_spec(cfg)
    if spec == "heuristic":
        return None
    q = _q(cfg)
    try:
        size = models_bytes(spec, q.convention, list(q.axes) if q.axes else None)
    except (FileNotFoundError, ValueError):
        return None
    return math.ceil(MODEL_MEM_FACTOR * size / 2**30 + float(q.mem_margin_gb))


def make_layout(embed_layout: dict[str, Any], rater: dict[str, Any], axes: list[str]) -> dict[str, Any]:
    """The embed layout's rows and tasks, one float32 column an axis."""
    return {
        "version": LAYOUT_VERSION,
        "n_docs": embed_layout["n_docs"],
        "axes": list(axes),
        "dtype": DTYPE,
        "rows_per_shard": embed_layout["rows_per_shard"],
        "chunk_rows": embed_layout["chunk_rows"],
        "n_shards": embed_layout["n_shards"],
        "tasks": embed_layout["tasks"],
        "rater": rater,
    }


# ---------------------------------------------------------------- the array


def _want(layout: dict[str, Any]) -> dict[str, Any]:
    k = len(layout["axes"])
    return {"shape": (layout["n_docs"], k), "dtype": np.dtype(DTYPE), "shards": (layout["rows_per_shard"], k),
            "chunks": (layout["chunk_rows"], k)}


def ensure_array(path: Path, layout: dict[str, Any]) -> None:
    """Create the array once (a folder renamed into place) or check that an existing one matches."""
    import zarr

    want = _want(layout)
    if path.exists():
        arr = zarr.open_array(str(path), mode="r")
        have = {"shape": tuple(arr.shape), "dtype": arr.dtype, "shards": tuple(arr.shards or ()),
                "chunks": tuple(arr.chunks)}
        if have != want:
            raise RuntimeError(f"{path} exists with another layout ({have} != {want}); remove it and "
                               f"rm -r <run_dir>/_done/{NAME} to rate again")
        return
    with atomic_path(path) as tmp:
        zarr.create_array(store=str(tmp), shape=want["shape"], chunks=want["chunks"], shards=want["shards"],
                          dtype=DTYPE, fill_value=float("nan"), zarr_format=3, dimension_names=("doc", "axis"),
                          attributes={"axes": list(layout["axes"]), "range": list(score_range(layout["rater"])),
                                      "higher_is_better": True,
                                      "rows": "corpus order, as embed/embeddings.zarr"})


def write_rows(path: Path, layout: dict[str, Any], a: int, b: int, values: np.ndarray) -> None:
    """Write rows [a, b) — whole shards owned by one task — after deleting their shard files."""
    import zarr

    R, n = layout["rows_per_shard"], layout["n_docs"]
    if a % R or (b % R and b != n) or not 0 <= a < b <= n:
        raise ValueError(f"rows [{a}, {b}) are not whole shards of {R} rows (n_docs {n})")
    if values.shape != (b - a, len(layout["axes"])):
        raise ValueError(f"rows [{a}, {b}): values of shape {values.shape}")
    arr = zarr.open_array(str(path), mode="r+")
    for f in embed_store.shard_files(path, arr, a, b):
        f.unlink(missing_ok=True)
    arr[a:b] = values.astype(np.float32, copy=False)


# ---------------------------------------------------------------- controller side


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    """One task per embed task (same rows): writes layout.json and creates the array, once; a stored layout
    planned with other raters or another corpus is refused."""
    rater = make_rater(cfg)  # fails here, in the controller, on a bad raters folder
    layout = make_layout(embed_store.load_layout(rd), rater.describe(), list(rater.axes))
    stored = read_json(layout_path(rd))
    if stored is not None and stored != layout:
        raise RuntimeError(
            f"{layout_path(rd)} was planned differently ({', '.join(embed_store.layout_diff(stored, layout))} "
            f"differ): the corpus or the raters changed. Use a new run folder, or remove {quality_dir(rd)} "
            f"and {rd.marker_dir(NAME)} to rate again.")
    quality_dir(rd).mkdir(parents=True, exist_ok=True)
    ensure_array(store_path(rd), layout)
    if stored is None:
        atomic_write_json(layout_path(rd), layout)


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    return len(load_layout(rd)["tasks"])


def reads(cfg: DictConfig) -> tuple[str, ...]:
    return ("ingest", "embed")  # the docs, in the rows and tasks of the embed layout


def resources(cfg: DictConfig) -> Resources:
    """The config's; ``mem_gb: null`` with fastText raters asks for :func:`models_mem_gb`."""
    return Resources.from_config(_q(cfg), mem_gb=models_mem_gb(cfg))


def load_layout(rd: RunDir) -> dict[str, Any]:
    layout = read_json(layout_path(rd))
    if layout is None:
        raise FileNotFoundError(f"{layout_path(rd)} is missing: the quality stage has not been planned")
    return layout


# ---------------------------------------------------------------- a task


def rate_rows(rd: RunDir, layout: dict[str, Any], a: int, b: int, batch_size: int) -> np.ndarray:
    rater = rater_from_description(layout["rater"])
    if rater.describe() != layout["rater"]:
        raise RuntimeError(f"quality: the raters changed since the stage was planned ({rater.describe()} != "
                           f"{layout['rater']}); use a new run folder")
    texts = embed_store.read_rows(rd, embed_store.load_layout(rd), a, b, columns=("text",)).column("text").to_pylist()
    parts = [rater.rate(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    scores = np.concatenate(parts) if parts else np.empty((0, len(layout["axes"])), np.float32)
    lo, hi = score_range(layout["rater"])
    if not np.isfinite(scores).all() or scores.min(initial=lo) < lo or scores.max(initial=hi) > hi:
        raise RuntimeError(f"quality rows [{a}, {b}): scores outside [{lo}, {hi}]")
    return scores


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    t0 = time.perf_counter()
    layout = load_layout(rd)
    if not 0 <= task < len(layout["tasks"]):
        raise IndexError(f"quality has {len(layout['tasks'])} tasks; there is no task {task}")
    a, b = layout["tasks"][task]
    scores = rate_rows(rd, layout, a, b, max(1, int(_q(cfg).batch_size)))
    t_rate = time.perf_counter() - t0
    write_rows(store_path(rd), layout, a, b, scores)
    secs = time.perf_counter() - t0
    stats = {"task": task, "rows": [a, b], "docs": b - a, "seconds": round(t_rate, 4), "task_seconds": round(secs, 4),
             "docs_per_s": round((b - a) / max(t_rate, 1e-9), 1), "rater": layout["rater"]["kind"],
             "scores": score_summary(scores)}
    atomic_write_json(stats_path(rd, task), stats)
    print(f"quality task {task}: rows [{a}, {b}) rated in {t_rate:.2f} s ({stats['docs_per_s']:,.0f} docs/s, "
          f"{layout['rater']['kind']})", flush=True)


# ---------------------------------------------------------------- finalize


def score_summary(x: np.ndarray) -> dict[str, Any]:
    """What finalize needs of some rows of scores, per axis: rows, float64 sum, min, max, count >= 3.

    A task summarises the rows it writes, so finalize never reads the array (sums of summaries are the
    summary of the union)."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise RuntimeError(f"quality: {int((~np.isfinite(x)).any(1).sum())} rows were never written")
    k = x.shape[1]
    empty = len(x) == 0
    return {"rows": len(x), "sum": x.astype(np.float64).sum(0).tolist(),
            "min": [float("inf")] * k if empty else x.min(0).astype(float).tolist(),
            "max": [float("-inf")] * k if empty else x.max(0).astype(float).tolist(),
            "ge_3": (x >= 3).sum(0).astype(int).tolist()}


def merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of the union of the parts' rows (in task order: the float64 sums are reproducible)."""
    k = len(parts[0]["sum"])
    out = {"rows": 0, "sum": [0.0] * k, "min": [float("inf")] * k, "max": [float("-inf")] * k, "ge_3": [0] * k}
    for p in parts:
        out["rows"] += p["rows"]
        out["sum"] = [s + v for s, v in zip(out["sum"], p["sum"], strict=True)]
        out["min"] = [min(s, v) for s, v in zip(out["min"], p["min"], strict=True)]
        out["max"] = [max(s, v) for s, v in zip(out["max"], p["max"], strict=True)]
        out["ge_3"] = [s + v for s, v in zip(out["ge_3"], p["ge_3"], strict=True)]
    return out


def task_summary(arr: Any, rows: list[int], stats: dict[str, Any]) -> dict[str, Any]:
    """A task's score summary: from its stats when they carry one for these rows, else from its rows."""
    s = stats.get("scores")
    if s is not None and stats.get("rows") == rows and s["rows"] == rows[1] - rows[0]:
        return s
    return score_summary(arr[rows[0]:rows[1]])


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """Check every shard file is written and every task summarised in-range scores; write summary.json.

    Memory: O(tasks x axes) for the summaries (plus one task's rows for a task without one)."""
    import zarr

    layout = load_layout(rd)
    path = store_path(rd)
    arr = zarr.open_array(str(path), mode="r")
    missing = [f for f in embed_store.shard_files(path, arr, 0, layout["n_docs"]) if not f.exists()]
    if missing:
        raise RuntimeError(f"quality: {len(missing)} Zarr shard(s) missing from {path}; rerun their tasks")
    stats = [read_json(stats_path(rd, t), default={}) for t in range(len(layout["tasks"]))]
    total = merge_summaries([task_summary(arr, rows, s) for rows, s in zip(layout["tasks"], stats, strict=True)])
    if total["rows"] != layout["n_docs"]:
        raise RuntimeError(f"quality: the tasks summarised {total['rows']} rows of {layout['n_docs']}")
    n = max(1, total["rows"])

    def per_axis(values: list[float], dtype: type = np.float32) -> dict[str, float]:
        """Rounded as before the summaries existed: scores' statistics in float32, fractions in float64."""
        return dict(zip(layout["axes"], np.round(np.asarray(values, dtype=dtype), 4).tolist(), strict=True))

    secs = sum(s.get("seconds", 0.0) for s in stats)
    summary = {
        "n_docs": layout["n_docs"], "axes": list(layout["axes"]), "range": list(score_range(layout["rater"])),
        "tasks": len(layout["tasks"]), "rater": layout["rater"],
        "mean": per_axis([v / n for v in total["sum"]]), "min": per_axis(total["min"]),
        "max": per_axis(total["max"]), "frac_ge_3": per_axis([v / n for v in total["ge_3"]], np.float64),
        "rate_seconds": round(secs, 3), "docs_per_s": round(layout["n_docs"] / max(secs, 1e-9), 1),
        "store": str(path.relative_to(rd.path)),
    }
    atomic_write_json(summary_path(rd), summary)
    print("quality: " + json.dumps({k: summary[k] for k in ("n_docs", "mean", "docs_per_s")}), flush=True)


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """The raters over every doc, one task an embed task, one Python thread each."""
    from climb_hpc.embed.stage import estimate_tasks

    return Work("text (CPU)", [estimate_tasks(cfg, x, led)],
                core_s=x.tokens / rate(cfg, x, "quality_tokens_s", led, "tokens/s a core"))


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, prepare=prepare, finalize=finalize,
              reads=reads, outputs=outputs, estimate=estimate)
