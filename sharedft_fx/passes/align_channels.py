"""Rewrite (weights only): permute block-internal channels so the weights of each group line up.

The channels between two convolutions of a chain ``conv -> BN / activation / pooling / depthwise
conv -> conv`` (a ResNet basic block's conv1 -> bn1 -> relu -> conv2, a MobileNetV2 block's
expand -> dw -> project) can be reordered without changing the function: permute the producer's
output channels (and bias), the per-channel state in between (BatchNorm affine parameters and
running statistics, depthwise filters) and the consumer's input channels alike. Channels of
different layers are arbitrary, so same-shape weights of one network rarely line up; choosing
each chain's permutation by linear assignment (Hungarian matching, as Git Re-Basin does across
models) on the similarity with the rest of the group shrinks ``W_i - mean`` before any sharing.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..config import ShareConfig
from ..lazy_weights import permute_lazily
from ..numerics import row_chunks
from ..planning import SharingPlan, candidate_runs
from ..tracing import CONV_TYPES, graph_modules
from .base import Pass, PassResult
from .group_conv_sites import collect_sites, site_candidates

__all__ = ["AlignChannels", "ChannelChain", "AlignmentReport", "find_channel_chains", "MAX_SWEEPS"]

log = logging.getLogger(__name__)

MAX_SWEEPS = 4
# slices of the search: temporaries of about 1 MiB (larger slices fragment the heap: resnet50's
# peak memory grew by half with 4 MiB ones, for little speed)
_SEARCH_CHUNK = 1 << 18

_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu,
    F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid,
    torch.tanh, F.sigmoid, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.clamp,
    operator.mul, operator.truediv, operator.add, operator.sub, torch.mul,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "contiguous",
    "mul", "mul_", "div", "div_", "add", "sub",
}
_SCALARS = (int, float, bool, str, type(None))


@dataclass(frozen=True)
class ChannelChain:
    """conv -> per-channel ops -> conv: one channel dimension that can be permuted freely."""

    producer: str  # module path (from the root) of the conv whose output channels move
    channelwise: tuple[str, ...]  # BatchNorm / depthwise conv modules in between
    consumer: str  # module path of the conv whose input channels move
    channels: int


@dataclass(frozen=True)
class AlignmentReport:
    """What alignment did: chains found and permuted, and the total relative residual energy
    ``sum_i ||W_i - mean_g||² / sum_i ||W_i||²`` over all planned group members, before/after."""

    chains: int
    permuted: int
    energy_before: float
    energy_after: float
    sweeps: int
    # weight parameter path -> [(dim, permutation)] applied to it, in order
    permutations: Mapping[str, tuple[tuple[int, tuple[int, ...]], ...]] = field(
        default_factory=dict
    )

    @property
    def reduction(self) -> float:
        """Fraction of the residual energy removed by alignment."""
        return 1 - self.energy_after / self.energy_before if self.energy_before > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "chains": self.chains,
            "permuted": self.permuted,
            "energy_before": self.energy_before,
            "energy_after": self.energy_after,
            "sweeps": self.sweeps,
            "permutations": {k: [[d, list(p)] for d, p in v] for k, v in self.permutations.items()},
        }


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _dense_conv(m: nn.Module) -> bool:
    return isinstance(m, CONV_TYPES) and m.groups == 1 and isinstance(m.weight, nn.Parameter)


def _depthwise(m: nn.Module, channels: int) -> bool:
    return (isinstance(m, CONV_TYPES) and isinstance(m.weight, nn.Parameter)
            and m.groups == channels == m.in_channels == m.out_channels)


def _only_input(node: fx.Node, source: fx.Node) -> bool:
    """`source` is the first argument and the only node among the arguments; others are scalars."""
    if not node.args or node.args[0] is not source:
        return False
    rest = list(node.args[1:]) + list(node.kwargs.values())
    if node.kwargs.get("return_indices"):
        return False
    flat: list[Any] = []
    for v in rest:
        flat.extend(v if isinstance(v, (tuple, list)) else [v])
    return all(isinstance(v, _SCALARS) for v in flat)


def find_channel_chains(
    gm: fx.GraphModule, prefix: str = "", tied: frozenset[int] = frozenset()
) -> list[ChannelChain]:
    """The permutable conv -> ... -> conv chains of one traced graph.

    A chain's inner tensor must feed exactly one node at each step, every module holding
    state in it must be called once in the graph (and never read as an attribute), none of its
    tensors may be tied to another module (`tied`: ids of tensors held under several names),
    and only ops that treat channels independently and alike may sit between the two convs.
    """
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    read = [n.target for n in gm.graph.nodes if n.op == "get_attr"]

    def private(target: str) -> bool:
        module = gm.get_submodule(target)
        held = [id(t) for t in list(module.parameters()) + list(module.buffers())]
        return (calls[target] == 1 and not any(i in tied for i in held)
                and not any(r == target or r.startswith(target + ".") for r in read))

    chains = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        producer = gm.get_submodule(node.target)
        if not _dense_conv(producer) or not private(node.target):
            continue
        channels = producer.out_channels
        middle: list[str] = []
        cur = node
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            if user.op == "call_module":
                mod = gm.get_submodule(user.target)
                if not (user.args and user.args[0] is cur and len(user.args) == 1
                        and not user.kwargs):
                    break
                if _dense_conv(mod):
                    if mod.in_channels == channels and private(user.target):
                        chains.append(ChannelChain(
                            _join(prefix, node.target), tuple(middle),
                            _join(prefix, user.target), channels,
                        ))
                    break
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) or _depthwise(mod, channels):
                    if getattr(mod, "num_features", channels) != channels or not private(user.target):
                        break
                    middle.append(_join(prefix, user.target))
                elif not isinstance(mod, _ELEMENTWISE_MODULES) or getattr(mod, "return_indices", False):
                    break
            elif user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS:
                if not _only_input(user, cur):
                    break
            elif user.op == "call_method" and user.target in _ELEMENTWISE_METHODS:
                if not _only_input(user, cur):
                    break
            else:
                break
            cur = user
    return chains


def _sq(t: torch.Tensor) -> float:
    """||t||² in float64, a slice at a time (no temporary of t's size)."""
    flat = t.detach().reshape(-1)
    total = 0.0
    for piece in row_chunks(flat.numel(), 1, _SEARCH_CHUNK):
        part = flat[piece].to(torch.float64)
        total += float(torch.dot(part, part))
    return total


class _Search:
    """State of the alignment search: each shared site's permutations so far and each group's
    float32 weight sum; no permuted copy of a weight is ever made whole.

    sum_i ||W_i - mean||² = sum_i ||W_i||² - ||sum_i W_i||² / k, and permutations keep ||W_i||²:
    only the squared norm of each group's sum moves. Every quantity is built a few slices at a
    time (`row_chunks`), so the search holds the group sums and temporaries of about 1 MiB.
    """

    def __init__(self, sources: dict[str, torch.Tensor], groups: list[list[str]]) -> None:
        self.sources = sources
        self.groups = groups
        self.group_of = {s: gi for gi, g in enumerate(groups) for s in g}
        # site -> permutation of dim 0 and of dim 1 (None: unchanged)
        self.perms: dict[str, list[torch.Tensor | None]] = {s: [None, None] for s in sources}
        self.sums = []
        for g in groups:
            first = sources[g[0]]
            total = torch.zeros(first.shape, dtype=torch.float32, device=first.device)
            for s in g:
                total += sources[s].detach()
            self.sums.append(total)
        # squared norms summed in float64; the similarity only ranks channel pairs (float32)
        self.fixed = [sum(_sq(sources[s].detach().to(torch.float32)) for s in g) for g in groups]
        self.norms = sum(self.fixed)
        self.energy = [self.fixed[gi] - _sq(t) / len(g)
                       for gi, (g, t) in enumerate(zip(groups, self.sums))]

    def part(self, site: str, axis: int, piece: slice,
             perms: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Slice `piece` along `axis` (0 or 1) of the site's permuted weight, as float32."""
        perms = self.perms[site] if perms is None else perms
        w = self.sources[site].detach()
        index = perms[axis]
        if index is None:
            w = w.narrow(axis, piece.start, piece.stop - piece.start)
        else:
            w = w.index_select(axis, index[piece].to(w.device))
        other = perms[1 - axis]
        if other is not None:
            w = w.index_select(1 - axis, other.to(w.device))
        return w.to(torch.float32)

    def similarity(self, moves: list[tuple[str, int]], channels: int) -> torch.Tensor:
        """score[a, b] = sum over the chain's sites of <rest of the group [a], W [b]> along the
        moved dim: the gain of giving new channel a the old channel b."""
        device = self.sums[self.group_of[moves[0][0]]].device
        score = torch.zeros(channels, channels, dtype=torch.float32, device=device)
        for site, dim in moves:
            total = self.sums[self.group_of[site]]
            axis = 1 if dim == 0 else 0  # conv weights have >= 3 dims: slice along another one
            for piece in row_chunks(total.shape[axis], total.numel() // total.shape[axis],
                                    _SEARCH_CHUNK):
                w = self.part(site, axis, piece)
                rest = total.narrow(axis, piece.start, piece.stop - piece.start) - w
                score += (rest.movedim(dim, 0).reshape(channels, -1)
                          @ w.movedim(dim, 0).reshape(channels, -1).T)
        return score

    def _moved(self, site: str, dim: int, perm: torch.Tensor) -> list[torch.Tensor | None]:
        perms = list(self.perms[site])
        perms[dim] = perm if perms[dim] is None else perms[dim][perm]
        return perms

    def _new_sum_pieces(
        self, gi: int, members: list[tuple[str, int]], perm: torch.Tensor
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        total = self.sums[gi]
        for piece in row_chunks(total.shape[0], total.numel() // total.shape[0], _SEARCH_CHUNK):
            new = total[piece].clone()
            for site, dim in members:
                new -= self.part(site, 0, piece)
                new += self.part(site, 0, piece, self._moved(site, dim, perm))
            yield piece, new

    def try_move(self, moves: list[tuple[str, int]], perm: torch.Tensor) -> bool:
        """Apply `perm` to the chain's sites if it lowers the total residual energy."""
        by_group: dict[int, list[tuple[str, int]]] = {}
        for site, dim in moves:
            by_group.setdefault(self.group_of[site], []).append((site, dim))
        new_energy = {
            gi: self.fixed[gi] - sum(_sq(new) for _, new in self._new_sum_pieces(gi, m, perm))
            / len(self.groups[gi])
            for gi, m in by_group.items()
        }
        old = sum(self.energy[gi] for gi in by_group)
        if not sum(new_energy.values()) < old - 1e-6 * max(self.norms, 1e-30):
            return False
        for gi, members in by_group.items():
            # recomputed rather than kept: a kept copy of each candidate sum fragments the heap;
            # each piece depends only on the same rows of the old sum, so update in place
            for piece, new in self._new_sum_pieces(gi, members, perm):
                self.sums[gi][piece] = new
            self.energy[gi] = new_energy[gi]
        for site, dim in moves:
            self.perms[site] = self._moved(site, dim, perm)
        return True


def _permute(module: nn.Module, name: str, perm: torch.Tensor, dim: int) -> None:
    """Replace (never modify in place) a parameter or buffer by its permuted copy."""
    value = getattr(module, name, None)
    if value is None:
        return
    new = value.detach().index_select(dim, perm.to(value.device)).clone()
    if isinstance(value, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=value.requires_grad))
    else:
        setattr(module, name, new)


class AlignChannels(Pass):
    """Permute channels inside conv -> ... -> conv chains so the weights of each group line up."""

    name = "align_channels"
    kind = "rewrite"
    matches = (
        "Chains `conv -> (BatchNorm | depthwise conv | activation | pooling | dropout)* -> conv` "
        "of plain, ungrouped conv modules, where each intermediate tensor has a single user and "
        "every module with parameters or buffers in the chain is called once."
    )
    preconditions = (
        "`find_conv_sites` ran (its site annotations say which convs will share a bank); the "
        "module is the private copy made by `transform`."
    )
    invariants = (
        "The graph is unchanged and the model computes the same outputs: for each chain one "
        "permutation is applied to the producer's output channels and bias, to the BatchNorm "
        "weight, bias, running mean and variance and depthwise filters in between, and to the "
        "consumer's input channels. Tensors are replaced, never modified in place; with "
        "lazy=True (in `transform`) the weights of shared sites become permuted views of the "
        "originals (`lazy_weights`), copying nothing, until `share_conv_weights` replaces them. "
        "The search never holds a permuted copy of a weight. The total residual energy of the "
        "groups never increases (coordinate ascent over chains, at most MAX_SWEEPS sweeps), "
        "also when it runs again."
    )
    before = (
        "conv1 = self.layer1.0.conv1(x); bn1 = self.layer1.0.bn1(conv1); relu = F.relu(bn1)\n"
        "conv2 = self.layer1.0.conv2(relu)"
    )
    after = (
        "(same graph; conv1.weight[perm], bn1.{weight,bias,running_mean,running_var}[perm], "
        "conv2.weight[:, perm])"
    )

    def __init__(
        self, config: ShareConfig, plan: SharingPlan | None = None, lazy: bool = False
    ) -> None:
        self.config = config
        self.fixed_plan = plan
        # lazy: the weights of shared sites become permuted views (`lazy_weights`) instead of
        # permuted copies; `share_conv_weights`, which replaces them, must run next
        self.lazy = lazy
        self.report = AlignmentReport(0, 0, 0.0, 0.0, 0)

    @property
    def preserves_outputs(self) -> bool:
        # exactly in real arithmetic, but permuting channels reorders float sums, which a
        # random-init net can amplify past a fixed float32 tolerance: `transform` checks it
        # against the original (in float64 when float32 is inconclusive)
        return False

    def _groups(self, module: nn.Module) -> list[list[str]]:
        """Site names of each planned group (the plan's, or consecutive shape runs)."""
        sites = collect_sites(module)
        if self.fixed_plan is not None:
            groups = [[s.site for s in g.sites] for g in self.fixed_plan.groups]
        else:
            runs, _ = candidate_runs(site_candidates(sites), self.config)
            groups = [[c.site for c in run] for run in runs]
        # only sites whose weight is the plain `<module>.weight` of a conv module can be aligned
        return [[s for s in g if s in sites and sites[s][0].param == _join(s, "weight")]
                for g in groups]

    def run(self, module: nn.Module) -> PassResult:
        names = Counter(id(t) for _, t in module.named_parameters(remove_duplicate=False))
        names.update(id(t) for _, t in module.named_buffers(remove_duplicate=False))
        tied = frozenset(i for i, n in names.items() if n > 1)
        chains = [c for prefix, gm in graph_modules(module)
                  for c in find_channel_chains(gm, prefix, tied)]
        groups = [g for g in self._groups(module) if len(g) >= 2]
        sources = {s: module.get_parameter(_join(s, "weight")) for g in groups for s in g}
        affected = []  # per chain: the (site, dim) moves that touch a group
        for chain in chains:
            moves = [(chain.producer, 0)] + [(m, 0) for m in chain.channelwise] + [(chain.consumer, 1)]
            affected.append([(s, dim) for s, dim in moves if s in sources])
        search = _Search(sources, groups)
        before = sum(search.energy)
        totals = [torch.arange(c.channels) for c in chains]
        sweeps = 0
        for sweeps in range(1, MAX_SWEEPS + 1):
            improved = False
            for ci, chain in enumerate(chains):
                moves = affected[ci]
                if not moves:
                    continue
                score = search.similarity(moves, chain.channels)
                _, cols = linear_sum_assignment(score.cpu().numpy(), maximize=True)
                perm = torch.as_tensor(cols, dtype=torch.long)
                if torch.equal(perm, torch.arange(chain.channels)) or not search.try_move(moves, perm):
                    continue
                totals[ci] = totals[ci][perm]
                improved = True
            if not improved:
                break
        norms = search.norms
        after = sum(search.energy)
        del search
        permuted = 0
        record: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
        pending: dict[str, list[tuple[int, torch.Tensor]]] = {}

        def permute(path: str, name: str, perm: torch.Tensor, dim: int) -> None:
            if self.lazy and name == "weight" and path in sources:
                pending.setdefault(path, []).append((dim, perm))
            else:
                _permute(module.get_submodule(path), name, perm, dim)

        for chain, perm in zip(chains, totals):
            if torch.equal(perm, torch.arange(chain.channels)):
                continue
            permuted += 1
            order = tuple(int(i) for i in perm)
            record.setdefault(_join(chain.producer, "weight"), []).append((0, order))
            record.setdefault(_join(chain.consumer, "weight"), []).append((1, order))
            permute(chain.producer, "weight", perm, 0)
            permute(chain.producer, "bias", perm, 0)
            for path in chain.channelwise:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    permute(path, name, perm, 0)
            permute(chain.consumer, "weight", perm, 1)
        for path, steps in pending.items():
            permute_lazily(module.get_submodule(path), "weight", steps)
        scale = norms if norms > 0 else 1.0
        self.report = AlignmentReport(len(chains), permuted, before / scale, after / scale, sweeps,
                                      {k: tuple(v) for k, v in record.items()})
        log.info(
            "aligned %d of %d channel chains: residual energy %.4f -> %.4f (%.1f%% lower)",
            permuted, len(chains), self.report.energy_before, self.report.energy_after,
            100 * self.report.reduction,
        )
        return PassResult(module, permuted > 0, {"chains": len(chains), "permuted": permuted})
