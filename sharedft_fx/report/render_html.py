"""One self-contained HTML page for a `GraphDiff`: inline CSS, inline SVG, a few lines of inline
script, and a Content-Security-Policy that forbids every network request.

Pictures: the conv sites in execution order coloured by sharing group (`sites_svg`), and the
parameters per stage before/after (`stage_bars_svg`). Hovering a group row highlights its sites.
When the script has run, ``<body data-ready="1">`` (the browser test checks it).
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable, Sequence

from .render_markdown import fmt_bytes, fmt_err, fmt_int, fmt_signed, fmt_signed_bytes
from .svg import group_colors, sites_svg, stage_bars_svg

__all__ = ["render_html", "CSP"]

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:; base-uri 'none'; form-action 'none'")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
 color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px}th{background:#f4f4f4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff5cc}.sw{display:inline-block;width:10px;height:10px;margin-right:4px;
 border:1px solid #333}.muted{color:#777}code{font-size:12px}
svg .site.dim{opacity:.25}.figure{overflow-x:auto;margin:.5em 0 1em}
.summary{font-size:15px}
"""

_JS = """
(function(){
  var rows=document.querySelectorAll('tr[data-group]');
  var sites=document.querySelectorAll('svg .site');
  function show(g){for(var i=0;i<sites.length;i++){
    var on=!g||sites[i].getAttribute('data-group')===g;
    sites[i].classList.toggle('dim',!on);}}
  for(var i=0;i<rows.length;i++){
    rows[i].addEventListener('mouseenter',function(){show(this.getAttribute('data-group'));});
    rows[i].addEventListener('mouseleave',function(){show(null);});}
  document.body.setAttribute('data-ready','1');
  document.body.setAttribute('data-sites',String(sites.length));
})();
"""


