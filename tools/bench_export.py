"""Side-by-side ONNX Runtime benchmark of original vs shared exports (resnet18, resnet50).

    PYTHONPATH=. python tools/bench_export.py --out out/bench_export.md

For each model: transform at the default config, export the original and the shared model with
`export_onnx` (same exporter pipeline for both), then measure every (file, memory mode) in a
fresh subprocess that imports only onnxruntime and numpy, so that its peak RSS
(``VmHWM``) is the session's and not torch's: session-creation time, median latency over
`--runs` runs after warm-up, peak RSS. Rounds alternate the order of the sessions to spread the
noise of a shared machine; latencies of all rounds are pooled before taking the median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER_FLAG = "--worker"


def _vm_hwm_kb() -> int:
    """Peak resident memory of this process (VmHWM). Unlike getrusage's ru_maxrss, which Linux
    carries over from the parent across fork/exec, VmHWM starts afresh in the new program."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _worker(path: str, memory: str, runs: int, warmup: int, shape: str) -> None:
    """Runs in a fresh process: one session, timed; prints one JSON line."""
    import numpy as np
    import onnxruntime as ort

    baseline_kb = _vm_hwm_kb()
    # the same options sharedft_fx.ort_session uses (not imported here: it would load torch)
    kwargs = {"disabled_optimizers": ["ConstantFolding"]} if memory == "shared" else {}
    t0 = time.perf_counter()
    session = ort.InferenceSession(
        path, ort.SessionOptions(), providers=["CPUExecutionProvider"], **kwargs
    )
    create_s = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal(
        tuple(int(s) for s in shape.split(",")), dtype=np.float32
    )
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    peak_kb = _vm_hwm_kb()
    print(json.dumps({
        "create_s": create_s, "times_s": times, "peak_rss_mb": peak_kb / 1024,
        "baseline_rss_mb": baseline_kb / 1024,
    }))


def _measure(path: Path, memory: str, runs: int, warmup: int, shape: str) -> dict:
    cmd = [sys.executable, __file__, WORKER_FLAG, str(path), memory, str(runs), str(warmup), shape]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _optimized_ops(path: Path, memory: str, folder: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (saved optimized model)."""
    import collections

    import onnx
    import onnxruntime as ort

    import sharedft_fx

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(folder / f"{path.stem}-{memory}-optimized.onnx")
    sharedft_fx.ort_session(path, memory=memory, providers=["CPUExecutionProvider"],
                            options=options)
    graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))


def _export(model_name: str, folder: Path, shape: tuple[int, ...]) -> dict[str, object]:
    import torch
    import torchvision

    import sharedft_fx

    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result = sharedft_fx.transform(model, x)
    original = sharedft_fx.export_onnx(model, x, folder / f"{model_name}.onnx", random_inputs=1)
    shared = sharedft_fx.export_onnx(
        result.model, x, folder / f"{model_name}-shared.onnx", random_inputs=1
    )
    return {
        "original": original, "shared": shared, "params_before": result.params_before,
        "params_after": result.params_after,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == WORKER_FLAG:
        _worker(argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per session per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="markdown file to write (atomically)")
    args = parser.parse_args(argv)
    shape = (1, 3, args.size, args.size)
    shape_text = ",".join(map(str, shape))
    rows = []
    graphs: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            exported = _export(name, Path(tmp), shape)
            sessions = [
                ("original", exported["original"].path, "fast"),
                ("shared", exported["shared"].path, "fast"),
                ("shared", exported["shared"].path, "shared"),
            ]
            samples: dict[tuple[str, str], list[dict]] = {(s[0], s[2]): [] for s in sessions}
            for r in range(args.rounds):
                order = sessions if r % 2 == 0 else list(reversed(sessions))
                for label, path, memory in order:
                    samples[(label, memory)].append(
                        _measure(path, memory, args.runs, args.warmup, shape_text)
                    )
            ops = {(s[0], s[2]): _optimized_ops(Path(s[1]), s[2], Path(tmp)) for s in sessions}
            graphs.append(
                f"- {name}: ONNX Runtime runs the same graph for shared/fast as for the original: "
                f"{'yes' if ops[('shared', 'fast')] == ops[('original', 'fast')] else 'NO'} "
                f"({', '.join(f'{k} {v}' for k, v in ops[('shared', 'fast')].items())}); "
                f"shared/shared runs {ops[('shared', 'shared')].get('MatMul', 0)} MatMul nodes "
                "that rebuild weights on every run"
            )
            base = None
            for label, path, memory in sessions:
                ms = samples[(label, memory)]
                latency = statistics.median(t for m in ms for t in m["times_s"]) * 1e3
                base = latency if base is None else base
                rows.append({
                    "model": name, "file": label, "memory": memory,
                    "bytes": Path(path).stat().st_size,
                    "create_s": statistics.median(m["create_s"] for m in ms),
                    "latency_ms": latency, "ratio": latency / base,
                    "peak_rss_mb": statistics.median(m["peak_rss_mb"] for m in ms),
                    "rss_delta_mb": statistics.median(
                        m["peak_rss_mb"] - m["baseline_rss_mb"] for m in ms
                    ),
                })
    text = _table(rows, args, argv) + "\n" + "\n".join(graphs) + "\n"
    print(text)
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from sharedft_fx.io import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


def _table(rows: list[dict], args: argparse.Namespace, argv: list[str]) -> str:
    import onnxruntime
    import torch

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## ONNX export: original vs shared in ONNX Runtime",
        "",
        f"Command: `PYTHONPATH=. python tools/bench_export.py {' '.join(argv)}`  ",
        f"Date: {now}; {platform.machine()}, {os.cpu_count()} CPU cores (shared with other "
        f"jobs); torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, CPU "
        f"provider, default threads; input 1x3x{args.size}x{args.size}; {args.rounds} rounds x "
        f"{args.runs} timed runs (+{args.warmup} warm-up) per session, each session in a fresh "
        "process.",
        "",
        "| model | file | memory | file MB | size vs original | session create s | "
        "median latency ms | latency vs original | peak RSS MB | RSS over baseline MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sizes: dict[str, int] = {}
    for r in rows:
        sizes.setdefault(r["model"], r["bytes"])
        lines.append(
            f"| {r['model']} | {r['file']} | {r['memory']} | {r['bytes'] / 1e6:.1f} | "
            f"{r['bytes'] / sizes[r['model']]:.3f} | {r['create_s']:.3f} | "
            f"{r['latency_ms']:.2f} | {r['ratio']:.3f} | {r['peak_rss_mb']:.0f} | "
            f"{r['rss_delta_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
