"""Reading FX graphs for the report: shared and unshared conv sites, and the node-level diff.

Sites come from the rewrite's annotations (``node.meta["sharedft.rewritten"]`` on link nodes,
``node.meta["sharedft.site"]`` on convs left unshared) or, for modules that carry none, from the
structure (a `WeightLink` called on a ``get_attr`` bank; plain ``nn.ConvNd`` modules).

Node diff keys: ``(op, module path, k-th call)`` for ``call_module`` / ``get_attr`` nodes,
``(op, graph, name)`` for the others::

    before  layer1_0_conv1 = self.layer1.0.conv1(maxpool)
    after   layer1_0_conv1_weight = self.sharedft.links.layer1_0_conv1(sharedft_banks_g0)
            conv2d = torch.conv2d(maxpool, layer1_0_conv1_weight, None, (1, 1), (1, 1), (1, 1), 1)
    ->      NodeChange("rewritten", site="layer1.0.conv1", before=("call_module layer1.0.conv1",),
                       after=("call_module sharedft.links.layer1_0_conv1",
                              "call_function torch.conv2d"))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Any, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..config import ShareConfig
from ..errors import TracingError
from ..links import SkipGate, WeightLink
from ..passes.find_conv_sites import SITE_KEY, ConvUse
from ..passes.share_conv_weights import REWRITTEN_KEY, link_key
from ..tracing import CONV_TYPES, _resolve_autowrap, _trace_one, graph_modules

__all__ = ["NodeChange", "NodeCounts", "site_weight_errors", "weight_owner_paths"]

log = logging.getLogger(__name__)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


@dataclass(frozen=True)
class NodeChange:
    """One node-level change. ``kind`` is ``added``, ``removed`` or ``rewritten``.

    A rewritten entry pairs the node(s) of a conv site before (``before``) with the nodes that
    compute it after (``after``); ``op``/``target`` describe the first before node.
    """

    kind: str
    graph: str  # partition path ("" = the whole model)
    name: str
    op: str
    target: str
    site: str | None = None
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "graph": self.graph, "name": self.name, "op": self.op,
            "target": self.target, "site": self.site, "before": list(self.before),
            "after": list(self.after),
        }


@dataclass(frozen=True)
class NodeCounts:
    before: int
    after: int
    unchanged: int
    added: int
    removed: int
    rewritten: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Link:
    site: str
    graph: str
    node: str
    key: str
    link: WeightLink
    group: str
    bank_path: str  # full parameter path of the bank
    bank: nn.Parameter
    link_path: str  # full module path of the link


def _target_text(prefix: str, node: fx.Node) -> str:
    if node.op in ("call_module", "get_attr"):
        return _join(prefix, str(node.target))
    t = node.target
    if callable(t):
        mod = getattr(t, "__module__", "") or ""
        name = getattr(t, "__name__", repr(t))
        return f"{mod}.{name}" if mod.startswith("torch") else name
    return str(t)


def _read_shared(after: nn.Module) -> tuple[list[_Link], dict[str, ConvUse], list[tuple[str, str]]]:
    """Links (shared sites), unshared sites (ConvUse annotations) and the site execution order."""
    links: list[_Link] = []
    unshared: dict[str, ConvUse] = {}
    order: list[tuple[str, str]] = []  # (site, "shared"/"unshared") first appearance
    seen: set[str] = set()
    for prefix, gm in graph_modules(after):
        for node in gm.graph.nodes:
            if node.op == "call_module":
                mod = gm.get_submodule(str(node.target))
                if isinstance(mod, WeightLink) and node.args and isinstance(node.args[0], fx.Node):
                    bank_node = node.args[0]
                    if bank_node.op != "get_attr":
                        continue
                    key = str(node.target).rpartition(".")[2]
                    site = node.meta.get(REWRITTEN_KEY) or key  # keys derive from full paths
                    if site in seen:
                        continue
                    seen.add(site)
                    bank_target = str(bank_node.target)
                    links.append(_Link(
                        site=site, graph=prefix, node=node.name, key=key, link=mod,
                        group=bank_target.rpartition(".")[2],
                        bank_path=_join(prefix, bank_target), bank=gm.get_parameter(bank_target),
                        link_path=_join(prefix, str(node.target)),
                    ))
                    order.append((site, "shared"))
                    continue
                if SITE_KEY not in node.meta and _plain_conv(mod):
                    # a conv left unshared in a graph that lost its annotations
                    node_site = _join(prefix, str(node.target))
                    w = mod.weight
                    use = ConvUse(
                        site=node_site, param=f"{node_site}.weight", use="module", order=len(order),
                        weight_shape=tuple(w.shape), conv_groups=mod.groups,
                        dims=w.dim() - 2, dtype=str(w.dtype).removeprefix("torch."),
                        device=str(w.device),
                    )
                    if node_site not in seen:
                        seen.add(node_site)
                        unshared[node_site] = use
                        order.append((node_site, "unshared"))
                    continue
            use = node.meta.get(SITE_KEY)
            if isinstance(use, ConvUse) and use.site not in seen:
                seen.add(use.site)
                unshared[use.site] = use
                order.append((use.site, "unshared"))
    return links, unshared, order


def _gate_of(module: nn.Module, ln: "_Link") -> nn.Module | None:
    """The skip gate of a link's site, if the rewrite added one."""
    container = ln.link_path.rsplit(".links.", 1)[0]
    try:
        gate = module.get_submodule(f"{container}.gates.{ln.key}")
    except AttributeError:
        return None
    return gate if isinstance(gate, SkipGate) else None


