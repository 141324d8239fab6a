"""``sharedft-fx report MODEL|SAVED_DIR``: a graph diff report as HTML, Markdown and/or JSON.

    sharedft-fx report torchvision:resnet50 --out out/r50-report      # report.{html,md,json}
    sharedft-fx report out/r18-shared --weights r18.safetensors --html r18.html

A model spec is transformed here (same options as ``transform``); a saved transform directory
is rebuilt from its recipe's ``model_spec`` and compared with a fresh instance of the original
(``--weights``: the original trained weights, which also gives each site's weight error).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import ShareConfig
from ..errors import InputError
from ..model_spec import build_model, load_weights
from ..report import GraphDiff
from ..io import read_json
from ..serialization import load, recipe_permutations
from ..transform import transform
from .common import add_config_args, add_model_args, config_from_args, example_from_args
from .common import model_from_args, saved_model_spec

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)

FORMATS = ("html", "md", "json")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report", help="graph diff report (html / md / json) of a model spec or saved transform"
    )
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--out", help="directory: writes report.html, report.md and report.json")
    for fmt in FORMATS:
        p.add_argument(f"--{fmt}", metavar="PATH", help=f"write the {fmt} report to PATH")
    p.add_argument("--onnx", nargs=2, metavar=("BEFORE", "AFTER"),
                   help="add an ONNX section comparing two exported files")
    p.add_argument("--metrics", metavar="JSON",
                   help="JSON file with accuracy / latency_ms / site_errors to include")
    p.add_argument("--finetuned", action="store_true",
                   help="saved transform: its weights were fine-tuned (errors are reported as "
                        "after fine-tuning)")
    p.add_argument("--title", help="report title")
    return p


def _metrics(path: str | None) -> dict | None:
    if not path:
        return None
    data = read_json(path, "metrics file")
    if not isinstance(data, dict):
        raise InputError(f"metrics file {path} must hold a JSON object")
    return data


def build_report(args: argparse.Namespace) -> GraphDiff:
    """The report the arguments describe (transforming a model spec, or reading a saved dir)."""
    onnx = tuple(args.onnx) if args.onnx else None
    metrics = _metrics(args.metrics)
    target = Path(args.model)
    if target.is_dir():
        recipe, spec = saved_model_spec(target)
        original = build_model(spec, num_classes=args.num_classes).eval()
        if args.weights:
            original = load_weights(original, args.weights, trust_pickle=args.trust_pickle).eval()
        shared = load(build_model(spec, num_classes=args.num_classes).eval(), target)
        return GraphDiff.from_modules(
            original, shared, config=ShareConfig.from_dict(recipe["config"]),
            skipped=recipe.get("plan", {}).get("skipped", {}),
            compute_errors=bool(args.weights), errors_finetuned=args.finetuned,
            metrics=metrics, onnx=onnx, title=args.title or f"sharedft-fx report: {spec}",
            source="saved", permutations=recipe_permutations(recipe),
        )
    config = config_from_args(args)
    model = model_from_args(args)
    result = transform(model, example_from_args(args), config)
    return GraphDiff.from_transform(
        result, original=model, metrics=metrics, onnx=onnx,
        title=args.title or f"sharedft-fx report: {args.model}",
    )


def write_outputs(diff: GraphDiff, args: argparse.Namespace) -> list[str]:
    """Write the requested formats; Markdown to stdout when no output is named."""
    targets: dict[str, str] = {}
    if args.out:
        for fmt in FORMATS:
            targets[fmt] = str(Path(args.out) / f"report.{fmt}")
    for fmt in FORMATS:
        if getattr(args, fmt, None):
            targets[fmt] = getattr(args, fmt)
    if not targets:
        print(diff.to_markdown(), end="")
        return []
    return [diff.write(path, fmt) for fmt, path in targets.items()]


def run(args: argparse.Namespace) -> int:
    diff = build_report(args)
    for path in write_outputs(diff, args):
        print(f"wrote {path}")
    return 0
