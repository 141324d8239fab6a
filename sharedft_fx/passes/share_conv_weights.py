"""Rewrite: give each planned group one bank parameter and each site a residual link.

The weight read is rewritten, not the conv: a ``get_attr`` read becomes the link's output, and a
plain ``nn.ConvNd`` call becomes the same functional conv fed the effective weight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..config import ShareConfig
from ..lazy_weights import WeightSource, materialize_all, release, weight_source
from ..links import SharedWeights, WeightLink, make_link
from ..memory import release_free_memory
from ..numerics import channel_scale, lowrank_factors, residual_norm, subtract_rows_
from ..planning import GroupPlan, SitePlan
from ..tracing import graph_modules
from .base import Pass, PassResult
from .find_conv_sites import CONV_FUNCTIONS, SITE_KEY, ConvUse
from .group_conv_sites import SHARE_KEY

__all__ = ["ShareConvWeights", "SiteInit", "REWRITTEN_KEY", "CONTAINER_NAME", "link_key"]

log = logging.getLogger(__name__)

REWRITTEN_KEY = "sharedft.rewritten"
CONTAINER_NAME = "sharedft"
_CONV_BY_DIMS = {dims: fn for fn, dims in CONV_FUNCTIONS.items()}


@dataclass(frozen=True)
class SiteInit:
    """How well a site's link reproduces its original weight at initialisation."""

    site: str
    group: str
    weight_error: float
    link_params: int


def link_key(site: str) -> str:
    return site.replace(".", "_") or "root"


