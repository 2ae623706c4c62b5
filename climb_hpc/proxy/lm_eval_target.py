"""``target.kind=lm_eval``: a proxy trial scored by lm-evaluation-harness on local tasks, in the trial's process.

The trained model object goes to lm-eval's HF wrapper (``HFLM(pretrained=model, tokenizer=...)``) with the run's
tokenizer as a ``PreTrainedTokenizerFast`` that puts EOS before every text (what the proxy saw before each
training document), and ``lm_eval.simple_evaluate`` scores the tasks named in ``target.tasks``, found by an
lm-eval ``TaskManager`` under ``target.include_path`` only (no built-in task: those download from the hub).
Each task is cut to ``target.limit`` docs, chosen by a seeded permutation of its doc indices (the same for
every trial of a run) and handed to lm-eval as its ``samples`` argument, so the value a trial records is
exactly what ``lm_eval.simple_evaluate(..., samples=...)`` reports. The hub is off while tasks load.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from climb_hpc.proxy.target_errors import TargetError

INSTALL = "pip install 'climb-hpc[eval]'"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def _error(message: str) -> Exception:
    return TargetError(message)


def _value(tcfg: Mapping[str, Any], key: str) -> Any:
    """``tcfg[key]``; a clear error for a ``???`` the user has not filled."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(tcfg, DictConfig) and OmegaConf.is_missing(tcfg, key):
        raise _error(f"target.{key} is not set: target=lm_eval needs target.include_path (the task YAMLs' folder) "
                     "and target.tasks=[{name: my_task, metric: acc_norm}, ...]")
    return tcfg[key]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    metric: str


@dataclass(frozen=True)
class TaskInfo:
    docs: int                          # the task's evaluation docs (the split lm-eval scores)
    higher_is_better: dict[str, bool]  # the metrics it reports


def task_specs(tcfg: Mapping[str, Any]) -> list[TaskSpec]:
    """``target.tasks`` as (name, metric) pairs: a mapping ``{name, metric}`` or a bare name (``target.metric``)."""
    raw = _value(tcfg, "tasks")
    if raw is None or isinstance(raw, str) or not hasattr(raw, "__len__") or len(raw) == 0:
        raise _error("target.kind=lm_eval needs target.tasks, e.g. 'target.tasks=[{name: my_task, metric: acc_norm}]'")
    out = []
    for i, t in enumerate(raw):
        if isinstance(t, str):
            out.append(TaskSpec(t, str(tcfg["metric"])))
        elif hasattr(t, "keys") and isinstance(t.get("name"), str):
            unknown = sorted(set(t.keys()) - {"name", "metric"})
            if unknown:
                raise _error(f"target.tasks[{i}]: unknown key(s) {unknown}; give {{name, metric}}")
            out.append(TaskSpec(str(t["name"]), str(t.get("metric") or tcfg["metric"])))
        else:
            raise _error(f"target.tasks[{i}]={t!r}: give {{name: <task>, metric: <metric>}} or a task name")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise _error(f"target.tasks names a task twice: {names}")
    return out


def include_dir(tcfg: Mapping[str, Any]) -> Path:
    raw = _value(tcfg, "include_path")
    if not raw:
        raise _error("target.kind=lm_eval needs target.include_path: the folder of the task YAMLs "
                     "(climb-hpc build-tasks writes one)")
    p = Path(os.path.expandvars(str(raw))).expanduser().resolve()
    if not p.is_dir():
        raise _error(f"target.include_path={raw}: no such folder")
    return p


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise _error(f"target.kind=lm_eval needs lm-evaluation-harness, which is not installed: {INSTALL}") from None


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The hub off (datasets and huggingface_hub read these at call time), lm-eval's per-request chatter quiet."""
    old = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_manager(include_path: Path) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path), include_defaults=False)


@functools.lru_cache(maxsize=8)
def _load(include_path: str, names: tuple[str, ...]) -> dict[str, TaskInfo]:
    tm = task_manager(Path(include_path))
    found = set(tm.all_subtasks)
    for n in names:
        if n in tm.all_groups or n in tm.all_tags:
            raise _error(f"target.tasks: {n!r} is a group or tag under {include_path}; name its tasks one by one")
        if n not in found:
            listed = ", ".join(sorted(found)) or "none"
            raise _error(f"target.tasks: no task {n!r} under target.include_path={include_path}; found: {listed}")
    out = {}
    with offline():
        for n in names:
            try:
                task = tm.load([n])["tasks"][n]
                docs = len(task.eval_docs)
            except Exception as e:  # a data file that is missing or unreadable, a YAML lm-eval refuses
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise _error(f"lm-eval task {n!r} (under {include_path}) did not load: {first}; check its "
                             "dataset_path and dataset_kwargs.data_files (local files; the hub is off)") from None
            out[n] = TaskInfo(docs, {k: bool(v) for k, v in task.higher_is_better().items()})
    return out


