"""Stage ``export``: the mixture's documents as Parquet text shards, for trainers that tokenize themselves.

``climb-hpc export run_dir=DIR format=parquet out=DIR2`` runs it on a finished run. Task t writes
``DIR2/part_{t:05d}.parquet`` from tokenize part t: the documents the mixture takes there at the token
budget (``mix.export.token_budget``, else ``mix.tokens``; the same seeded choice as ``mix.materialize``),
shuffled, with ``split = "train"``, then every held-out document of the weighted clusters in that part
(``split = "heldout"``). Columns: ``id``, ``text``, ``cluster``, ``split``, ``epoch`` (a document taken
again when its cluster runs out comes back with the next epoch). The texts are read from the ingest
shards of that part only, so tasks run in parallel and none reads the corpus. The run's
``export/summary.json`` gives the counts and the files (a part with no document writes none). ``datasets.load_dataset("parquet", data_dir=DIR2)`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from climb_hpc.config import ConfigError, section
from climb_hpc.estimate import Inputs, Ledger, Work
from climb_hpc.rundir import atomic_path, atomic_write_json, read_json
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "export"
FORMATS = ("parquet",)
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("cluster", pa.int64()), ("split", pa.string()),
                    ("epoch", pa.int64())])


@dataclass(frozen=True)
class Outputs:
    """The run folder's record of the export (``export/plan.json``, ``summary.json``); the shards go to
    ``mix.export.out``, which holds nothing else (so ``load_dataset("parquet", data_dir=...)`` takes it whole)."""

    dir: Path

    @property
    def plan(self) -> Path:
        return self.dir / "plan.json"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def _e(cfg: DictConfig) -> DictConfig:
    return section(cfg, "mix").export


def shard_path(out: Path, t: int) -> Path:
    return out / f"part_{t:05d}.parquet"


def prepare(cfg: DictConfig, rd: RunDir) -> None:
    """Check the settings and record them (``export/plan.json``): the mixture, the budget, the folder."""
    from climb_hpc.search.mix import mixture_path

    e = _e(cfg)
    if str(e.format) not in FORMATS:
        raise ConfigError(f"export: format={e.format} is not one of {', '.join(FORMATS)}")
    if not e.out:
        raise ConfigError("export: say where the shards go: out=DIR (mix.export.out)")
    mixture = read_json(mixture_path(rd))
    if mixture is None:
        raise ConfigError(f"export: {mixture_path(rd)} is missing: run the mix stage first")
    out = Path(str(e.out)).expanduser().resolve()
    plan = {"format": str(e.format), "out": str(out), "tokens": int(e.token_budget or mixture["tokens"]),
            "weights": mixture["weights"], "seed": mixture["seed"], "rows_per_group": int(e.rows_per_group)}
    stored = read_json(outputs(rd).plan)
    if stored is not None and stored != plan:
        raise RuntimeError(f"{outputs(rd).plan} was planned with other settings ({stored}); remove {outputs(rd).dir} "
                           f"and {rd.marker_dir(NAME)} to export again")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(outputs(rd).plan, plan)


def num_tasks(cfg: DictConfig, rd: RunDir) -> int:
    from climb_hpc.corpus.tokenize import load_summary

    return int(load_summary(rd)["parts"])


def _texts(rd: RunDir, t: int, rows: np.ndarray) -> list[str]:
    """Texts of corpus rows ``rows`` (all within tokenize part ``t``'s ingest shards)."""
    from climb_hpc.corpus import ingest
    from climb_hpc.corpus.tokenize import load_plan

    out = np.empty(len(rows), dtype=object)
    for spec in load_plan(rd)["tasks"][t]["shards"]:
        a, b = spec["offset"], spec["offset"] + spec["rows"]
        sel = np.flatnonzero((rows >= a) & (rows < b))
        if len(sel):
            col = pq.read_table(ingest.outputs(rd).docs / spec["shard"], columns=["text"]).column("text")
            out[sel] = col.take(pa.array(rows[sel] - a)).to_pylist()
    return out.tolist()


def part_table(rd: RunDir, plan: dict[str, Any], t: int) -> pa.Table:
    """Part ``t``'s rows: the mixture's picks (shuffled), then the weighted clusters' held-out documents."""
    from climb_hpc.corpus.tokenize import outputs as tok_outputs
    from climb_hpc.corpus.tokenize import store_ids
    from climb_hpc.search.mix import pick_part, shuffled

    picked = pick_part(rd, plan["weights"], plan["tokens"], plan["seed"], t)
    which, k = shuffled(picked, plan["seed"], t)
    sides = [store_ids(pk.prefix) for pk in picked]
    pid = [side.column("id").take(pa.array(pk.docs)).to_pylist() for side, pk in zip(sides, picked, strict=True)]
    prow = [side.column("row").to_numpy()[pk.docs] for side, pk in zip(sides, picked, strict=True)]
    pairs = list(zip(which.tolist(), k.tolist(), strict=True))
    ids = [pid[i][j] for i, j in pairs]
    rows = np.array([prow[i][j] for i, j in pairs], np.int64)
    clusters = [picked[i].cluster for i, _ in pairs]
    epochs = [int(picked[i].epochs[j]) for i, j in pairs]
    split = ["train"] * len(ids)
    for c in sorted(int(c) for c, w in plan["weights"].items() if float(w) > 0):
        path = Path(str(tok_outputs(rd).store(t, c, "heldout")) + ".ids.parquet")
        if path.exists():
            held = pq.read_table(path)
            ids += held.column("id").to_pylist()
            rows = np.concatenate([rows, held.column("row").to_numpy()])
            clusters += [c] * held.num_rows
            epochs += [0] * held.num_rows
            split += ["heldout"] * held.num_rows
    return pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(_texts(rd, t, rows), pa.string()),
                                 pa.array(clusters, pa.int64()), pa.array(split, pa.string()),
                                 pa.array(epochs, pa.int64())], schema=SCHEMA)


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    plan = read_json(outputs(rd).plan)
    table = part_table(rd, plan, task)
    if table.num_rows == 0:  # readers (datasets) refuse an empty Parquet file: a part with nothing writes none
        shard_path(Path(plan["out"]), task).unlink(missing_ok=True)  # nor keeps an earlier export's
        print(f"export task {task}: nothing from this part", flush=True)
        return
    with atomic_path(shard_path(Path(plan["out"]), task)) as tmp:
        pq.write_table(table, tmp, row_group_size=plan["rows_per_group"])
    n_train = int(np.sum(np.asarray(table.column("split").to_pylist()) == "train")) if table.num_rows else 0
    print(f"export task {task}: {n_train} train and {table.num_rows - n_train} held-out docs -> "
          f"{shard_path(Path(plan['out']), task)}", flush=True)


