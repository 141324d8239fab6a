"""Inline SVG pictures of a `GraphDiff` (no scripts, no external references).

`sites_svg`: every conv site in execution order, one ``<rect class="site" data-site=...>`` per
site, coloured by sharing group (grey: unshared), wrapped into rows; stages are labelled.
`stage_bars_svg`: parameters per top-level module before (grey) and after (blue).

    >>> svg = sites_svg(diff.sites)
    >>> svg.count('class="site"') == len(diff.sites)
    True
"""

from __future__ import annotations

from html import escape
from typing import Sequence

from .graph_diff import SiteRow, StageRow

__all__ = ["PALETTE", "UNSHARED_COLOR", "group_colors", "sites_svg", "stage_bars_svg"]

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#393b79", "#ad494a", "#637939", "#7b4173", "#3182bd", "#e6550d", "#31a354",
)
UNSHARED_COLOR = "#c7c7c7"
_FONT = "font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"


def _a(text: object) -> str:
    return escape(str(text), quote=True)


def group_colors(sites: Sequence[SiteRow]) -> dict[str, str]:
    """Group name -> colour, in order of first appearance."""
    out: dict[str, str] = {}
    for s in sites:
        if s.group is not None and s.group not in out:
            out[s.group] = PALETTE[len(out) % len(PALETTE)]
    return out


def _fmt(n: float) -> str:
    n = float(n)
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def sites_svg(sites: Sequence[SiteRow], per_row: int = 24) -> str:
    """The conv sites in execution order, coloured by sharing group."""
    colors = group_colors(sites)
    cell, gap, label_h, left = 30, 4, 16, 8
    rows = max(1, -(-len(sites) // per_row))
    legend_items = list(colors.items()) + [("unshared", UNSHARED_COLOR)]
    legend_cols = 4
    legend_rows = -(-len(legend_items) // legend_cols)
    row_h = cell + label_h + 14
    width = left * 2 + per_row * (cell + gap)
    width = max(width, 720)
    height = rows * row_h + 18 * legend_rows + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sites-svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Convolution sites in execution order, coloured by sharing group" '
        f'style="{_FONT}">'
    ]
    prev_stage = None
    for i, s in enumerate(sites):
        r, c = divmod(i, per_row)
        x = left + c * (cell + gap)
        y = r * row_h + label_h
        color = colors.get(s.group, UNSHARED_COLOR) if s.group else UNSHARED_COLOR
        shape = "x".join(map(str, s.weight_shape))
        tip = f"{s.name} [{shape}] " + (
            f"group {s.group}, {s.link} rank {s.rank}" if s.shared else f"unshared: {s.reason}"
        )
        parts.append(
            f'<rect class="site{" shared" if s.shared else ""}" data-site="{_a(s.name)}" '
            f'data-group="{_a(s.group or "")}" data-order="{s.order}" x="{x}" y="{y}" '
            f'width="{cell}" height="{cell}" rx="3" fill="{color}" stroke="#333" '
            f'stroke-width="0.5"><title>{_a(tip)}</title></rect>'
        )
        if s.stage != prev_stage or c == 0:
            parts.append(
                f'<text x="{x}" y="{y - 4}" font-size="10" fill="#444">{_a(s.stage)}</text>'
            )
            if s.stage != prev_stage and c != 0:
                parts.append(f'<line x1="{x - gap / 2}" y1="{y - 12}" x2="{x - gap / 2}" '
                             f'y2="{y + cell + 2}" stroke="#888" stroke-dasharray="2,2"/>')
        prev_stage = s.stage
        parts.append(
            f'<text x="{x + cell / 2}" y="{y + cell + 11}" font-size="8" fill="#666" '
            f'text-anchor="middle">{i}</text>'
        )
    ly = rows * row_h + 12
    for k, (name, color) in enumerate(legend_items):
        r, c = divmod(k, legend_cols)
        x = left + c * 180
        y = ly + r * 18
        parts.append(f'<rect class="legend" x="{x}" y="{y}" width="12" height="12" '
                     f'fill="{color}" stroke="#333" stroke-width="0.5"/>')
        parts.append(f'<text x="{x + 16}" y="{y + 10}" font-size="11">{_a(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def stage_bars_svg(stages: Sequence[StageRow]) -> str:
    """Grouped bars: parameters per stage before (grey) and after (blue)."""
    n = max(1, len(stages))
    top = max([max(s.params_before, s.params_after) for s in stages] + [1])
    bar, inner, group_gap, left, bottom, plot_h = 22, 2, 18, 70, 46, 220
    width = max(480, left + n * (2 * bar + inner + group_gap) + 20)
    height = plot_h + bottom + 40
    y0 = 30 + plot_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="stages-svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Parameters per stage before and after" style="{_FONT}">',
        f'<line x1="{left}" y1="{y0}" x2="{width - 10}" y2="{y0}" stroke="#333"/>',
    ]
    for k in range(5):
        v = top * k / 4
        y = y0 - plot_h * k / 4
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
                     f'stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                     f'{_fmt(v)}</text>')
    for i, s in enumerate(stages):
        x = left + 10 + i * (2 * bar + inner + group_gap)
        for j, (kind, value, color) in enumerate(
            (("before", s.params_before, "#9e9e9e"), ("after", s.params_after, "#1f77b4"))
        ):
            h = plot_h * value / top
            parts.append(
                f'<rect class="bar {kind}" data-stage="{_a(s.name)}" data-value="{value}" '
                f'x="{x + j * (bar + inner)}" y="{y0 - h:.1f}" width="{bar}" height="{h:.1f}" '
                f'fill="{color}"><title>{_a(s.name)} {kind}: {value:,} parameters</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar}" y="{y0 + 14}" font-size="10" text-anchor="end" '
            f'transform="rotate(-30 {x + bar} {y0 + 14})">{_a(s.name)}</text>'
        )
    parts.append(f'<rect x="{left}" y="6" width="12" height="12" fill="#9e9e9e"/>'
                 f'<text x="{left + 16}" y="16" font-size="11">before</text>'
                 f'<rect x="{left + 70}" y="6" width="12" height="12" fill="#1f77b4"/>'
                 f'<text x="{left + 86}" y="16" font-size="11">after</text>')
    parts.append("</svg>")
    return "".join(parts)
