"""Markdown rendering of a `GraphDiff`: GitHub-flavoured tables, one section per part.

Shape of the output (resnet18)::

    # sharedft-fx report: ResNet
    Unique parameters 11,689,512 -> 6,259,176 (53.5%) ...
    ## Groups
    | group | weight shape | sites | bank | links | before | after | saved | max err (init) | ...
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["render_markdown", "md_table", "fmt_int", "fmt_err", "fmt_bytes", "fmt_signed", "fmt_signed_bytes"]

_DASH = "–"


def fmt_int(n: float | int | None) -> str:
    return _DASH if n is None else f"{int(round(n)):,}"


def fmt_signed(n: int) -> str:
    return f"{n:+,}"


def fmt_signed_bytes(n: int) -> str:
    return ("+" if n >= 0 else "-") + fmt_bytes(abs(n))


def fmt_err(x: float | None) -> str:
    return _DASH if x is None else f"{x:.4f}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return _DASH
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A GitHub Markdown table; columns listed in `right` are right-aligned."""
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _shape(s: Sequence[int]) -> str:
    return "x".join(map(str, s))


def render_markdown(diff: Any) -> str:
    out: list[str] = [f"# {diff.title}", ""]
    t = diff.totals
    if t is not None:
        out.append(
            f"Unique parameters **{t.params_before:,} → {t.params_after:,}** ({t.ratio:.1%}), "
            f"parameter bytes {fmt_bytes(t.bytes_before)} → {fmt_bytes(t.bytes_after)}; "
            f"{t.shared_sites} of {t.conv_sites} conv sites share {t.groups} banks."
        )
        if diff.output_error is not None:
            out.append(f"Relative output error on the example inputs: {diff.output_error:.3e}.")
        out += ["", "## Totals", "", md_table(
            ["", "before", "after", "change"],
            [
                ["unique parameters", fmt_int(t.params_before), fmt_int(t.params_after),
                 fmt_signed(t.params_after - t.params_before)],
                ["parameter bytes", fmt_bytes(t.bytes_before), fmt_bytes(t.bytes_after),
                 fmt_signed_bytes(t.bytes_after - t.bytes_before)],
                ["buffer bytes", fmt_bytes(t.buffer_bytes_before), fmt_bytes(t.buffer_bytes_after),
                 fmt_signed_bytes(t.buffer_bytes_after - t.buffer_bytes_before)],
            ],
            right=(1, 2, 3),
        ), ""]
    if diff.groups:
        out += ["## Groups", "", md_table(
            ["group", "weight shape", "sites", "bank", "links", "before", "after", "saved",
             "max err (init)", "max err (fine-tuned)"],
            [
                [g.name, _shape(g.weight_shape), len(g.sites), fmt_int(g.bank_params),
                 fmt_int(g.link_params), fmt_int(g.params_before), fmt_int(g.params_after),
                 fmt_int(g.saved), fmt_err(g.max_error_init), fmt_err(g.max_error_finetuned)]
                for g in diff.groups
            ],
            right=(2, 3, 4, 5, 6, 7, 8, 9),
        ), ""]
    if diff.sites:
        out += [
            "## Conv sites (execution order)", "",
            "`after` = the site's link + its share of the bank (bank / sites in the group); "
            "errors are relative weight errors ||W − W_eff|| / ||W||.", "",
            md_table(
                ["#", "site", "weight shape", "group", "link", "rank", "before", "after",
                 "err (init)", "err (fine-tuned)", "note"],
                [
                    [s.order, f"`{s.name}`", _shape(s.weight_shape), s.group or _DASH,
                     s.link or _DASH, _DASH if s.rank is None else s.rank,
                     fmt_int(s.params_before), fmt_int(s.params_after), fmt_err(s.error_init),
                     fmt_err(s.error_finetuned), "" if s.shared else f"unshared: {s.reason}"]
                    for s in diff.sites
                ],
                right=(0, 5, 6, 7, 8, 9),
            ), "",
        ]
    if diff.stages:
        out += ["## Parameters per stage", "", md_table(
            ["stage", "before", "after", "change"],
            [[s.name, fmt_int(s.params_before), fmt_int(s.params_after),
              fmt_signed(s.params_after - s.params_before)] for s in diff.stages],
            right=(1, 2, 3),
        ), ""]
    if diff.node_counts is not None:
        c = diff.node_counts
        out += [
            "## Graph changes", "",
            f"{c.before} nodes before, {c.after} after: {c.unchanged} unchanged, "
            f"{c.rewritten} conv sites rewritten, {c.added} nodes added, {c.removed} removed "
            "(matched by module path; other nodes by name).", "",
        ]
        rows = [
            [ch.kind, ch.site or _DASH, f"`{ch.op} {ch.target}`",
             "<br>".join(f"`{a}`" for a in ch.after) or _DASH]
            for ch in diff.nodes
        ]
        if rows:
            out += [md_table(["change", "site", "before", "after"], rows), ""]
    elif diff.source != "onnx":
        out += ["## Graph changes", "", "Not computed: no original module was given.", ""]
    if diff.onnx is not None:
        out += _onnx_section(diff.onnx)
    if diff.export is not None:
        gb = diff.export_group_bytes()
        out += ["## Export", "",
                f"Initializer bytes: {fmt_bytes(diff.export.total_bytes)}"
                + (f" (`{diff.export.path}`)" if diff.export.path else "") + ".", ""]
        if gb:
            out += [md_table(["group", "bytes (bank + links)"],
                             [[g, fmt_int(n)] for g, n in gb.items()], right=(1,)), ""]
    m = diff.metrics
    if m is not None and m.accuracy:
        out += [f"## Accuracy ({m.accuracy_metric})", "",
                md_table(["variant", m.accuracy_metric],
                         [[k, f"{v:.4f}"] for k, v in m.accuracy.items()], right=(1,)), ""]
    if m is not None and m.latency_ms:
        out += ["## Latency", "",
                md_table(["variant", "ms"], [[k, f"{v:.3f}"] for k, v in m.latency_ms.items()],
                         right=(1,)), ""]
    return "\n".join(out).rstrip() + "\n"


