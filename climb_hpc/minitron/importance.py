"""Stage ``importance``: Minitron activation-based importance of the teacher's neurons, heads, channels, layers.

Forward hooks over calibration windows of the mixed dataset (``minitron.importance.samples`` sequences of
``seq_len`` tokens) score, per layer:

* MLP neurons: the input of ``down_proj`` (one value a neuron);
* attention heads: the input of ``o_proj``, cut into heads; a token's score is the L2 norm of the head's
  contribution through ``o_proj`` (|W_o[:, head] x_head|, which also sees a head whose output columns are 0);
* embedding channels: the outputs of every RMSNorm (input/post-attention layernorms, final norm), summed.

Aggregation as in Minitron (and NVIDIA Model-Optimizer's ``mcore_minitron``): the absolute activation is
averaged over the sequence, then the L2 norm is taken over the batch. A KV group's importance is the sum of
its query heads'. Layer importance, for depth pruning:

* ``block``: block importance, 1 - cos(layer input, layer output), averaged over tokens (ShortGPT);
* ``loss``: the LM loss of the model with each contiguous block of ``drop`` layers removed;
* ``mc``: optionally, a multiple-choice accuracy (``climb_hpc.proxy.targets.mc_accuracy``) per removed block.

The scoring is split into pieces (the hooked pass, the base loss, one a depth candidate), each saved under
``importance/progress/`` as it finishes: a preempted task (checkpointable; USR2 on Slurm) resumes at the next
piece. The model is scored in bf16 on GPUs, losses a chunk of tokens at a time, forward passes of
``micro_batch_size`` windows. Outputs: ``<run>/importance/importance.pt`` (a dict of tensors, see
``compute_importance``) and ``importance/summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from climb_hpc.estimate import Inputs, Ledger, Work, model_dims, train_flops
from climb_hpc.minitron.correct import _m, load_hf, plain, seed_of
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.rundir import RunDir

NAME = "importance"


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The ``LlamaModel`` / ``MistralModel`` inside a causal LM (``layers``, ``norm``, ``embed_tokens``)."""
    return model.model  # type: ignore[return-value]


class _SumSq:
    """Accumulates, for activations [B, T, ...], sum over the batch of (mean over T of |x|)^2."""

    def __init__(self) -> None:
        self.acc: Optional[torch.Tensor] = None

    def add(self, per_token: torch.Tensor) -> None:
        v = per_token.detach().float().abs().mean(dim=1).pow(2).sum(dim=0).cpu()
        self.acc = v if self.acc is None else self.acc + v

    def result(self) -> torch.Tensor:
        assert self.acc is not None, "no activations recorded"
        return self.acc.sqrt()


@contextmanager
def _hooks(handles: list[Any]):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lm_loss_of(model: torch.nn.Module, batches: list[torch.Tensor], chunk: int = 0) -> float:
    """Mean next-token cross-entropy of windows [B, T + 1] (token-weighted over the batches), from the final hidden
    states ``chunk`` tokens at a time (``losses.lm_loss_sum``): no whole-batch logits."""
    from climb_hpc.minitron.losses import lm_loss_sum

    total, n = 0.0, 0
    dev = next(model.parameters()).device
    head = model.get_output_embeddings()
    with torch.no_grad():
        for seqs in batches:
            seqs = seqs.to(dev)
            hidden = decoder(model)(input_ids=seqs[:, :-1]).last_hidden_state
            total += float(lm_loss_sum(hidden, head, seqs[:, 1:], chunk))
            n += seqs[:, 1:].numel()
    return total / n


