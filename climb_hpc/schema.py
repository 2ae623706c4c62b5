"""The config's schema: one dataclass a config section, registered in Hydra's ConfigStore.

**Rule: the dataclasses declare keys and types; the YAML files in ``configs/`` hold every default.** No field
here has a default (Hydra fills it from the YAML, and a key the YAML forgets shows as ``???``, which
``tests/test_config.py`` refuses), and the code reads a declared key without a fallback
(``cfg.embed.max_length``, never ``cfg.embed.get("max_length", 256)``): a default written in code could
disagree with the YAML, as embed's max_length did (256 in code, 128 in the YAML that runs).

How it is used: ``configs/config.yaml`` starts its defaults list with ``schema`` (:class:`Config`, stored at
the root), so the composed config is typed and in struct mode: a key the schema lacks is refused, and a value
Hydra cannot convert to the declared type fails. A ``cluster`` profile names its own executor's schema
(``- schema_local`` / ``schema_debug`` / ``schema_slurm`` in ``configs/cluster/*.yaml``): the profiles have
different keys. :func:`climb_hpc.config.compose` checks each override's value against the declared type
before Hydra does (Hydra would turn ``yes`` into true and ``12`` into the string "12"), naming the key and the
type; :mod:`climb_hpc.validate` then holds the values to their ranges.

Types: ``int``, ``float``, ``bool``, ``str``, ``list[...]`` and nested dataclasses are checked as declared.
A key that takes an integer or a fraction (``chunk_mb``, ``warmup``, ``mem_gb`` ...) is ``Any`` marked
:func:`number`, so its YAML value is kept as written (64 stays 64, not 64.0); ``Optional[...]`` allows null.
The open maps (:data:`climb_hpc.validate.OPEN_MAPS`: ``cluster.stage_resources``, ``cluster.extra_sbatch``,
``plan.hardware``, ``search.predictor``) are ``dict[str, Any]``: their keys are the user's (and
``clusters.refine.thresholds``, ``dict[str, Optional[float]]``: its keys are the raters' axes).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from climb_hpc.errors import ConfigError

#: metadata ``expect`` values of ``Any`` fields: what the value must be, as an error message says it
NUMBER = "a number"
AUTO_OR_BOOL = "auto, true or false"
PATHS = "a list of paths [a, b] (or one path)"
#: (not ``Optional[dict]``: OmegaConf 2.3 cannot merge a mapping given on the command line into a null one)
MAPPING = "a mapping {a: 1}"


def number() -> Any:
    """An ``Any`` field that holds an integer or a float (or null), kept as the YAML or override wrote it."""
    return field(metadata={"expect": NUMBER})


def expect(what: str) -> Any:
    return field(metadata={"expect": what})


# ---------------------------------------------------------------- shared shapes

@dataclass
class LlamaDims:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int


@dataclass
class LlamaShape(LlamaDims):
    """A Llama to build (proxy.model, minitron.teacher.model)."""

    rope_theta: float
    rms_norm_eps: float
    initializer_range: float
    tie_word_embeddings: bool


# ---------------------------------------------------------------- cluster (one schema an executor)

@dataclass
class LocalCluster:
    executor: str
    cpus: Optional[int]
    max_retries: int
    stage_resources: dict[str, Any]


@dataclass
class DebugCluster:
    executor: str
    max_retries: int
    stage_resources: dict[str, Any]


@dataclass
class SlurmCluster:
    executor: str
    partition: Optional[str]
    account: Optional[str]
    qos: Optional[str]
    reservation: Optional[str]
    constraint: Optional[str]
    time_min: Optional[int]
    mem_gb: Any = number()
    signal_delay_s: int
    array_parallelism: int
    max_array_size: Optional[int]
    tasks_per_element: Optional[int]
    element_max_time_min: int
    max_num_timeout: int
    max_retries: int
    poll_s: Any = number()
    squeue_retries: int
    squeue_backoff_s: Any = number()
    setup: list[str]
    extra_sbatch: dict[str, Any]
    stage_resources: dict[str, Any]


# ---------------------------------------------------------------- corpus, embed, quality, clusters, tokenize

@dataclass
class Builtin:
    docs_per_domain: int
    seed: Optional[int]


@dataclass
class Corpus:
    paths: Any = expect(PATHS)
    text_field: str
    id_field: Optional[str]
    source_field: Optional[str]
    chunk_mb: Any = number()
    rows_per_group: int
    compression: str
    quarantine_excerpt_chars: int
    damaged_files: str
    builtin: Builtin


@dataclass
class Embed:
    backend: str
    model: str
    trust_remote_code: bool
    offline: bool
    pooling: str
    projection: Optional[str]
    normalize: bool
    dim: Optional[int]
    max_length: int
    batch_size: int
    token_budget: Optional[int]
    sort_window: int
    loader_workers: int
    dtype: str
    device: str
    rows_per_shard: int
    chunk_rows: int
    shards_per_task: int
    cpus: int
    gpus: int
    mem_gb: Any = number()
    time_min: int


@dataclass
class Quality:
    raters: str
    convention: str
    axes: Optional[list[str]]
    score: Optional[str]
    batch_size: int
    cpus: int
    mem_gb: Any = number()
    mem_margin_gb: Any = number()
    time_min: int


@dataclass
class KMeans:
    k_init: int
    min_points_per_centroid: int
    max_points_per_centroid: Optional[int]
    sample_size: int
    niter: int
    nredo: int
    gpu: Any = expect(AUTO_OR_BOOL)
    threads: Optional[int]
    cpus: int
    gpus: int
    mem_gb: Any = number()
    time_min: int


@dataclass
class Assign:
    batch_rows: int
    cpus: int
    mem_gb: Any = number()
    time_min: int


@dataclass
class Refine:
    from_field: Optional[str]
    prune: bool
    axes: list[str]
    thresholds: dict[str, Optional[float]]  # axis -> threshold (null: the axis is not used); the axes are the raters'
    min_size: int
    linkage: str
    merge_distance: float
    target_clusters: Optional[int]
    max_clusters: Optional[int]
    cpus: int
    mem_gb: Any = number()
    time_min: int


@dataclass
class Clusters:
    kmeans: KMeans
    assign: Assign
    refine: Refine


@dataclass
class Tokenize:
    tokenizer: Optional[str]
    vocab_size: int
    min_frequency: int
    train_sample_docs: int
    max_parts: int
    batch_size: int
    cpus: int
    mem_gb: Any = number()
    time_min: int


# ---------------------------------------------------------------- proxy, target, search, mix

@dataclass
class Optim:
    lr: float
    min_lr_ratio: float
    betas: list[float]
    eps: float
    weight_decay: float
    grad_clip: float
    schedule: str
    warmup: Any = number()  # a fraction of all steps (< 1) or a count of steps
    decay: float


@dataclass
class Proxy:
    """``proxy/common.yaml`` and a size file (``tiny``, ``62m``, ``350m``), which adds ``name`` and ``model``."""

    seq_len: int
    batch_size: int
    micro_batch_size: Optional[int]
    tokens: int
    optim: Optim
    precision: str
    compile: bool
    loss_chunk_tokens: int
    holdout_fraction: float
    ckpt_every: int
    keep_checkpoint: bool
    save_model: bool
    init: Optional[str]
    seed: Optional[int]
    cpus: int
    gpus: int
    mem_gb: Any = number()
    time_min: int
    name: str
    model: LlamaShape


@dataclass
class Target:
    kind: str
    clusters: Optional[list[int]]
    path: Optional[str]
    text_field: str
    max_tokens: int
    max_items: int
    normalize: str
    files: Any = expect("a list of {path, normalize} mappings [{path: a.jsonl, normalize: char}] (or null)")
    include_path: Optional[str]
    tasks: Any = expect("a list of {name, metric} mappings [{name: my_task, metric: acc_norm}] (or null)")
    metric: str
    limit: Optional[int]
    seed: int
    batch_size: int
    cluster_losses: bool


@dataclass
class Sampler:
    temperature: float
    concentrations: list[float]
    min_weight: float
    max_ratio: float
    dedup_tol: float


@dataclass
class SearchPlus:
    first_fraction: float
    rounds: int


@dataclass
class Search:
    strategy: str
    budget: int
    proportions: list[int]
    top_n: Any = number()  # a count of candidates, or a fraction of the untried pool
    pool_size: int
    references: list[str]
    sampler: Sampler
    predictor: dict[str, Any]
    plus: SearchPlus
    final: str  # the answer: predictor | best_measured (climb_hpc/search/final.py)
    final_candidates: int
    seed: Optional[int]


@dataclass
class MixExport:
    format: str
    out: Optional[str]
    token_budget: Optional[int]
    rows_per_group: int


@dataclass
class Mix:
    tokens: int
    weights: Any = expect(MAPPING)  # {cluster: weight}, or null
    weights_from: Optional[str]
    seed: Optional[int]
    materialize: bool
    export: MixExport
    cpus: int
    mem_gb: Any = number()
    time_min: int


# ---------------------------------------------------------------- minitron

@dataclass
class Teacher:
    path: Optional[str]
    model: LlamaShape
    pretrain_tokens: int
    pretrain_lr: float
    pretrain_warmup: int
    holdout_fraction: Optional[float]


@dataclass
class ZeroPhase:
    """What ``minitron.correct`` and ``minitron.distill`` share: the schedule, the batch, ZeRO and the resources.
    A base listed FIRST among a dataclass's bases comes LAST in its key order, as in the YAML."""

    min_lr_ratio: float
    warmup: Any = number()
    schedule: str
    decay: float
    weight_decay: float
    betas: list[float]
    eps: float
    grad_clip: float
    seq_len: int
    micro_batch_size: int
    global_batch_size: int
    val_tokens: int
    zero_stage: int
    zero3_persistence_threshold: int
    zero_bucket_size: int
    zero3_max_live_parameters: int
    precision: str
    activation_checkpointing: bool
    loss_chunk_tokens: int
    ckpt_every: int
    keep_checkpoint: bool
    save_dtype: str
    save_shard_gb: float
    nodes: int
    tasks_per_node: int
    cpus: int
    gpus: int
    mem_gb: Any = number()
    time_min: int


