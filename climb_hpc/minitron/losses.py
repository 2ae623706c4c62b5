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
"""

from __future__ import annotations

from collections.abc import Callable

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
