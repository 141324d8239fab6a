"""``sharedft-fx demo``: train (or reuse) a digits CNN, share, recalibrate, fine-tune, export,
and print one table: parameters, file bytes, test accuracy and latency, original vs shared."""

from __future__ import annotations

import argparse
import dataclasses
import time

from ..demo import FAST, FULL, run_demo
from ..io import write_json_atomic, write_text_atomic


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="the whole pipeline on handwritten digits, in one table")
    p.add_argument("--fast", action="store_true", help="a tiny run through every stage (seconds)")
    p.add_argument("--out", help="keep the ONNX files, checkpoints and metrics here")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX export (torch latency)")
    p.add_argument("--json", help="also write the table as JSON to this file")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--report", help="write the Markdown graph-diff report of the run here")
    return p


def run(args: argparse.Namespace) -> int:
    plan = FAST if args.fast else FULL
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.no_onnx:
        plan = dataclasses.replace(plan, onnx=False)
    start = time.perf_counter()
    result = run_demo(out_dir=args.out, plan=plan)
    total = time.perf_counter() - start
    print(result.table())
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    print(f"BN recalibration alone: {result.recalibrated_accuracy:.2%} test accuracy; "
          f"{total:.0f} s in all ({stages})")
    if args.report:
        write_text_atomic(args.report, result.report_markdown)
    if args.json:
        write_json_atomic(args.json, {**result.to_dict(), "total_seconds": total})
    return 0
