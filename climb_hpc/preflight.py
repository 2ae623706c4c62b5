"""``climb-hpc preflight``: rehearse every stage of a run with no data and no GPU, before anything is booked or queued.

It composes the whole config and checks, for the stages that will run:

* the config itself (:func:`climb_hpc.pipeline.check_config`: values, the stage order and inputs, input paths, a given
  teacher's own values, each stage's resources and Slurm options);
* every model, built from its config on the meta device (exact parameter counts, no memory): the teacher
  (``minitron.teacher.path``'s config.json, or the built-in tiny one), the pruned student, the proxy (``proxy.init``'s
  config.json when set, else ``proxy.model``), the encoder;
* the pruning targets against the teacher: no size above the original, whole KV groups with the same number of query
  heads in each (GQA; ``prune.choose_heads``'s rule), head_dim kept, fewer layers dropped than it has;
* the batch arithmetic of correct and distill: global = micro x data-parallel ranks x accumulation, with the ranks the
  job gets (``stage_resources``: nodes x tasks_per_node);
* each sequence length against the model's ``max_position_embeddings``;
* the vocabulary: a given teacher is fine-tuned on its own tokenizer's ids (the tokenizer's identity itself is
  check_config's);
* where each Minitron task runs (the resources it was given reach its code: ``stage.task_config``);
* each stage's time limit against its estimate (``climb_hpc.plan``: the same rule as the plan's warnings);
* the peak memory a GPU of every GPU stage (``climb_hpc.minitron.memory``: correct, distill, importance, the proxy
  trials) against ``plan.hardware.<profile>.gpu_mem_gb``, and a CPU stage's against its job's (or node's) memory.

:func:`preflight` returns one :class:`Check` a row; :func:`render` prints them as one table. A row is ok, failed
(its message names the key to set), or not checked here (``ok`` None: what is missing to check it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from climb_hpc.errors import ConfigError, UserError, one_line
from climb_hpc.minitron.memory import Dims, Peak, scoring_peak, training_peak
from climb_hpc.stage import get_stage, stage_resources, task_config

#: the Minitron stages that load the teacher
MINITRON = ("correct", "importance", "prune", "distill")
#: DeepSpeed training stages: their batch divides over ranks, they run on their GPUs
TRAINING = ("correct", "distill")


class PreflightFailed(UserError):
    """A preflight check failed: the run cannot start as configured."""


@dataclass
class Check:
    stage: str
    check: str
    value: str
    limit: str
    ok: Optional[bool]             # None: not checked here (``message`` says what it needs)
    message: str = ""


@dataclass
class Model:
    """A model built on the meta device: its HF config and its shape with the exact parameter count."""

    name: str
    config: Any
    dims: Dims
    source: str


# ---------------------------------------------------------------- models on the meta device


def meta_params(config: Any, causal: bool = True, trust_remote_code: bool = False) -> int:
    """Parameters of the model ``config`` describes, built on the meta device (no memory; tied weights once)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if causal else AutoModel
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _dims(config: Any) -> dict[str, int]:
    from climb_hpc.estimate import dims_of

    return dims_of({k: getattr(config, k, None) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                         "num_attention_heads", "num_key_value_heads", "head_dim",
                                                         "vocab_size")})


def model(name: str, config: Any, source: str) -> Model:
    return Model(name, config, Dims.of(_dims(config), meta_params(config)), source)


