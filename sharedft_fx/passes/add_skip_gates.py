"""Rewrite (optional): a learnable gated skip around shared convs that keep the input's shape."""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..links import SharedWeights, SkipGate
from ..tracing import graph_modules
from .base import Pass, PassResult
from .find_conv_sites import CONV_FUNCTIONS
from .share_conv_weights import REWRITTEN_KEY, link_key

__all__ = ["AddSkipGates", "GATED_KEY"]

GATED_KEY = "sharedft.gated"


class AddSkipGates(Pass):
    """``y = conv(x)`` -> ``y = conv(x) + g·x`` with g = 0 at init, for shape-keeping shared convs."""

    name = "add_skip_gates"
    kind = "rewrite"
    matches = (
        "Functional convs whose weight comes from a sharing link and whose output has the "
        "input's shape (stride 1, same channels, shape-preserving padding)."
    )
    preconditions = (
        "`share_conv_weights` ran; shapes are known from `node.meta['tensor_meta']` "
        "(torch.fx ShapeProp), or the sites to gate are given (when loading a recipe)."
    )
    invariants = (
        "The model computes the same outputs (the gate starts at 0). Each gate is a scalar "
        "parameter `sharedft.gates.<site>`. Running it again adds no gate."
    )
    before = "conv = torch.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1)"
    after = "conv = torch.conv2d(x, w, ...)\ngated = self.sharedft.gates.layer1_0_conv1(conv, x)"

    def __init__(self, sites: tuple[str, ...] | None = None) -> None:
        self.fixed_sites = sites
        self.gated: list[str] = []

    @property
    def preserves_outputs(self) -> bool:
        return True

    def run(self, module: nn.Module) -> PassResult:
        self.gated = []
        for _, gm in graph_modules(module):
            for node in list(gm.graph.nodes):
                site = self._gate_site(gm, node)
                if site is None:
                    continue
                container_name, _, _ = node.args[1].target.partition(".")
                container = gm.get_submodule(container_name)
                assert isinstance(container, SharedWeights)
                key = link_key(site)
                bank = gm.get_parameter(node.args[1].args[0].target)
                container.gates[key] = SkipGate(dtype=bank.dtype, device=bank.device)
                with gm.graph.inserting_after(node):
                    gated = gm.graph.call_module(
                        f"{container_name}.gates.{key}", (node, node.args[0])
                    )
                node.replace_all_uses_with(gated, delete_user_cb=lambda u: u is not gated)
                node.meta[GATED_KEY] = site
                self.gated.append(site)
        return PassResult(module, bool(self.gated), {"gates": len(self.gated)})

    def _gate_site(self, gm: fx.GraphModule, node: fx.Node) -> str | None:
        if node.op != "call_function" or node.target not in CONV_FUNCTIONS:
            return None
        if GATED_KEY in node.meta or any(u.op == "call_module" and ".gates." in str(u.target)
                                         for u in node.users):
            return None
        weight = node.args[1] if len(node.args) > 1 else None
        if not isinstance(weight, fx.Node) or REWRITTEN_KEY not in weight.meta:
            return None
        site = weight.meta[REWRITTEN_KEY]
        if self.fixed_sites is not None:
            return site if site in self.fixed_sites else None
        x = node.args[0]
        out_meta = node.meta.get("tensor_meta")
        in_meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
        if out_meta is None or in_meta is None:
            return None
        return site if tuple(out_meta.shape) == tuple(in_meta.shape) else None