class ShareConvWeights(Pass):
    """Replace each planned site's weight by ``link(bank)``; one bank per group."""

    name = "share_conv_weights"
    kind = "rewrite"
    matches = "Nodes annotated by `group_conv_sites` (`node.meta['sharedft.share']`)."
    preconditions = "`find_conv_sites` and `group_conv_sites` ran on the same graphs."
    invariants = (
        "Each group becomes one parameter `sharedft.banks.<group>` (the mean of its weights) and "
        "each site one link `sharedft.links.<site>` (truncated-SVD residual, least-squares "
        "scale, both, or none); conv bias, stride, padding, dilation, groups and padding_mode are "
        "kept; the original weight parameters are removed, and lazily aligned weights of sites "
        "left unshared become plain parameters. Weights are read a few rows at a time, so peak "
        "memory is about one float64 residual of the largest layer. With rank='full' the "
        "model's outputs are unchanged to float precision. Running it again finds nothing to do."
    )
    before = "conv1 = self.layer1.0.conv1(x)"
    after = (
        "sharedft_banks_g0 = self.sharedft.banks.g0_64x64x3x3\n"
        "layer1_0_conv1_weight = self.sharedft.links.layer1_0_conv1(sharedft_banks_g0)\n"
        "conv1 = torch.conv2d(x, layer1_0_conv1_weight, None, (1, 1), (1, 1), (1, 1), 1)"
    )

    def __init__(self, config: ShareConfig, initialize: bool = True) -> None:
        self.config = config
        self.initialize = initialize
        self.sites: list[SiteInit] = []
        self.links: dict[str, WeightLink] = {}  # original parameter path -> its link
        # original parameter path -> a function returning the weight it held (computed on call:
        # a lazily aligned weight is never kept as a copy)
        self.replaced: dict[str, WeightSource] = {}

    @property
    def preserves_outputs(self) -> bool:
        # Not even at rank="full": the weights are rebuilt to within one ulp, and a random-init
        # net can amplify that far past any fixed tolerance (its own float32 noise floor; see
        # ZOO.md). `transform` checks the wiring exactly instead, by feeding the original weights.
        return False

    def run(self, module: nn.Module) -> PassResult:
        self.sites, self.links, self.replaced = [], {}, {}
        partitions = list(graph_modules(module))
        planned: dict[str, tuple[GroupPlan, SitePlan, ConvUse]] = {}
        for _, gm in partitions:
            for node in gm.graph.nodes:
                if SHARE_KEY in node.meta:
                    group, site = node.meta[SHARE_KEY]
                    planned.setdefault(site.site, (group, site, node.meta[SITE_KEY]))
        if not planned:
            materialize_all(module)
            return PassResult(module, False, {"groups": 0, "sites": 0, "uses": 0})
        attr = _free_name(partitions)
        container = SharedWeights()
        keys: dict[str, str] = {}
        groups: dict[str, GroupPlan] = {}
        members: dict[str, list[tuple[SitePlan, ConvUse]]] = {}
        for group, site, use in planned.values():
            groups[group.name] = group
            members.setdefault(group.name, []).append((site, use))
        for name, group in groups.items():
            self._build_group(module, container, group, members[name], keys)
            release_free_memory()  # the group's temporaries, freed but still resident
        for _, _, use in planned.values():
            owner, _, weight = use.param.rpartition(".")
            release(module.get_submodule(owner), weight)
        materialize_all(module)  # aligned weights of sites that end up unshared stay, permuted
        replaced = {id(module.get_parameter(u.param)) for _, _, u in planned.values()}
        uses = 0
        for _, gm in partitions:
            uses += self._rewire(gm, attr, container, keys)
        for _, gm in partitions:
            _drop_original_weights(gm, replaced)
        return PassResult(
            module, True, {"groups": len(groups), "sites": len(planned), "uses": uses}
        )

    def _build_group(
        self,
        module: nn.Module,
        container: SharedWeights,
        group: GroupPlan,
        sites: list[tuple[SitePlan, ConvUse]],
        keys: dict[str, str],
    ) -> None:
        # a few rows of one weight at a time: a lazily aligned weight is computed when read
        sources = [weight_source(module, use.param) for _, use in sites]
        dtype, device = sources[0].dtype, sources[0].original.device
        out = group.weight_shape[0]
        if self.initialize:  # the mean in float64; each weight added a few rows at a time
            total = torch.zeros(group.weight_shape, dtype=torch.float64, device=device)
            for source in sources:
                for rows, part in source.pieces():
                    total[rows] += part
            bank = total.div_(len(sources)).to(dtype)
            del total
        else:
            bank = torch.zeros(group.weight_shape, dtype=dtype, device=device)
        grad = any(source.requires_grad for source in sources)
        container.banks[group.name] = nn.Parameter(bank, requires_grad=grad)
        bank2d = bank.detach().reshape(out, -1)
        for (plan, use), source in zip(sites, sources):
            link, err = self._make_link(plan, source, bank2d)
            self.links[use.param] = link
            self.replaced[use.param] = source
            key = link_key(plan.site)
            while key in container.links:
                key += "_"
            keys[plan.site] = key
            container.links[key] = link
            self.sites.append(
                SiteInit(plan.site, group.name, err, sum(p.numel() for p in link.parameters()))
            )

    def _make_link(
        self, plan: SitePlan, source: WeightSource, bank: torch.Tensor
    ) -> tuple[WeightLink, float]:
        out, fan_in = bank.shape
        dtype, device, requires_grad = source.dtype, bank.device, source.requires_grad
        kind, rank = plan.link, plan.rank
        lowrank = kind in ("lowrank", "lowrank+scale")
        if not self.initialize:
            zeros = dict(
                scale=torch.ones(out, dtype=dtype, device=device),
                b=torch.zeros(out, rank, dtype=dtype, device=device),
                a=torch.zeros(rank, fan_in, dtype=dtype, device=device),
            )
            link = make_link(kind, **{k: v for k, v in zeros.items() if _needs(kind, k)})
            _requires_grad(link, requires_grad)
            return link, float("nan")
        # One float64 temporary of the layer's size, the residual: the bank is subtracted and
        # the error measured a few rows at a time, so peak memory stays near one residual.
        residual = source.copy(torch.float64).reshape(out, -1)  # modified in place below
        norm = torch.linalg.vector_norm(residual).item()
        scale = None
        if kind in ("scale", "lowrank+scale"):
            scale = channel_scale(residual, bank).to(dtype)
        subtract_rows_(residual, bank, scale)
        b = a = None
        if lowrank and rank >= min(out, fan_in):
            b, a = _exact_factors(source.read(), bank, scale)
        elif lowrank:
            b64, a64 = lowrank_factors(residual, rank)
            b, a = b64.to(dtype), a64.to(dtype)
            del b64, a64
        diff = residual_norm(residual, b, a)
        del residual
        err = diff / norm if norm > 0 else diff
        tensors = {"scale": scale, "b": b, "a": a}
        link = make_link(kind, **{k: v for k, v in tensors.items() if v is not None})
        _requires_grad(link, requires_grad)
        return link, err

    def _rewire(
        self, gm: fx.GraphModule, attr: str, container: SharedWeights, keys: dict[str, str]
    ) -> int:
        graph = gm.graph
        bank_nodes: dict[str, fx.Node] = {}
        link_nodes: dict[str, fx.Node] = {}
        count = 0
        for node in list(graph.nodes):
            if SHARE_KEY not in node.meta:
                continue
            if not hasattr(gm, attr):
                gm.add_submodule(attr, container)
            group, site = node.meta[SHARE_KEY]
            use: ConvUse = node.meta[SITE_KEY]
            with graph.inserting_before(node):
                if group.name not in bank_nodes:
                    bank_nodes[group.name] = graph.get_attr(f"{attr}.banks.{group.name}")
                if site.site not in link_nodes:
                    key = keys[site.site]
                    link_node = graph.create_node(
                        "call_module", f"{attr}.links.{key}", (bank_nodes[group.name],),
                        name=f"{key}_weight",
                    )
                    link_node.meta[REWRITTEN_KEY] = site.site
                    link_nodes[site.site] = link_node
                weight = link_nodes[site.site]
                if use.use == "module":
                    new = _functional_conv(gm, node, weight, use.dims)
                    new.meta[REWRITTEN_KEY] = site.site
                else:
                    new = weight
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            count += 1
        return count


