"""Truncated SVD factors, tolerance ranks, scales and output comparisons."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from sharedft_fx.numerics import (
    channel_scale,
    lowrank_factors,
    rank_for_tolerance,
    relative_error,
    tree_relative_error,
)


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (6, 6)])
def test_full_rank_factors_are_exact_and_truncation_is_optimal(shape) -> None:
    r = torch.randn(*shape, dtype=torch.float64)
    b, a = lowrank_factors(r, min(shape))
    assert torch.allclose(b @ a, r, atol=1e-10)
    s = torch.linalg.svdvals(r)
    for k in (1, 3):
        b, a = lowrank_factors(r, k)
        assert b.shape == (shape[0], k) and a.shape == (k, shape[1])
        best = math.sqrt(float((s[k:] ** 2).sum()))  # Eckart-Young
        assert abs(torch.linalg.norm(r - b @ a).item() - best) < 1e-8
    b, a = lowrank_factors(r, 0)
    assert b.shape == (shape[0], 0) and torch.count_nonzero(b @ a) == 0


def test_rank_for_tolerance_is_the_smallest_rank() -> None:
    u, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    s = torch.tensor([10.0, 5, 2, 1, 0.5, 0.1, 0, 0, 0, 0], dtype=torch.float64)
    r = u @ torch.diag(s) @ v.T
    norm = 1.0
    # tail energies: rank 3 leaves sqrt(1+0.25+0.01)=1.122, rank 4 leaves 0.51
    assert rank_for_tolerance(r, norm, 1.2) == 3
    assert rank_for_tolerance(r, norm, 1.0) == 4
    assert rank_for_tolerance(r, norm, 1e-6) == 6  # the zero singular values are not needed


def test_channel_scale_is_least_squares() -> None:
    bank = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    s = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    w = bank * s[:, None, None, None]
    assert torch.allclose(channel_scale(w, bank), s)
    zero_bank = torch.zeros_like(bank)
    assert torch.equal(channel_scale(w, zero_bank), torch.ones(4, dtype=torch.float64))


def test_tree_errors_compare_structure_and_values() -> None:
    a = torch.ones(3)
    assert relative_error(a * 1.1, a) == pytest.approx(0.1)
    assert tree_relative_error({"x": a, "y": [a, 2 * a]}, OrderedDict(x=a, y=[a, 2 * a])) == 0
    assert tree_relative_error((a,), (a, a)) == math.inf
    assert tree_relative_error(a[:2], a) == math.inf
    assert tree_relative_error(torch.tensor([1, 2]), torch.tensor([1, 3])) == math.inf
    assert tree_relative_error(torch.tensor([float("nan")]), a[:1]) == math.inf


def test_row_chunked_helpers_equal_the_whole_matrix_versions(monkeypatch) -> None:
    import sharedft_fx.numerics as numerics

    monkeypatch.setattr(numerics, "ROW_CHUNK_ELEMENTS", 40)  # 7 x 12 -> chunks of 3 rows
    assert [(s.start, s.stop) for s in numerics.row_chunks(7, 12)] == [(0, 3), (3, 6), (6, 7)]
    w = torch.randn(7, 12, dtype=torch.float64)
    bank = torch.randn(7, 12, dtype=torch.float32)
    scale = torch.randn(7, dtype=torch.float32)
    target = w.clone()
    numerics.subtract_rows_(target, bank)
    assert torch.equal(target, w - bank.double())
    target = w.clone()
    numerics.subtract_rows_(target, bank, scale)
    assert torch.equal(target, w - bank.double() * scale.double()[:, None])
    b, a = torch.randn(7, 2), torch.randn(2, 12)
    whole = torch.linalg.vector_norm(w - b.double() @ a.double()).item()
    assert numerics.residual_norm(w, b, a) == pytest.approx(whole, rel=1e-12)
    assert numerics.residual_norm(w) == pytest.approx(torch.linalg.vector_norm(w).item())
    s = (w * bank.double()).sum(1) / (bank.double() ** 2).sum(1)
    assert torch.allclose(numerics.channel_scale(w, bank), s, rtol=1e-12)
