"""`GraphDiff`: what a sharing rewrite changed, as data, ready for JSON, Markdown and HTML.

Build it from a transform result (the original module adds the node-level diff), from two
modules, or from two ONNX files::

    >>> result = sharedft_fx.transform(model, x)
    >>> diff = GraphDiff.from_transform(result, original=model)
    >>> diff.totals.params_before, diff.totals.params_after
    (11689512, 5621288)
    >>> [(c.kind, c.site) for c in diff.nodes if c.site == "layer1.0.conv1"]
    [('rewritten', 'layer1.0.conv1')]

Node-level diff (matched by module path; other nodes by name)::

    before:  layer1_0_conv1 = self.layer1.0.conv1(maxpool)          # call_module
    after:   layer1_0_conv1_weight = self.sharedft.links.layer1_0_conv1(sharedft_banks_g0)
             conv2d = torch.conv2d(maxpool, layer1_0_conv1_weight, None, ...)
    diff:    rewritten layer1.0.conv1 (call_module -> call_module link + call_function conv2d)
             added     get_attr sharedft.banks.g0_64x64x3x3

Export and fine-tune information is optional plain data (`ExportInfo`, `Metrics`), so the
report does not depend on how they were produced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch.fx as fx
from torch import nn

from ..config import ShareConfig
from ..errors import InputError, TracingError
from ..passes.share_conv_weights import link_key
from ..tracing import graph_modules
from .fx_reading import (
    NodeChange,
    NodeCounts,
    _bytes,
    _diff_nodes,
    _gate_of,
    _join,
    _Link,
    _plain_sites,
    _read_shared,
    _trace_like,
    _unique_params,
    site_weight_errors,
    weight_owner_paths,
)
from .onnx_diff import OnnxDiff, bank_group, diff_onnx, link_site_key

__all__ = [
    "SCHEMA_VERSION",
    "NodeChange",
    "NodeCounts",
    "SiteRow",
    "GroupRow",
    "StageRow",
    "Totals",
    "ExportInfo",
    "Metrics",
    "GraphDiff",
    "site_weight_errors",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT = "sharedft-fx.graph-diff"
ROOT_STAGE = "(root)"


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def _stage(path: str) -> str:
    """Top-level module name of a module path (``layer1.0.conv1`` -> ``layer1``)."""
    return path.split(".", 1)[0] if path else ROOT_STAGE


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteRow:
    """One conv site (shared or not), in execution order.

    ``params_after`` counts the site's link plus its share of the bank (bank / sites in group).
    """

    name: str
    order: int
    stage: str
    weight_shape: tuple[int, ...]
    group: str | None
    link: str | None
    rank: int | None
    params_before: int
    link_params: int
    bank_share: float
    error_init: float | None = None
    error_finetuned: float | None = None
    reason: str | None = None

    @property
    def shared(self) -> bool:
        return self.group is not None

    @property
    def params_after(self) -> float:
        return self.link_params + self.bank_share if self.shared else float(self.params_before)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "order": self.order, "stage": self.stage,
            "weight_shape": list(self.weight_shape), "group": self.group, "link": self.link,
            "rank": self.rank, "params_before": self.params_before,
            "link_params": self.link_params, "bank_share": self.bank_share,
            "params_after": self.params_after, "error_init": _finite(self.error_init),
            "error_finetuned": _finite(self.error_finetuned), "reason": self.reason,
        }


@dataclass(frozen=True)
class GroupRow:
    """One bank and the sites that read it."""

    name: str
    weight_shape: tuple[int, ...]
    sites: tuple[str, ...]
    bank_params: int
    link_params: int
    params_before: int
    max_error_init: float | None = None
    max_error_finetuned: float | None = None

    @property
    def params_after(self) -> int:
        return self.bank_params + self.link_params

    @property
    def saved(self) -> int:
        return self.params_before - self.params_after

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "weight_shape": list(self.weight_shape), "sites": list(self.sites),
            "bank_params": self.bank_params, "link_params": self.link_params,
            "params_before": self.params_before, "params_after": self.params_after,
            "saved": self.saved, "max_error_init": _finite(self.max_error_init),
            "max_error_finetuned": _finite(self.max_error_finetuned),
        }


@dataclass(frozen=True)
class StageRow:
    """Parameters of one top-level module before and after (banks split by their sites)."""

    name: str
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params_before": self.params_before,
                "params_after": self.params_after}


@dataclass(frozen=True)
class Totals:
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    buffer_bytes_before: int
    buffer_bytes_after: int
    conv_sites: int
    shared_sites: int
    groups: int

    @property
    def ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ratio": self.ratio}


@dataclass(frozen=True)
class ExportInfo:
    """An export's outcome as plain data: initializer name -> bytes (and the file, if known).

    Accepts the export result object or a mapping via `coerce` (keys/attributes
    ``initializer_bytes`` and optionally ``path`` or ``onnx_path``).
    """

    initializer_bytes: Mapping[str, int]
    path: str | None = None

    @classmethod
    def coerce(cls, value: Any) -> "ExportInfo":
        if isinstance(value, ExportInfo):
            return value
        get = value.get if isinstance(value, Mapping) else (lambda k, d=None: getattr(value, k, d))
        sizes = get("initializer_bytes")
        if not isinstance(sizes, Mapping):
            raise InputError("export info needs `initializer_bytes`: a mapping name -> bytes")
        path = get("path") or get("onnx_path")
        return cls({str(k): int(v) for k, v in sizes.items()}, str(path) if path else None)

    @property
    def total_bytes(self) -> int:
        return sum(self.initializer_bytes.values())

    def group_bytes(self) -> dict[str, int]:
        """Bytes of banks per group (links are counted by `GraphDiff` which knows their group)."""
        out: dict[str, int] = {}
        for name, n in self.initializer_bytes.items():
            if (g := bank_group(name)) is not None:
                out[g] = out.get(g, 0) + n
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "total_bytes": self.total_bytes,
                "initializer_bytes": dict(self.initializer_bytes)}


@dataclass(frozen=True)
class Metrics:
    """Optional measurements: accuracy and latency per variant, and per-site weight errors.

    ``accuracy`` / ``latency_ms`` map a variant label (``original``, ``shared``, ``finetuned``)
    to a value; ``site_errors`` maps a site to its relative weight error after fine-tuning.
    """

    accuracy: Mapping[str, float] = field(default_factory=dict)
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    site_errors: Mapping[str, float] = field(default_factory=dict)
    accuracy_metric: str = "accuracy"

    @classmethod
    def coerce(cls, value: Any) -> "Metrics":
        if isinstance(value, Metrics):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"metrics must be a mapping, got {type(value).__name__}")
        unknown = set(value) - {"accuracy", "latency_ms", "site_errors", "accuracy_metric"}
        if unknown:
            raise InputError(f"unknown metrics key(s) {sorted(unknown)}; expected accuracy, "
                             "latency_ms, site_errors, accuracy_metric")

        def floats(key: str) -> dict[str, float]:
            m = value.get(key, {}) or {}
            if not isinstance(m, Mapping):
                raise InputError(f"metrics[{key!r}] must map a label to a number")
            return {str(k): float(v) for k, v in m.items()}

        return cls(floats("accuracy"), floats("latency_ms"), floats("site_errors"),
                   str(value.get("accuracy_metric", "accuracy")))

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": dict(self.accuracy), "accuracy_metric": self.accuracy_metric,
                "latency_ms": dict(self.latency_ms), "site_errors": dict(self.site_errors)}


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphDiff:
    """A report of what sharing changed. Render with `to_json`, `to_markdown`, `to_html`.

    Sections: ``sites`` (every conv site in execution order), ``groups``, ``stages``
    (parameters per top-level module), ``totals``, ``nodes`` (node-level changes; empty when
    no original module was given), and optionally ``onnx``, ``export``, ``metrics``.
    """

    title: str
    source: str  # "transform", "modules", "saved" or "onnx"
    sites: tuple[SiteRow, ...] = ()
    groups: tuple[GroupRow, ...] = ()
    stages: tuple[StageRow, ...] = ()
    totals: Totals | None = None
    nodes: tuple[NodeChange, ...] = ()
    node_counts: NodeCounts | None = None
    config: Mapping[str, Any] | None = None
    output_error: float | None = None
    trace: Mapping[str, Any] | None = None
    onnx: OnnxDiff | None = None
    export: ExportInfo | None = None
    metrics: Metrics | None = None

    # -- builders ------------------------------------------------------------------------------

    @classmethod
    def from_transform(
        cls,
        result: Any,
        original: nn.Module | None = None,
        *,
        finetuned: nn.Module | None = None,
        export: Any = None,
        metrics: Any = None,
        onnx: OnnxDiff | tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        title: str | None = None,
    ) -> "GraphDiff":
        """Report a `TransformResult`.

        `original` (the module given to `transform`) adds the node-level diff; `finetuned` (the
        result's model after fine-tuning) adds each site's weight error after fine-tuning
        (needs `original`). Nothing is re-transformed.
        """
        init_errors = {s.name: s.weight_error for g in result.groups for s in g.sites}
        return cls._build(
            after=result.model, before=original, config=result.config,
            params_before=result.params_before, skipped=dict(result.plan.skipped),
            init_errors=init_errors, finetuned=finetuned, export=export, metrics=metrics,
            onnx=onnx,
            permutations=result.alignment.permutations if result.alignment is not None else None,
            title=title or "sharedft-fx report: "
            + type(result.model if original is None else original).__name__,
            source="transform", output_error=result.output_error,
            trace=result.trace.to_dict(),
        )

    @classmethod
    def from_modules(
        cls,
        before: nn.Module,
        after: nn.Module,
        *,
        config: ShareConfig | None = None,
        skipped: Mapping[str, str] | None = None,
        compute_errors: bool = True,
        errors_finetuned: bool = False,
        export: Any = None,
        metrics: Any = None,
        onnx: OnnxDiff | tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        title: str | None = None,
        source: str = "modules",
        permutations: Mapping[str, Any] | None = None,
    ) -> "GraphDiff":
        """Compare an original module with a shared one (e.g. `sharedft_fx.load` output).

        With `compute_errors`, each shared site's weight error is measured against `before`'s
        weight at the same module path (meaningful when `before` holds the trained weights);
        it is reported as the error after fine-tuning when `errors_finetuned` is set.
        `permutations` is the channel alignment the transform applied (``result.alignment
        .permutations``, also in a saved recipe as ``alignment.permutations``).
        """
        errors = site_weight_errors(before, after, permutations) if compute_errors else {}
        if errors_finetuned and errors:
            metrics = Metrics.coerce(metrics or {})
            metrics = dataclasses.replace(metrics, site_errors={**errors, **metrics.site_errors})
            errors = {}
        return cls._build(
            after=after, before=before, config=config or ShareConfig(), params_before=None,
            skipped=dict(skipped or {}), init_errors=errors, finetuned=None,
            export=export, metrics=metrics, onnx=onnx,
            title=title or f"sharedft-fx report: {type(before).__name__}", source=source,
            output_error=None, trace=None, permutations=permutations,
        )

    @classmethod
    def from_onnx(
        cls, before: str | os.PathLike[str], after: str | os.PathLike[str], *,
        title: str | None = None, metrics: Any = None,
    ) -> "GraphDiff":
        """Compare two ONNX files (initializer bytes per tensor and group, op counts)."""
        d = diff_onnx(before, after)
        return cls(
            title=title or f"sharedft-fx diff: {os.path.basename(str(before))} -> "
                           f"{os.path.basename(str(after))}",
            source="onnx", onnx=d, metrics=Metrics.coerce(metrics) if metrics else None,
        )

    @classmethod
    def _build(
        cls, *, after: nn.Module, before: nn.Module | None, config: ShareConfig,
        params_before: int | None, skipped: dict[str, str], init_errors: Mapping[str, float],
        finetuned: nn.Module | None, export: Any, metrics: Any, onnx: Any, title: str,
        source: str, output_error: float | None, trace: Mapping[str, Any] | None,
        permutations: Mapping[str, Any] | None = None,
    ) -> "GraphDiff":
        after_graphs = list(graph_modules(after))
        if after_graphs:
            links, unshared, order = _read_shared(after)
        else:  # a plain module (nothing traced): trace a throwaway graph of it
            try:
                after_graphs = _trace_like(after, [""], config)
                links, unshared, order = _read_shared(after_graphs[0][1])
            except TracingError as exc:
                log.warning("no node-level diff: %s", exc)
                after_graphs, links, unshared, order = [], [], {}, []
        if before is not None and any(ln.site == ln.key for ln in links):
            # links without annotations are named by key: map keys back to module paths
            paths = weight_owner_paths(before)
            links = [dataclasses.replace(ln, site=paths.get(ln.key, ln.site)) for ln in links]
            order = [(paths.get(s, s) if kind == "shared" else s, kind) for s, kind in order]
        metrics_obj = Metrics.coerce(metrics) if metrics is not None else None
        ft_errors: dict[str, float] = dict(metrics_obj.site_errors) if metrics_obj else {}
        if finetuned is not None:
            if before is None:
                raise InputError("finetuned= needs original= to measure weight errors against")
            ft_errors.update(site_weight_errors(before, finetuned, permutations))
        plain: dict[str, tuple[int, ...]] = {}
        if not unshared:
            # no annotations on the shared module: its plain convs are the unshared sites
            linked = {ln.site for ln in links}
            plain = {k: v for k, v in _plain_sites(after).items() if k not in linked}

        # sites in execution order
        members: dict[str, list[_Link]] = {}
        for ln in links:
            members.setdefault(ln.group, []).append(ln)
        by_site = {ln.site: ln for ln in links}
        rows: list[SiteRow] = []
        names = [s for s, _ in order] + [s for s in plain if s not in {x for x, _ in order}]
        for i, site in enumerate(names):
            if site in by_site:
                ln = by_site[site]
                n = len(members[ln.group])
                bank = ln.bank.numel()
                lp = sum(p.numel() for p in ln.link.parameters())
                rows.append(SiteRow(
                    name=site, order=i, stage=_stage(site), weight_shape=tuple(ln.bank.shape),
                    group=ln.group, link=ln.link.kind, rank=ln.link.rank, params_before=bank,
                    link_params=lp, bank_share=bank / n, error_init=init_errors.get(site),
                    error_finetuned=ft_errors.get(site),
                ))
            else:
                shape = unshared[site].weight_shape if site in unshared else plain[site]
                reason = skipped.get(site) or (unshared[site].reason if site in unshared else "")
                rows.append(SiteRow(
                    name=site, order=i, stage=_stage(site), weight_shape=tuple(shape),
                    group=None, link=None, rank=None, params_before=_numel(shape), link_params=0,
                    bank_share=0.0, reason=reason or "not shared",
                ))
        sites = tuple(rows)

        groups = tuple(
            GroupRow(
                name=g, weight_shape=tuple(lns[0].bank.shape), sites=tuple(x.site for x in lns),
                bank_params=lns[0].bank.numel(),
                link_params=sum(p.numel() for x in lns for p in x.link.parameters()),
                params_before=lns[0].bank.numel() * len(lns),
                max_error_init=max((init_errors[x.site] for x in lns if x.site in init_errors),
                                   default=None),
                max_error_finetuned=max((ft_errors[x.site] for x in lns if x.site in ft_errors),
                                        default=None),
            )
            for g, lns in members.items()
        )

        # parameters per stage (by tensor identity: one container may sit in several graphs)
        after_params = _unique_params(after)
        added_site: dict[int, str] = {}  # link / gate parameter -> its site
        bank_sites: dict[int, list[str]] = {}  # bank -> the sites that read it
        for ln in links:
            bank_sites[id(ln.bank)] = [x.site for x in members[ln.group]]
            for q in ln.link.parameters():
                added_site[id(q)] = ln.site
            gate = _gate_of(after, ln)
            if gate is not None:
                for q in gate.parameters():
                    added_site[id(q)] = ln.site
        stage_after: dict[str, float] = {}
        for name, p in after_params:
            if id(p) in bank_sites:
                share = p.numel() / len(bank_sites[id(p)])
                for site in bank_sites[id(p)]:
                    stage_after[_stage(site)] = stage_after.get(_stage(site), 0.0) + share
                continue
            stage = _stage(added_site[id(p)]) if id(p) in added_site else _stage(name)
            stage_after[stage] = stage_after.get(stage, 0.0) + p.numel()
        sharing_params = [p for _, p in after_params if id(p) in bank_sites or id(p) in added_site]
        if before is not None:
            stage_before: dict[str, float] = {}
            for name, p in _unique_params(before):
                stage_before[_stage(name)] = stage_before.get(_stage(name), 0) + p.numel()
            params_before = sum(p.numel() for _, p in _unique_params(before))
        else:
            # the original = the rewritten model minus what sharing added, plus the dense weights
            stage_before = {}
            for name, p in after_params:
                if id(p) not in bank_sites and id(p) not in added_site:
                    stage_before[_stage(name)] = stage_before.get(_stage(name), 0) + p.numel()
            for r in sites:
                if r.shared:
                    stage_before[r.stage] = stage_before.get(r.stage, 0) + r.params_before
        stages = _stage_rows(stage_before, stage_after, _stage_order(after_graphs, links))
        params_after = sum(p.numel() for _, p in after_params)
        if params_before is None:
            params_before = sum(s.params_before for s in stages)
        if before is not None:
            bytes_before = _bytes(p for _, p in _unique_params(before))
            buf_before = _bytes(before.buffers())
        else:
            dense = sum(r.params_before * by_site[r.name].bank.element_size()
                        for r in sites if r.shared)
            bytes_before = _bytes(p for _, p in after_params) - _bytes(sharing_params) + dense
            buf_before = _bytes(after.buffers())
        totals = Totals(
            params_before=int(params_before), params_after=params_after,
            bytes_before=bytes_before, bytes_after=_bytes(p for _, p in after_params),
            buffer_bytes_before=buf_before, buffer_bytes_after=_bytes(after.buffers()),
            conv_sites=len(sites), shared_sites=sum(r.shared for r in sites), groups=len(groups),
        )

        nodes: tuple[NodeChange, ...] = ()
        counts = None
        if before is not None and after_graphs:
            try:
                before_graphs = _trace_like(before, [p for p, _ in after_graphs], config)
            except TracingError as exc:
                log.warning("no node-level diff: %s", exc)
            else:
                nodes, counts = _diff_nodes(before_graphs, after_graphs, {ln.site for ln in links})

        onnx_diff = diff_onnx(*onnx) if isinstance(onnx, tuple) else onnx
        return cls(
            title=title, source=source, sites=sites, groups=groups, stages=stages,
            totals=totals, nodes=nodes, node_counts=counts, config=config.to_dict(),
            output_error=output_error, trace=trace, onnx=onnx_diff,
            export=ExportInfo.coerce(export) if export is not None else None,
            metrics=metrics_obj,
        )

    # -- queries -------------------------------------------------------------------------------

    def export_group_bytes(self) -> dict[str, int]:
        """Export bytes per group (bank + the links of its sites), from `export`."""
        if self.export is None:
            return {}
        key_group = {link_key(s.name): s.group for s in self.sites if s.shared}
        out = self.export.group_bytes()
        for name, n in self.export.initializer_bytes.items():
            key = link_site_key(name)
            group = key_group.get(key) if key else None
            if group is not None:
                out[group] = out.get(group, 0) + n
        return out

    # -- outputs -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, following ``schema.json`` (``schema_version``)."""
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "title": self.title,
            "source": self.source,
            "config": dict(self.config) if self.config is not None else None,
            "output_error": _finite(self.output_error),
            "trace": dict(self.trace) if self.trace is not None else None,
            "totals": self.totals.to_dict() if self.totals else None,
            "groups": [g.to_dict() for g in self.groups],
            "sites": [s.to_dict() for s in self.sites],
            "stages": [s.to_dict() for s in self.stages],
            "nodes": {
                "counts": self.node_counts.to_dict() if self.node_counts else None,
                "changes": [c.to_dict() for c in self.nodes],
            },
            "onnx": self.onnx.to_dict() if self.onnx else None,
            "export": (
                {**self.export.to_dict(), "group_bytes": self.export_group_bytes()}
                if self.export else None
            ),
            "metrics": self.metrics.to_dict() if self.metrics else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of `to_dict` (validates against `schema.json`)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False) + "\n"

    def to_markdown(self) -> str:
        """A Markdown report (tables of totals, groups, sites, stages, node changes, ONNX)."""
        from .render_markdown import render_markdown

        return render_markdown(self)

    def to_html(self) -> str:
        """One self-contained HTML page (inline CSS/SVG, no network) with the two pictures."""
        from .render_html import render_html

        return render_html(self)

    def write(self, path: str | os.PathLike[str], fmt: str | None = None) -> str:
        """Write the report atomically; the format is ``json``, ``md`` or ``html`` (or the suffix)."""
        from ..io import write_text_atomic

        fmt = (fmt or os.path.splitext(str(path))[1].lstrip(".")).lower()
        renderers = {"json": self.to_json, "md": self.to_markdown, "markdown": self.to_markdown,
                     "html": self.to_html, "htm": self.to_html}
        if fmt not in renderers:
            raise InputError(f"report format {fmt!r} is not one of json, md, html")
        write_text_atomic(path, renderers[fmt]())
        return str(path)


