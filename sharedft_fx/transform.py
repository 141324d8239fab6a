"""`transform(model, example_inputs, config)`: the public entry point of the sharing compiler.

Before::

    conv1 = self.layer1.0.conv1(relu)
    conv2 = self.layer1.0.conv2(relu_1)

After (``ShareConfig(rank=8)``)::

    sharedft_banks_g0 = self.sharedft.banks.g0_64x64x3x3
    layer1_0_conv1_weight = self.sharedft.links.layer1_0_conv1(sharedft_banks_g0)
    conv2d = torch.conv2d(relu, layer1_0_conv1_weight, None, (1, 1), (1, 1), (1, 1), 1)
    layer1_0_conv2_weight = self.sharedft.links.layer1_0_conv2(sharedft_banks_g0)
    conv2d_1 = torch.conv2d(relu_1, layer1_0_conv2_weight, None, (1, 1), (1, 1), (1, 1), 1)
"""

from __future__ import annotations

import copy
import gc
import logging
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .config import ShareConfig
from .errors import ConfigError, InputError, NonFiniteWeightError, VerificationError
from .links import feed_weights
from .memory import release_free_memory
from .modes import eval_mode
from .numerics import tree_relative_error
from .calibration import recalibrate_bn_count
from .passes import AddSkipGates, AlignChannels, GroupConvSites, OutputCheck, PassManager
from .passes import ShareConvWeights
from .passes import default_pipeline
from .planning import SharingPlan
from .result import GroupReport, SiteReport, TransformResult, count_parameters
from .tracing import TraceReport, trace_model

__all__ = ["transform", "as_args", "eval_mode", "check_finite", "VERIFY_TOLERANCE"]

log = logging.getLogger(__name__)

VERIFY_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-6
PASS_CHECK_TOLERANCE = 1e-4


def as_args(example_inputs: Any) -> tuple:
    """Example inputs as a tuple of positional arguments (a lone tensor or list is one argument)."""
    if example_inputs is None:
        raise InputError("example_inputs is required: a tensor or a tuple of forward() arguments")
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def check_finite(model: nn.Module) -> None:
    """Raise `NonFiniteWeightError` naming the first parameter or buffer that holds NaN/Inf."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not _all_finite(t):
                bad = int((~torch.isfinite(t)).sum())
                layer = name.rpartition(".")[0] or "<top-level module>"
                raise NonFiniteWeightError(
                    f"{kind} {name} of layer {layer} holds {bad} NaN/Inf value(s); repair or "
                    "re-initialise that layer (or reload the checkpoint) before transforming"
                )


def _all_finite(t: torch.Tensor) -> bool:
    """True when `t` holds no NaN/Inf; a sum propagates both, so the element-wise check (a
    temporary of the tensor's size) only runs when the sum is not finite (or overflowed)."""
    with torch.no_grad():
        if t.numel() == 0 or bool(torch.isfinite(t.sum())):
            return True
        return bool(torch.isfinite(t).all())


def _run(model: nn.Module, args: tuple) -> Any:
    with eval_mode(model), torch.no_grad():
        out = model(*args)
    release_free_memory()  # the forward's temporaries, freed but still resident
    return out


def _detached_copy(model: nn.Module) -> nn.Module:
    """A deep copy that shares (never modifies) conv-shaped parameters with `model`.

    The rewrite only reads those tensors, so the copy costs little memory; `_unalias` clones
    whatever is still shared at the end.
    """
    memo: dict[int, Any] = {id(p): p for p in model.parameters() if p.dim() >= 3}
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"the model cannot be copied ({type(exc).__name__}: {exc}); sharedft-fx never "
            "modifies the user's model in place and needs copy.deepcopy to work"
        ) from exc


def _unalias(result: nn.Module, original: nn.Module) -> None:
    """Clone every parameter or buffer of `result` that is, or shares storage with, one of
    `original`'s."""
    held = list(original.parameters()) + list(original.buffers())
    theirs = {id(t) for t in held}
    storages = {t.untyped_storage().data_ptr() for t in held if t.numel()}
    clones: dict[int, torch.Tensor] = {}
    for module in result.modules():
        for store in (module._parameters, module._buffers):
            for name, value in list(store.items()):
                if value is None:
                    continue
                if id(value) not in theirs and not (
                    value.numel() and value.untyped_storage().data_ptr() in storages
                ):
                    continue
                if id(value) not in clones:
                    data = value.detach().clone()
                    clones[id(value)] = (
                        nn.Parameter(data, requires_grad=value.requires_grad)
                        if isinstance(value, nn.Parameter) else data
                    )
                store[name] = clones[id(value)]


def transform(
    model: nn.Module,
    example_inputs: Any,
    config: ShareConfig | None = None,
    *,
    plan: SharingPlan | None = None,
    calibration: Iterable[Any] | None = None,
) -> TransformResult:
    """Rewrite `model` so convolutions of one weight shape share a bank plus per-site links.

    Returns a `TransformResult` whose `.model` is a new module; `model` is never modified.
    `example_inputs` is a tensor or a tuple of forward() arguments; it is used to verify the
    tracing and the rewrite. `plan` fixes the groups and ranks (used by `load`).

    `calibration` (a DataLoader or list of batches: tensors or (inputs, targets) pairs) makes
    the budget planner measure errors on the inputs each conv sees, and recalibrates the
    BatchNorm statistics of the result (`recalibrate_bn`, ``config.calibration_batches``
    batches each).
    """
    config = ShareConfig() if config is None else config
    if not isinstance(config, ShareConfig):
        raise ConfigError(f"config must be a ShareConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise InputError(f"transform expects a torch.nn.Module, got {type(model).__name__}")
    args = as_args(example_inputs)
    check_finite(model)
    try:
        reference = _run(model, args)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"the model does not run on the example inputs ({type(exc).__name__}: {exc}); pass "
            "a tensor, or a tuple of the positional arguments of forward()"
        ) from exc
    params_before = count_parameters(model)
    work = _detached_copy(model)
    root, trace = trace_model(work, args, config)
    pipeline = default_pipeline(config, plan, example_inputs=args, calibration=calibration)
    tolerance = _tolerance(model, PASS_CHECK_TOLERANCE)
    check = OutputCheck(args, reference, tolerance) if config.verify else None
    aligned: list[Any] = []  # outputs of the model after channel alignment, before sharing

    def after_each(p: Any, r: Any) -> None:
        release_free_memory()  # the pass's temporaries, freed but still resident
        if isinstance(p, AlignChannels) and r.modified and config.verify:
            aligned.append(_check_alignment(r.module, model, args, reference, tolerance))

    results = PassManager(pipeline, check, after_each)(root)
    group_pass = next(p for p in pipeline if isinstance(p, GroupConvSites))
    share_pass = next(p for p in pipeline if isinstance(p, ShareConvWeights))
    gate_pass = next((p for p in pipeline if isinstance(p, AddSkipGates)), None)
    align_pass = next((p for p in pipeline if isinstance(p, AlignChannels)), None)
    alignment = align_pass.report if align_pass is not None else None
    if not share_pass.links:
        log.warning("no shareable convolutions found; returning an unchanged copy")
        unchanged = copy.deepcopy(model)
        return TransformResult(
            model=unchanged, config=config, groups=(), params_before=params_before,
            params_after=count_parameters(unchanged), trace=trace, plan=group_pass.plan,
            modified=False, output_error=0.0, passes=tuple(results), alignment=alignment,
        )
    new = results[-1].module
    new.train(model.training)
    if config.verify:
        expected = aligned[0] if aligned else reference
        _verify_wiring(new, share_pass, args, expected, _tolerance(model, VERIFY_TOLERANCE))
    recalibrated = 0
    if calibration is not None:  # BatchNorm statistics only: copies, never the user's tensors
        recalibrated = recalibrate_bn_count(new, calibration, batches=config.calibration_batches)
    output_error = tree_relative_error(_run(new, args), reference)
    # last: the forwards above only read the conv weights still shared with the user's model,
    # so their copies do not add to the peak
    _unalias(new, model)
    errors = {s.site: s for s in share_pass.sites}
    groups = tuple(
        GroupReport(
            name=g.name, weight_shape=g.weight_shape, conv_groups=g.conv_groups,
            sites=tuple(
                SiteReport(s.site, s.link, s.rank, errors[s.site].link_params,
                           errors[s.site].weight_error)
                for s in g.sites
            ),
            params_before=g.params_before(), params_after=g.params_after(),
        )
        for g in group_pass.plan.groups
    )
    result = TransformResult(
        model=new, config=config, groups=groups, params_before=params_before,
        params_after=count_parameters(new), trace=trace, plan=group_pass.plan, modified=True,
        output_error=output_error, gates=tuple(gate_pass.gated) if gate_pass else (),
        passes=tuple(results), alignment=alignment, recalibrated=recalibrated,
        calibrated_sites=group_pass.captured,
    )
    log.info("%s", result.summary())
    return result


