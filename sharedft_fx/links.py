"""Modules that a sharing rewrite adds to a graph: the bank container and per-site links.

Each shared convolution site reads its weight through a link: ``W_eff = link(bank)``.

Before::

    conv1 = self.layer1.0.conv1(x)

After (``link="lowrank"``)::

    bank = self.sharedft.banks.g1_64x64x3x3
    w = self.sharedft.links.layer1_0_conv1(bank)        # bank + (B @ A).reshape(bank.shape)
    conv1 = torch.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1)
"""

from __future__ import annotations

import contextlib
from typing import Callable, ClassVar, Iterator, Mapping

import torch
from torch import nn

__all__ = [
    "WeightLink",
    "BankLink",
    "LowRankLink",
    "ScaleLink",
    "LowRankScaleLink",
    "SkipGate",
    "SharedWeights",
    "LINK_TYPES",
    "make_link",
    "feed_weights",
]


def _broadcast(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.reshape((-1,) + (1,) * (like.dim() - 1))


class WeightLink(nn.Module):
    """Maps a shared bank to one site's effective weight. Subclasses set `kind`."""

    kind: ClassVar[str] = ""

    @property
    def rank(self) -> int:
        b = getattr(self, "B", None)
        return 0 if b is None else int(b.shape[1])

    def residual_parameters(self) -> list[nn.Parameter]:
        """The low-rank factors (regularised towards zero by fine-tuning)."""
        return [p for n, p in self.named_parameters() if n in ("A", "B")]

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, rank={self.rank}"


class BankLink(WeightLink):
    """``W_eff = bank`` (link ``none``)."""

    kind = "none"

    def forward(self, bank: torch.Tensor) -> torch.Tensor:
        return bank


class LowRankLink(WeightLink):
    """``W_eff = bank + (B @ A).reshape(bank.shape)``."""

    kind = "lowrank"

    def __init__(self, b: torch.Tensor, a: torch.Tensor) -> None:
        super().__init__()
        self.B = nn.Parameter(b)
        self.A = nn.Parameter(a)

    def forward(self, bank: torch.Tensor) -> torch.Tensor:
        # the bank is added in place to the product: one temporary of the weight's size, not two
        # (the same sum as bank + B @ A, bit for bit; matmul's backward does not need its output)
        return torch.matmul(self.B, self.A).reshape(bank.shape).add_(bank)


class ScaleLink(WeightLink):
    """``W_eff = scale[:, None, ...] * bank`` (one scale per output channel)."""

    kind = "scale"

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale)

    def forward(self, bank: torch.Tensor) -> torch.Tensor:
        return bank * _broadcast(self.scale, bank)


class LowRankScaleLink(WeightLink):
    """``W_eff = scale[:, None, ...] * bank + (B @ A).reshape(bank.shape)``."""

    kind = "lowrank+scale"

    def __init__(self, scale: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale)
        self.B = nn.Parameter(b)
        self.A = nn.Parameter(a)

    def forward(self, bank: torch.Tensor) -> torch.Tensor:
        return bank * _broadcast(self.scale, bank) + torch.matmul(self.B, self.A).reshape(bank.shape)


class SkipGate(nn.Module):
    """``y = conv_out + gate * x`` with a learnable scalar gate that starts at 0."""

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | None = None):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros((), dtype=dtype, device=device))

    def forward(self, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return out + self.gate * inp


LINK_TYPES: tuple[type[nn.Module], ...] = (
    BankLink,
    LowRankLink,
    ScaleLink,
    LowRankScaleLink,
    SkipGate,
)


class SharedWeights(nn.Module):
    """Container of the banks (one parameter per group), the links and the skip gates."""

    def __init__(self) -> None:
        super().__init__()
        self.banks = nn.ParameterDict()
        self.links = nn.ModuleDict()
        self.gates = nn.ModuleDict()

    def forward(self, *args: object) -> None:  # pragma: no cover - a container, never called
        raise RuntimeError("SharedWeights is a parameter container and is never called")


def make_link(kind: str, *, scale=None, b=None, a=None) -> WeightLink:
    """Build the link module of a kind from its initial tensors."""
    if kind == "none":
        return BankLink()
    if kind == "lowrank":
        return LowRankLink(b, a)
    if kind == "scale":
        return ScaleLink(scale)
    if kind == "lowrank+scale":
        return LowRankScaleLink(scale, b, a)
    raise ValueError(f"unknown link kind {kind!r}")


@contextlib.contextmanager
def feed_weights(
    links: Mapping[WeightLink, torch.Tensor | Callable[[], torch.Tensor]]
) -> Iterator[None]:
    """Within the block each given link returns the given tensor instead of its effective weight
    (or calls the given function for it each time, so that no copy is held).

    Used to check a rewrite's wiring: feeding every site its original weight must reproduce the
    original model to float precision.
    """
    patched = []
    try:
        for link, weight in links.items():
            read = weight if callable(weight) else (lambda w: (lambda: w))(weight)
            link.forward = (lambda r: (lambda bank: r()))(read)  # type: ignore[method-assign]
            patched.append(link)
        yield
    finally:
        for link in patched:
            del link.forward
