"""Losses from the final hidden states, a chunk of tokens at a time: no ``[tokens, vocab]`` fp32 tensor of the whole
sequence ever exists.

At paper shape (seq 8192, vocabulary 128,256) one sequence's logits are 4.2 GB in fp32, and a plain distillation
loss keeps five or more such tensors (both models' logits, their log-probs, the KL's temporaries, the LM term's).
Here the output head runs on ``chunk`` tokens at a time inside ``torch.utils.checkpoint`` (non-reentrant): the
forward keeps only each chunk's input (a view of the hidden states, alive anyway) and the backward recomputes the
chunk's logits, so at most one chunk's ``[chunk, vocab]`` buffers are alive at once. Gradients are exact: the same
operations run in the same order on the same values (tests/test_losses.py: within 1e-5 of the plain computation in
fp32). The cost is one more head matmul a chunk in the backward.

``head`` is a callable (the model's ``lm_head`` module), not a weight: under ZeRO-3 a module gathers its sharded
weight when called, in the forward and again in the recompute. ``chunk <= 0`` runs the plain computation.

Where the head's weight is a plain tensor (a torch model without ZeRO: the proxy trials), :func:`linear_ce_sum`
avoids the recompute as Liger-kernel's fused linear cross-entropy does: each chunk's gradients with respect to its
hidden states and to the weight are computed in the forward, right after its loss, and the backward only scales
them. Nothing of the logits outlives its chunk; the cost is the two gradients' memory ([tokens, h] and the
weight's size, fp32) from the forward to the backward. On 2 CPU threads (the tiny proxy's head: 4096 tokens,
h 128, vocabulary 8192, chunks of 256 tokens whose logits stay in cache) the head and loss forward and backward
run 2.3-3.3x faster than on whole logits in bf16 and 1.6-1.75x in fp32; the checkpointed :func:`lm_loss_sum`
(chunks of 512) 1.0-1.25x.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Head = Callable[[torch.Tensor], torch.Tensor]


def _spans(n: int, chunk: int) -> list[tuple[int, int]]:
    if chunk <= 0 or n <= chunk:
        return [(0, n)]
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def _run(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)``, checkpointed when a backward will follow (nothing to save under no_grad)."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args if isinstance(a, torch.Tensor)):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def lm_loss_sum(hidden: torch.Tensor, head: Head, targets: torch.Tensor, chunk: int,
                ignore_index: int = -100) -> torch.Tensor:
    """Sum over tokens of the next-token cross-entropy (fp32). ``hidden`` [N, h] or [B, T, h]; ``targets`` the
    matching [N] or [B, T] token ids (``ignore_index`` skipped)."""
    h, y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)

    def ce(hc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(hc).float(), yc, ignore_index=ignore_index, reduction="sum")

    parts = [_run(ce, h[a:b], y[a:b]) for a, b in _spans(len(y), chunk)]
    return torch.stack(parts).sum() if len(parts) > 1 else parts[0]


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of the cross-entropy of ``hidden @ weight.T``, whose gradients are computed in the forward, a chunk of
    tokens at a time: no logits are saved and none are recomputed. The backward only scales them."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                ignore_index: int, dtype: torch.dtype) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, gh, gw = _linear_ce(hidden, weight, targets, chunk, ignore_index, dtype, want_h, want_w)
        ctx.save_for_backward(gh, gw)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        gh, gw = ctx.saved_tensors
        gh = gh * grad.to(gh.dtype) if ctx.needs_input_grad[0] else None
        gw = gw * grad.to(gw.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None


def _linear_ce(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, ignore_index: int,
               dtype: torch.dtype, want_h: bool, want_w: bool
               ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(loss sum, d loss / d hidden, d loss / d weight): the logits of a chunk in ``dtype`` (as autocast would make
    them), the loss and the softmax in fp32, the gradients' matmuls in ``dtype`` again, as autograd would run them
    on the plain computation; the weight's gradient is summed over the chunks in fp32."""
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        ignored = bool((targets == ignore_index).any())
        y = targets.clamp_min(0) if ignored else targets
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        gh = torch.empty_like(hidden) if want_h else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for a, b in _spans(len(targets), chunk):
            hc, yc = hidden[a:b].to(dtype), y[a:b, None]
            logp = torch.log_softmax((hc @ w.t()).float(), dim=-1)
            nll = logp.gather(1, yc).neg_()
            if ignored:
                keep = (targets[a:b] != ignore_index).unsqueeze(1)
                nll = nll * keep
            total += nll.sum()
            if gh is None and gw is None:
                continue
            g = logp.exp_()  # d loss / d logits = softmax - one-hot, 0 on ignored tokens
            g.scatter_add_(1, yc, torch.full_like(nll, -1.0))
            if ignored:
                g.mul_(keep)
            g = g.to(dtype)
            if gh is not None:
                gh[a:b] = g @ w
            if gw is not None:
                if dtype == torch.float32:
                    gw.addmm_(g.t(), hc)
                else:
                    gw += (g.t() @ hc).float()
    return total, gh, (gw.to(weight.dtype) if gw is not None else None)