@dataclass
class _CorrectOwn:
    data: Optional[str]
    text_field: str
    tokens: int
    lr: Optional[float]
    lr_scale: float


@dataclass
class Correct(ZeroPhase, _CorrectOwn):
    pass


@dataclass
class Importance:
    model: Optional[str]
    samples: int
    seq_len: int
    batch_size: int
    micro_batch_size: Optional[int]
    precision: str
    loss_chunk_tokens: int
    drop: Optional[int]
    mc_path: Optional[str]
    mc_max_items: int
    mc_normalize: str
    cpus: int
    gpus: int
    mem_gb: Any = number()
    time_min: int


@dataclass
class Depth:
    drop: int
    metric: str


@dataclass
class Prune:
    model: Optional[str]
    hidden_size: Optional[int]
    intermediate_size: Optional[int]
    num_attention_heads: Optional[int]
    num_key_value_heads: Optional[int]
    depth: Depth
    cpus: int
    gpus: int
    mem_gb: Any = number()
    time_min: int


@dataclass
class _DistillOwn:
    teacher: Optional[str]
    student: Optional[str]
    student_config: Any = expect(MAPPING)  # or null
    data: Optional[str]
    text_field: str
    temperature: float
    lm_weight: float
    hidden_weight: float
    teacher_zero3: bool
    tokens: int
    lr: float


