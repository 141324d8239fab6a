"""Arguments shared by several subcommands: model specs, input shapes, configs."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ..config import ShareConfig
from ..errors import ConfigError, InputError
from ..io import read_json
from ..model_spec import build_model, load_weights, parse_shape
from ..serialization import RECIPE_FILE, read_recipe

__all__ = [
    "saved_model_spec",
    "add_model_args",
    "add_config_args",
    "model_from_args",
    "example_from_args",
    "config_from_args",
]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="torchvision:NAME, package.module:callable or file.py:callable (builds the model)",
    )
    parser.add_argument("--weights", help="state_dict to load (.safetensors or a torch file)")
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="allow a weights file that runs pickled code (only for files you trust)",
    )
    parser.add_argument("--num-classes", type=int, help="passed to the model constructor")
    parser.add_argument(
        "--input-shape", default="1,3,224,224",
        help="example input shape, comma-separated (default 1,3,224,224)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs")


def model_from_args(args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=args.num_classes)
    if args.weights:
        loaded = load_weights(model, args.weights, trust_pickle=args.trust_pickle)
        model = loaded
    return model.eval()


def example_from_args(args: argparse.Namespace) -> torch.Tensor:
    generator = torch.Generator().manual_seed(args.seed)
    return torch.randn(parse_shape(args.input_shape), generator=generator)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="ShareConfig as a JSON file")
    parser.add_argument("--rank", help="residual rank: an int, 'full' or 'auto'")
    parser.add_argument("--link", help="lowrank, scale, lowrank+scale or none")
    parser.add_argument("--exclude", action="append", default=None, help="site name pattern")
    parser.add_argument("--target-ratio", type=float,
                        help="unique parameters after / before, e.g. 0.5 (chooses groups and ranks)")
    parser.add_argument("--best-effort", action="store_true",
                        help="with --target-ratio: return the smallest reachable model instead")
    parser.add_argument("--no-align", action="store_true", help="keep channel order")


def config_from_args(args: argparse.Namespace) -> ShareConfig:
    data: dict = {}
    if args.config:
        data = read_json(args.config, "config file")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {args.config} must hold a JSON object")
    if args.rank is not None:
        data["rank"] = int(args.rank) if args.rank.isdigit() else args.rank
    if args.link is not None:
        data["link"] = args.link
    if args.exclude:
        data["exclude"] = list(data.get("exclude", [])) + list(args.exclude)
    if getattr(args, "target_ratio", None) is not None:
        data["target_ratio"] = args.target_ratio
    if getattr(args, "best_effort", False):
        data["best_effort"] = True
    if getattr(args, "no_align", False):
        data["align"] = False
    return ShareConfig.from_dict(data)


def saved_model_spec(directory: Path) -> tuple[dict, str]:
    """The recipe of a saved transform and the model spec it records (to rebuild the model)."""
    recipe = read_recipe(directory)
    spec = recipe.get("model_spec")
    if not spec:
        raise InputError(
            f"{directory / RECIPE_FILE} records no model_spec; save with "
            "save(result, dir, model_spec='torchvision:NAME') so the model can be rebuilt"
        )
    return recipe, spec