def _exact_factors(
    weight: torch.Tensor, bank: torch.Tensor, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-rank factors (identity and residual) that rebuild `weight` to within one ulp.

    The link computes ``base + B @ A`` in the weight's dtype; a product with an identity matrix
    rounds nothing, and the residual is nudged by one ulp where another representable residual
    makes ``base + r`` round to the original value. Where the residual's binade is coarser than
    the weight's, no float residual can: those elements keep an error of one ulp.
    """
    out = weight.shape[0]
    w = weight.reshape(out, -1)
    base = bank.reshape(out, -1)
    if scale is not None:
        base = base * scale.reshape(-1, 1)
    r = w - base
    if r.dtype in (torch.float32, torch.float64):
        for _ in range(4):
            got = base + r
            bad = got != w
            if not bool(bad.any()):
                break
            toward = torch.where(w > got, torch.full_like(r, float("inf")),
                                 torch.full_like(r, float("-inf")))
            r = torch.where(bad, torch.nextafter(r, toward), r)
    m, n = r.shape
    if m <= n:
        return torch.eye(m, dtype=r.dtype, device=r.device), r.contiguous()
    return r.contiguous(), torch.eye(n, dtype=r.dtype, device=r.device)


def _needs(kind: str, name: str) -> bool:
    if name == "scale":
        return kind in ("scale", "lowrank+scale")
    return kind in ("lowrank", "lowrank+scale")


def _requires_grad(link: nn.Module, flag: bool) -> None:
    for p in link.parameters():
        p.requires_grad_(flag)


def _free_name(partitions: list[tuple[str, fx.GraphModule]]) -> str:
    name, i = CONTAINER_NAME, 0
    while any(hasattr(gm, name) for _, gm in partitions):
        i += 1
        name = f"{CONTAINER_NAME}_{i}"
    return name


def _functional_conv(gm: fx.GraphModule, node: fx.Node, weight: fx.Node, dims: int) -> fx.Node:
    """``self.conv(x)`` -> ``torch.convNd(x, weight, self.conv.bias, stride, padding, ...)``."""
    mod = gm.get_submodule(node.target)
    graph = gm.graph
    x = node.args[0] if node.args else node.kwargs["input"]
    bias = graph.get_attr(f"{node.target}.bias") if mod.bias is not None else None
    padding = mod.padding
    if mod.padding_mode != "zeros":
        x = graph.call_function(
            F.pad, (x, mod._reversed_padding_repeated_twice), {"mode": mod.padding_mode}
        )
        padding = (0,) * dims
    return graph.call_function(
        _CONV_BY_DIMS[dims],
        (x, weight, bias, mod.stride, padding, mod.dilation, mod.groups),
    )


def _drop_original_weights(gm: fx.GraphModule, replaced: set[int]) -> None:
    """Remove the replaced weight parameters; delete conv modules left empty and unused."""
    used = {n.target for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}
    emptied = []
    for path, owner in gm.named_modules(remove_duplicate=False):
        for attr, value in list(owner._parameters.items()):
            if value is None or id(value) not in replaced:
                continue
            if isinstance(owner, nn.modules.conv._ConvNd):
                owner.register_parameter(attr, None)
            else:
                delattr(owner, attr)
            emptied.append(path)
    for path in emptied:
        if not path or path in used or any(t.startswith(path + ".") for t in used):
            continue
        try:
            owner = gm.get_submodule(path)
        except AttributeError:
            continue
        if next(owner.parameters(), None) is None and next(owner.buffers(), None) is None:
            gm.delete_submodule(path)