def hf_config(path: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def teacher_model(cfg: DictConfig) -> Model:
    """The teacher: ``minitron.teacher.path``'s config.json, else the built-in tiny Llama (the run's BPE vocabulary)."""
    t = cfg.minitron.teacher
    if t.path:
        return model("teacher", hf_config(t.path), f"{t.path}/config.json")
    from climb_hpc.proxy.model import llama_config

    conf = llama_config(t.model, int(cfg.tokenize.vocab_size), 0, int(cfg.minitron.correct.seq_len))
    return model("teacher", conf, "minitron.teacher.model (the built-in tiny teacher)")


def pruned_config(teacher: Any, prune: Any) -> Any:
    """The teacher's config cut to ``minitron.prune``'s targets, as ``prune.prune_model`` writes it."""
    conf = copy.deepcopy(teacher)
    head_dim = int(getattr(teacher, "head_dim", None) or teacher.hidden_size // teacher.num_attention_heads)
    for k in ("hidden_size", "intermediate_size", "num_attention_heads"):
        if prune.get(k):
            setattr(conf, k, int(prune[k]))
    kv = prune.get("num_key_value_heads")
    mha = teacher.num_key_value_heads == teacher.num_attention_heads
    conf.num_key_value_heads = int(kv) if kv else (conf.num_attention_heads if mha else teacher.num_key_value_heads)
    conf.num_hidden_layers = teacher.num_hidden_layers - int(prune.depth.drop or 0)
    conf.head_dim = head_dim
    if getattr(conf, "layer_types", None):
        conf.layer_types = conf.layer_types[:conf.num_hidden_layers]
    return conf


def student_model(cfg: DictConfig, teacher: Model) -> Model:
    d = cfg.minitron.distill
    if d.get("student"):
        return model("student", hf_config(d.student), f"{d.student}/config.json")
    if d.get("student_config") and "prune" not in cfg.pipeline.stages:
        from climb_hpc.proxy.model import llama_config

        conf = llama_config(d.student_config, teacher.dims.vocab_size, 0, int(d.seq_len))
        return model("student", conf, "minitron.distill.student_config")
    return model("student", pruned_config(teacher.config, cfg.minitron.prune), "the teacher cut to minitron.prune")


def _guard(rows: list[Check], stage: str, check: str, fn: Callable[[], Any], key: str) -> Any:
    """``fn()``; a failing row naming ``key`` (and None) when it raises."""
    try:
        return fn()
    except Exception as e:  # a model config that does not build is the user's to fix: say which key
        rows.append(Check(stage, check, "-", "-", False, f"{key}: {one_line(str(e))[:300]}"))
        return None


def models(cfg: DictConfig, names: list[str], rows: list[Check]) -> dict[str, Model]:
    """Every model the running stages use, built on the meta device (a row each)."""
    out: dict[str, Model] = {}
    if any(n in names for n in MINITRON):
        t = _guard(rows, "correct", "teacher on meta", lambda: teacher_model(cfg), "minitron.teacher.path")
        if t is not None:
            out["teacher"] = t
            if any(n in names for n in ("prune", "distill")):
                s = _guard(rows, "prune" if "prune" in names else "distill", "student on meta",
                           lambda: student_model(cfg, t), "minitron.prune / minitron.distill.student")
                if s is not None:
                    out["student"] = s
    if "search" in names:
        from climb_hpc.estimate import Ledger
        from climb_hpc.plan import vocab_size

        p = _guard(rows, "search", "proxy on meta", lambda: proxy_model(cfg, vocab_size(cfg, Ledger()), rows),
                   "proxy.init" if cfg.proxy.get("init") else "proxy.model")
        if p is not None:
            out["proxy"] = p
    for m in out.values():
        stage = {"teacher": "correct", "student": "prune" if "prune" in names else "distill", "proxy": "search"}[m.name]
        rows.append(Check(stage, f"{m.name} on meta", f"{count(m.dims.params)} params, {m.dims.num_hidden_layers} "
                          f"layers", m.source, True))
    if "embed" in names:
        rows.append(encoder_row(cfg))
    return out


def proxy_model(cfg: DictConfig, vocab: int, rows: list[Check]) -> Model:
    """The proxy: ``proxy.init``'s config.json when set (a row says which ``proxy.model`` keys it overrides), else
    ``proxy.model`` on the run's vocabulary."""
    from climb_hpc.proxy.model import init_config, init_folder, llama_config, overrides_text, shape_overrides

    folder = init_folder(cfg.proxy)
    if folder is None:
        return model("proxy", llama_config(cfg.proxy.model, vocab, 0, int(cfg.proxy.seq_len)), f"proxy={cfg.proxy.name}")
    conf = init_config(folder)
    diff = shape_overrides(cfg.proxy, conf)
    rows.append(Check("search", "proxy.init sets the shape", overrides_text(diff) or "as proxy.model",
                      "proxy.model not used", True))
    return model("proxy", conf, f"proxy.init={folder}/config.json")


def encoder_row(cfg: DictConfig) -> Check:
    path = Path(str(cfg.embed.model)).expanduser()
    if not (path / "config.json").is_file():
        return Check("embed", "encoder on meta", "-", str(cfg.embed.model), None,
                     f"embed.model={cfg.embed.model} has no config.json readable here")
    try:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                          trust_remote_code=bool(cfg.embed.trust_remote_code))
        n = meta_params(conf, causal=False, trust_remote_code=bool(cfg.embed.trust_remote_code))
    except Exception as e:  # custom code that cannot build on meta: not the user's fault, not checked
        return Check("embed", "encoder on meta", "-", str(path), None, f"not built on meta: {one_line(str(e))[:200]}")
    return Check("embed", "encoder on meta", f"{count(n)} params", f"{path}/config.json", True)


def count(n: float) -> str:
    """8.03B / 54.8M."""
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


# ---------------------------------------------------------------- the checks


def config_rows(cfg: DictConfig) -> tuple[list[Check], list[str]]:
    """check_config's verdict (one row) and the stages that run."""
    from climb_hpc.pipeline import check_config, stage_names

    try:
        names = check_config(cfg)
        return [Check("config", "check_config", f"{len(names)} stage(s)", "values, order, inputs, resources", True)], names
    except ConfigError as e:
        try:
            names = stage_names(cfg)
        except ConfigError:
            names = []
        return [Check("config", "check_config", "-", "values, order, inputs, resources", False, one_line(str(e)))], names


def input_rows(cfg: DictConfig, names: list[str]) -> list[Check]:
    """The input paths check_config found to exist (``validate.INPUT_PATHS``) are readable by this user (a folder:
    listable too)."""
    import os

    from climb_hpc.validate import INPUT_PATHS, NOT_PATHS

    given, unreadable = 0, []
    for key, stage in INPUT_PATHS:
        value = OmegaConf.select(cfg, key, default=None)
        if stage not in names or not isinstance(value, str) or not value or value in NOT_PATHS.get(key, ()):
            continue
        path = Path(os.path.expandvars(value)).expanduser()
        if not path.exists():
            continue  # check_config's to report (or a name the model loader knows)
        given += 1
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            unreadable.append(f"{key}={value}")
    if not given:
        return []
    ok = not unreadable
    return [Check("config", "inputs readable", f"{given - len(unreadable)} of {given}", "all", ok,
                  "" if ok else f"not readable by this user: {', '.join(unreadable)}: fix their permissions or give "
                                "readable copies")]


def target_rows(cfg: DictConfig, names: list[str]) -> list[Check]:
    """What the search's trials are scored on, checked as a trial would (``targets.check_target``): for lm_eval,
    lm-eval installed, the task names under ``target.include_path``, their metrics and data files."""
    from climb_hpc.proxy.targets import TargetError, check_target

    if "search" not in names or str(cfg.target.kind) in ("heldout", "jsonl"):
        return []
    what = ("lm-eval tasks, metrics, data" if cfg.target.kind == "lm_eval" else "files, normalize")
    try:
        check_target(cfg.target)
    except TargetError as e:
        return [Check("search", f"target {cfg.target.kind}", "-", what, False, one_line(str(e)))]
    return [Check("search", f"target {cfg.target.kind}", "ok", what, True)]


def pruning_rows(teacher: Any, prune: Any) -> list[Check]:
    """The targets of ``minitron.prune`` against the teacher's config."""
    from climb_hpc.minitron.prune import choose_heads

    rows = []
    for key in ("hidden_size", "intermediate_size"):
        want, have = prune.get(key), int(getattr(teacher, key))
        if want is None:
            continue
        ok = int(want) <= have
        rows.append(Check("prune", key, str(want), f"<= {have}", ok,
                          "" if ok else f"minitron.prune.{key}={want} is larger than the teacher's {have}: "
                                        f"set minitron.prune.{key} to at most {have}"))
    n_heads, n_kv = int(teacher.num_attention_heads), int(teacher.num_key_value_heads)
    head_dim = int(getattr(teacher, "head_dim", None) or teacher.hidden_size // n_heads)
    heads = int(prune.get("num_attention_heads") or n_heads)
    kv = prune.get("num_key_value_heads")
    kv = int(kv) if kv else (heads if n_kv == n_heads else n_kv)
    try:
        import torch

        choose_heads(torch.zeros(n_heads), n_kv, heads, kv)
        ok, message = True, ""
    except ValueError as e:
        per = n_heads // n_kv
        k = min(kv, n_kv)
        near = k * min(max(heads // k, 1), per)
        ok, message = False, (f"minitron.prune.num_attention_heads={heads}, num_key_value_heads={kv}: {e}; set them "
                              f"so that KV heads <= {n_kv} and heads = KV heads x at most {per}, e.g. "
                              f"minitron.prune.num_attention_heads={near} minitron.prune.num_key_value_heads={k}")
    rows.append(Check("prune", "heads / KV groups (GQA)", f"{heads} / {kv} x {head_dim}",
                      f"teacher {n_heads} / {n_kv} x {head_dim}", ok, message))
    drop, layers = int(prune.depth.drop or 0), int(teacher.num_hidden_layers)
    ok = drop < layers
    rows.append(Check("prune", "layers dropped", str(drop), f"< {layers}", ok,
                      "" if ok else f"minitron.prune.depth.drop={drop}: the teacher has {layers} layers; set it below"))
    return rows


def _section(cfg: DictConfig, name: str) -> dict[str, Any]:
    stage = get_stage(name)
    return OmegaConf.to_container(OmegaConf.select(task_config(cfg, stage), stage.section), resolve=True)  # type: ignore


def batch_rows(cfg: DictConfig, names: list[str]) -> list[Check]:
    """global = micro x ranks x accumulation for each DeepSpeed stage (``ds.grad_accumulation``'s rule)."""
    rows = []
    for name in (n for n in TRAINING if n in names):
        s = _section(cfg, name)
        ranks = stage_resources(cfg, get_stage(name)).world_size
        micro, glob = int(s["micro_batch_size"]), int(s["global_batch_size"])
        step = micro * ranks
        ok = glob % step == 0
        lo, hi = glob // step * step, (glob // step + 1) * step
        near = " or ".join(str(v) for v in (lo, hi) if v > 0)
        rows.append(Check(name, "batch = micro x ranks x accum", str(glob), f"{micro} x {ranks} x k", ok,
                          "" if ok else f"minitron.{name}.global_batch_size={glob} does not divide over "
                                        f"micro_batch_size {micro} x {ranks} data-parallel ranks: set "
                                        f"minitron.{name}.global_batch_size={near}"))
    if "search" in names:
        batch, micro = int(cfg.proxy.batch_size), int(cfg.proxy.micro_batch_size or cfg.proxy.batch_size)
        ok = batch % micro == 0
        rows.append(Check("search", "batch = micro x accum", str(batch), f"{micro} x k", ok,
                          "" if ok else f"proxy.batch_size={batch} is not a multiple of proxy.micro_batch_size={micro}: "
                                        "set one of them"))
    return rows


def position_rows(cfg: DictConfig, names: list[str], ms: dict[str, Model]) -> list[Check]:
    """Each Minitron sequence length against its model's max_position_embeddings."""
    rows = []
    for name, who in (("correct", "teacher"), ("importance", "teacher"), ("distill", "student")):
        m = ms.get(who)
        if name not in names or m is None or not cfg.minitron.teacher.path:
            continue  # the tiny teacher is built for its sequence length
        limit = int(getattr(m.config, "max_position_embeddings", 0) or 0)
        seq = int(cfg.minitron[name].seq_len)
        ok = not limit or seq <= limit
        rows.append(Check(name, "seq_len <= max positions", str(seq), str(limit or "-"), ok,
                          "" if ok else f"minitron.{name}.seq_len={seq} is longer than the {who}'s "
                                        f"max_position_embeddings={limit}: set minitron.{name}.seq_len to at most {limit}"))
    return rows


def tokenizer_vocab(path: str) -> Optional[int]:
    f = Path(str(path)).expanduser() / "tokenizer.json"
    if not f.is_file():
        return None
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(f)).get_vocab_size())


def vocabulary_rows(cfg: DictConfig, names: list[str], ms: dict[str, Model]) -> list[Check]:
    """A given teacher trains on the run's token ids: they must be its own tokenizer's."""
    t = ms.get("teacher")
    m = cfg.minitron
    if t is None or not m.teacher.path or not any(n in names for n in TRAINING):
        return []
    own = all(m[n].get("data") for n in TRAINING if n in names)
    if own:
        return []
    from climb_hpc.corpus.identity import run_tokenizer

    tok, vocab = run_tokenizer(cfg), t.dims.vocab_size  # a given teacher's own unless tokenize.tokenizer is set
    if not tok:
        return [Check("tokenize", "teacher's tokenizer", f"a new BPE of {cfg.tokenize.vocab_size}", f"{vocab} (teacher)",
                      False, f"tokenize.tokenizer=null trains a new BPE, so the teacher ({m.teacher.path}) would be "
                             f"fine-tuned on another tokenizer's ids: set tokenize.tokenizer={m.teacher.path}")]
    n = tokenizer_vocab(tok)
    if n is None:
        return [Check("tokenize", "teacher's tokenizer", "-", f"{vocab} (teacher)", None,
                      f"tokenize.tokenizer={tok} has no tokenizer.json readable here")]
    ok = n <= vocab
    return [Check("tokenize", "teacher's tokenizer", f"{n} tokens", f"<= {vocab} (teacher)", ok,
                  "" if ok else f"tokenize.tokenizer={tok} has {n} tokens, more than the teacher's vocabulary {vocab}: "
                                f"it is another tokenizer; set tokenize.tokenizer={m.teacher.path}")]


def device_rows(cfg: DictConfig, names: list[str], hw: Any) -> list[Check]:
    """Where each Minitron task runs: the GPUs its job asks for reach its code (``task_config``), and a training
    stage on a GPU cluster has GPUs."""
    from climb_hpc.minitron.ds import planned_precision

    rows = []
    for name in (n for n in TRAINING if n in names):
        s = _section(cfg, name)
        res = stage_resources(cfg, get_stage(name))
        gpus, precision = int(s["gpus"] or 0), planned_precision(s)
        where = f"{gpus} GPU a rank, {precision}" if gpus else f"CPU, {precision}"
        ok, message = gpus == res.gpus, ""
        if not ok:
            message = (f"minitron.{name}.gpus={gpus} but the job requests {res.gpus} GPU(s) a rank: set "
                       f"cluster.stage_resources.{name}.gpus and minitron.{name}.gpus alike")
        elif hw is not None and hw.gpus and not gpus:
            ok, message = False, (f"{name} would train on CPUs on {hw.profile}'s GPU nodes: set "
                                  f"cluster.stage_resources.{name}.gpus=1")
        rows.append(Check(name, "runs on", where, f"{res.gpus} GPU(s) requested", ok, message))
    return rows


def _with_corpus(cfg: DictConfig, tokens: float) -> DictConfig:
    c = cfg.copy()
    OmegaConf.update(c, "plan.corpus_tokens", tokens)
    return c


def time_rows(cfg: DictConfig, names: list[str], profile: str, plan: Any = None, hw: Any = None) -> list[Check]:
    """Each stage's time limit against the plan's estimate of a task (checkpointable tasks may be requeued)."""
    from climb_hpc.plan import LOCAL_EXECUTORS, make_plan, wall_text

    varying: set[str] = set()
    if plan is None:
        if cfg.cluster.executor in LOCAL_EXECUTORS:
            return []  # this machine's executors set no time limit
        if hw is None:
            return [Check("plan", "time limits", "-", "-", None, f"plan.hardware.{profile} does not describe the "
                          "nodes (docs/planning.md): time limits and GPU memory are not checked")]
        p = cfg.plan
        try:
            if p.corpus_tokens is None and p.corpus_docs is None:
                # the corpus size is not given: a stage whose estimate changes with it is not checked
                plan, other = make_plan(_with_corpus(cfg, 1e9), profile), make_plan(_with_corpus(cfg, 1e12), profile)
                varying = {a.stage for a, b in zip(plan.stages, other.stages, strict=True) if a.task_h != b.task_h}
            else:
                plan = make_plan(cfg, profile)
        except ConfigError as e:
            return [Check("plan", "estimate", "-", "-", False, one_line(str(e)))]
    if plan.hardware.cpu_only:
        return []  # this machine's executors set no time limit
    rows = []
    for s in plan.stages:
        if s.stage not in names or not s.estimated:
            continue
        need = f"~{wall_text(s.task_h * 3600)} a task"
        if s.stage in varying:
            rows.append(Check(s.stage, "time limit", "-", f"{s.time_limit_min} min", None,
                              "its work grows with the corpus: set plan.corpus_tokens=N to check it"))
            continue
        rows.append(Check(s.stage, "time limit", need, f"{s.time_limit_min} min", s.time_problem is None,
                          s.time_problem or ""))
    return rows


def _memory_advice(name: str, s: dict[str, Any]) -> str:
    if not s.get("loss_chunk_tokens"):
        return f"set minitron.{name}.loss_chunk_tokens=1024"
    if not s.get("activation_checkpointing"):
        return f"set minitron.{name}.activation_checkpointing=true"
    if int(s["zero_stage"]) < 3:
        return f"set minitron.{name}.zero_stage=3"
    return f"lower minitron.{name}.micro_batch_size or minitron.{name}.seq_len"


def memory_rows(cfg: DictConfig, names: list[str], hw: Any, ms: dict[str, Model]) -> list[Check]:
    """The modelled peak of every GPU stage a GPU (``memory.py``), and of a CPU stage a node, against the limit."""
    from climb_hpc.minitron.ds import planned_precision

    rows = []
    for name in names:
        res = stage_resources(cfg, get_stage(name))
        peak, advice = None, ""
        if name in TRAINING and ("teacher" in ms) and (name == "correct" or "student" in ms):
            s = _section(cfg, name)
            precision = planned_precision(s)
            student = ms["teacher"] if name == "correct" else ms["student"]
            peak = training_peak(student.dims, int(s["micro_batch_size"]), int(s["seq_len"]), precision,
                                 int(s["zero_stage"]), res.world_size, bool(s.get("activation_checkpointing")),
                                 "lm" if name == "correct" else "distill",
                                 teacher=ms["teacher"].dims if name == "distill" else None,
                                 teacher_zero3=bool(s.get("teacher_zero3")), deepspeed=True, runtime=bool(res.gpus),
                                 chunk=int(s.get("loss_chunk_tokens") or 0), bucket=float(s["zero_bucket_size"]),
                                 live=float(s["zero3_max_live_parameters"]))
            advice = _memory_advice(name, s)
        elif name == "importance" and "teacher" in ms:
            i = _section(cfg, name)  # the task's section: its GPUs make precision auto bf16
            peak = scoring_peak(ms["teacher"].dims, int(i["micro_batch_size"] or i["batch_size"]), int(i["seq_len"]),
                                planned_precision(i), runtime=bool(res.gpus), chunk=int(i["loss_chunk_tokens"] or 0))
            advice = "lower minitron.importance.micro_batch_size (the scores and the total work stay the same)"
        elif name == "search" and "proxy" in ms:
            p = cfg.proxy
            peak = training_peak(ms["proxy"].dims, int(p.micro_batch_size or p.batch_size), int(p.seq_len), "fp32", 0, 1,
                                 deepspeed=False, runtime=bool(res.gpus))
            peak.notes.append("fp32 weights and AdamW; autocast's bf16 activations counted at 4 bytes (an upper bound)")
            advice = "lower proxy.micro_batch_size"
        elif name in ("embed", "kmeans") and res.gpus:
            rows.append(Check(name, "memory a GPU", "-", "-", None, "inference: not modelled"))
        if peak is None:
            continue
        rows.append(_memory_row(name, peak, res, hw, advice))
    return rows


def _memory_row(name: str, peak: Peak, res: Any, hw: Any, advice: str) -> Check:
    if res.gpus:
        if hw is None or not hw.gpu_mem_gb:
            what = hw.profile if hw is not None else "this profile"
            return Check(name, "memory a GPU", f"{peak.gb:.1f} GB", "-", None,
                         f"{what} states no GPU memory: plan.hardware.<profile>.gpu_mem_gb")
        limit, unit, where = hw.gpu_mem_gb, "a GPU", f"a {hw.gpu}"
        total = peak.gb
    else:  # on the CPU: every rank of a node shares its memory
        total = peak.gb * res.tasks_per_node
        limit = res.mem_gb or (hw.mem_gb if hw is not None else 0)
        unit, where = "a node", ("the job's mem_gb" if res.mem_gb else "the node")
        if not limit:
            return Check(name, "memory a node", f"{total:.1f} GB", "-", None, "no memory limit known here")
    ok = total <= limit
    message = "" if ok else (f"the modelled peak {total:.1f} GB {unit} ({peak.text()}; {'; '.join(peak.notes)}) "
                             f"exceeds the {limit:.4g} GB of {where}: {advice}")
    return Check(name, f"memory {unit}", f"{total:.1f} GB", f"{limit:.4g} GB", ok, message)


# ---------------------------------------------------------------- all of it


def hardware_of(cfg: DictConfig, profile: Optional[str]) -> Any:
    from climb_hpc.estimate import Ledger
    from climb_hpc.plan import hardware

    if profile is None:
        return None
    try:
        return hardware(cfg, profile, Ledger())
    except ConfigError:
        return None


def profile_for(overrides: list[str], cfg: DictConfig) -> str:
    """The cluster profile of a launch: the one named (``cluster=NAME``); else (a resumed run folder's saved config)
    the first profile, the default first, whose executor and job shapes (``stage_resources``) ``cfg`` has."""
    from climb_hpc.config import compose
    from climb_hpc.plan import cluster_profile, profiles

    default = cluster_profile(overrides)
    if any(o.startswith("cluster=") for o in overrides):
        return default
    mine = (cfg.cluster.executor, OmegaConf.to_container(cfg.cluster.stage_resources, resolve=True))
    for name in [default, *(p for p in profiles() if p != default)]:
        c = compose([f"cluster={name}"]).cluster
        if (c.executor, OmegaConf.to_container(c.stage_resources, resolve=True)) == mine:
            return name
    return default


def preflight(cfg: DictConfig, profile: Optional[str] = None, plan: Any = None) -> list[Check]:
    """Every check of a composed config on the cluster profile ``profile`` (its ``plan.hardware`` entry gives the
    GPUs' memory; None: the GPU memory and time limits are not checked). ``plan``: an already made plan to reuse."""
    rows, names = config_rows(cfg)
    rows += input_rows(cfg, names)
    rows += target_rows(cfg, names)
    hw = plan.hardware if plan is not None else hardware_of(cfg, profile)
    ms = models(cfg, names, rows)
    if "teacher" in ms and any(n in names for n in ("prune", "distill")) and not cfg.minitron.distill.get("student"):
        rows += pruning_rows(ms["teacher"].config, cfg.minitron.prune)
    rows += batch_rows(cfg, names)
    rows += position_rows(cfg, names, ms)
    rows += vocabulary_rows(cfg, names, ms)
    rows += device_rows(cfg, names, hw)
    if profile is not None or plan is not None:
        rows += time_rows(cfg, names, plan.profile if plan is not None else str(profile), plan, hw)
    rows += memory_rows(cfg, names, hw, ms)
    return rows


def failures(rows: list[Check]) -> list[Check]:
    return [r for r in rows if r.ok is False]


def verdict(rows: list[Check]) -> str:
    bad, unchecked = failures(rows), [r for r in rows if r.ok is None]
    extra = f", {len(unchecked)} not checked here" if unchecked else ""
    if bad:
        return f"preflight: FAILED, {len(bad)} of {len(rows)} checks{extra}"
    return f"preflight: ok, {len(rows) - len(unchecked)} checks passed{extra}"


def render(rows: list[Check]) -> str:
    """One table (stage, check, value, limit, ok), the failing rows' messages, then the verdict."""
    cells = [("stage", "check", "value", "limit", "ok")]
    cells += [(r.stage, r.check, r.value, r.limit, {True: "ok", False: "FAIL", None: "-"}[r.ok]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    notes = [f"  {r.stage}: {r.message}" for r in rows if r.message and r.ok is not True]
    if notes:
        lines += ["", "to fix (FAIL) or to check it (-):", *notes]
    return "\n".join([*lines, "", verdict(rows)])


def as_json(rows: list[Check]) -> dict[str, Any]:
    return {"ok": not failures(rows), "verdict": verdict(rows), "checks": [asdict(r) for r in rows]}


def raise_on_failure(rows: list[Check]) -> None:
    """PreflightFailed with the failing rows' messages (one line), if any row failed."""
    bad = failures(rows)
    if bad:
        raise PreflightFailed(f"preflight failed ({len(bad)} check(s); preflight=skip runs anyway): "
                              + " | ".join(f"{r.stage} {r.check}: {r.message}" for r in bad))


def gate(cfg: DictConfig, profile: Optional[str], echo: Callable[[str], None] = print) -> list[Check]:
    """Before a run writes or submits anything: check_config (its own error, as without preflight), then every
    check; on a failure the table goes to ``echo`` and :class:`PreflightFailed` names the failing rows' keys."""
    import logging

    from climb_hpc.pipeline import check_config

    check_config(cfg)
    rows = preflight(cfg, profile)
    if failures(rows):
        echo(render(rows))
        raise_on_failure(rows)
    logging.getLogger("climb_hpc").info("%s (climb-hpc preflight shows the table)", verdict(rows))
    return rows


def dumps(rows: list[Check]) -> str:
    return json.dumps(as_json(rows), indent=2)
