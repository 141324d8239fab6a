"""Analysis: find every convolution whose weight is a parameter, and annotate its uses.

A *site* is one weight parameter (by identity): a module called twice, or a weight tied by the
user under two names, is one site with several *uses*. A use is either a call of a plain
``nn.ConvNd`` module (``use="module"``) or a ``get_attr`` read of the parameter that flows into a
functional ``conv1d/2d/3d`` (``use="read"``; this covers conv subclasses with their own forward,
such as weight standardization or TF-style padding, which the tracer enters).
"""

from __future__ import annotations

import math
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.fx as fx
from torch import nn

from ..tracing import CONV_TYPES, graph_modules
from .base import Pass, PassResult

__all__ = ["FindConvSites", "ConvUse", "SITE_KEY", "CONV_FUNCTIONS"]

log = logging.getLogger(__name__)

SITE_KEY = "sharedft.site"
CONV_FUNCTIONS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


@dataclass(frozen=True)
class ConvUse:
    """Annotation on a node that uses a conv weight (``node.meta["sharedft.site"]``)."""

    site: str
    param: str
    use: str  # "module" or "read"
    order: int
    weight_shape: tuple[int, ...]
    conv_groups: int
    dims: int
    dtype: str
    device: str
    eligible: bool = True
    reason: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def key(self) -> tuple:
        """What must match for two sites to share one bank."""
        return (self.weight_shape, self.conv_groups, self.dtype, self.device)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _weight_arg(node: fx.Node) -> object:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")


def _groups_arg(node: fx.Node) -> object:
    return node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)


def _param_ancestors(start: object) -> tuple[list[fx.Node], bool]:
    """get_attr ancestors of a weight expression, and whether it depends on graph inputs."""
    if not isinstance(start, fx.Node):
        return [], False
    seen: set[fx.Node] = set()
    stack = [start]
    attrs: list[fx.Node] = []
    dynamic = False
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "get_attr":
            attrs.append(node)
        elif node.op in ("placeholder", "call_module"):
            dynamic = True
        else:
            stack.extend(node.all_input_nodes)
    return attrs, dynamic


class FindConvSites(Pass):
    """Annotate each use of a convolution weight parameter with a `ConvUse`."""

    name = "find_conv_sites"
    kind = "analysis"
    matches = (
        "Calls of plain `nn.Conv1d/2d/3d` modules, and `get_attr` reads of a parameter that flows "
        "into a functional `conv1d/2d/3d` weight argument (directly or through weight-only ops)."
    )
    preconditions = "The model's traced parts are GraphModules (see `trace_model`)."
    invariants = (
        "Changes no graph. Every use of one parameter carries the same site name; weights tied "
        "by identity are one site; a weight that is also used outside the traced graphs, held "
        "in a buffer, or computed from inputs is marked ineligible with the reason."
    )
    before = "conv1 = self.layer1.0.conv1(x)"
    after = (
        "conv1 = self.layer1.0.conv1(x)   # meta['sharedft.site'] = ConvUse(site='layer1.0.conv1',"
        " weight_shape=(64, 64, 3, 3), use='module', ...)"
    )

    def run(self, module: nn.Module) -> PassResult:
        owners: dict[int, list[str]] = defaultdict(list)
        for path, p in module.named_parameters(remove_duplicate=False):
            owners[id(p)].append(path.rpartition(".")[0])
        partitions = list(graph_modules(module))
        found: dict[fx.Node, tuple[nn.Parameter, str, str, int, int]] = {}
        for prefix, gm in partitions:
            for node in gm.graph.nodes:
                node.meta.pop(SITE_KEY, None)
                for use_node, param, use, owner, groups, dims in self._uses(gm, node):
                    found.setdefault(use_node, (param, use, _join(prefix, owner), groups, dims))
        by_param = {id(v[0]): v for v in found.values()}
        # every other read of a site's weight is a use too: it must see the effective weight
        for prefix, gm in partitions:
            for node in gm.graph.nodes:
                if node.op == "get_attr" and node not in found:
                    value = _parameter_or_none(gm, node.target)
                    if value is not None and id(value) in by_param:
                        _, _, _, groups, dims = by_param[id(value)]
                        found[node] = (value, "read", _join(prefix, node.target.rpartition(".")[0]), groups, dims)
        accounted: dict[int, set[str]] = defaultdict(set)
        names: dict[int, tuple[str, str]] = {}
        for node, (param, use, owner, _, _) in found.items():
            accounted[id(param)].add(owner)
            if id(param) not in names:
                if use == "module":
                    names[id(param)] = (owner, f"{owner}.weight")
                else:
                    path = _join(owner, node.target.rpartition(".")[2])
                    names[id(param)] = (path.removesuffix(".weight"), path)
        order = 0
        for prefix, gm in partitions:
            for node in gm.graph.nodes:
                if node not in found:
                    continue
                param, use, owner, groups, dims = found[node]
                site, param_path = names[id(param)]
                stray = sorted(set(owners[id(param)]) - accounted[id(param)])
                reason = ""
                if stray:
                    reason = (f"weight is also used by {stray[0] or 'the top-level module'}, "
                              "which is not traced")
                order += 1
                node.meta[SITE_KEY] = ConvUse(
                    site=site,
                    param=param_path,
                    use=use,
                    order=order,
                    weight_shape=tuple(param.shape),
                    conv_groups=groups,
                    dims=dims,
                    dtype=str(param.dtype).removeprefix("torch."),
                    device=str(param.device),
                    eligible=not reason,
                    reason=reason,
                )
        log.debug("found %d conv sites with %d uses", len(names), len(found))
        return PassResult(module, False, {"sites": len(names), "uses": len(found)})

    @staticmethod
    def _uses(
        gm: fx.GraphModule, node: fx.Node
    ) -> Iterable[tuple[fx.Node, nn.Parameter, str, str, int, int]]:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, CONV_TYPES) and isinstance(mod.weight, nn.Parameter):
                dims = next(i + 1 for i, t in enumerate(CONV_TYPES) if isinstance(mod, t))
                yield node, mod.weight, "module", node.target, mod.groups, dims
        elif node.op == "call_function" and node.target in CONV_FUNCTIONS:
            weight = _weight_arg(node)
            groups = _groups_arg(node)
            attrs, dynamic = _param_ancestors(weight)
            params = [(a, v) for a in attrs
                      if (v := _parameter_or_none(gm, a.target)) is not None and v.dim() >= 3]
            if dynamic or len(params) != 1 or not isinstance(groups, int):
                return  # computed from inputs, several parameters, or already shared
            attr, value = params[0]
            yield attr, value, "read", attr.target.rpartition(".")[0], groups, CONV_FUNCTIONS[node.target]


def _parameter_or_none(gm: fx.GraphModule, target: str) -> nn.Parameter | None:
    try:
        return gm.get_parameter(target)
    except AttributeError:
        return None  # a buffer, a constant or a module: not a parameter to share
