"""Benchmark of the budget planner: three digits CNNs x target ratios x channel alignment on/off.

For each reference net (trained once and cached by `trained_reference`) and each target ratio,
with and without channel alignment, and with no gradient step:

* weight-space plan (``transform(model, x, ShareConfig(target_ratio=r, align=a))``): test
  accuracy as transformed, then after `recalibrate_bn` on the training images;
* activation-aware plan (``transform(..., calibration=train)``, which also recalibrates BN).

Each net's rows are written to ``<out>/<net>.json`` as soon as they are measured, and the table
of every net found there to the Markdown file, so nets can be run in separate invocations::

    python tools/bench_policy.py --nets vgg mobilenet
    python tools/bench_policy.py --nets resnet --markdown out/bench_policy.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from sharedft_fx import ShareConfig, recalibrate_bn, transform
from sharedft_fx.data import digits_loaders
from sharedft_fx.reference_nets import evaluate_accuracy, trained_reference

log = logging.getLogger("bench_policy")

NETS = ("resnet", "vgg", "mobilenet")
RATIOS = (0.7, 0.5, 0.35)
DEFAULT_EPOCHS = {"resnet": 30, "vgg": 15, "mobilenet": 15}
RECAL_BATCHES = 8


def bench_net(name: str, epochs: int, ratios: tuple[float, ...], aligned_only: bool,
              activation: bool = True) -> dict:
    model, info = trained_reference(name, epochs=epochs)
    train, _, test = digits_loaders(batch_size=64)
    x = next(iter(test))[0][:2]
    original = evaluate_accuracy(model, test)
    rows = []
    for ratio in ratios:
        for align in (False, True):
            cfg = ShareConfig(target_ratio=ratio, align=align, best_effort=True,
                              calibration_batches=RECAL_BATCHES)
            t0 = time.time()
            res = transform(model, x, cfg)
            acc_raw = evaluate_accuracy(res.model, test)
            recalibrate_bn(res.model, train, batches=RECAL_BATCHES)
            acc_recal = evaluate_accuracy(res.model, test)
            act_ratio = acc_act = None
            if activation and (align or not aligned_only):
                act = transform(model, x, cfg, calibration=train)
                act_ratio, acc_act = act.ratio, evaluate_accuracy(act.model, test)
            a = res.alignment
            rows.append({
                "ratio": ratio,
                "align": align,
                "reached": res.ratio <= ratio + 1e-12,
                "params_kept": res.ratio,
                "groups": len(res.groups),
                "acc_no_recal": acc_raw,
                "acc_recal": acc_recal,
                "params_kept_act": act_ratio,
                "acc_act_recal": acc_act,
                "energy_before": a.energy_before if a else None,
                "energy_after": a.energy_after if a else None,
                "chains": a.chains if a else None,
                "permuted": a.permuted if a else None,
                "seconds": time.time() - t0,
            })
            log.info("%s %s", name, rows[-1])
    return {"net": name, "epochs": epochs, "params": info["params"], "test_accuracy": original,
            "rows": rows}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _act(row: dict) -> str:
    if row["params_kept_act"] is None:
        return "not run"
    return f"{row['params_kept_act']:.3f} / {_pct(row['acc_act_recal'])}"


def markdown(results: list[dict], command: str, date: str) -> str:
    lines = [
        "## Budget planner: digits CNNs at target ratios, alignment on/off (no gradient step)",
        "",
        f"Command: `{command}`, run {date} on {platform.machine()} CPU "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads).",
        "",
        "Columns: *kept* = unique parameters after / before (a target below the smallest "
        "reachable ratio is marked ✗ and gives the smallest reachable model, `best_effort=True`); "
        "accuracies are test accuracy (270 images) in %; *weight-space plan* is "
        "`transform(model, x, ShareConfig(target_ratio=r, align=a))` evaluated as is and after "
        f"`recalibrate_bn` on {RECAL_BATCHES} training batches of 64; *activation-aware* is "
        "`transform(..., calibration=train_loader)` (errors measured on captured conv inputs, "
        "BN recalibrated automatically); *energy* is the total relative residual energy "
        "sum ||W_i - mean||² / sum ||W_i||² of all groups before -> after channel alignment.",
        "",
        "| net (orig. acc) | target | align | kept | acc, no recal | acc, BN recal | "
        "activation-aware: kept / acc | energy before -> after align |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res["rows"]:
            energy = (f"{r['energy_before']:.4f} -> {r['energy_after']:.4f} "
                      f"({r['permuted']}/{r['chains']} chains)") if r["align"] else ""
            kept = f"{r['params_kept']:.3f}" + ("" if r["reached"] else " ✗")
            lines.append(
                f"| {res['net']} ({_pct(res['test_accuracy'])}, {res['params'] / 1e6:.2f} M, "
                f"{res['epochs']} ep) | {r['ratio']} | {'on' if r['align'] else 'off'} | {kept} | "
                f"{_pct(r['acc_no_recal'])} | {_pct(r['acc_recal'])} | "
                f"{_act(r)} | {energy} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--epochs", nargs="+", default=[],
                        help="per-net training epochs as name=N (defaults: "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    parser.add_argument("--activation-aligned-only", action="store_true",
                        help="run the activation-aware plan only with alignment on (saves time)")
    parser.add_argument("--no-activation", action="store_true",
                        help="skip the activation-aware plan (saves time)")
    parser.add_argument("--out", default="out/bench_policy", help="folder of per-net JSON rows")
    parser.add_argument("--markdown", default="out/bench_policy.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    epochs = dict(DEFAULT_EPOCHS)
    for spec in args.epochs:
        key, _, value = spec.partition("=")
        epochs[key] = int(value)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.nets:
        result = bench_net(name, epochs[name], tuple(args.ratios), args.activation_aligned_only,
                           not args.no_activation)
        result["command"] = "python tools/bench_policy.py " + " ".join(argv or sys.argv[1:])
        result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    results = [json.loads((out / f"{n}.json").read_text()) for n in NETS
               if (out / f"{n}.json").is_file()]
    commands = "; ".join(sorted({r["command"] for r in results}))
    dates = ", ".join(sorted({r["date"] for r in results}))
    Path(args.markdown).write_text(markdown(results, commands, dates))
    log.info("wrote %s", args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
