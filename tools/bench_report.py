"""Time the graph diff report of a torchvision model (acceptance: resnet50, all three formats, < 2 s).

The transform runs once, untimed; each timed round builds `GraphDiff.from_transform(result,
original=model)` (which traces the original for the node diff) and writes JSON, Markdown and HTML.

    PYTHONPATH=. python tools/bench_report.py --model resnet50 --rounds 5 --write out/bench_report.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import sharedft_fx
from sharedft_fx.io import write_text_atomic
from sharedft_fx.report import GraphDiff, load_schema

log = logging.getLogger("bench_report")


def _round(result, model, out: Path) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    diff = GraphDiff.from_transform(result, original=model)
    t1 = time.perf_counter()
    for fmt in ("json", "md", "html"):
        diff.write(out / f"report.{fmt}")
    t2, c2 = time.perf_counter(), time.process_time()
    return {"build": t1 - t0, "render_write": t2 - t1, "total": t2 - t0, "cpu": c2 - c0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="torchvision model name (repeatable)")
    p.add_argument("--input-shape", default="1,3,224,224")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--write", help="write the Markdown results table to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    shape = tuple(int(s) for s in args.input_shape.split(","))
    rows = []
    for name in args.model or ["resnet50"]:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        t = time.perf_counter()
        result = sharedft_fx.transform(model, torch.randn(shape))
        log.info("%s: transform %.1f s (untimed)", name, time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            times = [_round(result, model, out) for _ in range(args.rounds)]
            doc = json.loads((out / "report.json").read_text())
            import jsonschema

            jsonschema.validate(doc, load_schema())
            sizes = {f: (out / f"report.{f}").stat().st_size for f in ("json", "md", "html")}
        med = {k: statistics.median(t[k] for t in times) for k in times[0]}
        worst = max(t["total"] for t in times)
        first = times[0]["total"]
        rows.append((name, doc["totals"]["conv_sites"], doc["nodes"]["counts"]["after"], med,
                     worst, first, sizes))
        log.info("%s: median total %.3f s (build %.3f, render+write %.3f), max %.3f s",
                 name, med["total"], med["build"], med["render_write"], worst)
    lines = [
        "# Report benchmark (issue 6)",
        "",
        f"`PYTHONPATH=. python tools/bench_report.py {' '.join(argv or sys.argv[1:])}` — "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores (shared with other jobs), "
        f"{args.rounds} rounds, input {args.input_shape}. The transform is not timed; each round "
        "builds `GraphDiff.from_transform(result, original=model)` (traces the original for the "
        "node diff) and writes report.json, report.md and report.html; the JSON validates "
        "against `sharedft_fx/report/schema.json`.",
        "",
        "| model | conv sites | graph nodes after | build (median) | render + write 3 files "
        "(median) | total (median) | total (first round, cold) | total (max) | CPU time (median) "
        "| json / md / html bytes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, sites, nodes, med, worst, first, sizes in rows:
        lines.append(
            f"| {name} | {sites} | {nodes} | {med['build']:.3f} s | {med['render_write']:.3f} s "
            f"| **{med['total']:.3f} s** | {first:.3f} s | {worst:.3f} s | {med['cpu']:.3f} s | "
            f"{sizes['json']:,} / {sizes['md']:,} / {sizes['html']:,} |"
        )
    lines.append("")
    text = "\n".join(lines)
    if args.write:
        write_text_atomic(args.write, text)
        log.info("wrote %s", args.write)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