def _stage_order(graphs: Sequence[tuple[str, fx.GraphModule]], links: Sequence[_Link]) -> list[str]:
    """Top-level modules in execution order (a link counts for its site's stage)."""
    banks = {ln.bank_path for ln in links}
    link_stage = {ln.link_path: _stage(ln.site) for ln in links}
    order: list[str] = []
    for prefix, gm in graphs:
        for node in gm.graph.nodes:
            if node.op not in ("call_module", "get_attr"):
                continue
            full = _join(prefix, str(node.target))
            if full in banks:
                continue
            stage = link_stage.get(full, _stage(full))
            if stage not in order:
                order.append(stage)
    return order


def _stage_rows(
    before: Mapping[str, float], after: Mapping[str, float], order: Sequence[str]
) -> tuple[StageRow, ...]:
    """Stages with parameters, in execution order (then parameter order), integer counts.

    Fractional bank shares are rounded so that the stage totals add up exactly.
    """
    names: list[str] = []
    for s in list(order) + list(before) + list(after):
        if s not in names and (before.get(s, 0) or after.get(s, 0)):
            names.append(s)
    rounded_after = _round_preserving_sum({n: after.get(n, 0.0) for n in names})
    return tuple(
        StageRow(n, int(round(before.get(n, 0))), rounded_after[n]) for n in names
    )


def _round_preserving_sum(values: Mapping[str, float]) -> dict[str, int]:
    floors = {k: int(math.floor(v + 1e-9)) for k, v in values.items()}
    missing = int(round(sum(values.values()))) - sum(floors.values())
    by_rest = sorted(values, key=lambda k: values[k] - floors[k], reverse=True)
    for k in by_rest[:max(0, missing)]:
        floors[k] += 1
    return floors
