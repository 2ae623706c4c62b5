"""Stage ``embed``: ingest doc shards -> ``embed/embeddings.zarr`` [n_docs, dim] float16, one array task per
``shards_per_task`` Zarr shards.

Layout under ``<run_dir>/embed/``::

    layout.json                  rows: n_docs, dim, shard/chunk rows, ingest shard offsets, task -> rows
                                 (written once by prepare in the controller, checked on resume)
    embeddings.zarr/             Zarr v3, sharding codec, created once by the controller
    ids/task_{t:05d}.parquet     (id, row) of the task's rows
    stats/task_{t:05d}.json      docs, tokens, seconds, docs/s, tokens/s, padding, encoder
    summary.json                 n_docs, dim, model, tokens, docs/s, tokens/s (finalize)

Tasks: ``ceil(n_docs / (rows_per_shard * shards_per_task))``. Task t owns global rows
``[t * rows_per_shard * shards_per_task, ...)`` — whole Zarr shards that no other task writes (the
last one may be partial and only the last task writes it); its rows may span two ingest shards.
A killed task leaves no marker (the controller writes markers after ``run`` returns); its rerun
deletes and rewrites its own shard files, so the array ends up identical to an uninterrupted run.

Sizing: a task should run minutes, not seconds (each one loads the model). MiniLM on 2 CPU threads
embeds ~30-40 docs/s of the real corpus, so the default 4096-row task takes ~2 min; stella on a GPU
is 100x faster and ``configs/embed/stella_400m.yaml`` gives each task 16 x 16384 rows.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
from omegaconf import DictConfig

from climb_hpc.config import section
from climb_hpc.corpus import doc_shard_paths
from climb_hpc.embed import store
from climb_hpc.embed.store import NAME
from climb_hpc.estimate import Inputs, Ledger, Work, safetensors_params
from climb_hpc.rundir import atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage, stage_resources

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir


def _e(cfg: DictConfig) -> DictConfig:
    return section(cfg, "embed", "minilm")


def encoder_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The ``Encoder`` arguments from ``cfg.embed``."""
    e = _e(cfg)
    return {
        "name_or_path": str(e.model),
        "backend": str(e.backend),
        "max_length": int(e.max_length),
        "batch_size": int(e.batch_size),
        "token_budget": e.get("token_budget"),
        "sort_window": int(e.sort_window),
        "loader_workers": int(e.loader_workers),
        "dtype": str(e.dtype),
        "device": str(e.device),
        "pooling": str(e.pooling),
        "normalize": bool(e.normalize),
        "projection": e.get("projection"),
        "trust_remote_code": bool(e.trust_remote_code),
        "offline": bool(e.offline),
    }


def _layout_encoder(cfg: DictConfig) -> dict[str, Any]:
    """What the embeddings depend on (beyond rounding): recorded in layout.json and checked on resume."""
    k = encoder_kwargs(cfg)
    return {"model": k["name_or_path"], **{key: k[key] for key in ("backend", "max_length", "pooling", "normalize",
                                                                    "projection")}}


# ---------------------------------------------------------------- controller side


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    """Plan the rows (from Parquet metadata only), write layout.json and create the array, once; a stored
    layout planned with other settings is refused."""
    from climb_hpc.embed.encoder import model_dim

    e = _e(cfg)
    shards = [(p.name, pq.read_metadata(p).num_rows) for p in doc_shard_paths(rd)]
    k = encoder_kwargs(cfg)
    dim = int(e.get("dim") or model_dim(k["name_or_path"], backend=k["backend"], projection=k["projection"],
                                        trust_remote_code=k["trust_remote_code"], offline=k["offline"]))
    layout = store.make_layout(shards, dim, int(e.rows_per_shard), int(e.chunk_rows),
                               int(e.shards_per_task), _layout_encoder(cfg))
    stored = read_json(store.layout_path(rd))
    if stored is not None and stored != layout:
        raise RuntimeError(
            f"{store.layout_path(rd)} was planned differently ({', '.join(store.layout_diff(stored, layout))} "
            "differ): the corpus or the embed settings changed. Use a new run folder, or remove "
            f"{store.embed_dir(rd)} and {rd.marker_dir(NAME)} to re-embed."
        )
    store.embed_dir(rd).mkdir(parents=True, exist_ok=True)
    store.ensure_array(store.store_path(rd), layout)
    if stored is None:
        atomic_write_json(store.layout_path(rd), layout)


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    return len(store.load_layout(rd)["tasks"])


