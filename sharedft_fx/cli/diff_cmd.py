"""``sharedft-fx diff A.onnx B.onnx``: initializer bytes saved per sharing group, op-count changes.

    sharedft-fx diff out/resnet18.onnx out/resnet18-shared.onnx            # Markdown to stdout
    sharedft-fx diff a.onnx b.onnx --json diff.json --html diff.html
"""

from __future__ import annotations

import argparse

from ..report import GraphDiff
from .report_cmd import FORMATS, write_outputs

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("diff", help="compare two ONNX files (bytes per group, op counts)")
    p.add_argument("before", help="the original ONNX file")
    p.add_argument("after", help="the shared ONNX file")
    p.add_argument("--out", help="directory: writes report.html, report.md and report.json")
    for fmt in FORMATS:
        p.add_argument(f"--{fmt}", metavar="PATH", help=f"write the {fmt} report to PATH")
    p.add_argument("--title", help="report title")
    return p


def run(args: argparse.Namespace) -> int:
    diff = GraphDiff.from_onnx(args.before, args.after, title=args.title)
    for path in write_outputs(diff, args):
        print(f"wrote {path}")
    return 0
