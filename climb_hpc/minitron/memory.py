"""Peak memory of a training or scoring process, term by term: what ``climb-hpc preflight`` holds against a GPU's
memory (``plan.hardware.<profile>.gpu_mem_gb``) before 32 nodes are booked.

A rank of a DeepSpeed job (``correct``, ``distill``; ``engine.py``) holds at its peak, in bytes:

* **model state**, with ``P`` parameters, ``e`` bytes an element of the model's precision (bf16 2, fp32 4) and ZeRO
  sharding over the ``R`` data-parallel ranks (arXiv 1910.02054, section 3): weights ``e P`` (stage 3: ``/ R``),
  gradients ``e P`` (stage 2 and 3: ``/ R``) and the optimizer's 12 bytes a parameter (fp32 master weights, AdamW's
  two moments; stage 1, 2, 3: ``/ R``), plus the fresh gradient of the largest parameter (the embedding or LM head,
  ``e V h``) that autograd makes before it is accumulated or reduced;
* **ZeRO buffers** (``zero_bucket_size`` and ``zero3_max_live_parameters``, DeepSpeed's defaults unless set): the
  gradient reduce bucket (``reduce_bucket_size`` 5e8 elements) and, for stage 3, the gathered parameters
  (``stage3_max_live_parameters`` 1e9), each at most ``P`` elements;
* **activations** saved for the backward pass, per layer and token (:func:`layer_bytes`, counted from the tensors
  autograd keeps in HF's Llama decoder layer with SDPA attention); with activation checkpointing only each layer's
  input is kept, plus one layer's activations while it is recomputed;
* **logits and loss buffers**: the ``[tokens, vocab]`` tensors the objective materialises (:data:`LOGIT_BUFFERS`);
* **a frozen teacher** (``distill``): its weights only, bf16 on GPUs, sharded when ``teacher_zero3``, plus its
  logits (counted in the distillation's logit buffers); its forward runs before the student's, so its working set
  (one layer at a time, no gradients) is gone by the step's peak;
* **runtime**: the CUDA context, NCCL's buffers and the caching allocator's slack (:data:`RUNTIME_GB`).

``tests/test_preflight.py`` checks the model against the measured peak of a real-width Llama on CPU
(``benchmarks/memory_model.py`` at the 8B model's full width).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from climb_hpc.estimate import DIMS

GB = 1e9
#: DeepSpeed's default gradient reduce bucket (``reduce_bucket_size``), elements
ZERO_BUCKET = 5e8
#: DeepSpeed's default bound on gathered ZeRO-3 parameters (``stage3_max_live_parameters``), elements
ZERO3_LIVE = 1e9
#: CUDA context (~0.5 GB on an H100), NCCL's communicator buffers and the caching allocator's fragmentation
RUNTIME_GB = 3.0
#: optimizer bytes a parameter under DeepSpeed: fp32 master weights (4) + AdamW's two moments (4 + 4)
OPTIMIZER_BYTES = 12
#: What the objective holds of ``[tokens, vocab]`` at its peak: (fp32 buffers, tensors in the model dtype), by
#: objective. LM (``engine.lm_loss``): at the cross-entropy's backward the saved log-probs, their gradient and the
#: logits' gradient, 3 fp32 (the model-dtype logits and their fp32 copy are freed by then; the forward's peak, logits
#: + copy + log-probs, is lower). Distillation (``distill.kl_loss`` plus the LM term it always computes): the student's
#: and the teacher's logits and 5 fp32 (both log-probs, the KL's elementwise temporaries, the LM term's log-probs) at the
#: loss's forward; this count was read off a measurement (one H200, docs/preflight.md), where a first count of 6 fp32
#: plus the teacher's working set had over-estimated the peak by 9-15 %.
LOGIT_BUFFERS = {"lm": (3, 0), "distill": (5, 2)}
#: The same with chunked losses (``losses.py``, ``loss_chunk_tokens``): buffers of ``[chunk, vocab]`` only, at the
#: chunk's recompute in the backward. LM: the chunk's logits (model dtype) and their fp32 copy, the log-probs, their
#: gradient; distillation: both models' chunk logits, their fp32 copies scaled by 1/T, both log-probs, the KL's
#: elementwise temporaries and the LM term's log-probs, and the gradients of the student's. Plus the final hidden
#: states the chunks read (and the teacher's), alive for the whole step: :func:`training_peak`'s "hidden states".
CHUNKED_BUFFERS = {"lm": (3, 2), "distill": (8, 2)}


def elem_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


@dataclass(frozen=True)
class Dims:
    """A Llama's shape (:data:`climb_hpc.estimate.DIMS`, config.json's names, read as attributes: ``d.hidden_size``)
    and its exact parameter count (tied embeddings once)."""

    shape: Mapping[str, int]
    params: int

    @classmethod
    def of(cls, d: Mapping[str, int], params: int) -> Dims:
        return cls({k: int(d[k]) for k in DIMS}, int(params))

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["shape"][name]
        except KeyError:
            raise AttributeError(name) from None


def layer_bytes(d: Dims, e: int) -> int:
    """Bytes a token that one decoder layer saves for the backward pass (HF Llama, SDPA attention with GQA, no mask).

    Per RMSNorm: its input cast to fp32 (4 h: the ``pow``), the normalised value in the model dtype (e h: the weight's
    product) and its output (e h: the projections' input), twice a layer. Attention: the rotated queries and keys and
    the values (SDPA's inputs), its output and the ``o_proj`` input (a contiguous copy of it). MLP: the gate, its
    SiLU, the up projection and their product (the ``down_proj`` input)."""
    h, i = d.hidden_size, d.intermediate_size
    q, kv = d.num_attention_heads * d.head_dim, d.num_key_value_heads * d.head_dim
    norms = 2 * (4 * h + 2 * e * h)
    attention = e * (3 * q + 2 * kv)
    mlp = 4 * e * i
    return norms + attention + mlp


def activation_bytes(d: Dims, tokens: int, e: int, checkpointing: bool) -> float:
    """Saved activations of all layers for ``tokens`` tokens (micro-batch x sequence)."""
    if checkpointing:  # each layer's input, and one layer recomputed at a time
        return tokens * (d.num_hidden_layers * e * d.hidden_size + layer_bytes(d, e))
    return tokens * d.num_hidden_layers * layer_bytes(d, e)


@dataclass
class Peak:
    """Bytes by term (ordered as built) and what each term assumed."""

    terms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def gb(self) -> float:
        return self.total / GB

    def text(self) -> str:
        """``weights 16.1 + grads 0.1 + ... GB``."""
        return " + ".join(f"{k} {v / GB:.3g}" for k, v in self.terms.items() if v) + " GB"


def state_bytes(params: float, e: int, zero_stage: int, ranks: int, deepspeed: bool = True) -> dict[str, float]:
    """Weights, gradients and optimizer state of a trained model on one rank (ZeRO's sharding by stage). Without
    DeepSpeed (plain torch, the benchmark): the optimizer's two moments in the parameters' dtype, nothing sharded."""
    r = max(1, int(ranks))
    if not deepspeed:
        return {"weights": e * params, "grads": e * params, "optimizer": 2 * e * params}
    z = int(zero_stage)
    return {"weights": e * params / (r if z >= 3 else 1), "grads": e * params / (r if z >= 2 else 1),
            "optimizer": OPTIMIZER_BYTES * params / (r if z >= 1 else 1)}


def logit_bytes(tokens: int, vocab: int, e: int, objective: str, chunk: int) -> float:
    """The ``[tokens, vocab]`` buffers of the loss at its peak: whole logits (``chunk`` 0), or one chunk's."""
    if chunk > 0:
        fp32, model_dtype = CHUNKED_BUFFERS[objective]
        tokens = min(int(tokens), int(chunk))
    else:
        fp32, model_dtype = LOGIT_BUFFERS[objective]
    return tokens * vocab * (4 * fp32 + e * model_dtype)


def training_peak(d: Dims, micro: int, seq: int, precision: str, zero_stage: int, ranks: int,
                  checkpointing: bool = False, objective: str = "lm", teacher: Optional[Dims] = None,
                  teacher_zero3: bool = False, deepspeed: bool = True, optimizer: bool = True,
                  runtime: bool = True, chunk: int = 0, bucket: float = ZERO_BUCKET, live: float = ZERO3_LIVE) -> Peak:
    """The peak of one rank training ``d`` on ``micro`` sequences of ``seq`` tokens a micro-step (gradients resident:
    accumulation keeps them between micro-steps). ``objective``: lm, or distill from a frozen ``teacher``. ``chunk``:
    the losses' ``loss_chunk_tokens`` (0: whole logits); ``bucket`` and ``live``: ``zero_bucket_size`` and
    ``zero3_max_live_parameters``."""
    e, tokens = elem_bytes(precision), int(micro) * int(seq)
    peak = Peak()
    state = state_bytes(d.params, e, zero_stage, ranks, deepspeed)
    if not optimizer:
        state.pop("optimizer")
    state["grad in flight"] = e * d.vocab_size * d.hidden_size  # the largest parameter's fresh gradient
    peak.terms.update(state)
    if deepspeed:
        z, p = int(zero_stage), d.params
        peak.terms["zero buffers"] = (e * min(bucket, p) if z >= 1 else 0.0) + (e * min(live, p) if z >= 3 else 0.0)
    peak.terms["activations"] = activation_bytes(d, tokens, e, checkpointing)
    logits = logit_bytes(tokens, d.vocab_size, e, objective, chunk)
    if chunk > 0:  # the final hidden states (and their gradient), the teacher's too, read chunk by chunk
        peak.terms["hidden states"] = tokens * e * (2 * d.hidden_size + (teacher.hidden_size if teacher else 0))
    if teacher is not None:
        te = e  # the teacher runs in the task's precision (distill.load_teacher)
        shard = max(1, int(ranks)) if teacher_zero3 else 1
        peak.terms["teacher weights"] = te * teacher.params / shard
        if teacher_zero3:
            peak.terms["teacher weights"] += te * min(live, teacher.params)
    peak.terms["logits and loss"] = logits
    if runtime:
        peak.terms["runtime"] = RUNTIME_GB * GB
    peak.notes.append(f"{precision}, ZeRO-{zero_stage} over {ranks} rank(s), {micro} x {seq} tokens, activation "
                      f"checkpointing {'on' if checkpointing else 'off'}, "
                      + (f"losses in chunks of {chunk} tokens" if chunk > 0 else "whole logits"))
    return peak


def scoring_peak(d: Dims, batch: int, seq: int, precision: str = "fp32", runtime: bool = False,
                 chunk: int = 0) -> Peak:
    """Forward passes without gradients (``importance``): the weights, one layer's working set (at most what a layer
    saves for a backward), the logits and the cross-entropy's log-probs (of a chunk of ``chunk`` tokens; 0: all)."""
    e, tokens = elem_bytes(precision), int(batch) * int(seq)
    scored = min(tokens, int(chunk)) if chunk > 0 else tokens
    peak = Peak({"weights": e * d.params, "working set": tokens * layer_bytes(d, e),
                 "logits and loss": scored * d.vocab_size * (e + 4)},
                [f"{precision}, no gradients, {batch} x {seq} tokens a forward"
                 + (f", the loss in chunks of {chunk} tokens" if chunk > 0 else "")])
    if runtime:
        peak.terms["runtime"] = RUNTIME_GB * GB
    return peak