def reads(cfg: DictConfig) -> tuple[str, ...]:
    return ("ingest",)


def resources(cfg: DictConfig) -> Resources:
    return Resources.from_config(_e(cfg))


def task_threads(cfg: DictConfig) -> int:
    """Torch threads of a task: the task's CPUs (cluster overrides included), at most the CPUs it may use.

    Fixed by config rather than by the environment, so every executor computes with the same thread
    count (CPU GEMMs may round differently with another count)."""
    cpus = stage_resources(cfg, STAGE).cpus
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(int(cpus), usable))


# ---------------------------------------------------------------- a task


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    import torch

    from climb_hpc.embed.encoder import get_encoder

    t0 = time.perf_counter()
    layout = store.load_layout(rd)
    if not 0 <= task < len(layout["tasks"]):
        raise IndexError(f"embed has {len(layout['tasks'])} tasks; there is no task {task}")
    a, b = layout["tasks"][task]
    torch.set_num_threads(task_threads(cfg))
    table = store.read_rows(rd, layout, a, b)
    t_read = time.perf_counter() - t0
    enc = get_encoder(**encoder_kwargs(cfg))
    if enc.dim != layout["dim"]:
        raise RuntimeError(f"embed: the model gives {enc.dim}-d vectors but the array was planned for {layout['dim']}; "
                           "set embed.dim or check embed.projection")
    t_load = time.perf_counter() - t0 - t_read
    emb, st = enc.encode(table.column("text").to_pylist(), progress=bool(cfg.progress),
                         desc=f"embed task {task}")
    if not np.isfinite(emb).all():
        raise RuntimeError(f"embed task {task}: the model produced non-finite embeddings")
    w0 = time.perf_counter()
    store.write_rows(store.store_path(rd), layout, a, b, emb.astype(np.float16))
    store.write_ids(store.ids_path(rd, task), table.column("id").combine_chunks(), a)
    t_write = time.perf_counter() - w0
    stats = {"task": task, "rows": [a, b], **st.as_dict(), "read_seconds": round(t_read, 4),
             "load_seconds": round(t_load, 4), "write_seconds": round(t_write, 4),
             "task_seconds": round(time.perf_counter() - t0, 4), "encoder": enc.describe()}
    atomic_write_json(store.stats_path(rd, task), stats)
    print(f"embed task {task}: rows [{a}, {b}) {st.docs} docs, {st.tokens:,} tokens in {st.seconds:.2f} s "
          f"({stats['docs_per_s']:,.1f} docs/s, {stats['tokens_per_s']:,.0f} tokens/s, padding efficiency "
          f"{stats['padding_efficiency']:.2f}) on {enc.device} {stats['encoder']['dtype']} x{stats['encoder']['threads']} "
          f"threads; read {t_read:.2f} s, load {t_load:.2f} s, write {t_write:.2f} s", flush=True)