def linear_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                  ignore_index: int = -100) -> torch.Tensor:
    """:func:`lm_loss_sum` for a plain head ``hidden @ weight.T`` (no bias), fused: each chunk's gradients are
    computed in the forward (Liger-kernel style), so the backward neither recomputes the head's matmul nor holds
    any logits. For a torch model whose weight is whole on each rank (not under ZeRO-3, which shards it).

    Under autocast, the logits are made in autocast's dtype (bf16) and the loss taken in fp32 from them, as
    ``F.cross_entropy(head(hidden).float(), ...)`` would. ``chunk <= 0``: one chunk of every token."""
    h, y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, y, chunk, ignore_index, dtype)
    return _linear_ce(h, weight, y, chunk, ignore_index, dtype, False, False)[0]


def lm_loss(hidden: torch.Tensor, head: Head, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean next-token cross-entropy over every token of ``targets``."""
    return lm_loss_sum(hidden, head, targets, chunk) / targets.numel()


def _kl_ce(s_logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor, temperature: float,
           with_ce: bool) -> torch.Tensor:
    """[sum over tokens of KL(teacher || student) at ``temperature``, sum of the student's CE (0 unless with_ce)]."""
    s, t = s_logits.float(), t_logits.float()
    ls = F.log_softmax(s / temperature, dim=-1)
    lt = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(ls, lt, log_target=True, reduction="sum")
    ce = F.cross_entropy(s, y, reduction="sum") if with_ce else kl.new_zeros(())
    return torch.stack([kl, ce])


def distill_sums(s_hidden: torch.Tensor, s_head: Head, t_hidden: torch.Tensor, t_head: Head, targets: torch.Tensor,
                 temperature: float, chunk: int, with_ce: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of KL(teacher || student) on logits / T, sum of the student's cross-entropy), both fp32, over tokens.

    The teacher's head runs without gradients on its own hidden states, chunk by chunk as the student's (and again
    in the student's recompute): the teacher's logits never exist whole either."""
    sh, th = s_hidden.reshape(-1, s_hidden.shape[-1]), t_hidden.reshape(-1, t_hidden.shape[-1])
    y, t = targets.reshape(-1), float(temperature)

    def part(sc: torch.Tensor, tc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = t_head(tc)
        return _kl_ce(s_head(sc), t_logits, yc, t, with_ce)

    parts = [_run(part, sh[a:b], th[a:b], y[a:b]) for a, b in _spans(len(y), chunk)]
    total = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
    return total[0], total[1]


def kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The plain reference: KL(teacher || student) per token (mean over every position) from whole logits, x T^2."""
    t = float(temperature)
    s = F.log_softmax(s_logits.float() / t, dim=-1).flatten(0, -2)
    p = F.log_softmax(t_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)