def finalize(cfg: DictConfig, rd: RunDir) -> None:
    """``export/summary.json``: rows a split and cluster, from the shards' cluster and split columns."""
    plan = read_json(outputs(rd).plan)
    out = Path(plan["out"])
    per: dict[str, dict[str, int]] = {}
    files = []
    for t in range(num_tasks(cfg, rd)):
        path = shard_path(out, t)
        if not path.exists():
            continue
        table = pq.read_table(path, columns=["cluster", "split"])
        files.append(path.name)
        for g in table.group_by(["cluster", "split"]).aggregate([("split", "count")]).to_pylist():
            row = per.setdefault(str(g["cluster"]), {"train": 0, "heldout": 0})
            row[g["split"]] += int(g["split_count"])
    atomic_write_json(outputs(rd).summary, {**plan, "files": files, "docs": per,
                                             "columns": [f.name for f in SCHEMA]})
    print(f"export: {len(files)} Parquet shard(s) in {out}", flush=True)


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Reading the chosen documents' texts back: small beside tokenize (not in the default pipeline)."""
    return Work("text (CPU)", [0], core_s=0.0)


STAGE = Stage(name=NAME, run=run, num_tasks=num_tasks, prepare=prepare, finalize=finalize,
              resources=lambda cfg: Resources.from_config(section(cfg, "mix")),
              reads=lambda cfg: ("ingest", "tokenize", "mix"), outputs=outputs, estimate=estimate)
