"""``sharedft-fx transform MODEL --out DIR``: share conv weights and save the result."""

from __future__ import annotations

import argparse

from ..serialization import save
from ..transform import transform
from .common import add_config_args, add_model_args, config_from_args, example_from_args
from .common import model_from_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("transform", help="share conv weights and save weights + recipe")
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--out", help="directory to save model.safetensors and recipe.json")
    return p


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    model = model_from_args(args)
    result = transform(model, example_from_args(args), config)
    print(result.summary())
    if args.out:
        save(result, args.out, model_spec=args.model)
        print(f"saved to {args.out}")
    return 0