@dataclass
class Distill(ZeroPhase, _DistillOwn):
    pass


@dataclass
class Minitron:
    seed: Optional[int]
    teacher: Teacher
    correct: Correct
    importance: Importance
    prune: Prune
    distill: Distill


# ---------------------------------------------------------------- pipeline, plan, selftest

@dataclass
class Pipeline:
    stages: list[str]


@dataclass
class Mfu:
    encoder: float
    kmeans: float
    proxy: float
    llm: float
    forward: float


@dataclass
class Rates:
    ingest_tokens_s: float
    quality_tokens_s: float
    tokenize_tokens_s: float
    refine_docs_s: float
    mix_tokens_s: float
    prune_params_s: float
    report_s: Any = number()


@dataclass
class Overhead:
    cpu_task: int
    gpu_task: int
    multinode_job: int


@dataclass
class EncoderShape:
    params: Any = number()
    dim: int


@dataclass
class TeacherShape(LlamaDims):
    vocab_size: int


@dataclass
class PlanModels:
    vocab_size: Optional[int]
    encoder: EncoderShape
    teacher: TeacherShape


@dataclass
class Reservation:
    name: Optional[str]
    start: Optional[str]
    lead_h: int
    round_start_min: int
    margin: float
    round_h: int
    users: Any = expect("a list of user names")
    accounts: Any = expect("a list of account names")
    flags: list[str]


@dataclass
class PlanCpu:
    """plan.cpu: the rates of a CPU profile (cluster=local, debug), measured on the CI machine."""

    encoder_gflops: Any = number()
    kmeans_gflops: Any = number()
    proxy_gflops: Any = number()
    llm_gflops: Any = number()
    distill_gflops: Any = number()
    forward_gflops: Any = number()
    task_start_s: Any = number()
    model_task_start_s: Any = number()
    rates: Rates


@dataclass
class PlanBuiltin:
    tokens_per_doc: int
    vocab_size: int


@dataclass
class Plan:
    corpus_tokens: Any = number()
    corpus_docs: Any = number()
    tokens_per_doc: int
    bytes_per_token: float
    stages: list[str]
    hardware: dict[str, Any]
    mfu: Mfu
    cpu_gflops: Any = number()
    rates: Rates
    overhead_s: Overhead
    mc_tokens_per_item: int
    models: PlanModels
    reservation: Reservation
    cpu: PlanCpu
    builtin: PlanBuiltin


@dataclass
class Selftest:
    tasks: int
    fail_tasks: list[int]
    counter_tasks: int
    steps: int
    step_s: Any = number()
    ckpt_every: int
    dist_nodes: int


# ---------------------------------------------------------------- the root

