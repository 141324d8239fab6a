"""Turn a torch module into an in-memory ONNX ModelProto, keeping shared tensors shared.

The default exporter is torch's dynamo exporter with its optimizer off (it would constant-fold
small ``B @ A`` products into dense tensors), followed by the onnxscript optimizer with a tiny
folding limit, which removes Expand/CastLike noise but never folds a weight::

    bank = initializer sharedft.banks.g0           # stored once
    w0 = Add(bank, Reshape(MatMul(B0, A0), shape))  # each site's effective weight, computed
    y0 = Conv(x, w0)

``mode="dense"`` first merges each link into a per-site weight (`merge_links`), like PEFT's
``merge_and_unload``, so the graph reads plain ``Conv(x, W_i)``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import onnx
import torch
from torch import nn

from ..errors import ExportError, InputError
from ..links import SharedWeights, WeightLink

__all__ = [
    "EXPORTERS",
    "DEFAULT_OPSET",
    "to_onnx",
    "merge_links",
    "prune_unused_initializers",
    "strip_debug_info",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
# dynamo: the safe default. dynamo-optimize: torch's own optimizer (folds B @ A; kept to show why
# the default exists). torchscript: the deprecated exporter with constant folding.
EXPORTERS = ("dynamo", "dynamo-optimize", "torchscript")
_FOLD_LIMIT = 16  # onnxscript folds only constants with at most this many elements


class _MergedLink(nn.Module):
    """A link replaced by its effective weight: ``forward(bank)`` returns the stored weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, bank: torch.Tensor) -> torch.Tensor:
        return self.weight


def merge_links(model: nn.Module, args: tuple) -> nn.Module:
    """A copy of `model` in which every link returns its effective weight as a stored tensor.

    Each link's output is captured on one forward pass over `args` (this works for traced and
    eager code alike); banks that no site reads any more become unused and are dropped from
    the ONNX graph. `model` itself is not modified.
    """
    merged = copy.deepcopy(model)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(
            lambda mod, inp, out: captured.setdefault(id(mod), out.detach().clone())
        )
        for m in merged.modules()
        if isinstance(m, WeightLink)
    ]
    try:
        with torch.no_grad():
            merged(*args)
    finally:
        for h in handles:
            h.remove()
    for parent in list(merged.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WeightLink) and id(child) in captured:
                setattr(parent, name, _MergedLink(captured[id(child)]))
    for container in merged.modules():
        if isinstance(container, SharedWeights) and all(
            isinstance(link, _MergedLink) for link in container.links.values()
        ):
            for bank in list(container.banks.keys()):  # read by no site: store nothing
                container.banks[bank] = nn.Parameter(torch.empty(0), requires_grad=False)
    return merged


def prune_unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Drop initializers no node reads and no graph output names; return their names."""
    used: set[str] = {o.name for o in model.graph.output}

    def collect(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            used.update(node.input)
            for sub in _subgraphs(node):
                collect(sub)

    collect(model.graph)
    keep = [t for t in model.graph.initializer if t.name in used]
    dropped = [t.name for t in model.graph.initializer if t.name not in used]
    if dropped:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        inputs = [i for i in model.graph.input if i.name not in set(dropped)]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    return dropped


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warn about deprecations: route it to DEBUG logs."""
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            if out.getvalue():
                log.debug("exporter output:\n%s", out.getvalue())


def _dynamic_shapes(args: tuple) -> tuple:
    batch = torch.export.Dim("batch")
    return tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}{i}" for i in range(n)]


def to_onnx(
    model: nn.Module,
    args: tuple,
    *,
    exporter: str = "dynamo",
    opset: int | None = None,
    dynamic_batch: bool = True,
    num_outputs: int = 1,
) -> onnx.ModelProto:
    """Export `model` (already in eval mode) on `args` to an in-memory ModelProto.

    Inputs are named ``input`` (``input0``, ``input1``… for several), outputs ``output``
    (``output0``…); with `dynamic_batch` axis 0 of every tensor input is a symbol.
    """
    if exporter not in EXPORTERS:
        raise InputError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if len(tensors) != len(args):
        raise InputError(
            "export_onnx needs example inputs that are all tensors (got "
            f"{', '.join(type(a).__name__ for a in args)}); fix other forward() arguments with "
            "functools.partial or a wrapper module"
        )
    input_names = _names("input", len(args))
    output_names = _names("output", num_outputs)
    # torch.export specializes a batch of 1 (the 0/1 rule) and then rejects the symbolic batch
    # axis; tracing with a batch of 2 (the example repeated) avoids it.
    attempts = [_batch_of_two(args), args] if dynamic_batch and exporter != "torchscript" else [args]
    error: Exception | None = None
    for attempt in attempts:
        if attempt is None:
            continue
        try:
            with _quiet():
                if exporter == "torchscript":
                    proto = _torchscript(
                        model, attempt, opset, dynamic_batch, input_names, output_names
                    )
                else:
                    proto = _dynamo(model, attempt, exporter, opset, dynamic_batch, input_names,
                                    output_names)
            prune_unused_initializers(proto)
            strip_debug_info(proto.graph)
            return proto
        except Exception as exc:  # noqa: BLE001 - the exporters raise many unrelated types
            log.debug("export attempt failed", exc_info=True)
            error = exc
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    raise ExportError(
        f"torch.onnx.export ({exporter}) failed: {type(error).__name__}: {first[:300]}; run with "
        "--debug for the full message, or try dynamic_batch=False"
    ) from error


def strip_debug_info(graph: onnx.GraphProto) -> None:
    """Drop per-node debug metadata (source stack traces, fx nodes, module paths).

    The dynamo exporter writes about 1 KB of it per node: 1.1 MB for densenet121, more than the
    size slack of a compact file. It is only useful to debug the exporter.
    """
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for sub in _subgraphs(node):
            strip_debug_info(sub)
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        del value.metadata_props[:]
    for tensor in graph.initializer:
        del tensor.metadata_props[:]


def _batch_of_two(args: tuple) -> tuple | None:
    """`args` with every batch-1 tensor repeated to a batch of 2; None when nothing changes."""
    if not any(a.dim() > 0 and a.shape[0] == 1 for a in args):
        return None
    return tuple(
        a.expand(2, *a.shape[1:]).contiguous() if a.dim() > 0 and a.shape[0] == 1 else a
        for a in args
    )


def _dynamo(
    model: nn.Module, args: tuple, exporter: str, opset: int, dynamic_batch: bool,
    input_names: list[str], output_names: list[str],
) -> onnx.ModelProto:
    program = torch.onnx.export(
        model, args, dynamo=True, optimize=exporter == "dynamo-optimize", opset_version=opset,
        verbose=False, input_names=input_names, output_names=output_names,
        dynamic_shapes=_dynamic_shapes(args) if dynamic_batch else None,
    )
    if exporter == "dynamo":
        import onnxscript.optimizer

        onnxscript.optimizer.optimize(program.model, input_size_limit=_FOLD_LIMIT)
    return program.model_proto


def _torchscript(
    model: nn.Module, args: tuple, opset: int, dynamic_batch: bool,
    input_names: list[str], output_names: list[str],
) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes: Any = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
    torch.onnx.export(
        model, args, buf, dynamo=False, do_constant_folding=True, opset_version=min(opset, 20),
        input_names=input_names, output_names=output_names, dynamic_axes=axes,
    )
    return onnx.load_from_string(buf.getvalue())


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by a node's attributes (If / Loop / Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs
