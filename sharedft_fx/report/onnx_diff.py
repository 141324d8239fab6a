"""Compare two ONNX files: initializer bytes per tensor and per sharing group, op counts.

Reads the files with the `onnx` package only (external data is never loaded: its size comes
from the tensor's shape and type). Initializers of a sharing rewrite are recognised by name
(``sharedft.banks.<group>``, ``sharedft.links.<site>.B``) and by graph connectivity: every
``Conv`` weight input is walked back to the initializers it is computed from.

Before (original resnet18) → after (``transform(resnet18).model``)::

    >>> d = diff_onnx("resnet18.onnx", "resnet18-shared.onnx")
    >>> [(g.name, g.bytes_before, g.bytes_after) for g in d.groups][:1]
    [('g0_64x64x3x3', 589824, 229376)]
    >>> d.op_delta["MatMul"]
    13
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import InputError
from ..passes.share_conv_weights import link_key

__all__ = [
    "OnnxInitializer",
    "OnnxSummary",
    "OnnxGroupBytes",
    "OnnxOpChange",
    "OnnxDiff",
    "summarize_onnx",
    "diff_onnx",
    "bank_group",
    "link_site_key",
]

log = logging.getLogger(__name__)

_BANK = re.compile(r"sharedft(?:_\d+)?[./_]banks[./_](?P<group>g\d+_\d+(?:x\d+)*)$")
_LINK = re.compile(r"sharedft(?:_\d+)?[./_]links[./_](?P<key>.+?)[./_](?P<param>A|B|scale)$")
_CONV_OPS = ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv")
_MAX_WALK = 256


def bank_group(name: str) -> str | None:
    """``"sharedft.banks.g0_64x64x3x3"`` -> ``"g0_64x64x3x3"`` (None for other names)."""
    m = _BANK.search(name)
    return m.group("group") if m else None


def link_site_key(name: str) -> str | None:
    """``"sharedft.links.layer1_0_conv1.B"`` -> ``"layer1_0_conv1"`` (None for other names)."""
    m = _LINK.search(name)
    return m.group("key") if m else None


@dataclass(frozen=True)
class OnnxInitializer:
    """One initializer: its size in bytes, and the sharing group it belongs to (if any)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int
    external: bool
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "dtype": self.dtype, "shape": list(self.shape),
            "bytes": self.bytes, "external": self.external, "group": self.group,
        }


@dataclass(frozen=True)
class OnnxSummary:
    """What one ONNX file holds: initializers (largest first is up to the reader) and op counts."""

    path: str
    file_bytes: int
    initializers: tuple[OnnxInitializer, ...]
    op_counts: Mapping[str, int]
    conv_weights: Mapping[str, tuple[str, ...]]  # Conv node name -> initializers its weight reads

    @property
    def initializer_bytes(self) -> int:
        return sum(i.bytes for i in self.initializers)

    @property
    def nodes(self) -> int:
        return sum(self.op_counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "initializer_bytes": self.initializer_bytes,
            "nodes": self.nodes,
            "op_counts": dict(sorted(self.op_counts.items())),
            "initializers": [i.to_dict() for i in self.initializers],
        }


@dataclass(frozen=True)
class OnnxGroupBytes:
    """Initializer bytes of one sharing group: the sites' dense weights before, bank + links after."""

    name: str
    sites: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    bank_bytes: int
    link_bytes: int

    @property
    def saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "sites": list(self.sites), "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after, "bank_bytes": self.bank_bytes,
            "link_bytes": self.link_bytes, "saved": self.saved,
        }


@dataclass(frozen=True)
class OnnxOpChange:
    op: str
    before: int
    after: int

    @property
    def delta(self) -> int:
        return self.after - self.before

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "before": self.before, "after": self.after, "delta": self.delta}


@dataclass(frozen=True)
class OnnxDiff:
    """Before/after summaries, bytes per sharing group, and op-count changes."""

    before: OnnxSummary
    after: OnnxSummary
    groups: tuple[OnnxGroupBytes, ...]
    ops: tuple[OnnxOpChange, ...]

    @property
    def op_delta(self) -> dict[str, int]:
        """Op type -> change in count (only ops whose count changed)."""
        return {o.op: o.delta for o in self.ops if o.delta}

    @property
    def bytes_saved(self) -> int:
        return self.before.initializer_bytes - self.after.initializer_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "bytes_saved": self.bytes_saved,
            "groups": [g.to_dict() for g in self.groups],
            "ops": [o.to_dict() for o in self.ops],
        }


def _load(path: str | os.PathLike[str]) -> Any:
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"ONNX file {p} does not exist")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise InputError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _tensor_bytes(t: Any) -> tuple[str, tuple[int, ...], int, bool]:
    import onnx
    from onnx import helper

    dtype = onnx.TensorProto.DataType.Name(t.data_type).lower()
    shape = tuple(int(d) for d in t.dims)
    numel = 1
    for d in shape:
        numel *= d
    external = t.data_location == onnx.TensorProto.EXTERNAL
    if t.data_type == onnx.TensorProto.STRING:
        return dtype, shape, sum(len(s) for s in t.string_data), external
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 0
    if itemsize:
        n = numel * itemsize
        if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            n = (numel + 1) // 2
        return dtype, shape, n, external
    if external:  # unknown element size: trust the recorded length
        info = {e.key: e.value for e in t.external_data}
        return dtype, shape, int(info.get("length", 0)), external
    return dtype, shape, len(t.raw_data), external


