"""Model specs: say explicitly which code runs to build a model.

=====================================  ==============================================
spec                                   what runs
=====================================  ==============================================
``torchvision:resnet18``               ``torchvision.models.get_model("resnet18", weights=None)``
``package.module:factory``             an importable callable (your installed code)
``path/to/file.py:factory``            a callable in your own file
=====================================  ==============================================

Weights are read separately (``--weights``) with safetensors or ``torch.load(weights_only=True)``:
a pickled whole model is refused unless the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import InputError, UntrustedFileError

__all__ = [
    "build_model",
    "load_weights",
    "no_download_kwargs",
    "parse_shape",
    "resolve_callable",
]

log = logging.getLogger(__name__)


def resolve_callable(spec: str) -> Callable[..., Any]:
    """``module:attr`` or ``file.py:attr`` -> the callable (imports or runs the user's code)."""
    if ":" not in spec:
        raise InputError(
            f"model spec {spec!r} must be 'torchvision:NAME', 'package.module:callable' or "
            "'file.py:callable'"
        )
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise InputError(f"model spec {spec!r} is missing the module or the callable name")
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"model file {path} does not exist")
        name = f"_sharedft_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise InputError(f"cannot import {path} as Python code")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise InputError(f"cannot import {source!r}: {exc}") from None
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise InputError(f"{source} has no attribute {attr!r}") from None
    if not callable(fn):
        raise InputError(f"{source}:{attr} is not callable")
    return fn


def no_download_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments that make a torchvision builder download nothing (random weights)."""
    import inspect

    import torchvision

    params = inspect.signature(torchvision.models.get_model_builder(name)).parameters
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in params:
        kwargs["weights_backbone"] = None
    return kwargs


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """Build the model a spec names, with random weights (nothing is downloaded)."""
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if spec.startswith("torchvision:"):
        import torchvision

        name = spec.split(":", 1)[1]
        if name not in torchvision.models.list_models():
            raise InputError(
                f"torchvision has no model {name!r}; see torchvision.models.list_models()"
            )
        model = torchvision.models.get_model(name, **no_download_kwargs(name), **kwargs)
    else:
        fn = resolve_callable(spec)
        try:
            model = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> nn.Module:
    """Load a state dict (safetensors, or a weights-only torch file) into `model`.

    A file that needs unpickling arbitrary objects is refused with `UntrustedFileError` unless
    `trust_pickle` is true (then it may also hold a whole pickled model).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{p} is not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle.UnpicklingError and friends
            if not trust_pickle:
                raise UntrustedFileError(
                    f"{p} is not a plain weights file: loading it would run pickled code "
                    f"({type(exc).__name__}). Re-save it as a state_dict or safetensors, or pass "
                    "--trust-pickle if you trust where it came from"
                ) from None
            state = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(state, nn.Module):
        return state
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{p} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise InputError(f"{p} does not fit the model: {' '.join(first)}") from None
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise InputError(f"input shape {text!r} must be integers like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"input shape {text!r} must be positive integers like 1,3,224,224")
    return shape
