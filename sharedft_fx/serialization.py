"""Save a transform (weights + recipe) and load it onto a fresh instance of the architecture.

    >>> sharedft_fx.save(result, "out/resnet18-shared")      # model.safetensors + recipe.json
    >>> model = sharedft_fx.load(torchvision.models.resnet18(weights=None), "out/resnet18-shared")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from .config import ShareConfig
from .errors import InputError
from .io import atomic_path, check_format, read_json, sha256_file, write_json_atomic
from .passes import PassManager, default_pipeline
from .planning import SharingPlan
from .result import TransformResult
from .tracing import trace_paths

__all__ = ["save", "load", "read_recipe", "recipe_permutations", "RECIPE_FILE", "WEIGHTS_FILE"]

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"
WEIGHTS_FILE = "model.safetensors"
_FORMAT = "sharedft-fx.recipe"
_VERSION = 1


def save(
    result: TransformResult, directory: str | os.PathLike[str], model_spec: str | None = None
) -> Path:
    """Write ``model.safetensors`` and ``recipe.json`` (config, plan, traced parts) atomically.

    `model_spec` (e.g. ``"torchvision:resnet18"``) is recorded so tools can rebuild the model.
    """
    from . import __version__

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_model(result.model, str(tmp), force_contiguous=True)
    recipe = {
        "format": _FORMAT,
        "version": _VERSION,
        "sharedft_fx": __version__,
        "config": result.config.to_dict(),
        "plan": result.plan.to_dict(),
        "traced": list(result.trace.traced),
        "gates": list(result.gates),
        "modified": result.modified,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "model_spec": model_spec,
        "alignment": result.alignment.to_dict() if result.alignment is not None else None,
        "weights_sha256": sha256_file(weights),
    }
    write_json_atomic(out / RECIPE_FILE, recipe)
    return out


def recipe_permutations(recipe: dict[str, Any]) -> dict[str, list[tuple[int, list[int]]]]:
    """The channel alignment a saved transform applied (weight path -> [(dim, order)])."""
    alignment = recipe.get("alignment") or {}
    return {k: [(int(d), list(p)) for d, p in v]
            for k, v in (alignment.get("permutations") or {}).items()}


def read_recipe(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated recipe of a saved transform."""
    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"saved transform directory {path} does not exist")
    recipe = read_json(path / RECIPE_FILE, "recipe")
    return check_format(recipe, fmt=_FORMAT, version=_VERSION, what=str(path / RECIPE_FILE),
                        kind="recipe")


def load(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Apply a saved recipe to `model` (a fresh instance of the same architecture) and load weights.

    Returns a new module; `model` is not modified.
    """
    from .transform import _detached_copy, _unalias

    path = Path(directory)
    recipe = read_recipe(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights} is missing; save() writes it beside {RECIPE_FILE}")
    if sha256_file(weights) != recipe.get("weights_sha256"):
        raise InputError(
            f"{weights} does not match {RECIPE_FILE} (checksum differs): the directory holds "
            "parts of two different saves; save the transform again"
        )
    config = ShareConfig.from_dict(recipe["config"])
    if not isinstance(model, nn.Module):
        raise InputError(f"load expects a torch.nn.Module, got {type(model).__name__}")
    work = _detached_copy(model)
    if recipe.get("modified", True):
        plan = SharingPlan.from_dict(recipe["plan"])
        root = trace_paths(work, config, tuple(recipe.get("traced", ())))
        pipeline = default_pipeline(
            config, plan, initialize=False, gates=tuple(recipe.get("gates", ()))
        )
        root = PassManager(pipeline)(root)[-1].module
    else:
        root = work
    _unalias(root, model)
    try:
        missing, unexpected = load_model(root, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise InputError(
            f"the weights in {weights} do not fit the model built from {RECIPE_FILE} ({exc}); "
            "was it saved from this architecture?"
        ) from None
    root.train(model.training)
    return root
