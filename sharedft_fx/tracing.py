"""Trace arbitrary models with torch.fx, falling back to leaves where tracing fails.

`trace_model` tries ``symbolic_trace`` on the whole model. When that fails, or when the traced
graph does not reproduce the module on the example inputs, the module becomes a leaf (it runs
eagerly) and each child that holds convolution weights is traced on its own, recursively. A
detector whose top-level forward has data-dependent control flow still gets its backbone, FPN
and heads as graphs:

Before::

    FasterRCNN (untraceable: "Proxy object cannot be iterated")

After::

    FasterRCNN (eager)
      backbone  -> GraphModule
      rpn       (eager) -> head.conv -> GraphModule, head.cls_logits -> GraphModule, ...
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from .config import ShareConfig
from .errors import ConfigError, TracingError
from .links import LINK_TYPES, SharedWeights
from .numerics import tree_relative_error

__all__ = ["ShareTracer", "TraceReport", "trace_model", "graph_modules", "capture_calls", "trace_paths", "CONV_TYPES"]

log = logging.getLogger(__name__)

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRACE_TOLERANCE = 1e-5


def _is_plain_conv(module: nn.Module) -> bool:
    """A torch conv whose class does not change how the weight is used (safe as a leaf)."""
    for base in CONV_TYPES:
        if isinstance(module, base):
            cls = type(module)
            return cls.forward is base.forward and cls._conv_forward is base._conv_forward
    return False


class ShareTracer(fx.Tracer):
    """`fx.Tracer` with configurable leaves; enters conv subclasses that override `forward`.

    Custom convolutions (TF-style "same" padding, weight standardization) are traced through, so
    that their read of ``self.weight`` becomes a ``get_attr`` node the rewrite can replace while
    the rest of their forward stays as written.
    """

    def __init__(
        self,
        leaf_patterns: tuple[str, ...] = (),
        autowrap_functions: tuple[Callable[..., Any], ...] = (),
        prefix: str = "",
    ) -> None:
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaf_patterns = leaf_patterns
        self.prefix = prefix

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, LINK_TYPES) or isinstance(m, SharedWeights):
            return True
        path = ".".join(p for p in (self.prefix, module_qualified_name) if p)
        cls_name = type(m).__name__
        for pattern in self.leaf_patterns:
            if fnmatch.fnmatchcase(path, pattern) or pattern == cls_name:
                return True
        if isinstance(m, CONV_TYPES):
            return _is_plain_conv(m)
        return super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class TraceReport:
    """Which modules became graphs and which ran eagerly (with the reason)."""

    traced: tuple[str, ...] = ()
    leaves: Mapping[str, str] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()

    @property
    def fully_traced(self) -> bool:
        return self.traced == ("",) and not self.leaves

    def to_dict(self) -> dict[str, Any]:
        return {
            "traced": list(self.traced),
            "leaves": dict(self.leaves),
            "unverified": list(self.unverified),
        }


def _resolve_autowrap(specs: tuple[str, ...]) -> tuple[Callable[..., Any], ...]:
    out = []
    for spec in specs:
        module_name, func_name = spec.split(":")
        try:
            out.append(getattr(importlib.import_module(module_name), func_name))
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"autowrap function {spec!r} cannot be imported: {exc}") from None
    return tuple(out)


def _holds_conv_weights(module: nn.Module) -> bool:
    return any(p.dim() >= 3 for p in module.parameters())


def _trace_one(
    module: nn.Module,
    path: str,
    config: ShareConfig,
    autowrap: tuple[Callable[..., Any], ...],
    concrete_args: Mapping[str, Any] | None,
) -> fx.GraphModule:
    tracer = ShareTracer(config.leaf_modules, autowrap, prefix=path)
    graph = tracer.trace(module, concrete_args=dict(concrete_args) if concrete_args else None)
    return fx.GraphModule(tracer.root, graph, class_name=type(module).__name__)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _clone_tree(tree: Any) -> Any:
    return pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, tree)


def capture_calls(
    model: nn.Module, modules: Mapping[str, nn.Module], example_inputs: tuple
) -> dict[str, tuple[tuple, dict, Any]]:
    """Run the model once; record the first (args, kwargs, output) of each given module."""
    seen: dict[str, tuple[tuple, dict, Any]] = {}
    handles = []

    def hook_for(name: str):
        def hook(mod, args, kwargs, output):
            if name not in seen:
                seen[name] = (_clone_tree(args), _clone_tree(kwargs), _clone_tree(output))

        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_hook(hook_for(name), with_kwargs=True))
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def trace_model(
    model: nn.Module, example_inputs: tuple, config: ShareConfig
) -> tuple[nn.Module, TraceReport]:
    """Replace `model` (a private copy, modified here) or its submodules by verified GraphModules.

    Returns the module to keep working on (a GraphModule when the whole model traced) and a
    report. Raises `TracingError` when no module holding convolution weights could be traced and
    the model has such weights.
    """
    autowrap = _resolve_autowrap(config.autowrap_functions)
    traced: dict[str, fx.GraphModule] = {}
    leaves: dict[str, str] = {}
    unverified: list[str] = []
    pending: list[str] = [""]
    was_training = model.training
    model.eval()
    try:
        while pending:
            attempts: dict[str, fx.GraphModule] = {}
            next_round: list[str] = []
            for path in pending:
                module = model.get_submodule(path) if path else model
                if not _holds_conv_weights(module):
                    continue
                try:
                    attempts[path] = _trace_one(
                        module, path, config, autowrap, config.concrete_args if not path else None
                    )
                except Exception as exc:  # noqa: BLE001 - any tracing failure means "leaf"
                    if not config.fallback:
                        raise TracingError(
                            f"torch.fx could not trace {path or 'the model'} "
                            f"({_reason(exc)}); set fallback=True, or list the module in "
                            "leaf_modules / concrete_args"
                        ) from exc
                    leaves[path] = _reason(exc)
                    next_round.extend(_child_paths(module, path))
            if attempts:
                originals = {p: (model.get_submodule(p) if p else model) for p in attempts}
                calls = capture_calls(model, originals, example_inputs)
                for path, gm in attempts.items():
                    ok, why = _verify(gm, calls.get(path))
                    if ok is None:
                        unverified.append(path)
                    if ok is False:
                        if not config.fallback:
                            raise TracingError(
                                f"the traced graph of {path or 'the model'} does not match eager "
                                f"execution ({why}); set fallback=True or make it a leaf"
                            )
                        leaves[path] = why
                        next_round.extend(_child_paths(originals[path], path))
                        continue
                    traced[path] = gm
            pending = next_round
    finally:
        model.train(was_training)
    root = model
    for path, gm in traced.items():
        gm.train(was_training)
        if path:
            _adopt_attributes(gm, model.get_submodule(path))
            _set_submodule(root, path, gm)
        else:
            root = gm
    report = TraceReport(
        traced=tuple(sorted(traced)), leaves=dict(sorted(leaves.items())),
        unverified=tuple(sorted(unverified)),
    )
    if not traced and _holds_conv_weights(model):
        first = next(iter(leaves.items()), ("", "unknown"))
        raise TracingError(
            f"no part of the model that holds convolution weights could be traced; "
            f"{first[0] or 'the model'}: {first[1]}. Pass leaf_modules, concrete_args or "
            "autowrap_functions in the config"
        )
    if report.leaves:
        log.info("traced %d module(s); %d ran eagerly: %s", len(traced), len(leaves),
                 ", ".join(f"{k or '<root>'} ({v})" for k, v in report.leaves.items()))
    return root, report


_MODULE_ATTRS = frozenset(dir(nn.Module)) | {"forward", "training"}


def _adopt_attributes(gm: fx.GraphModule, original: nn.Module) -> None:
    """Give a traced partition the plain attributes and methods its eager parent may use.

    The eager parent still runs its own Python code, which may read ``self.child.some_attr`` or
    call ``self.child.helper()``; a bare GraphModule has neither.
    """
    for name, value in vars(original).items():
        if not name.startswith("_") and name not in _MODULE_ATTRS and not hasattr(gm, name):
            setattr(gm, name, value)
    for cls in reversed(type(original).__mro__):
        if cls in (nn.Module, object) or issubclass(nn.Module, cls):
            continue
        for name, value in vars(cls).items():
            if name.startswith("__") or name in _MODULE_ATTRS or hasattr(type(gm), name):
                continue
            if callable(value) or isinstance(value, (property, staticmethod, classmethod)):
                setattr(type(gm), name, value)


def _child_paths(module: nn.Module, path: str) -> list[str]:
    return [f"{path}.{name}" if path else name for name, _ in module.named_children()]


def _verify(gm: fx.GraphModule, call: tuple[tuple, dict, Any] | None) -> tuple[bool | None, str]:
    """True when the graph reproduces the recorded call, None when it was never called."""
    if call is None:
        return None, "not called by the example inputs"
    args, kwargs, expected = call
    try:
        with torch.no_grad():
            got = gm(*_clone_tree(args), **_clone_tree(kwargs))
    except Exception as exc:  # noqa: BLE001
        return False, f"traced graph fails to run: {_reason(exc)}"
    err = tree_relative_error(got, expected)
    if not err <= TRACE_TOLERANCE:
        shown = "a different output structure" if math.isinf(err) else f"relative error {err:.2e}"
        return False, f"traced graph differs from eager execution ({shown})"
    return True, ""


def graph_modules(model: nn.Module) -> Iterator[tuple[str, fx.GraphModule]]:
    """Every GraphModule partition of a (partly) traced model, outermost first, with its path."""
    outer: list[str] = []
    for name, sub in model.named_modules():
        if not isinstance(sub, fx.GraphModule):
            continue
        if any(name == p or name.startswith(p + ".") or p == "" for p in outer):
            continue
        outer.append(name)
        yield name, sub


def trace_paths(model: nn.Module, config: ShareConfig, paths: tuple[str, ...]) -> nn.Module:
    """Trace exactly the given module paths of `model` (a private copy), as a recipe recorded.

    Used to rebuild a saved transform without example inputs; the paths were verified when the
    transform was made.
    """
    autowrap = _resolve_autowrap(config.autowrap_functions)
    root = model
    for path in sorted(paths, key=lambda p: p.count(".") if p else -1):
        try:
            module = model.get_submodule(path) if path else model
        except AttributeError:
            raise TracingError(
                f"the recipe traced module {path!r}, which this model does not have"
            ) from None
        try:
            gm = _trace_one(module, path, config, autowrap, config.concrete_args if not path else None)
        except Exception as exc:  # noqa: BLE001
            raise TracingError(
                f"module {path or 'the model'} traced when the recipe was made but not now "
                f"({_reason(exc)}); is it the same architecture and version?"
            ) from exc
        gm.train(module.training)
        if path:
            _adopt_attributes(gm, module)
            _set_submodule(root, path, gm)
        else:
            root = gm
    return root