def weight_owner_paths(module: nn.Module) -> dict[str, str]:
    """Link key -> module path, for every module owning a conv-shaped (>= 3-D) parameter."""
    out: dict[str, str] = {}
    for name, p in module.named_parameters():
        if p.dim() >= 3:
            owner = name.rpartition(".")[0]
            out.setdefault(link_key(owner), owner)
    return out


def _plain_conv(module: nn.Module) -> bool:
    return isinstance(module, CONV_TYPES) and isinstance(module.weight, nn.Parameter)


def _plain_sites(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Conv sites of a module without annotations: every nn.ConvNd holding a weight parameter."""
    out: dict[str, tuple[int, ...]] = {}
    seen: set[int] = set()
    for path, mod in module.named_modules():
        if isinstance(mod, CONV_TYPES) and isinstance(mod.weight, nn.Parameter):
            if id(mod.weight) not in seen:
                seen.add(id(mod.weight))
                out[path] = tuple(mod.weight.shape)
    return out


def _trace_like(
    module: nn.Module, paths: Sequence[str], config: ShareConfig
) -> list[tuple[str, fx.GraphModule]]:
    """Trace `module` (never modified) as the given partitions were traced; whole model first."""
    if any(isinstance(m, fx.GraphModule) for m in module.modules()):
        return list(graph_modules(module))
    autowrap = _resolve_autowrap(config.autowrap_functions)
    try:
        return [("", _trace_one(module, "", config, autowrap, config.concrete_args or None))]
    except Exception as exc:  # noqa: BLE001
        if not paths or paths == [""]:
            raise TracingError(
                f"cannot trace the module for the node diff ({type(exc).__name__}: {exc})"
            ) from exc
    out = []
    for p in paths:
        try:
            sub = module.get_submodule(p) if p else module
            out.append((p, _trace_one(sub, p, config, autowrap, None)))
        except Exception as exc:  # noqa: BLE001
            raise TracingError(f"cannot trace {p or 'the original module'} for the node diff "
                               f"({type(exc).__name__}: {exc})") from exc
    return out


def _keyed_nodes(
    graphs: Sequence[tuple[str, fx.GraphModule]]
) -> dict[tuple[Any, ...], tuple[str, fx.Node]]:
    """Node keys: (op, module path, k-th call) for modules and attributes, else (op, graph, name)."""
    calls: dict[tuple[str, str], int] = {}
    out: dict[tuple[Any, ...], tuple[str, fx.Node]] = {}
    for prefix, gm in graphs:
        for node in gm.graph.nodes:
            if node.op in ("call_module", "get_attr"):
                path = (node.op, _join(prefix, str(node.target)))
                k = calls.get(path, 0)
                calls[path] = k + 1
                out[(*path, k)] = (prefix, node)
            else:
                out[(node.op, prefix, node.name)] = (prefix, node)
    return out


def _diff_nodes(
    before: list[tuple[str, fx.GraphModule]],
    after: list[tuple[str, fx.GraphModule]],
    shared_sites: set[str],
) -> tuple[tuple[NodeChange, ...], NodeCounts]:
    b_nodes = _keyed_nodes(before)
    a_nodes = _keyed_nodes(after)
    # after-nodes that compute a site: the link node and the functional conv replacing a module
    after_of_site: dict[str, list[tuple[str, fx.Node]]] = {}
    for key, (p, n) in a_nodes.items():
        site = n.meta.get(REWRITTEN_KEY)
        if site is not None and key not in b_nodes:
            after_of_site.setdefault(site, []).append((p, n))
    removed, rewritten_before = [], {}
    for key, (p, n) in b_nodes.items():
        if key in a_nodes:
            continue
        full = _join(p, str(n.target)) if n.op in ("call_module", "get_attr") else ""
        site = full if n.op == "call_module" else full.rpartition(".")[0]
        if n.op in ("call_module", "get_attr") and site in shared_sites:
            rewritten_before.setdefault(site, []).append((p, n))
        else:
            removed.append(NodeChange("removed", p, n.name, n.op, _target_text(p, n)))
    paired = {id(n) for nodes in after_of_site.values() for _, n in nodes}
    rewritten = []
    for site, nodes in rewritten_before.items():
        p, first = nodes[0]
        rewritten.append(NodeChange(
            "rewritten", p, first.name, first.op, _target_text(p, first), site=site,
            before=tuple(f"{n.op} {_target_text(q, n)}" for q, n in nodes),
            after=tuple(f"{n.op} {_target_text(q, n)}" for q, n in after_of_site.get(site, ())),
        ))
    added = [
        NodeChange("added", p, n.name, n.op, _target_text(p, n), site=n.meta.get(REWRITTEN_KEY))
        for key, (p, n) in a_nodes.items() if key not in b_nodes and id(n) not in paired
    ]
    changes = tuple(rewritten + added + removed)
    unchanged = sum(1 for k in a_nodes if k in b_nodes)
    counts = NodeCounts(len(b_nodes), len(a_nodes), unchanged, len(added), len(removed),
                        len(rewritten))
    return changes, counts


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _unique_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    seen: set[int] = set()
    out = []
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def _original_weight(original: nn.Module, site: str) -> torch.Tensor | None:
    try:
        mod = original.get_submodule(site)
    except AttributeError:
        return None
    w = getattr(mod, "weight", None)
    return w if isinstance(w, torch.Tensor) else None


def site_weight_errors(
    original: nn.Module,
    shared: nn.Module,
    permutations: Mapping[str, Sequence[tuple[int, Sequence[int]]]] | None = None,
) -> dict[str, float]:
    """Relative weight error ||W_i - link_i(bank)|| / ||W_i|| (float64) of every shared site.

    `original` holds the dense weights (same module paths), `shared` the banks and links, e.g.
    after fine-tuning. `permutations` (``result.alignment.permutations``: weight path ->
    [(dim, order)]) is the channel alignment the transform applied to the original weights.
    """
    links, _, _ = _read_shared(shared)
    paths = weight_owner_paths(original)
    out: dict[str, float] = {}
    with torch.no_grad():
        for ln in links:
            site = paths.get(ln.key, ln.site) if ln.site == ln.key else ln.site
            w = _original_weight(original, site)
            for dim, order in (permutations or {}).get(f"{site}.weight", ()):
                if w is not None:
                    w = w.index_select(dim, torch.as_tensor(list(order), device=w.device))
            if w is None or tuple(w.shape) != tuple(ln.bank.shape):
                continue
            eff = ln.link(ln.bank).detach().to(torch.float64)
            w64 = w.detach().to(torch.float64)
            norm = torch.linalg.vector_norm(w64).item()
            diff = torch.linalg.vector_norm(w64 - eff).item()
            out[site] = diff / norm if norm > 0 else diff
    return out
