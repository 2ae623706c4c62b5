"""What a stage's work costs: the records a stage's ``estimate`` hook returns, and the helpers it uses.

Each stage module states its own cost: ``Stage.estimate(cfg, inputs, ledger) -> Work`` gives the FLOP (model
work) or core-seconds (CPU work) of the whole stage, its task count (in rounds that run one after another),
and what a task needs in memory when known, for the plan's inputs (the corpus size, the vocabulary).
``climb_hpc.plan`` turns that into hours and wall time for a cluster profile; it is the only caller.

This module imports neither the plan nor the pipeline, so stage modules can import it; it holds no knowledge
of any one stage. Every number an estimate uses goes through :meth:`Ledger.use`, with where it came from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional

from climb_hpc.errors import ConfigError
from climb_hpc.safetensors_header import stored_params

if TYPE_CHECKING:  # omegaconf is imported where used: the FLOP helpers below need no config library
    from omegaconf import DictConfig

DIMS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "vocab_size")


@dataclass
class Assumption:
    name: str
    value: Any
    unit: str
    source: str


@dataclass
class Ledger:
    """Every number the plan uses, with where it came from (first use wins)."""

    items: list[Assumption] = field(default_factory=list)

    def use(self, name: str, value: Any, source: str, unit: str = "") -> Any:
        if all(a.name != name for a in self.items):
            self.items.append(Assumption(name, value, unit, source))
        return value


@dataclass
class Inputs:
    """What the plan is for: the corpus size and the run's vocabulary, and whether it is planned on CPUs."""

    tokens: float                  # LM tokens of the raw corpus
    docs: float
    tokens_per_doc: float
    vocab: int
    cpu: bool = False              # a CPU profile (cluster=local, debug): rates from plan.cpu
    builtin: bool = False          # the built-in demo corpus (corpus.paths empty, no plan.corpus_* given)


@dataclass
class Work:
    """What a stage has to do. ``rounds``: tasks in each round that must finish before the next starts."""

    kind: str
    rounds: list[int]
    flop: float = 0.0              # model work, in all
    core_s: float = 0.0            # CPU work at one core's rate, in all
    threaded: bool = False         # core_s spreads over a task's cpus (else one core does it)
    task_s: float = 0.0            # fixed seconds a task
    model: bool = False            # a task loads torch and a model (starts slower on a CPU profile)
    mem_gb: Optional[float] = None  # what a task holds in memory at its peak, when the stage knows
    task_stage: Optional[str] = None  # the stage its tasks run as (a driver stage's sub-stages: "proxy/plan"),
    #                                   whose resources and checkpointing they get; None: the stage itself

    @property
    def tasks(self) -> int:
        return sum(self.rounds)


#: Stage.estimate: (the composed config, the plan's inputs, the ledger) -> the stage's work
EstimateFn = Callable[["DictConfig", Inputs, Ledger], Work]


def rate(cfg: DictConfig, x: Inputs, key: str, led: Ledger, unit: str, name: Optional[str] = None) -> float:
    """A CPU stage's throughput ``<key>`` (e.g. ingest_tokens_s): ``plan.cpu.rates`` on a CPU profile (measured on
    the CI machine), else ``plan.rates`` (a cluster node's core). Recorded as ``name``, by default "ingest rate"."""
    from omegaconf import OmegaConf

    cpu_rates = OmegaConf.select(cfg, "plan.cpu.rates") if x.cpu else None
    block = "plan.cpu.rates" if cpu_rates is not None and key in cpu_rates else "plan.rates"
    value = OmegaConf.select(cfg, f"{block}.{key}")
    return float(led.use(name or f"{key.split('_')[0]} rate", float(value), f"{block}.{key}", unit))


# ---------------------------------------------------------------- model sizes


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def safetensors_params(folder: Path) -> Optional[int]:
    """Matmul parameters of a checkpoint (embeddings excluded) from its safetensors headers; None if unreadable."""
    try:
        return stored_params(folder, skip="embed")
    except (OSError, ValueError):
        return None


def dims_of(source: Mapping[str, Any], vocab: Optional[int] = None) -> dict[str, int]:
    """Llama dimensions from a config.json dict or a ``*.model`` config section."""
    d = {k: source.get(k) for k in DIMS}
    if vocab is not None and not d["vocab_size"]:
        d["vocab_size"] = vocab
    d["num_key_value_heads"] = d["num_key_value_heads"] or d["num_attention_heads"]
    d["head_dim"] = d["head_dim"] or int(d["hidden_size"]) // int(d["num_attention_heads"])
    return {k: int(v) for k, v in d.items()}


def train_flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs a token: 6 x (matmul params incl. the LM head) + 12 x layers x seq x attention width
    (attention scores and values, forward + backward), as PaLM's appendix B counts for MFU."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    d = config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    matmul_params = n * per_layer + h * config.vocab_size
    return 6.0 * matmul_params + 12.0 * n * seq_len * q


def train_flops(dims: dict[str, int], seq_len: int) -> float:
    """Training FLOP a token of a model given by its dims (:func:`train_flops_per_token`)."""
    return train_flops_per_token(SimpleNamespace(**dims), seq_len)


def matmul_params(dims: dict[str, int]) -> float:
    return train_flops(dims, 0) / 6


def dims_text(d: dict[str, int]) -> str:
    return (f"h {d['hidden_size']}, ffn {d['intermediate_size']}, {d['num_hidden_layers']} layers, "
            f"{d['num_attention_heads']}/{d['num_key_value_heads']} heads x {d['head_dim']}, vocab {d['vocab_size']}")


def model_dims(path: Any, key: str, fallback: Optional[dict[str, int]], led: Ledger, name: str) -> dict[str, int]:
    """Dims from ``path``/config.json when readable here, else ``fallback`` (recorded either way)."""
    conf = read_json(Path(str(path)) / "config.json") if path else None
    if conf:
        dims, src = dims_of(conf), f"{path}/config.json"
    elif fallback is not None:
        dims, src = fallback, f"{key} (not readable here)" if path else key
    else:
        raise ConfigError(f"{key}={path}: no config.json there; plan needs the model's dimensions")
    led.use(f"{name} matmul params", matmul_params(dims), f"{src}: {dims_text(dims)}")
    return dims


def training_mem_gb(dims: dict[str, int], ranks: int = 1, zero_stage: int = 2) -> float:
    """A rank's model state in training with AdamW, fp32 master weights: 4 bytes of weights + 4 of gradients
    + 8 of moments a parameter (16), ZeRO sharding the moments (stage 1), the gradients (2) and the weights (3)
    over ``ranks``. Activations are not counted."""
    params = matmul_params(dims) + dims["hidden_size"] * dims["vocab_size"]  # + the input embedding
    sharded = {1: 8, 2: 12, 3: 16}.get(int(zero_stage), 0)
    return params * ((16 - sharded) + sharded / max(1, ranks)) / 1e9
