"""Lazily permuted weights: read as permuted, copy nothing, never touch the original tensor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sharedft_fx.lazy_weights import (
    WeightSource,
    is_lazy,
    materialize,
    materialize_all,
    permute_lazily,
    release,
    weight_source,
)


def _conv_pair() -> tuple[nn.Conv2d, nn.Conv2d, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    user = nn.Conv2d(5, 6, 3)
    work = copy.deepcopy(user, {id(user.weight): user.weight})  # shares the weight, as transform
    return user, work, torch.randperm(6), torch.randperm(5)


def test_permuted_view_reads_permuted_and_copies_nothing() -> None:
    user, work, p0, p1 = _conv_pair()
    before, version = user.weight.detach().clone(), user.weight._version
    permute_lazily(work, "weight", [(0, p0), (1, p1)])
    assert is_lazy(work, "weight")
    expected = before[p0][:, p1]
    assert torch.equal(work.weight, expected)
    original = work.parametrizations.weight.original
    assert original.data_ptr() == user.weight.data_ptr()  # the same storage: no copy
    assert user.weight._version == version and torch.equal(user.weight, before)
    x = torch.randn(2, 5, 8, 8)
    reference = nn.functional.conv2d(x, expected, user.bias)
    with torch.no_grad():
        assert torch.equal(work(x), reference)
    assert torch.equal(weight_source(nn.Sequential(work), "0.weight").read(), expected)


def test_source_reads_whole_in_pieces_and_after_release() -> None:
    user, work, p0, p1 = _conv_pair()
    permute_lazily(work, "weight", [(0, p0), (1, p1)])
    holder = nn.Sequential(work)
    source = weight_source(holder, "0.weight")
    expected = user.weight.detach()[p0][:, p1]
    assert torch.equal(source.read(), expected)
    assert torch.equal(source.read(torch.float64), expected.double())
    pieces = torch.cat([part for _, part in source.pieces()])
    assert torch.equal(pieces, expected)
    release(work, "weight")
    assert not parametrize.is_parametrized(work)
    assert type(work) is nn.Conv2d and work.weight.data_ptr() == user.weight.data_ptr()
    assert torch.equal(source(), expected)  # still valid: it holds the original and the moves
    assert source.requires_grad is True


def test_plain_source_returns_the_parameter_itself() -> None:
    user, _, _, _ = _conv_pair()
    source = weight_source(nn.Sequential(user), "0.weight")
    assert source.read().data_ptr() == user.weight.data_ptr()
    assert source.copy().data_ptr() != user.weight.data_ptr()
    assert torch.equal(source.copy(), user.weight.detach())
    assert torch.equal(source.read(torch.float64), user.weight.detach().double())


@pytest.mark.parametrize("moves", [[(1, 0)], [(0, 0), (0, 1)], [(1, 0), (0, 1)]])
def test_composed_moves_apply_in_order(moves) -> None:
    w = torch.randn(6, 6, 2, 2)
    perms = [torch.randperm(6) for _ in moves]
    steps = tuple((dim, perms[i]) for dim, i in moves)
    expected = w
    for dim, perm in steps:
        expected = expected.index_select(dim, perm)
    assert torch.equal(WeightSource(w, steps).read(), expected)


def test_materialize_gives_a_plain_parameter_with_its_own_storage() -> None:
    user, work, p0, p1 = _conv_pair()
    user.weight.requires_grad_(False)
    permute_lazily(work, "weight", [(0, p0), (1, p1)])
    clone = copy.deepcopy(work).double()  # the float64 re-check copies a lazy module
    assert torch.allclose(clone.weight, user.weight.detach().double()[p0][:, p1])
    materialize(work, "weight")
    assert type(work) is nn.Conv2d and isinstance(work.weight, nn.Parameter)
    assert work.weight.data_ptr() != user.weight.data_ptr()
    assert not work.weight.requires_grad
    assert torch.equal(work.weight, user.weight.detach()[p0][:, p1])
    other = copy.deepcopy(user)
    permute_lazily(other, "weight", [(0, p0)])
    assert materialize_all(nn.Sequential(other, work)) == 1 and not is_lazy(other, "weight")


def test_permuted_view_is_differentiable() -> None:
    _, work, p0, p1 = _conv_pair()
    permute_lazily(work, "weight", [(0, p0), (1, p1)])
    (work.weight * torch.arange(6.0)[:, None, None, None]).sum().backward()
    grad = work.parametrizations.weight.original.grad
    assert torch.equal(grad, torch.arange(6.0)[torch.argsort(p0)][:, None, None, None].expand_as(grad))
