"""Fine-tune benchmark on the digits ResNet: BN recalibration alone vs a naive fine-tune vs the
recipe, at about 35% of the parameters; and training-step throughput, shared vs original,
measured side by side (interleaved rounds) in one run.

    PYTHONPATH=. python tools/bench_finetune.py --rank 8 --out runs/bench-ft.json
    PYTHONPATH=. python tools/bench_finetune.py --target-ratio 0.35 --naive --out runs/bench-ft.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch
import torch.nn.functional as F

from sharedft_fx import FinetuneConfig, ShareConfig, finetune, transform
from sharedft_fx.data import digits_loaders, digits_splits
from sharedft_fx.calibration import recalibrate_bn
from torch.utils.data import DataLoader
from sharedft_fx.io import write_json_atomic
from sharedft_fx.reference_nets import evaluate_accuracy, trained_reference

RECIPE = FinetuneConfig(epochs=3, progress=False)  # the defaults are the recipe
NAIVE = FinetuneConfig(
    epochs=5, optimizer="sgd", lr=0.02, bank_lr_scale="none", weight_decay=0.0,
    residual_weight_decay=0.0, grad_clip=None, temperature=2.0, distill_weight=1.0,
    label_weight=0.0, freeze_bn_stats=False, batch_size=64, keep_best=False, progress=False,
)


def _step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x, y) -> float:
    t = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def throughput(original, shared, rounds: int, steps: int, batch: int = 64) -> dict:
    """Median training-step time of each model, in interleaved rounds (A B A B ...)."""
    import copy

    x, y = next(iter(digits_loaders(batch_size=batch)[0]))
    models = {"original": copy.deepcopy(original).train(), "shared": copy.deepcopy(shared).train()}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    for k in models:  # warm up
        for _ in range(3):
            _step_time(models[k], opts[k], x, y)
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for k in order:
            times[k] += [_step_time(models[k], opts[k], x, y) for _ in range(steps)]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch, "steps_each": rounds * steps,
        "original_samples_per_s": batch / med["original"],
        "shared_samples_per_s": batch / med["shared"],
        "ratio": med["original"] / med["shared"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--target-ratio", type=float, default=None,
                    help="plan for this fraction of the parameters instead of a fixed rank")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive", action="store_true", help="also run the naive recipe")
    ap.add_argument("--epochs", type=int, default=RECIPE.epochs)
    ap.add_argument("--lr", type=float, default=RECIPE.lr)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default="runs/bench-finetune.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report: dict = {"threads": args.threads}
    original, info = trained_reference("resnet", epochs=30)
    splits = digits_splits(size=16)
    _, val, test = digits_loaders()
    report["original"] = {"params": info["params"], "val": evaluate_accuracy(original, val),
                          "test": evaluate_accuracy(original, test)}
    config = (ShareConfig(target_ratio=args.target_ratio) if args.target_ratio is not None
              else ShareConfig(rank=args.rank))
    result = transform(original, splits.train.tensors[0][:8], config)
    report["share"] = {"config": result.config.to_dict(), "params": result.params_after,
                       "ratio": result.ratio}
    shared = result.model
    report["no_recalibration"] = {"val": evaluate_accuracy(shared, val),
                                  "test": evaluate_accuracy(shared, test)}
    recalibrate_bn(shared, DataLoader(splits.train, batch_size=64), batches=None)
    report["recalibrated"] = {"val": evaluate_accuracy(shared, val),
                              "test": evaluate_accuracy(shared, test)}
    logging.info("%s", report)
    report["throughput"] = throughput(original, shared, args.rounds, 5)
    logging.info("throughput %s", report["throughput"])
    runs = [("recipe", RECIPE.replace(epochs=args.epochs, lr=args.lr))]
    if args.naive:
        runs.append(("naive", NAIVE))
    for name, cfg in runs:
        t = time.perf_counter()
        tuned = finetune(shared, original, splits.train, splits.val, cfg).model.eval()
        entry = {"config": cfg.to_dict(), "seconds": time.perf_counter() - t,
                 "val": evaluate_accuracy(tuned, val), "test": evaluate_accuracy(tuned, test)}
        again = recalibrate_bn(tuned, DataLoader(splits.train, batch_size=64), batches=None)
        entry["recalibrated_after"] = {"val": evaluate_accuracy(again, val),
                                       "test": evaluate_accuracy(again, test)}
        report[name] = entry
        logging.info("%s: %s", name, {k: v for k, v in entry.items() if k != "config"})
    write_json_atomic(args.out, report)
    print(json.dumps({k: v for k, v in report.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
