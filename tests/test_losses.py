"""The chunked losses equal the plain computation (value and gradients within 1e-5 in fp32), and never hold one
sequence's whole logits; so does the fused head + cross-entropy (gradients made in the forward), also under bf16
autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from climb_hpc.minitron.losses import distill_sums, kl_loss, linear_ce_sum, lm_loss, lm_loss_sum

N, H, HT, V = 300, 48, 64, 1000  # a chunk of 64 leaves a partial last chunk (300 = 4 x 64 + 44)


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(N, H, generator=g, dtype=torch.float64).float().requires_grad_()
    s_head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        s_head.weight.copy_(torch.randn(V, H, generator=g) * 0.2)
    t_hidden = torch.randn(N, HT, generator=g)
    t_head = torch.nn.Linear(HT, V, bias=False).requires_grad_(False)
    with torch.no_grad():
        t_head.weight.copy_(torch.randn(V, HT, generator=g) * 0.2)
    y = torch.randint(0, V, (N,), generator=g)
    return s_hidden, s_head, t_hidden, t_head, y


def _grads(loss: torch.Tensor, *ts: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, ts))


@pytest.mark.parametrize("chunk", [64, 299, 1])
def test_chunked_cross_entropy_equals_the_plain_one_with_gradients(chunk):
    h, head, _, _, y = _setup()
    plain = F.cross_entropy(head(h), y)
    want = _grads(plain, h, head.weight)
    got_loss = lm_loss(h, head, y, chunk)
    got = _grads(got_loss, h, head.weight)
    torch.testing.assert_close(got_loss, plain, atol=1e-5, rtol=1e-6)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_distillation_equals_kl_plus_lm_on_whole_logits(temperature):
    h, head, th, t_head, y = _setup(1)
    n = y.numel()
    plain = kl_loss(head(h), t_head(th), temperature) + 0.3 * F.cross_entropy(head(h), y)
    want = _grads(plain, h, head.weight)
    kl, ce = distill_sums(h, head, th, t_head, y, temperature, chunk=64)
    got_loss = kl / n * temperature ** 2 + 0.3 * ce / n
    got = _grads(got_loss, h, head.weight)
    torch.testing.assert_close(got_loss, plain, atol=1e-5, rtol=1e-6)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert t_head.weight.grad is None  # the teacher stays frozen


def _saved_sizes(loss_fn) -> list[int]:
    """The sizes of the tensors autograd saves for the backward of ``loss_fn()``, which then runs."""
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return saved


def test_no_whole_logits_are_saved_for_the_backward():
    """Every tensor autograd keeps for the chunked loss is at most a chunk's logits; the plain loss keeps N x V."""
    h, head, th, t_head, y = _setup(2)
    saved = _saved_sizes(lambda: lm_loss_sum(h, head, y, 64) + distill_sums(h, head, th, t_head, y, 1.0, 64)[0])
    assert max(saved) < N * V / 4, saved  # the chunks' inputs and the head weight, no [N, V] tensor
    assert max(_saved_sizes(lambda: F.cross_entropy(head(h), y))) >= N * V  # the check itself would see them


def test_no_grad_runs_without_checkpointing_and_gives_the_same_value():
    h, head, _, _, y = _setup(3)
    with torch.no_grad():
        a = lm_loss_sum(h, head, y, 50)
        b = F.cross_entropy(head(h), y, reduction="sum")
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-6)


# ---------------------------------------------------------------- the fused head + cross-entropy


@pytest.mark.parametrize("chunk", [64, 299, 1, 0])
@pytest.mark.parametrize("ignored", [False, True])
def test_fused_cross_entropy_equals_the_plain_one_with_gradients(chunk, ignored):
    h, head, _, _, y = _setup(4)
    if ignored:
        y = y.clone()
        y[[0, 5, 64, 299]] = -100  # skipped tokens, one of them in the partial last chunk
    plain = F.cross_entropy(head(h), y, reduction="sum") * 0.37  # a backward that does not start at 1
    want = _grads(plain, h, head.weight)
    got_loss = linear_ce_sum(h, head.weight, y, chunk) * 0.37
    got = _grads(got_loss, h, head.weight)
    torch.testing.assert_close(got_loss, plain, atol=1e-5, rtol=1e-6)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_cross_entropy_under_bf16_autocast_takes_the_loss_in_fp32_from_bf16_logits():
    """As ``F.cross_entropy(head(h).float(), y)`` under autocast: the same loss and hidden-state gradient; the
    weight's gradient within bf16 rounding (summed over the chunks in fp32, not rounded once to bf16)."""
    h, head, _, _, y = _setup(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(head(h).float(), y, reduction="sum")
        got_loss = linear_ce_sum(h, head.weight, y, 64)
    fp32 = F.cross_entropy(head(h), y, reduction="sum")
    assert got_loss.dtype == torch.float32
    assert abs((got_loss - plain).item()) < abs((fp32 - plain).item()) / 20  # bf16 logits, not fp32 ones
    torch.testing.assert_close(got_loss, plain, atol=1e-3, rtol=1e-6)
    want, got = _grads(plain, h, head.weight), _grads(got_loss, h, head.weight)
    assert got[0].dtype == got[1].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-2 * float(want[1].abs().max()), rtol=0)


def test_fused_cross_entropy_saves_no_logits_and_runs_under_no_grad():
    h, head, _, _, y = _setup(6)
    assert max(_saved_sizes(lambda: linear_ce_sum(h, head.weight, y, 64))) <= V * H  # the gradients made in the forward
    with torch.no_grad():
        a = linear_ce_sum(h, head.weight, y, 50)
        b = F.cross_entropy(head(h), y, reduction="sum")
    assert not a.requires_grad
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-6)