# ---------------------------------------------------------------- finalize


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """Check every row 0..n_docs-1 is written exactly once (the tasks' stats; no id is read here), write
    summary.json."""
    import zarr

    layout = store.load_layout(rd)
    path = store.store_path(rd)
    arr = zarr.open_array(str(path), mode="r")
    missing = [str(f.relative_to(path)) for f in store.shard_files(path, arr, 0, layout["n_docs"]) if not f.exists()]
    if missing:
        raise RuntimeError(f"embed: {len(missing)} Zarr shard(s) missing from {path}, e.g. {missing[:3]}; "
                           f"rerun their tasks (rm the markers in {rd.marker_dir(NAME)})")
    totals = {"docs": 0, "tokens": 0, "padded_tokens": 0, "seconds": 0.0, "forward_seconds": 0.0, "task_seconds": 0.0}
    devices: set[str] = set()
    for t, (a, b) in enumerate(layout["tasks"]):
        st = read_json(store.stats_path(rd, t), default={})
        ids = store.ids_path(rd, t)
        if st.get("rows") != [a, b] or st.get("docs") != b - a or not ids.exists() \
                or pq.read_metadata(ids).num_rows != b - a:
            raise RuntimeError(f"embed task {t}: its stats or {ids} do not cover rows [{a}, {b}); rerun it")
        for k in totals:
            totals[k] += st.get(k, 0)
        devices.add(f"{st.get('encoder', {}).get('device')} {st.get('encoder', {}).get('dtype')}")
    if totals["docs"] != layout["n_docs"]:
        raise RuntimeError(f"embed: tasks embedded {totals['docs']} docs, the layout has {layout['n_docs']}")
    secs = max(totals["seconds"], 1e-9)
    summary = {
        "n_docs": layout["n_docs"], "dim": layout["dim"], "dtype": store.DTYPE, "tasks": len(layout["tasks"]),
        "rows_per_shard": layout["rows_per_shard"], "shards": layout["n_shards"], "model": _e(cfg).model,
        "encoder": layout["encoder"], "compute": sorted(devices),
        "tokens": totals["tokens"], "padded_tokens": totals["padded_tokens"],
        "padding_efficiency": round(totals["tokens"] / max(totals["padded_tokens"], 1), 4),
        "encode_seconds": round(totals["seconds"], 3), "task_seconds": round(totals["task_seconds"], 3),
        "docs_per_s": round(layout["n_docs"] / secs, 2), "tokens_per_s": round(totals["tokens"] / secs, 1),
        "store": str(path.relative_to(rd.path)), "id_to_row": "ids/task_{t:05d}.parquet",
    }
    atomic_write_json(store.summary_path(rd), summary)
    print("embed: " + json.dumps({k: summary[k] for k in ("n_docs", "dim", "tasks", "tokens", "docs_per_s", "tokens_per_s")}),
          flush=True)


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def encoder_size(cfg: DictConfig, led: Ledger) -> tuple[float, int]:
    """(matmul parameters, output width) of ``embed.model``: from its files when readable here, else
    ``plan.models.encoder``."""
    from pathlib import Path

    from climb_hpc.embed.encoder import model_dim, resolve_model

    e = _e(cfg)
    try:
        path = Path(resolve_model(str(e.model)))
    except RuntimeError:
        path = Path(str(e.model))
    params = safetensors_params(path) if path.is_dir() else None
    fb = cfg.plan.models.encoder
    if params:
        led.use("encoder params", params, f"{path}/*.safetensors, embeddings excluded")
    else:
        params = led.use("encoder params", float(fb.params),
                         f"plan.models.encoder.params (embed.model={e.model} has no safetensors here)")
    dim = e.get("dim")
    if dim:
        led.use("embedding dim", int(dim), "embed.dim")
    else:
        try:
            dim = led.use("embedding dim", model_dim(str(path), backend=str(e.get("backend") or "transformers"),
                                                     projection=e.get("projection")), f"{path} config")
        except (OSError, ValueError):
            dim = led.use("embedding dim", int(fb.dim), f"plan.models.encoder.dim (embed.model={e.model} not readable here)")
    return float(params), int(dim)


def estimate_tasks(cfg: DictConfig, x: Inputs, led: Ledger) -> int:
    """Embed's tasks for the plan's corpus, as ``store.make_layout`` cuts them (quality and assign have as many)."""
    import math

    e = _e(cfg)
    rows = led.use("docs an embed task", int(e.rows_per_shard) * int(e.shards_per_task),
                   "embed.rows_per_shard x embed.shards_per_task")
    return max(1, math.ceil(x.docs / rows))


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """The encoder's forward pass: 2 FLOP a parameter a token it sees (a doc is cut at ``embed.max_length``)."""
    params, _ = encoder_size(cfg, led)
    per_doc = led.use("tokens an encoder sees a doc", min(x.tokens_per_doc, int(_e(cfg).max_length)),
                      "min(tokens a doc, embed.max_length): longer docs are truncated")
    return Work("encoder inference", [estimate_tasks(cfg, x, led)], flop=2 * params * x.docs * per_doc, model=True)


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, resources=resources, prepare=prepare, finalize=finalize,
              reads=reads, outputs=store.outputs, estimate=estimate)
