"""Analysis: record each node's output shape (``node.meta['tensor_meta']``) on the example inputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..modes import eval_mode
from ..tracing import capture_calls, graph_modules
from .base import Pass, PassResult

__all__ = ["PropagateShapes"]


class PropagateShapes(Pass):
    """Run torch.fx ShapeProp on every graph, fed the inputs it sees on the example inputs."""

    name = "propagate_shapes"
    kind = "analysis"
    matches = "Every node of every traced graph that the example inputs reach."
    preconditions = "Example inputs that run through the model."
    invariants = "Changes no graph; only writes `node.meta['tensor_meta']`."
    before = "conv = torch.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1)"
    after = "conv = torch.conv2d(x, w, ...)   # meta['tensor_meta'].shape = (1, 64, 56, 56)"

    def __init__(self, example_inputs: tuple) -> None:
        self.example_inputs = example_inputs

    def run(self, module: nn.Module) -> PassResult:
        partitions = dict(graph_modules(module))
        with eval_mode(module):
            calls = capture_calls(module, partitions, self.example_inputs)
            count = 0
            for path, gm in partitions.items():
                if path not in calls or calls[path][1]:
                    continue  # never called, or called with keyword arguments
                with torch.no_grad():
                    ShapeProp(gm).propagate(*calls[path][0])
                count += 1
        return PassResult(module, False, {"graphs": count})