def _e(v: Any) -> str:
    return escape(str(v), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (),
           row_attrs: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>", "".join(f"<th>{_e(h)}</th>" for h in header),
           "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        attrs = row_attrs[k] if row_attrs else ""
        out.append(f"<tr{attrs}>")
        for i, c in enumerate(row):
            cls = ' class="n"' if i in numeric else ""
            out.append(f"<td{cls}>{c}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _shape(s: Sequence[int]) -> str:
    return "x".join(map(str, s))


def render_html(diff: Any) -> str:
    colors = group_colors(diff.sites)
    body: list[str] = [f"<h1>{_e(diff.title)}</h1>"]
    t = diff.totals
    if t is not None:
        body.append(
            f'<p class="summary">Unique parameters <b>{t.params_before:,} → {t.params_after:,}</b>'
            f" ({t.ratio:.1%}); parameter bytes {_e(fmt_bytes(t.bytes_before))} → "
            f"{_e(fmt_bytes(t.bytes_after))}; {t.shared_sites} of {t.conv_sites} conv sites share "
            f"{t.groups} banks."
            + (f" Relative output error {diff.output_error:.3e}." if diff.output_error is not None
               else "") + "</p>"
        )
    if diff.sites:
        body += ["<h2>Conv sites in execution order</h2>",
                 '<p class="muted">One square per conv site, coloured by sharing group (grey: '
                 "unshared). Hover a square for details, or a group row below to highlight it.</p>",
                 f'<div class="figure">{sites_svg(diff.sites)}</div>']
    if diff.stages:
        body += ["<h2>Parameters per stage</h2>",
                 f'<div class="figure">{stage_bars_svg(diff.stages)}</div>']
    if t is not None:
        body += ["<h2>Totals</h2>", _table(
            ["", "before", "after", "change"],
            [["unique parameters", fmt_int(t.params_before), fmt_int(t.params_after),
              fmt_signed(t.params_after - t.params_before)],
             ["parameter bytes", _e(fmt_bytes(t.bytes_before)), _e(fmt_bytes(t.bytes_after)),
              _e(fmt_signed_bytes(t.bytes_after - t.bytes_before))],
             ["buffer bytes", _e(fmt_bytes(t.buffer_bytes_before)),
              _e(fmt_bytes(t.buffer_bytes_after)),
              _e(fmt_signed_bytes(t.buffer_bytes_after - t.buffer_bytes_before))]],
            numeric=(1, 2, 3))]
    if diff.groups:
        body += ["<h2>Groups</h2>", _table(
            ["group", "weight shape", "sites", "bank", "links", "before", "after", "saved",
             "max err (init)", "max err (fine-tuned)"],
            [[f'<span class="sw" style="background:{colors.get(g.name, "#ccc")}"></span>'
              f"{_e(g.name)}", _shape(g.weight_shape), len(g.sites), fmt_int(g.bank_params),
              fmt_int(g.link_params), fmt_int(g.params_before), fmt_int(g.params_after),
              fmt_int(g.saved), fmt_err(g.max_error_init), fmt_err(g.max_error_finetuned)]
             for g in diff.groups],
            numeric=(2, 3, 4, 5, 6, 7, 8, 9),
            row_attrs=[f' data-group="{_e(g.name)}"' for g in diff.groups])]
    if diff.sites:
        body += ["<h2>Conv sites</h2>",
                 '<p class="muted">after = link + share of the bank; errors are relative '
                 "weight errors ||W − W_eff|| / ||W||.</p>", _table(
            ["#", "site", "weight shape", "group", "link", "rank", "before", "after",
             "err (init)", "err (fine-tuned)", "note"],
            [[s.order, f"<code>{_e(s.name)}</code>", _shape(s.weight_shape), _e(s.group or "–"),
              _e(s.link or "–"), "–" if s.rank is None else s.rank, fmt_int(s.params_before),
              fmt_int(s.params_after), fmt_err(s.error_init), fmt_err(s.error_finetuned),
              "" if s.shared else _e(f"unshared: {s.reason}")] for s in diff.sites],
            numeric=(0, 5, 6, 7, 8, 9),
            row_attrs=[f' data-group="{_e(s.group)}"' if s.group else "" for s in diff.sites])]
    if diff.stages:
        body += ["<h2>Stages</h2>", _table(
            ["stage", "before", "after", "change"],
            [[_e(s.name), fmt_int(s.params_before), fmt_int(s.params_after),
              fmt_signed(s.params_after - s.params_before)] for s in diff.stages],
            numeric=(1, 2, 3))]
    if diff.node_counts is not None:
        c = diff.node_counts
        body += ["<h2>Graph changes</h2>",
                 f"<p>{c.before} nodes before, {c.after} after: {c.unchanged} unchanged, "
                 f"{c.rewritten} conv sites rewritten, {c.added} nodes added, {c.removed} "
                 "removed (matched by module path; other nodes by name).</p>"]
        if diff.nodes:
            body.append(_table(
                ["change", "site", "before", "after"],
                [[ch.kind, _e(ch.site or "–"), f"<code>{_e(ch.op)} {_e(ch.target)}</code>",
                  "<br>".join(f"<code>{_e(a)}</code>" for a in ch.after) or "–"]
                 for ch in diff.nodes]))
    if diff.onnx is not None:
        body += _onnx_html(diff.onnx)
    if diff.export is not None:
        gb = diff.export_group_bytes()
        body += ["<h2>Export</h2>",
                 f"<p>Initializer bytes: {_e(fmt_bytes(diff.export.total_bytes))}</p>"]
        if gb:
            body.append(_table(["group", "bytes (bank + links)"],
                               [[_e(g), fmt_int(n)] for g, n in gb.items()], numeric=(1,)))
    m = diff.metrics
    if m is not None and m.accuracy:
        body += [f"<h2>Accuracy ({_e(m.accuracy_metric)})</h2>",
                 _table(["variant", m.accuracy_metric],
                        [[_e(k), f"{v:.4f}"] for k, v in m.accuracy.items()], numeric=(1,))]
    if m is not None and m.latency_ms:
        body += ["<h2>Latency</h2>",
                 _table(["variant", "ms"], [[_e(k), f"{v:.3f}"] for k, v in m.latency_ms.items()],
                        numeric=(1,))]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(diff.title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_JS}</script>\n</body></html>\n"
    )


def _onnx_html(d: Any) -> list[str]:
    a, b = d.before, d.after
    out = ["<h2>ONNX</h2>", _table(
        ["", "before", "after", "change"],
        [["file", f"<code>{_e(a.path)}</code>", f"<code>{_e(b.path)}</code>", ""],
         ["file bytes", _e(fmt_bytes(a.file_bytes)), _e(fmt_bytes(b.file_bytes)),
          _e(fmt_signed_bytes(b.file_bytes - a.file_bytes))],
         ["initializer bytes", fmt_int(a.initializer_bytes), fmt_int(b.initializer_bytes),
          fmt_signed(b.initializer_bytes - a.initializer_bytes)],
         ["nodes", a.nodes, b.nodes, fmt_signed(b.nodes - a.nodes)]],
        numeric=(1, 2, 3))]
    if d.groups:
        out += ["<h3>Initializer bytes per sharing group</h3>", _table(
            ["group", "sites", "before (dense)", "after (bank + links)", "saved"],
            [[_e(g.name), len(g.sites), fmt_int(g.bytes_before), fmt_int(g.bytes_after),
              fmt_int(g.saved)] for g in d.groups], numeric=(1, 2, 3, 4))]
    out += ["<h3>Op counts</h3>", _table(
        ["op", "before", "after", "change"],
        [[_e(o.op), o.before, o.after, fmt_signed(o.delta)] for o in d.ops],
        numeric=(1, 2, 3))]
    return out
