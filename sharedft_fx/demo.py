"""The built-in demo (``sharedft-fx demo``): the whole pipeline on real handwritten digits.

1. train a small reference CNN on scikit-learn's digits (or reuse the cached one),
2. `transform` it (shared banks + low-rank links),
3. recalibrate BatchNorm on the training images,
4. `finetune` with distillation from the original,
5. export both models to ONNX and check them in ONNX Runtime,
6. one table, original vs shared: parameters, file bytes, test accuracy, latency.

    >>> result = run_demo(fast=True)
    >>> result.shared.params < 0.5 * result.original.params
    True
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import ShareConfig
from .data import digits_splits
from .export import export_onnx, ort_session
from .finetuning import FinetuneConfig, finetune
from .calibration import recalibrate_bn
from .reference_nets import DigitsResNet, _train, evaluate_accuracy, trained_reference
from .report import GraphDiff
from .result import count_parameters
from .transform import transform

__all__ = ["DemoPlan", "DemoRow", "DemoResult", "run_demo", "FULL", "FAST"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and how it shares."""

    reference_epochs: int
    share: ShareConfig
    finetune: FinetuneConfig
    recalibrate_batches: int = 20
    widths: tuple[int, int, int] | None = None  # None: the cached DigitsResNet reference
    blocks: int = 3
    onnx: bool = True
    latency_runs: int = 50


FULL = DemoPlan(
    reference_epochs=30,
    share=ShareConfig(rank=16),
    finetune=FinetuneConfig(epochs=3),  # the defaults are the measured recipe
)
FAST = DemoPlan(
    reference_epochs=2,
    share=ShareConfig(rank=2, min_site_params=0),
    finetune=FinetuneConfig(epochs=1, max_steps=3, lr=5e-4, batch_size=64),
    recalibrate_batches=2,
    widths=(8, 16, 32),
    blocks=2,
    latency_runs=5,
)


@dataclass(frozen=True)
class DemoRow:
    """One model's line of the table."""

    model: str
    params: int
    file_bytes: int | None        # ONNX file (+ external data); None when ONNX export is off
    test_accuracy: float
    latency_ms: float             # median batch-1 latency (ONNX Runtime when exported, else torch)
    latency_backend: str


@dataclass
class DemoResult:
    """The demo's table and timings."""

    original: DemoRow
    shared: DemoRow
    recalibrated_accuracy: float
    seconds: dict[str, float] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    share_config: dict[str, Any] = field(default_factory=dict)
    finetune_config: dict[str, Any] = field(default_factory=dict)
    report_markdown: str = ""  # GraphDiff of the transform, fine-tune, accuracy and latency

    @property
    def param_reduction(self) -> float:
        """Fraction of parameters removed."""
        return 1 - self.shared.params / self.original.params

    @property
    def accuracy_drop_points(self) -> float:
        return 100 * (self.original.test_accuracy - self.shared.test_accuracy)

    def table(self) -> str:
        """The one table the demo prints."""
        head = f"{'model':<10} {'params':>10} {'file bytes':>12} {'test acc':>9} {'latency':>12}"
        lines = [head, "-" * len(head)]
        for r in (self.original, self.shared):
            size = f"{r.file_bytes:,}" if r.file_bytes is not None else "-"
            lines.append(f"{r.model:<10} {r.params:>10,} {size:>12} {r.test_accuracy:>8.2%} "
                         f"{r.latency_ms:>9.3f} ms")
        o, s = self.original, self.shared
        ratio = f"{s.file_bytes / o.file_bytes:.1%}" if o.file_bytes and s.file_bytes else "-"
        lines.append(
            f"shared/original: params {s.params / o.params:.1%}, file {ratio}, accuracy "
            f"{-self.accuracy_drop_points:+.2f} points, latency "
            f"{s.latency_ms / o.latency_ms:.2f}x ({s.latency_backend})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "param_reduction": self.param_reduction,
                "accuracy_drop_points": self.accuracy_drop_points}


