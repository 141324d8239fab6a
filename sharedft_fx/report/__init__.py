"""Graph diff reports of a sharing rewrite: JSON (versioned schema), Markdown, self-contained HTML.

    >>> from sharedft_fx.report import GraphDiff
    >>> diff = GraphDiff.from_transform(result, original=model)
    >>> diff.write("out/report.html"); diff.write("out/report.md"); diff.write("out/report.json")

The JSON follows ``schema.json`` in this package (JSON Schema draft 2020-12); its
``schema_version`` changes whenever a field is removed or changes meaning.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from .graph_diff import (
    SCHEMA_VERSION,
    ExportInfo,
    GraphDiff,
    GroupRow,
    Metrics,
    NodeChange,
    NodeCounts,
    SiteRow,
    StageRow,
    Totals,
    site_weight_errors,
)
from .onnx_diff import OnnxDiff, OnnxSummary, diff_onnx, summarize_onnx

__all__ = [
    "SCHEMA_VERSION",
    "GraphDiff",
    "SiteRow",
    "GroupRow",
    "StageRow",
    "Totals",
    "NodeChange",
    "NodeCounts",
    "ExportInfo",
    "Metrics",
    "OnnxDiff",
    "OnnxSummary",
    "diff_onnx",
    "summarize_onnx",
    "site_weight_errors",
    "load_schema",
]


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The JSON Schema of `GraphDiff.to_json` output."""
    return json.loads(_schema_text())