class Progress:
    """Finished pieces of a scoring run, one file each under ``folder`` (none kept when ``folder`` is None): a
    preempted run resumes at the first missing piece. Between pieces a preemption request saves nothing more and
    raises ``Preempted`` (the pieces done are already on disk)."""

    def __init__(self, folder: Optional[Path]):
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        from climb_hpc import preempt
        from climb_hpc.rundir import atomic_path

        if self.folder is None:
            return compute()
        path = self.folder / f"{key}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        if preempt.requested():
            raise preempt.Preempted(f"importance: preempted before {key}; the pieces before it are saved")
        value = compute()
        with atomic_path(path) as tmp:
            torch.save(value, tmp)
        return value

    def done(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.pt")) if self.folder is not None else []


@contextmanager
def without_layers(model: torch.nn.Module, drop: Iterable[int]):
    """The model with these decoder layers skipped (for scoring only; no cache is used)."""
    dec = decoder(model)
    layers = dec.layers
    gone = set(drop)
    dec.layers = torch.nn.ModuleList([m for i, m in enumerate(layers) if i not in gone])
    try:
        yield model
    finally:
        dec.layers = layers


def compute_importance(model: torch.nn.Module, batches: list[torch.Tensor], drop: int = 1,
                       mc: Optional[Callable[[torch.nn.Module], float]] = None, chunk: int = 0,
                       progress: Optional[Path] = None) -> dict[str, Any]:
    """Importance of every prunable unit of an HF Llama/Mistral causal LM over calibration windows.

    ``batches``: int64 windows [B, T + 1] (the forward sees ``[:, :-1]``, the loss scores ``[:, 1:]``); every score
    is a sum over sequences, so any split of the windows into batches gives the same scores. Losses are taken
    ``chunk`` tokens at a time. With ``progress`` (a folder), each piece (the hooked pass, the base loss, each depth
    candidate) is saved as it finishes and found there by a rerun (``Progress``).
    Returns ``mlp`` [L, I], ``heads`` [L, H], ``kv_groups`` [L, KV], ``channels`` [h], ``block`` [L],
    ``depth_loss`` [L - drop + 1] (loss with layers [s, s + drop) removed), ``base_loss``, ``drop``, and
    ``depth_mc`` / ``base_mc`` when ``mc`` is given (accuracy, higher is better)."""
    store = Progress(progress)
    was_training = model.training
    model.eval()
    try:
        out = dict(store.get("activations", lambda: activation_scores(model, batches)))
        out["base_loss"] = store.get("base_loss", lambda: lm_loss_of(model, batches, chunk))
        n_layers = model.config.num_hidden_layers
        starts = range(n_layers - drop + 1) if 0 < drop <= n_layers else range(0)
        depth_loss, depth_mc = [], []
        for s in starts:
            def candidate(s: int = s) -> dict[str, float]:
                with without_layers(model, range(s, s + drop)):
                    return {"loss": lm_loss_of(model, batches, chunk),
                            **({"mc": float(mc(model))} if mc is not None else {})}

            r = store.get(f"depth_{s:04d}", candidate)
            depth_loss.append(r["loss"])
            if mc is not None:
                depth_mc.append(r["mc"])
        if mc is not None:
            out["base_mc"] = store.get("base_mc", lambda: float(mc(model)))
            out["depth_mc"] = torch.tensor(depth_mc, dtype=torch.float32)
    finally:
        model.train(was_training)
    out["depth_loss"] = torch.tensor(depth_loss, dtype=torch.float32)
    out["drop"] = int(drop)
    return out


def activation_scores(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One hooked pass of the decoder (no head) over the windows: ``mlp``, ``heads``, ``kv_groups``, ``channels``,
    ``block`` (see ``compute_importance``)."""
    cfg = model.config
    dec = decoder(model)
    n_layers, n_heads, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    mlp = [_SumSq() for _ in range(n_layers)]
    heads = [_SumSq() for _ in range(n_layers)]
    norms: list[_SumSq] = []
    bi_sum = torch.zeros(n_layers, dtype=torch.float64)
    bi_count = [0]
    inputs: dict[int, torch.Tensor] = {}
    handles: list[Any] = []

    for i, layer in enumerate(dec.layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda mod, args, i=i: mlp[i].add(args[0])))

        def head_hook(mod: Any, args: tuple, i: int = i) -> None:
            # |W_o[:, head] x_head| per token, as sqrt(x^T G x) with G = W_h^T W_h [H, d, d]: a head's input
            # to o_proj as o_proj sees it (a head whose o_proj columns are zero contributes nothing)
            x = args[0].float().reshape(*args[0].shape[:-1], n_heads, head_dim)
            w = mod.weight.float().reshape(-1, n_heads, head_dim)
            gram = torch.einsum("ohd,ohe->hde", w, w)
            sq = torch.einsum("bthd,hde,bthe->bth", x, gram, x)
            heads[i].add(sq.clamp_min(0).sqrt())

        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook))

        def keep_input(mod: Any, args: tuple, kwargs: dict, i: int = i) -> None:
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach()

        def block_importance(mod: Any, args: tuple, kwargs: dict, out: Any, i: int = i) -> None:
            y = out[0] if isinstance(out, tuple) else out
            cos = F.cosine_similarity(inputs.pop(i).float(), y.detach().float(), dim=-1)
            bi_sum[i] += float((1.0 - cos).sum())
            if i == 0:
                bi_count[0] += cos.numel()

        handles.append(layer.register_forward_pre_hook(keep_input, with_kwargs=True))
        handles.append(layer.register_forward_hook(block_importance, with_kwargs=True))
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norms.append(_SumSq())
            handles.append(norm.register_forward_hook(lambda mod, args, out, s=norms[-1]: s.add(out)))
    norms.append(_SumSq())
    handles.append(dec.norm.register_forward_hook(lambda mod, args, out, s=norms[-1]: s.add(out)))

    with _hooks(handles), torch.no_grad():
        dev = next(model.parameters()).device
        for seqs in batches:
            dec(input_ids=seqs[:, :-1].to(dev))
    head_imp = torch.stack([h.result() for h in heads])
    return {
        "mlp": torch.stack([m.result() for m in mlp]),
        "heads": head_imp,
        "kv_groups": head_imp.reshape(n_layers, n_kv, n_heads // n_kv).sum(-1),
        "channels": torch.stack([n.result() for n in norms]).sum(0),
        "block": (bi_sum / max(1, bi_count[0])).float(),
    }


# ---------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Outputs:
    """What importance writes under ``<run_dir>/importance/``."""

    dir: Path

    @property
    def importance(self) -> Path:
        return self.dir / "importance.pt"  # the scores (torch.save of a dict of tensors)

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def progress(self) -> Path:
        return self.dir / "progress"  # one file a finished piece (``Progress``): a preempted task resumes from them


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME)


def reads(cfg: DictConfig) -> tuple[str, ...]:
    """The mixed dataset (calibration) and the run's tokenizer; the corrected teacher unless ``model`` is given."""
    return ("tokenize", "mix") if _m(cfg).importance.get("model") else ("tokenize", "mix", "correct")


def teacher_dir(cfg: DictConfig, rd: RunDir) -> Path:
    from climb_hpc.minitron.correct import outputs as correct_outputs

    p = _m(cfg).importance.get("model")
    return Path(p) if p else correct_outputs(rd).teacher


def depth_drop(cfg: DictConfig) -> int:
    """Layers a depth-pruning block removes: importance.drop, else prune.depth.drop (1 when that is 0)."""
    m = _m(cfg)
    d = m.importance.get("drop")
    if d is None:
        d = (m.prune.get("depth") or {}).get("drop") or 1
    return int(d)


def calibration(cfg: DictConfig, rd: RunDir) -> list[torch.Tensor]:
    """``samples`` seeded windows of ``seq_len + 1`` tokens of the mixture (its training stores at its
    weights), in forward passes of ``micro_batch_size`` (else ``batch_size``) windows."""
    from climb_hpc.minitron.data import mixture_plan
    from climb_hpc.minitron.engine import phase_seed

    s = _m(cfg).importance
    n, seq_len, bs = int(s.samples), int(s.seq_len), int(s.get("micro_batch_size") or s.batch_size)
    plan = mixture_plan(rd, seq_len, n, phase_seed(seed_of(cfg), NAME))
    return [torch.from_numpy(plan.sequences(i, min(bs, n - i))) for i in range(0, n, bs)]


def mc_metric(cfg: DictConfig, rd: RunDir) -> Optional[Callable[[torch.nn.Module], float]]:
    s = _m(cfg).importance
    if not s.get("mc_path"):
        return None
    from climb_hpc.corpus.tokenize import tokenizer_dir
    from climb_hpc.corpus.tokenizer import load_fast
    from climb_hpc.minitron.correct import tokenizer_info
    from climb_hpc.proxy.targets import mc_accuracy, read_mc

    items = read_mc(s.mc_path, int(s.get("mc_max_items") or 1000))
    tok, eos = load_fast(tokenizer_dir(rd)), int(tokenizer_info(rd)["eos_id"])
    norm = str(s.get("mc_normalize") or "char")
    return lambda model: mc_accuracy(model, tok, eos, items, int(s.seq_len), next(model.parameters()).device,
                                     norm)["accuracy"]


def summary_of(imp: dict[str, Any], k: int = 5) -> dict[str, Any]:
    """A small readable view: per-layer scores and the least important units."""
    out: dict[str, Any] = {
        "layers": int(imp["block"].numel()), "drop": imp["drop"], "base_loss": imp["base_loss"],
        "block": [round(float(x), 6) for x in imp["block"]],
        "depth_loss": [round(float(x), 6) for x in imp["depth_loss"]],
        "least_channels": imp["channels"].argsort()[:k].tolist(),
        "least_heads": [row.argsort()[:k].tolist() for row in imp["heads"]],
        "least_neurons": [row.argsort()[:k].tolist() for row in imp["mlp"]],
    }
    if "depth_mc" in imp:
        out["depth_mc"] = [round(float(x), 6) for x in imp["depth_mc"]]
        out["base_mc"] = imp["base_mc"]
    return out


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    from climb_hpc.minitron.ds import model_dtype
    from climb_hpc.rundir import atomic_path, atomic_write_json
    from climb_hpc.training import task_device, torch_threads

    s = _m(cfg).importance
    out = outputs(rd)
    with torch_threads(int(s.get("cpus") or 1)):
        model = load_hf(teacher_dir(cfg, rd), model_dtype(s))  # bf16 on GPUs
        model = model.to(task_device(s))
        done = Progress(out.progress).done()
        if done:
            print(f"importance: resuming after {len(done)} finished pieces ({', '.join(done)})", flush=True)
        imp = compute_importance(model, calibration(cfg, rd), depth_drop(cfg), mc_metric(cfg, rd),
                                 int(s.get("loss_chunk_tokens") or 0), out.progress)
    imp["teacher"] = str(teacher_dir(cfg, rd))
    imp["config"] = plain(s)
    with atomic_path(out.importance) as tmp:
        torch.save(imp, tmp)
    atomic_write_json(out.summary, summary_of(imp))
    print(f"importance: {imp['block'].numel()} layers, base loss {imp['base_loss']:.4f} -> {out.dir}", flush=True)


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Forward passes of the teacher over the calibration set: the hooked pass, the base loss, and one loss with
    each candidate block removed (plus the multiple-choice items when ``mc_path`` is set)."""
    from climb_hpc.minitron.sizes import teacher

    i = _m(cfg).importance
    t_dims, _ = teacher(cfg, x.vocab, led)
    if i.get("model"):
        t_dims = model_dims(i.model, "minitron.importance.model", t_dims, led, "importance model")
    seq = int(i.seq_len)
    tokens = led.use("calibration tokens", int(i.samples) * seq, "minitron.importance.samples x seq_len")
    drop, layers = depth_drop(cfg), t_dims["num_hidden_layers"]
    candidates = layers - drop + 1 if 0 < drop <= layers else 0
    led.use("depth candidates", candidates, "layers - drop + 1, a loss forward each (drop: minitron.importance.drop "
                                            "or minitron.prune.depth.drop)")
    fwd = train_flops(t_dims, seq) / 3
    flop = fwd * tokens * (2 + candidates)
    if i.get("mc_path"):
        flop += fwd * int(i.mc_max_items) * float(cfg.plan.mc_tokens_per_item) * (candidates + 1)
    return Work("forward", [1], flop=flop, model=True)


STAGE = Stage(name=NAME, run=run, num_tasks=lambda cfg, rd: 1, section="minitron.importance",
              resources=lambda cfg: Resources.from_config(_m(cfg).importance), reads=reads, checkpointable=True,
              outputs=outputs, estimate=estimate)
