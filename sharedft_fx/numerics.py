"""Numerical helpers: relative errors over output trees and truncated SVD factors.

All comparisons are relative norm errors computed in float64, ||out - ref|| / ||ref||, which is
what the tolerances of sharedft-fx mean (element-wise closeness is fragile on deep random nets).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils import _pytree as pytree

__all__ = [
    "relative_error",
    "tree_relative_error",
    "flatten_tensors",
    "lowrank_factors",
    "rank_for_tolerance",
    "channel_scale",
    "subtract_rows_",
    "residual_norm",
    "row_chunks",
]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (absolute norm when ref is all zeros)."""
    out64 = out.detach().to(torch.float64)
    ref64 = ref.detach().to(torch.float64)
    diff = torch.linalg.vector_norm(out64 - ref64).item()
    denom = torch.linalg.vector_norm(ref64).item()
    if not math.isfinite(diff):
        return math.inf
    return diff / denom if denom > 0 else diff


def _plain(tree: Any) -> Any:
    """Mappings as plain dicts, so an OrderedDict and a dict of the same items compare equal."""
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(_plain(v) for v in tree)
    return tree


def flatten_tensors(tree: Any) -> tuple[list[Any], Any]:
    """Leaves and structure of a (nested) model output (mapping types are not told apart)."""
    return pytree.tree_flatten(_plain(tree))


def tree_relative_error(out: Any, ref: Any) -> float:
    """Largest relative error over the tensor leaves of two outputs of the same structure.

    Returns inf when the structures, shapes or non-tensor leaves differ.
    """
    out_leaves, out_spec = flatten_tensors(out)
    ref_leaves, ref_spec = flatten_tensors(ref)
    if out_spec != ref_spec:
        return math.inf
    worst = 0.0
    for a, b in zip(out_leaves, ref_leaves):
        if isinstance(b, torch.Tensor):
            if not isinstance(a, torch.Tensor) or a.shape != b.shape:
                return math.inf
            if b.numel() == 0:
                continue
            if not (b.is_floating_point() or b.is_complex()):
                if not torch.equal(a, b):
                    return math.inf
                continue
            worst = max(worst, relative_error(a, b))
        elif a != b:
            return math.inf
    return worst