def load_tasks(tcfg: Mapping[str, Any]) -> dict[str, TaskInfo]:
    """Each named task's doc count and metrics; :class:`TargetError` for what would fail the trials."""
    require_lm_eval()
    specs = task_specs(tcfg)
    info = _load(str(include_dir(tcfg)), tuple(s.name for s in specs))
    for s in specs:
        metrics = info[s.name].higher_is_better
        if s.metric not in metrics:
            raise _error(f"target.tasks: task {s.name!r} reports {sorted(metrics)}, not {s.metric!r}")
        if not metrics[s.metric]:
            raise _error(f"target.tasks: {s.name}'s {s.metric} is lower-is-better; an lm_eval target averages "
                         "higher-is-better metrics (acc, acc_norm, ...)")
        if info[s.name].docs == 0:
            raise _error(f"target.tasks: task {s.name!r} has no evaluation docs")
    return info


def check(tcfg: Mapping[str, Any]) -> None:
    load_tasks(tcfg)


def subsample(docs: int, limit: Optional[int], seed: int, name: str) -> list[int]:
    """``limit`` of ``range(docs)``, by a permutation seeded with (seed, task name), in index order; all if
    ``limit`` is null or not below ``docs``."""
    if limit is None or int(limit) >= docs:
        return list(range(docs))
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    return sorted(int(i) for i in rng.permutation(docs)[:int(limit)])


def samples_for(tcfg: Mapping[str, Any]) -> dict[str, list[int]]:
    """lm-eval's ``samples`` argument: the doc indices each task scores."""
    info = load_tasks(tcfg)
    limit = tcfg["limit"]
    return {s.name: subsample(info[s.name].docs, limit, int(tcfg["seed"]), s.name) for s in task_specs(tcfg)}


def hf_tokenizer(tokenizer: Any, eos_id: int) -> Any:
    """The run's ``tokenizers.Tokenizer`` as a ``PreTrainedTokenizerFast`` that puts EOS before every text
    (``[EOS] + context``, as the proxy saw every training doc); EOS is its eos, bos and pad token.

    lm-eval encodes ``context`` and ``context + continuation`` with special tokens and scores the tokens past
    the context, so the EOS prefix conditions the context and never counts in a choice's score."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's tokenizer keeps adding nothing
    eos = tok.id_to_token(int(eos_id))
    if eos is None:
        raise _error(f"the tokenizer has no token {eos_id} (its EOS)")
    tok.post_processor = TemplateProcessing(single=f"{eos} $A", pair=f"{eos} $A {eos} $B",
                                            special_tokens=[(eos, int(eos_id))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos,
                                   clean_up_tokenization_spaces=False)


def run_lm_eval(model: Any, hf_tok: Any, tcfg: Mapping[str, Any], samples: Mapping[str, list[int]],
                batch_size: int) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``model`` (an HF causal LM object) for ``samples``; its whole result.
    Global RNGs are left alone (they do not enter log-likelihood scores); no bootstrap (no stderr)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    with offline():
        lm = HFLM(pretrained=model, tokenizer=hf_tok, batch_size=int(batch_size))
        return simple_evaluate(lm, tasks=list(samples), task_manager=task_manager(include_dir(tcfg)),
                               samples={k: list(v) for k, v in samples.items()}, bootstrap_iters=0,
                               log_samples=False, random_seed=None, numpy_random_seed=None, torch_random_seed=None)


def metric_value(results: Mapping[str, Any], task: str, metric: str) -> float:
    """``metric`` of ``task`` in lm-eval's ``results`` (its unfiltered value, ``acc,none``, when there is one)."""
    row = results["results"][task]
    keys = [k for k in row if k.split(",")[0] == metric and not k.endswith("_stderr")]
    if not keys:
        raise _error(f"lm-eval reported no {metric!r} for task {task!r}: {sorted(row)}")
    return float(row[f"{metric},none"] if f"{metric},none" in row else row[sorted(keys)[0]])


def score(model: Any, tcfg: Mapping[str, Any], tokenizer: Any, eos_id: int,
          autocast: Any = contextlib.nullcontext) -> dict[str, Any]:
    """``{kind, value, tasks: {name: {metric, value, items, docs}}, limit, seed}``: value = the mean over tasks."""
    specs = task_specs(tcfg)
    info = load_tasks(tcfg)
    samples = samples_for(tcfg)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with autocast():
            res = run_lm_eval(model, hf_tokenizer(tokenizer, eos_id), tcfg, samples, int(tcfg["batch_size"]))
    finally:
        model.train(was_training)
    per = {s.name: {"metric": s.metric, "value": metric_value(res, s.name, s.metric),
                    "items": len(samples[s.name]), "docs": info[s.name].docs} for s in specs}
    return {"kind": "lm_eval", "include_path": str(include_dir(tcfg)), "tasks": per,
            "limit": tcfg["limit"], "seed": int(tcfg["seed"]), "seconds": round(time.perf_counter() - t0, 3),
            "value": float(np.mean([p["value"] for p in per.values()]))}
