"""Link modules: the effective weight each computes, its gradients, and feeding weights."""

from __future__ import annotations

import torch

from sharedft_fx.links import LowRankLink, feed_weights


def test_lowrank_link_is_bank_plus_product_bit_for_bit_with_gradients() -> None:
    torch.manual_seed(0)
    bank = torch.randn(16, 8, 3, 3, requires_grad=True)
    link = LowRankLink(torch.randn(16, 4), torch.randn(4, 72))
    w = link(bank)
    assert torch.equal(w, bank + (link.B @ link.A).reshape(bank.shape))
    w.square().sum().backward()
    g = 2 * w.detach().reshape(16, -1)
    assert torch.allclose(bank.grad, 2 * w.detach())
    assert torch.allclose(link.B.grad, g @ link.A.detach().T, rtol=1e-5)
    assert torch.allclose(link.A.grad, link.B.detach().T @ g, rtol=1e-5)


def test_feed_weights_takes_tensors_and_functions_and_restores() -> None:
    bank = torch.zeros(2, 2, 1, 1)
    a, b = LowRankLink(torch.ones(2, 1), torch.ones(1, 2)), LowRankLink(torch.ones(2, 1), torch.ones(1, 2))
    fixed, calls = torch.full((2, 2, 1, 1), 3.0), []
    with feed_weights({a: fixed, b: lambda: calls.append(1) or fixed * 2}):
        assert torch.equal(a(bank), fixed) and torch.equal(b(bank), fixed * 2)
        b(bank)
    assert len(calls) == 2  # computed at each call, never kept
    assert torch.equal(a(bank), torch.ones(2, 2, 1, 1))