def _as_double(tree: Any) -> Any:
    return pytree.tree_map(
        lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, tree
    )


def _double_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of `model` made without an intermediate copy in the model's own dtype."""
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and id(t) not in memo:
            data = t.detach().to(torch.float64, copy=True)
            memo[id(t)] = (nn.Parameter(data, requires_grad=t.requires_grad)
                           if isinstance(t, nn.Parameter) else data)
    return copy.deepcopy(model, memo).double()


def _check_alignment(
    aligned: nn.Module, original: nn.Module, args: tuple, reference: Any, tolerance: float
) -> Any:
    """Channel alignment must not change the function; returns the aligned model's outputs.

    In float32 a permutation reorders sums, which a random-init net can amplify past any fixed
    tolerance; when float32 is inconclusive both models are compared in float64, on copies. A
    wrong permutation moves outputs by O(1); the float64 bound (1e-6) leaves room for nets so
    chaotic that they amplify float64 rounding too (efficientnet_v2_m at random init: 3e-9).
    """
    out = _run(aligned, args)
    if tree_relative_error(out, reference) <= tolerance:
        return out
    try:
        # one float64 copy at a time, each freed before the next is made
        expected = _run(_double_copy(original), _as_double(args))
        gc.collect()
        err = tree_relative_error(_run(_double_copy(aligned), _as_double(args)), expected)
        del expected
        gc.collect()
        release_free_memory()
    except Exception as exc:  # noqa: BLE001 - a model that cannot run in float64
        raise VerificationError(
            f"after channel alignment the outputs moved by {tree_relative_error(out, reference):.3e}"
            f" (float32) and the float64 re-check could not run ({type(exc).__name__}: {exc}); "
            "pass align=False to skip the alignment"
        ) from exc
    if not err <= FLOAT64_TOLERANCE:
        raise VerificationError(
            f"channel alignment changed the model's function (float64 relative error {err:.3e}); "
            "this is a bug in sharedft-fx, please report it; align=False avoids the pass"
        )
    return out


def _tolerance(model: nn.Module, base: float) -> float:
    """`base` for float32/64 models; a few machine epsilons of the least precise float dtype."""
    eps = [torch.finfo(p.dtype).eps for p in model.parameters() if p.is_floating_point()]
    return max([base] + [8 * e for e in eps if e > torch.finfo(torch.float32).eps])


def _verify_wiring(
    new: nn.Module,
    share_pass: ShareConvWeights,
    args: tuple,
    reference: Any,
    tolerance: float,
) -> None:
    """Feed every link the weight its site held (after channel alignment, if any): the graph
    must reproduce the original model."""
    feeds = {link: share_pass.replaced[param] for param, link in share_pass.links.items()}
    with feed_weights(feeds):
        err = tree_relative_error(_run(new, args), reference)
    if not err <= tolerance:
        raise VerificationError(
            f"the rewritten graph does not reproduce the original model when fed the original "
            f"weights (relative error {err:.3e}); this is a bug in sharedft-fx, please report it "
            "with the model; verify=False skips this check"
        )