def _reference(plan: DemoPlan, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    if plan.widths is None:
        return trained_reference("resnet", epochs=plan.reference_epochs, seed=seed)
    torch.manual_seed(seed)
    model = DigitsResNet(widths=plan.widths, blocks=plan.blocks)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _train(model, plan.reference_epochs, seed, 0.05)
    return model.eval(), {"name": "resnet", "widths": list(plan.widths),
                          "epochs": plan.reference_epochs, "cached": False}


def _latencies_ms(fns: list[Any], x: Any, runs: int) -> list[float]:
    """Median latency of each callable on `x`, measured in interleaved rounds (so that load
    from other processes hits every model alike)."""
    for fn in fns:
        for _ in range(3):
            fn(x)
    times: list[list[float]] = [[] for _ in fns]
    for r in range(runs):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t = time.perf_counter()
            fns[i](x)
            times[i].append(time.perf_counter() - t)
    return [1e3 * statistics.median(t) for t in times]


def _export_and_check(model: nn.Module, example: torch.Tensor, path: Path,
                      check_inputs: torch.Tensor) -> tuple[int, Any]:
    """`export_onnx` (compact: every bank stored once, checked in ONNX Runtime on real test
    images `check_inputs` and random inputs), then an ONNX Runtime session (memory="fast").

    Returns (file bytes incl. external data, a function running the session on a numpy array).
    """
    del example  # the exported graph has a dynamic batch axis: real test images serve as example
    exported = export_onnx(model, check_inputs, path)
    session = ort_session(exported.path, memory="fast")
    name = session.get_inputs()[0].name
    return exported.bytes, lambda a: session.run(None, {name: a})


def run_demo(fast: bool = False, out_dir: str | Path | None = None, seed: int = 0,
             plan: DemoPlan | None = None) -> DemoResult:
    """Run the demo pipeline; `fast` runs every stage on a tiny net (seconds, for tests)."""
    plan = plan or (FAST if fast else FULL)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    splits = digits_splits(size=16)
    test = DataLoader(splits.test, batch_size=256)
    original, info = _reference(plan, seed)
    seconds["reference"] = time.perf_counter() - t

    t = time.perf_counter()
    example = splits.train.tensors[0][:8]
    shared_result = transform(original, example, plan.share)
    shared = shared_result.model
    seconds["transform"] = time.perf_counter() - t

    t = time.perf_counter()
    recalibrate_bn(shared, DataLoader(splits.train, batch_size=64),
                   batches=plan.recalibrate_batches)
    recal_acc = evaluate_accuracy(shared, test)
    seconds["recalibrate"] = time.perf_counter() - t
    log.info("after BN recalibration: test accuracy %.4f", recal_acc)

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(out_dir) / "finetune" if out_dir is not None else Path(tmp) / "finetune"
        tuned = finetune(shared, original, splits.train, splits.val, plan.finetune,
                         output_dir=run_dir).model.eval()
        seconds["finetune"] = time.perf_counter() - t

        t = time.perf_counter()
        onnx_dir = Path(out_dir) if out_dir is not None else Path(tmp)
        models = {"original": original, "shared": tuned}
        sizes: dict[str, int | None] = {}
        runners: dict[str, Any] = {}
        for label, model in models.items():
            if plan.onnx:
                sizes[label], runners[label] = _export_and_check(
                    model, example, onnx_dir / f"{label}.onnx", splits.test.tensors[0][:64])
            else:
                sizes[label] = None
                runners[label] = (lambda m: lambda a: m(torch.from_numpy(a)))(model)
        backend = "onnxruntime" if plan.onnx else "torch"
        with torch.no_grad():
            ms = _latencies_ms(list(runners.values()), example[:1].numpy(), plan.latency_runs)
        rows = [
            DemoRow(label, count_parameters(model), sizes[label],
                    evaluate_accuracy(model, test), latency, backend)
            for (label, model), latency in zip(models.items(), ms)
        ]
        seconds["export+evaluate"] = time.perf_counter() - t
    report = GraphDiff.from_transform(
        shared_result, original=original, finetuned=tuned, title="sharedft-fx demo: digits ResNet",
        metrics={
            "accuracy": {r.model: r.test_accuracy for r in rows}, "accuracy_metric": "test top-1",
            "latency_ms": {r.model: r.latency_ms for r in rows},
        },
    )
    return DemoResult(rows[0], rows[1], recal_acc, seconds, info, plan.share.to_dict(),
                      plan.finetune.to_dict(), report.to_markdown())