def _residual_basis(residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Eigen-decomposition of the smaller Gram matrix of a 2-D float64 residual.

    Returns (singular values descending, basis, left) where `basis` spans the left singular
    vectors (left=True, residual is short and wide) or the right ones (left=False).
    """
    m, n = residual.shape
    left = m <= n
    gram = residual @ residual.T if left else residual.T @ residual
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    sigma = evals[order].clamp_min(0).sqrt()
    return sigma, evecs[:, order], left


_OVERSAMPLE = 10
_POWER_ITERATIONS = 3


def lowrank_factors(residual: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD factors (B, A) with B @ A the best rank-`rank` approximation of `residual`.

    `residual` is 2-D (out, fan_in) and should be float64; the factors keep its dtype. At full
    rank B @ A reproduces the residual exactly (identity factorisation). For a rank far below
    the full one, the top singular subspace is found by randomised subspace iteration with a
    fixed seed (deterministic, within a hair of the optimum; Halko et al. 2011); otherwise by
    an eigen-decomposition of the smaller Gram matrix.

    >>> r = torch.randn(4, 6, dtype=torch.float64)
    >>> b, a = lowrank_factors(r, 4)
    >>> torch.allclose(b @ a, r)
    True
    """
    m, n = residual.shape
    rank = max(0, min(rank, m, n))
    if rank == 0:
        return residual.new_zeros(m, 0), residual.new_zeros(0, n)
    if rank == min(m, n):
        # full rank: the identity factorisation is exact, also after a cast to float32, because
        # a product with an identity matrix rounds nothing (truncated SVD would round twice)
        eye = torch.eye(rank, dtype=residual.dtype, device=residual.device)
        return (eye, residual.clone()) if m <= n else (residual.clone(), eye)
    if 4 * (rank + _OVERSAMPLE) <= min(m, n):
        top = _randomized_range(residual, rank)  # m x rank, orthonormal
        return top.contiguous(), (top.T @ residual).contiguous()
    _, basis, left = _residual_basis(residual)
    top = basis[:, :rank]
    if left:  # residual ≈ U_r (U_rᵀ R): B = U_r, A = U_rᵀ R = S_r V_rᵀ
        return top.contiguous(), (top.T @ residual).contiguous()
    # residual ≈ (R V_r) V_rᵀ: B = U_r S_r, A = V_rᵀ
    return (residual @ top).contiguous(), top.T.contiguous()


def _randomized_range(residual: torch.Tensor, rank: int) -> torch.Tensor:
    """Orthonormal basis of the (approximate) top-`rank` left singular subspace."""
    m, n = residual.shape
    width = rank + _OVERSAMPLE
    gen = torch.Generator(device=residual.device).manual_seed(0)
    omega = torch.randn(n, width, generator=gen, dtype=residual.dtype, device=residual.device)
    q, _ = torch.linalg.qr(residual @ omega)
    for _ in range(_POWER_ITERATIONS):
        # (qᵀ R)ᵀ rather than Rᵀ q: no transposed pass over the large residual, for which the
        # BLAS keeps a buffer of the residual's size for the rest of the process
        z, _ = torch.linalg.qr((q.T @ residual).T)
        q, _ = torch.linalg.qr(residual @ z)
    small = q.T @ residual  # width x n: exact SVD of the projection via its Gram matrix
    evals, evecs = torch.linalg.eigh(small @ small.T)
    order = torch.argsort(evals, descending=True)[:rank]
    return q @ evecs[:, order]


def rank_for_tolerance(residual: torch.Tensor, reference_norm: float, tolerance: float) -> int:
    """Smallest rank r with ||residual - rank_r(residual)|| <= tolerance · reference_norm."""
    sigma, _, _ = _residual_basis(residual)
    energy = sigma.pow(2)
    # tail[r] = energy left out when keeping the first r singular values
    tail = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])
    tail = torch.cat([tail, tail.new_zeros(1)])
    budget = (tolerance * reference_norm) ** 2
    ok = torch.nonzero(tail <= budget)
    return int(ok[0].item()) if len(ok) else int(len(sigma))


ROW_CHUNK_ELEMENTS = 1 << 18  # row-chunked float64 temporaries stay near 2 MiB


def row_chunks(rows: int, cols: int, elements: int | None = None) -> Iterator[slice]:
    """Slices of consecutive rows holding about `elements` (ROW_CHUNK_ELEMENTS) elements each."""
    step = max(1, (elements or ROW_CHUNK_ELEMENTS) // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def subtract_rows_(
    target: torch.Tensor, base: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``target -= scale[:, None] * base`` in place, a few rows at a time, in target's dtype.

    `base` (2-D, any float dtype) is cast one chunk at a time, so no full-size copy is made.
    """
    for rows in row_chunks(*target.shape):
        part = base[rows].to(target.dtype)
        if scale is not None:
            part = part * scale[rows].to(target.dtype)[:, None]
        target[rows] -= part
    return target


def residual_norm(
    residual: torch.Tensor, b: torch.Tensor | None = None, a: torch.Tensor | None = None
) -> float:
    """``||residual - b @ a||`` (``||residual||`` without factors), in residual's dtype, without
    forming the full product."""
    if b is None or a is None:
        return torch.linalg.vector_norm(residual).item()
    a = a.to(residual.dtype)
    total = 0.0
    for rows in row_chunks(*residual.shape):
        total += torch.linalg.vector_norm(residual[rows] - b[rows].to(residual.dtype) @ a).item() ** 2
    return math.sqrt(total)


def channel_scale(weight: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Least-squares per-output-channel scale s minimising ||W - s·bank|| (s = 1 where bank is 0).

    Computed in weight's dtype, a few rows at a time."""
    w = weight.reshape(weight.shape[0], -1)
    b = bank.reshape(bank.shape[0], -1)
    num = torch.empty(w.shape[0], dtype=w.dtype, device=w.device)
    den = torch.empty_like(num)
    for rows in row_chunks(*w.shape):
        part = b[rows].to(w.dtype)
        num[rows] = (w[rows] * part).sum(dim=1)
        den[rows] = (part * part).sum(dim=1)
    scale = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.ones_like(den))
    return scale


def shape_numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))