@dataclass
class Config:
    """``configs/config.yaml``: the groups in its defaults list's order, then its own keys."""

    cluster: Any  # LocalCluster | DebugCluster | SlurmCluster: the profile's defaults list names which
    corpus: Corpus
    embed: Embed
    quality: Quality
    clusters: Clusters
    tokenize: Tokenize
    proxy: Proxy
    target: Target
    search: Search
    mix: Mix
    minitron: Minitron
    pipeline: Pipeline
    plan: Plan
    run_dir: str
    until: Optional[str]
    seed: int
    dry_run: bool
    progress: bool
    preflight: str
    selftest: Selftest


CLUSTER_SCHEMAS = {"schema_local": LocalCluster, "schema_debug": DebugCluster, "schema_slurm": SlurmCluster}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent): ``schema`` at the root, ``cluster/schema_*``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for name, node in CLUSTER_SCHEMAS.items():
        cs.store(group="cluster", name=name, node=node)


# ---------------------------------------------------------------- what a key must hold

_UNDECLARED = object()


def _strip_optional(t: Any) -> tuple[Any, bool]:
    if typing.get_origin(t) in (Union, getattr(types, "UnionType", Union)):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(t))
    return t, False


def declared(cls: type, path: list[str]) -> tuple[Any, bool, Optional[str]] | None:
    """The declared type of ``path`` under the dataclass ``cls``: (type, optional, expect), or None when the
    path is not declared (or lies inside an open map)."""
    t: Any = cls
    optional, what = False, None
    for part in path:
        t, _ = _strip_optional(t)
        if not dataclasses.is_dataclass(t):
            return None
        fields = {f.name: f for f in dataclasses.fields(t)}
        if part not in fields:
            return None
        t, optional = _strip_optional(typing.get_type_hints(t)[part])
        what = fields[part].metadata.get("expect")
    return t, optional, what


def describe(t: Any, what: Optional[str] = None) -> str:
    """How an error message says what a value of type ``t`` must be."""
    if what:
        return what
    origin = typing.get_origin(t)
    if origin is list:
        (item,) = typing.get_args(t) or (Any,)
        return "a list [a, b]" if item is Any else f"a list of {_plural(item)} [a, b]"
    if origin is dict or t is dict or dataclasses.is_dataclass(t):
        return "a mapping {a: 1}"
    return {bool: "true or false", int: "a whole number", float: "a number",
            str: "a string (quote it: key='...')"}.get(t, "a value")


def _plural(t: Any) -> str:
    return {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}.get(t, "values")


def _is_num(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fits(t: Any, value: Any, what: Optional[str] = None) -> bool:
    """``value`` (a plain value, as Hydra's override parser or YAML gives it) is of the declared type ``t``.
    A whole float fits an ``int`` (``tokens=1e6``; :func:`climb_hpc.config.compose` writes it as an int)."""
    if what == NUMBER:
        return _is_num(value)
    if what == AUTO_OR_BOOL:
        return isinstance(value, bool) or value == "auto"
    if what == MAPPING:
        return isinstance(value, dict)
    if what == PATHS:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if what is not None or t is Any:
        return True
    origin = typing.get_origin(t)
    if origin is list:
        (item,) = typing.get_args(t) or (Any,)
        return isinstance(value, list) and all(v is None or fits(item, v) for v in value)
    if origin is dict or t is dict or dataclasses.is_dataclass(t):
        return isinstance(value, dict)
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return _is_num(value) and float(value).is_integer()
    if t is float:
        return _is_num(value)
    if t is str:
        return isinstance(value, str)
    return True


def lookup(key: str, executor: Optional[str] = None) -> tuple[Any, bool, Optional[str]] | None:
    """:func:`declared` for a dotted key of the whole config; ``cluster.*`` keys by the profile's executor
    (local, debug, slurm), whose schemas differ."""
    parts = key.split(".")
    if parts[0] == "cluster" and len(parts) > 1:
        cls = CLUSTER_SCHEMAS.get(f"schema_{executor}")
        return declared(cls, parts[1:]) if cls else None
    return declared(Config, parts)


def show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def check(key: str, value: Any, executor: Optional[str] = None) -> None:
    """ConfigError naming ``key`` and its declared type unless ``value`` is of that type (keys the schema does
    not declare, such as an open map's, are left to :mod:`climb_hpc.validate`)."""
    d = lookup(key, executor)
    if d is None:
        return
    t, optional, what = d
    if value is None:
        if not (optional or what or t is Any):
            raise ConfigError(f"{key}=null: it needs a value ({describe(t, what)})")
        return
    if isinstance(value, str) and "${" in value:
        return  # an interpolation: its resolved value is checked with the config
    if not fits(t, value, what):
        raise ConfigError(f"{key}={show(value)}: expected {describe(t, what)}")
