"""Byte accounting of an export: every shared tensor must be stored once.

The invariant checked on every export::

    sum(initializer bytes) <= unique torch parameter + buffer bytes * 1.01 + 64 KiB

Example of a broken export (torch's own optimizer folded ``B @ A`` into a dense tensor)::

    torch:  sharedft.banks.g0 (64x64x3x3)  sharedft.links.l1.B (64x8)  sharedft.links.l1.A (8x576)
    ONNX:   sharedft.banks.g0 (64x64x3x3)  matmul (64x576)            <- grew: +126,976 B
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx
import torch
from onnx import helper
from torch import nn

from ..errors import ExportSizeError

__all__ = [
    "SIZE_RATIO_SLACK",
    "SIZE_BYTES_SLACK",
    "TorchTensor",
    "torch_tensors",
    "torch_bytes",
    "onnx_tensor_bytes",
    "check_size",
]

log = logging.getLogger(__name__)

SIZE_RATIO_SLACK = 1.01
SIZE_BYTES_SLACK = 64 * 1024


@dataclass(frozen=True)
class TorchTensor:
    """One unique torch tensor (parameter or buffer) of the exported module."""

    name: str
    shape: tuple[int, ...]
    nbytes: int


def _storage_key(t: torch.Tensor) -> tuple:
    """Tensors with one key hold the same values (tied parameters, one Parameter in two places)."""
    if t.device.type == "meta" or t.numel() == 0:
        return ("id", id(t))
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def torch_tensors(module: nn.Module) -> tuple[TorchTensor, ...]:
    """Unique parameters and buffers of `module`, counted once by storage, first name kept."""
    seen: set[tuple] = set()
    out: list[TorchTensor] = []
    named = list(module.named_parameters(remove_duplicate=False)) + list(
        module.named_buffers(remove_duplicate=False)
    )
    for name, t in named:
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        out.append(TorchTensor(name, tuple(t.shape), t.numel() * t.element_size()))
    return tuple(out)


def torch_bytes(module: nn.Module, buffers: bool = True) -> int:
    """Bytes of the unique parameters (and buffers) of `module`."""
    if buffers:
        return sum(t.nbytes for t in torch_tensors(module))
    seen: set[tuple] = set()
    total = 0
    for _, p in module.named_parameters(remove_duplicate=False):
        key = _storage_key(p)
        if key not in seen:
            seen.add(key)
            total += p.numel() * p.element_size()
    return total


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    numel = 1
    for d in t.dims:
        numel *= int(d)
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return numel * itemsize


def _graph_tensors(graph: onnx.GraphProto, prefix: str = "") -> dict[str, onnx.TensorProto]:
    found: dict[str, onnx.TensorProto] = {}
    for t in graph.initializer:
        found[prefix + t.name] = t
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                key = f"{prefix}{node.op_type}:{node.output[0] if node.output else node.name}"
                found[key] = attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                found.update(_graph_tensors(attr.g, f"{prefix}{node.name}/"))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, g in enumerate(attr.graphs):
                    found.update(_graph_tensors(g, f"{prefix}{node.name}/{i}/"))
    return found


def onnx_tensor_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of every stored tensor: initializers by name, constants as ``Constant:<output>``.

    Works for a model whose data is in memory or in external files (the size comes from the
    shape and type, not from where the bytes are).
    """
    return {name: _tensor_nbytes(t) for name, t in _graph_tensors(model.graph).items()}


def _dims(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in t.dims) for name, t in _graph_tensors(model.graph).items()}


_NOTEWORTHY = 1024  # tensors smaller than this (shapes, scalars) are not worth naming


def _origin(shape: tuple[int, ...], tensors: tuple[TorchTensor, ...]) -> str:
    """``"; as large as <bank>"`` when a torch tensor (a bank first) has as many elements."""
    numel = _numel(shape)
    same = [t for t in tensors if t.shape and _numel(t.shape) == numel]
    same.sort(key=lambda t: (".banks." not in t.name, t.name))
    return f"; as large as {same[0].name}" if same else ""


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def check_size(
    model: onnx.ModelProto,
    tensors: tuple[TorchTensor, ...],
    *,
    ratio: float = SIZE_RATIO_SLACK,
    slack: int = SIZE_BYTES_SLACK,
) -> dict[str, int]:
    """Return the bytes of every ONNX tensor; raise `ExportSizeError` when the file grew.

    The limit is ``unique torch bytes * ratio + slack``. The error names the ONNX tensors that
    are not one of the torch tensors (largest first; dense copies made by constant folding) and
    the torch tensors that disappeared into them.
    """
    sizes = onnx_tensor_bytes(model)
    stored = sum(sizes.values())
    reference = sum(t.nbytes for t in tensors)
    limit = int(reference * ratio) + slack
    log.debug("initializer bytes %d, unique torch bytes %d, limit %d", stored, reference, limit)
    if stored <= limit:
        return sizes
    by_name = {t.name: t for t in tensors}
    dims = _dims(model)
    grew = sorted(
        (n for n in sizes if n not in by_name or sizes[n] > by_name[n].nbytes),
        key=lambda n: -sizes[n],
    )
    big = [n for n in grew if sizes[n] >= _NOTEWORTHY] or grew[:3]
    shown = [f"{n} ({_fmt_shape(dims[n])}, {sizes[n]:,} B{_origin(dims[n], tensors)})"
             for n in big[:8]]
    more = f" and {len(big) - 8} more" if len(big) > 8 else ""
    folded = sorted(
        n for n in by_name if n not in sizes and (".links." in n or ".banks." in n)
    )
    gone = ""
    if folded:
        gone = (
            f"; shared-weight tensors folded away: {', '.join(folded[:6])}"
            + (f" and {len(folded) - 6} more" if len(folded) > 6 else "")
        )
    raise ExportSizeError(
        f"the ONNX file would store {stored:,} B of tensors, more than the {reference:,} B of "
        f"unique torch parameters and buffers (limit {limit:,} B): a shared tensor was copied or "
        f"a low-rank product was folded into a dense tensor. Tensors that grew: "
        f"{', '.join(shown) or 'none by name'}{more}{gone}. Export with the default exporter "
        "(exporter='dynamo', which does not constant-fold), or use mode='dense' if dense "
        "per-layer weights are what you want",
        tensors=tuple(big),
    )
