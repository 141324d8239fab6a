"""Permuted weights computed when read, so that channel alignment copies no shared weight.

Channel alignment permutes the weights of every shared conv site, and `share_conv_weights`
replaces those weights right after by banks and links. Materialising the permuted copies in
between would cost a copy of every shared weight (the size of the model) for nothing. Instead
each one becomes a `torch.nn.utils.parametrize` parametrization of the original tensor, which
stays read-only and shared with the user's model::

    before: conv.weight                                   # Parameter
    after:  conv.weight  ->  ChannelPermutation(conv.parametrizations.weight.original)

The module computes the same function in between (a forward reads the permuted weight, one
conv at a time). `weight_source` hands the rewrite a way to read one weight without keeping it,
`release` removes the parametrization of a weight that is being replaced, and `materialize`
turns a weight that stays back into a plain parameter holding the permuted copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .numerics import row_chunks

__all__ = [
    "ChannelPermutation",
    "permute_lazily",
    "is_lazy",
    "WeightSource",
    "weight_source",
    "release",
    "materialize",
    "materialize_all",
]


class ChannelPermutation(nn.Module):
    """``w -> w.index_select(dim, perm)`` for each (dim, perm) in turn, as one gather (a
    parametrization)."""

    def __init__(self, moves: Sequence[tuple[int, torch.Tensor]]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d, _ in moves)
        for i, (_, perm) in enumerate(moves):
            self.register_buffer(f"perm{i}", perm.to(torch.long), persistent=False)

    @property
    def moves(self) -> tuple[tuple[int, torch.Tensor], ...]:
        return tuple((dim, getattr(self, f"perm{i}")) for i, dim in enumerate(self.dims))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _gather(weight, self.moves)


def _combined(
    moves: Sequence[tuple[int, torch.Tensor]], device: torch.device
) -> dict[int, torch.Tensor]:
    """The combined permutation of each moved dim (moves apply in order)."""
    combined: dict[int, torch.Tensor] = {}
    for dim, perm in moves:
        perm = perm.to(device)
        combined[dim] = perm if dim not in combined else combined[dim][perm]
    return combined


def _gather(w: torch.Tensor, moves: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """`w` permuted by `moves`, as one gather into one new tensor (index_select dim after dim
    would make a temporary per dim); differentiable."""
    if not moves:
        return w
    index = _combined(moves, w.device)
    dims = sorted(index)
    if dims != list(range(dims[0], dims[-1] + 1)):  # advanced indices must be adjacent
        for dim in dims:
            w = w.index_select(dim, index[dim])
        return w
    key: list[Any] = [slice(None)] * (dims[-1] + 1)
    for i, dim in enumerate(dims):
        key[dim] = index[dim].reshape([-1] + [1] * (len(dims) - 1 - i))
    return w[tuple(key)]


def _split(path: str) -> tuple[str, str]:
    owner, _, name = path.rpartition(".")
    return owner, name


def is_lazy(owner: nn.Module, name: str) -> bool:
    """True when `owner.<name>` is a `ChannelPermutation` view of another tensor."""
    return parametrize.is_parametrized(owner, name) and all(
        isinstance(p, ChannelPermutation) for p in owner.parametrizations[name]
    )


def permute_lazily(
    owner: nn.Module, name: str, moves: Sequence[tuple[int, torch.Tensor]]
) -> None:
    """Make the parameter `owner.<name>` read as its permutation by `moves`, copying nothing."""
    value = owner._parameters[name]
    if value is None:
        raise ValueError(f"{type(owner).__name__}.{name} is not a parameter")
    with torch.no_grad():
        # Registering a parametrization calls set_() on the tensor: give it an alias of the same
        # storage with a version counter of its own, so the user's tensor is not touched at all.
        alias = torch.empty(0, dtype=value.dtype, device=value.device).set_(value.detach())
    owner._parameters[name] = nn.Parameter(alias, requires_grad=value.requires_grad)
    parametrize.register_parametrization(owner, name, ChannelPermutation(moves), unsafe=True)


@dataclass(frozen=True)
class WeightSource:
    """Read access to one weight (a parameter or a lazy permuted view) that keeps no copy.

    ``pieces()`` yields slices of rows; ``read(dtype)`` returns the whole weight as one new
    tensor (cast a few rows at a time) or the parameter itself when there is nothing to do;
    ``copy(dtype)`` always returns a new tensor; calling the source returns the weight as it is
    (for `feed_weights`).
    """

    original: torch.Tensor
    moves: tuple[tuple[int, torch.Tensor], ...] = ()
    requires_grad: bool = False

    @property
    def shape(self) -> torch.Size:
        return self.original.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.original.dtype

    def pieces(self) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, those rows of the weight) a few rows at a time, in the weight's dtype (add
        them into a buffer of another dtype in place: a cast copy of each would fragment the
        heap)."""
        w = self.original.detach()
        index = _combined(self.moves, w.device)
        rows = index.pop(0, None)
        for piece in row_chunks(w.shape[0], w[0].numel() if w.shape[0] else 0):
            part = w[piece] if rows is None else w.index_select(0, rows[piece])
            for dim, perm in index.items():
                part = part.index_select(dim, perm)
            yield piece, part

    def read(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = self.original.detach()
        if dtype is not None and dtype != w.dtype:  # cast a few rows at a time
            out = torch.empty(self.shape, dtype=dtype, device=w.device)
            for piece, part in self.pieces():
                out[piece].copy_(part)
            return out
        return _gather(w, self.moves)

    def copy(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`read`, but never the original tensor itself: safe to modify in place."""
        out = self.read(dtype)
        return out.clone() if out.data_ptr() == self.original.data_ptr() else out

    def __call__(self) -> torch.Tensor:
        with torch.no_grad():
            return self.read()


def weight_source(module: nn.Module, path: str) -> WeightSource:
    """How to read the weight at `path` (a parameter, or a lazy view) without keeping a copy.

    For a lazy weight the source stays valid after `release`.
    """
    owner_path, name = _split(path)
    owner = module.get_submodule(owner_path)
    if is_lazy(owner, name):
        plist = owner.parametrizations[name]
        original = plist.original
        moves = tuple(move for step in plist for move in step.moves)
        return WeightSource(original, moves, original.requires_grad)
    param = module.get_parameter(path)
    return WeightSource(param, (), param.requires_grad)


def release(owner: nn.Module, name: str) -> None:
    """Drop the permutation: `owner.<name>` is the original tensor again (about to be replaced)."""
    if is_lazy(owner, name):
        parametrize.remove_parametrizations(owner, name, leave_parametrized=False)


def materialize(owner: nn.Module, name: str) -> None:
    """Replace a lazy weight by a plain parameter holding its permuted copy."""
    if not is_lazy(owner, name):
        return
    source = weight_source(owner, name)
    value = source.copy()
    parametrize.remove_parametrizations(owner, name, leave_parametrized=False)
    owner._parameters[name] = nn.Parameter(value, requires_grad=source.requires_grad)


def materialize_all(module: nn.Module) -> int:
    """`materialize` every lazy weight under `module`; returns how many there were."""
    count = 0
    for owner in list(module.modules()):
        if not parametrize.is_parametrized(owner):
            continue
        for name in list(owner.parametrizations.keys()):
            if is_lazy(owner, name):
                materialize(owner, name)
                count += 1
    return count