def _onnx_section(d: Any) -> list[str]:
    a, b = d.before, d.after
    out = [
        "## ONNX", "",
        md_table(
            ["", "before", "after", "change"],
            [
                ["file", f"`{a.path}`", f"`{b.path}`", ""],
                ["file bytes", fmt_bytes(a.file_bytes), fmt_bytes(b.file_bytes),
                 fmt_signed_bytes(b.file_bytes - a.file_bytes)],
                ["initializer bytes", fmt_int(a.initializer_bytes), fmt_int(b.initializer_bytes),
                 fmt_signed(b.initializer_bytes - a.initializer_bytes)],
                ["initializers", len(a.initializers), len(b.initializers),
                 fmt_signed(len(b.initializers) - len(a.initializers))],
                ["nodes", a.nodes, b.nodes, fmt_signed(b.nodes - a.nodes)],
            ],
            right=(1, 2, 3),
        ), "",
    ]
    if d.groups:
        out += ["### Initializer bytes per sharing group", "", md_table(
            ["group", "sites", "before (dense weights)", "after (bank + links)", "bank", "links",
             "saved"],
            [[g.name, len(g.sites), fmt_int(g.bytes_before), fmt_int(g.bytes_after),
              fmt_int(g.bank_bytes), fmt_int(g.link_bytes), fmt_int(g.saved)] for g in d.groups]
            + [["**total**", sum(len(g.sites) for g in d.groups),
                fmt_int(sum(g.bytes_before for g in d.groups)),
                fmt_int(sum(g.bytes_after for g in d.groups)),
                fmt_int(sum(g.bank_bytes for g in d.groups)),
                fmt_int(sum(g.link_bytes for g in d.groups)),
                fmt_int(sum(g.saved for g in d.groups))]],
            right=(1, 2, 3, 4, 5, 6),
        ), ""]
    changed = [o for o in d.ops if o.delta]
    out += ["### Op counts", "", md_table(
        ["op", "before", "after", "change"],
        [[o.op, o.before, o.after, fmt_signed(o.delta)] for o in changed]
        + [[f"{len(d.ops) - len(changed)} other op types unchanged", "", "", ""]],
        right=(1, 2, 3),
    ), ""]
    largest = sorted(b.initializers, key=lambda i: -i.bytes)[:10]
    out += ["### Largest initializers after", "", md_table(
        ["initializer", "group", "shape", "bytes"],
        [[f"`{i.name}`", i.group or _DASH, _shape(i.shape), fmt_int(i.bytes)] for i in largest],
        right=(3,),
    ), ""]
    return out