def _graphs(graph: Any) -> Iterable[Any]:
    """A graph and every subgraph held in node attributes (If / Loop / Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _weight_sources(graph: Any, inits: set[str]) -> dict[str, tuple[str, ...]]:
    """Conv node -> the initializers its weight input is computed from (walking producers)."""
    producer = {out: node for node in graph.node for out in node.output}
    found: dict[str, tuple[str, ...]] = {}
    for i, node in enumerate(graph.node):
        if node.op_type not in _CONV_OPS or len(node.input) < 2:
            continue
        weight_index = 3 if node.op_type == "QLinearConv" else 1
        stack, seen, sources = [node.input[weight_index]], set(), []
        while stack and len(seen) < _MAX_WALK:
            name = stack.pop()
            if name in seen or not name:
                continue
            seen.add(name)
            if name in inits:
                sources.append(name)
            elif name in producer:
                stack.extend(producer[name].input)
        found[node.name or f"{node.op_type}_{i}"] = tuple(sorted(sources))
    return found


def summarize_onnx(path: str | os.PathLike[str]) -> OnnxSummary:
    """Initializers (bytes per tensor, external or not) and op counts of one ONNX file."""
    model = _load(path)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    conv_weights = _weight_sources(graph, inits)
    link_group: dict[str, str] = {}
    for sources in conv_weights.values():
        banks = {g for s in sources if (g := bank_group(s))}
        if len(banks) == 1:
            for s in sources:
                if link_site_key(s):
                    link_group[s] = next(iter(banks))
    rows = []
    for t in graph.initializer:
        dtype, shape, nbytes, external = _tensor_bytes(t)
        group = bank_group(t.name) or link_group.get(t.name)
        rows.append(OnnxInitializer(t.name, dtype, shape, nbytes, external, group))
    ops: Counter[str] = Counter()
    for g in _graphs(graph):
        for node in g.node:
            ops[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
    p = Path(path)
    file_bytes = p.stat().st_size + sum(
        (p.parent / loc).stat().st_size
        for loc in {
            e.value for t in graph.initializer for e in t.external_data if e.key == "location"
        }
        if (p.parent / loc).is_file()
    )
    return OnnxSummary(str(path), file_bytes, tuple(rows), dict(ops), conv_weights)


def _site_of(weight_name: str) -> str:
    """``"layer1.0.conv1.weight"`` -> link key ``"layer1_0_conv1"``."""
    owner = weight_name.rpartition(".")[0] if "." in weight_name else weight_name
    return link_key(owner)


def diff_onnx(
    before: str | os.PathLike[str] | OnnxSummary, after: str | os.PathLike[str] | OnnxSummary
) -> OnnxDiff:
    """Compare an original ONNX file with its shared version.

    Each sharing group of `after` (a bank and the links whose Conv also reads it) is compared
    with the dense Conv weights of the same sites in `before` (a site's weight initializer
    ``layer1.0.conv1.weight`` matches the link ``sharedft.links.layer1_0_conv1.*``).
    """
    a = before if isinstance(before, OnnxSummary) else summarize_onnx(before)
    b = after if isinstance(after, OnnxSummary) else summarize_onnx(after)
    a_bytes = {i.name: i.bytes for i in a.initializers}
    # dense conv weights of the original, keyed like the links
    dense: dict[str, int] = {}
    for sources in a.conv_weights.values():
        if len(sources) == 1:
            dense.setdefault(_site_of(sources[0]), a_bytes[sources[0]])
    group_sites: dict[str, list[str]] = {}
    for i in b.initializers:
        if i.group is None:
            continue
        group_sites.setdefault(i.group, [])
        key = link_site_key(i.name)
        if key and key not in group_sites[i.group]:
            group_sites[i.group].append(key)
    groups = []
    for name, sites in group_sites.items():
        bank = sum(i.bytes for i in b.initializers if i.group == name and bank_group(i.name))
        links = sum(i.bytes for i in b.initializers if i.group == name and link_site_key(i.name))
        missing = [s for s in sites if s not in dense]
        if missing:
            log.warning("group %s: no dense weight in %s for site(s) %s", name, a.path, missing)
        groups.append(OnnxGroupBytes(
            name=name, sites=tuple(sites), bytes_before=sum(dense.get(s, 0) for s in sites),
            bytes_after=bank + links, bank_bytes=bank, link_bytes=links,
        ))
    op_names = sorted(set(a.op_counts) | set(b.op_counts))
    ops = tuple(OnnxOpChange(op, a.op_counts.get(op, 0), b.op_counts.get(op, 0)) for op in op_names)
    return OnnxDiff(a, b, tuple(groups), ops)
