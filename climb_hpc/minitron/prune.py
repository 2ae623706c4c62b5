"""Stage ``prune``: Minitron structured pruning of the teacher into ``<run>/student_pruned/``.

Width: keep the most important embedding channels (``hidden_size``), MLP neurons (``intermediate_size``)
and attention heads (``num_attention_heads``; ``head_dim`` unchanged). Every KV group keeps the same number
of query heads: query heads are pruned within their group by importance, and KV heads only as whole groups
(``num_key_value_heads``; for multi-head attention, where every head is its own group, heads go as groups).
Depth: drop the contiguous block of ``depth.drop`` layers that ``depth.metric`` (``block | loss | mc``)
ranks least important. Depth is applied first, width then uses the kept layers' own importance.

The surgery (``prune_model``) builds a fresh model of the same class from the pruned config and loads the
sliced weights into it, so ``layer_idx``, tied embeddings and buffers are right by construction. Outputs::

    <run>/student_pruned/    HF checkpoint (config with an explicit head_dim) + the teacher's tokenizer files
    prune/summary.json       before/after shapes, parameter counts, kept indices (written last)
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from omegaconf import DictConfig

from climb_hpc.estimate import Inputs, Ledger, Work, matmul_params, rate
from climb_hpc.minitron.correct import _m, load_hf, plain
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "prune"
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM")
METRICS = ("block", "loss", "mc")
#: files of an HF checkpoint that are the model, not its tokenizer
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin", "pytorch_model.bin.index.json")


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, in ascending index order (ties: the lower index wins)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def drop_block(importance: Mapping[str, Any], drop: int, metric: str) -> list[int]:
    """The contiguous block of ``drop`` layers the metric ranks least important."""
    if metric not in METRICS:
        raise ValueError(f"depth.metric={metric!r}: choose one of {', '.join(METRICS)}")
    n = int(importance["block"].numel())
    if not 0 < drop < n:
        raise ValueError(f"depth.drop={drop}: must be between 1 and {n - 1} for a {n}-layer model")
    if metric == "block":
        bi = importance["block"].double()
        cost = [float(bi[s:s + drop].sum()) for s in range(n - drop + 1)]  # least change: least important
    else:
        key = "depth_loss" if metric == "loss" else "depth_mc"
        if key not in importance or int(importance.get("drop", -1)) != drop:
            raise ValueError(f"depth.metric={metric}: the importance has no {key} for blocks of {drop} layers "
                             f"(it was computed with drop={importance.get('drop')}); rerun importance with that drop")
        vals = [float(x) for x in importance[key]]
        cost = vals if metric == "loss" else [-v for v in vals]  # lowest loss / highest accuracy without it
    start = min(range(len(cost)), key=lambda s: (cost[s], s))
    return list(range(start, start + drop))


def choose_heads(head_imp: torch.Tensor, n_kv: int, target_heads: int, target_kv: int) -> tuple[list[int], list[int]]:
    """(kept query heads, kept KV groups): the ``target_kv`` best groups (summed head importance), then the
    ``target_heads / target_kv`` best query heads within each kept group."""
    n_heads = head_imp.numel()
    per, per_new = n_heads // n_kv, target_heads // target_kv
    if target_heads % target_kv or per_new > per or target_kv > n_kv:
        raise ValueError(f"cannot keep {target_heads} heads in {target_kv} groups of a model with {n_heads} heads "
                         f"in {n_kv} groups: every group must keep the same number of query heads")
    groups = _top(head_imp.reshape(n_kv, per).sum(-1), target_kv)
    heads = [g * per + j for g in groups for j in _top(head_imp[g * per:(g + 1) * per], per_new)]
    return heads, groups


def _rows_of(units: list[int], width: int) -> torch.Tensor:
    """Row indices of a projection whose output is ``width``-sized blocks, one a kept unit (head)."""
    return torch.tensor([u * width + j for u in units for j in range(width)], dtype=torch.long)


def prune_model(model: torch.nn.Module, importance: Mapping[str, Any], targets: Mapping[str, Any]) -> torch.nn.Module:
    """A new, pruned copy of an HF Llama/Mistral causal LM (the input model is left untouched).

    ``targets``: ``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``
    (each None = keep) and ``depth`` = {drop, metric}. ``importance`` as ``importance.compute_importance``.
    The result carries ``pruned_info`` (kept indices) as an attribute."""
    arch = type(model).__name__
    if arch not in SUPPORTED:
        raise ValueError(f"cannot prune a {arch}: supported are {', '.join(SUPPORTED)}")
    cfg = model.config
    n_layers, n_heads, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    depth = dict(targets.get("depth") or {})
    drop = int(depth.get("drop") or 0)
    dropped = drop_block(importance, drop, str(depth.get("metric") or "block")) if drop else []
    layers = [i for i in range(n_layers) if i not in dropped]

    hidden = int(targets.get("hidden_size") or cfg.hidden_size)
    inter = int(targets.get("intermediate_size") or cfg.intermediate_size)
    heads_t = int(targets.get("num_attention_heads") or n_heads)
    kv_t = targets.get("num_key_value_heads")
    kv_t = int(kv_t) if kv_t else (heads_t if n_kv == n_heads else n_kv)
    channels = _top(importance["channels"], hidden)
    neurons = {i: _top(importance["mlp"][i], inter) for i in layers}
    attn = {i: choose_heads(importance["heads"][i], n_kv, heads_t, kv_t) for i in layers}

    new_cfg = copy.deepcopy(cfg)
    new_cfg.hidden_size, new_cfg.intermediate_size = hidden, inter
    new_cfg.num_attention_heads, new_cfg.num_key_value_heads = heads_t, kv_t
    new_cfg.num_hidden_layers, new_cfg.head_dim = len(layers), head_dim
    if getattr(new_cfg, "layer_types", None):
        new_cfg.layer_types = [cfg.layer_types[i] for i in layers]

    ch = torch.tensor(channels, dtype=torch.long)
    src = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, w in src.items():
        if not name.startswith("model.layers."):
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):
                out[name] = w[:, ch]
            elif name == "model.norm.weight":
                out[name] = w[ch]
            else:
                out[name] = w
            continue
        old = int(name.split(".")[2])
        if old not in layers:
            continue
        rest = name.split(".", 3)[3]
        key = f"model.layers.{layers.index(old)}.{rest}"
        hq, g = attn[old]
        q_rows, kv_rows, mlp_rows = _rows_of(hq, head_dim), _rows_of(g, head_dim), torch.tensor(neurons[old])
        if rest.endswith("layernorm.weight"):
            w = w[ch]
        elif ".q_proj." in name:
            w = w[q_rows][:, ch] if w.dim() == 2 else w[q_rows]
        elif ".k_proj." in name or ".v_proj." in name:
            w = w[kv_rows][:, ch] if w.dim() == 2 else w[kv_rows]
        elif ".o_proj." in name:
            w = w[ch][:, q_rows] if w.dim() == 2 else w[ch]
        elif ".gate_proj." in name or ".up_proj." in name:
            w = w[mlp_rows][:, ch] if w.dim() == 2 else w[mlp_rows]
        elif ".down_proj." in name:
            w = w[ch][:, mlp_rows] if w.dim() == 2 else w[ch]
        else:
            raise ValueError(f"do not know how to prune {name} of a {arch}")
        out[key] = w.clone()

    dtype = next(model.parameters()).dtype
    new = type(model)._from_config(new_cfg, dtype=dtype, attn_implementation=cfg._attn_implementation)
    missing, unexpected = new.load_state_dict(out, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and new_cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"pruned weights do not fit the pruned {arch}: missing {missing}, unexpected {unexpected}")
    if new_cfg.tie_word_embeddings:
        new.tie_weights()
    new.pruned_info = {"layers": layers, "dropped_layers": dropped, "channels": channels,
                       "heads": {i: attn[i][0] for i in layers}, "kv_groups": {i: attn[i][1] for i in layers},
                       "neurons": {i: neurons[i] for i in layers}}
    return new.train(model.training)


# ---------------------------------------------------------------- the stage


def shape_of(config: Any) -> dict[str, Any]:
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "tie_word_embeddings")
    return {k: getattr(config, k, None) for k in keys}


def num_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_pruned(model: torch.nn.Module, out: Path, tokenizer_from: Optional[Path] = None) -> None:
    """``save_pretrained`` into ``out`` (atomically), with ``head_dim`` written into config.json, plus the
    tokenizer files of ``tokenizer_from`` (everything there that is not the model itself)."""
    from climb_hpc.rundir import atomic_path

    with atomic_path(out) as tmp:
        model.save_pretrained(str(tmp))
        conf = json.loads((tmp / "config.json").read_text())
        conf["head_dim"] = int(model.config.head_dim)
        (tmp / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
        if tokenizer_from is not None and tokenizer_from.is_dir():
            for f in tokenizer_from.iterdir():
                if f.is_file() and f.name not in MODEL_FILES and not f.name.startswith("model-"):
                    shutil.copy2(f, tmp / f.name)


def targets_of(cfg: DictConfig) -> dict[str, Any]:
    s = plain(_m(cfg).prune)
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "depth")
    return {k: s.get(k) for k in keys}


@dataclass(frozen=True)
class Outputs:
    """What prune writes: the pruned student ``<run>/student_pruned/`` (an HF checkpoint), ``prune/summary.json``."""

    dir: Path
    student_pruned: Path

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME, rd.path / "student_pruned")


def reads(cfg: DictConfig) -> tuple[str, ...]:
    """The scores, and the model they scored: the corrected teacher unless a model is given."""
    m = _m(cfg)
    return ("importance",) if m.prune.get("model") or m.importance.get("model") else ("importance", "correct")


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    from climb_hpc.minitron.importance import outputs as importance_outputs
    from climb_hpc.minitron.importance import teacher_dir
    from climb_hpc.rundir import atomic_write_json
    from climb_hpc.training import torch_threads

    s = _m(cfg).prune
    src = Path(s.model) if s.get("model") else teacher_dir(cfg, rd)
    imp_path = importance_outputs(rd).importance
    if not imp_path.is_file():
        raise FileNotFoundError(f"{imp_path} is missing: run the importance stage first")
    targets = targets_of(cfg)
    with torch_threads(int(s.get("cpus") or 1)):
        teacher = load_hf(src)
        importance = torch.load(imp_path, weights_only=False)
        student = prune_model(teacher, importance, targets)
    save_pruned(student, outputs(rd).student_pruned, src)
    info = student.pruned_info
    before, after = num_params(teacher), num_params(student)
    summary = {
        "teacher": str(src), "architecture": type(teacher).__name__, "targets": targets,
        "before": shape_of(teacher.config), "after": shape_of(student.config),
        "params": {"before": before, "after": after, "ratio": after / before},
        "kept": {"layers": info["layers"], "dropped_layers": info["dropped_layers"], "channels": info["channels"],
                 "heads": {str(k): v for k, v in info["heads"].items()},
                 "kv_groups": {str(k): v for k, v in info["kv_groups"].items()},
                 "neurons": {str(k): v for k, v in info["neurons"].items()}},
    }
    atomic_write_json(outputs(rd).summary, summary)
    print(f"prune: {before:,} -> {after:,} parameters ({after / before:.1%}) -> {outputs(rd).student_pruned}",
          flush=True)


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Weight surgery: load the teacher in fp32, slice it, save the student."""
    from climb_hpc.minitron.sizes import teacher

    t_dims, _ = teacher(cfg, x.vocab, led)
    params = matmul_params(t_dims) + t_dims["hidden_size"] * t_dims["vocab_size"]  # + the input embedding
    return Work("weights (CPU)", [1], task_s=params / rate(cfg, x, "prune_params_s", led, "params/s a task"),
                model=True, mem_gb=2 * 4 * params / 1e9)


STAGE = Stage(name=NAME, run=run, num_tasks=lambda cfg, rd: 1, section="minitron.prune",
              resources=lambda cfg: Resources.from_config(_m(cfg).prune), reads=reads, outputs=outputs, estimate=estimate)
