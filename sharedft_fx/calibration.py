"""Calibration data: BatchNorm recalibration and the conv inputs behind activation-aware errors.

`recalibrate_bn` recomputes the running statistics of every BatchNorm layer of a (transformed)
model from a few batches, with no gradient step. Sharing changes every conv's output statistics;
the old running means and variances then normalise with the wrong numbers:

Before (digits ResNet, 55% fewer parameters)::

    evaluate_accuracy(shared, test)       # 0.50
After::

    recalibrate_bn(shared, train, batches=16)
    evaluate_accuracy(shared, test)       # 0.995 (the original's)

`capture_conv_inputs` records, for some conv modules, a bounded random sample of the input patches
they see (rows of the unfolded input, laid out like ``weight.reshape(out, -1)``), so that the error
of a replacement weight can be measured as ``||(W - W_eff) X|| / ||W X||``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .modes import eval_mode, restored_modes

__all__ = ["recalibrate_bn", "recalibrate_bn_count", "capture_conv_inputs", "batch_inputs", "MAX_PATCHES"]

log = logging.getLogger(__name__)

MAX_PATCHES = 2048  # input patches kept per conv, over all calibration batches


def batch_inputs(batch: Any, device: torch.device | None = None) -> tuple:
    """Positional forward() arguments from a batch: a tensor, or an (inputs, targets, ...) tuple
    or list whose first item is the input tensor (or a tuple of input tensors)."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise InputError(
            f"a calibration batch must be a tensor or an (inputs, targets) tuple, got "
            f"{type(batch).__name__}; wrap the data in a DataLoader of tensors"
        )
    if device is not None:
        args = tuple(a.to(device) for a in args)
    return args


def _batches(data: Iterable[Any], batches: int | None, what: str) -> Iterator[Any]:
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int)
                                or batches < 1):
        raise InputError(f"{what}: batches must be an int >= 1 or None, got {batches!r}")
    try:
        it = iter(data)
    except TypeError:
        raise InputError(
            f"{what} needs an iterable of batches (e.g. a DataLoader), got {type(data).__name__}"
        ) from None
    for i, batch in enumerate(it):
        if batches is not None and i >= batches:
            return
        yield batch


def _device_of(model: nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return p.device if p is not None else None


def recalibrate_bn(
    model: nn.Module, data: Iterable[Any], batches: int | None = None
) -> nn.Module:
    """Recompute the running statistics of every BatchNorm of `model` from `data`, in place.

    Running means and variances are reset and re-estimated as a cumulative average over
    `batches` batches (all of `data` when None), with BatchNorm layers in train mode, everything
    else in eval mode and no gradients; modes and momentums are restored afterwards. `data`
    yields tensors or (inputs, targets) tuples/lists. Returns `model`.

    Raises `InputError` when `data` yields no batch (the statistics are then left untouched).
    """
    recalibrate_bn_count(model, data, batches)
    return model


def recalibrate_bn_count(model: nn.Module, data: Iterable[Any], batches: int | None = None) -> int:
    """`recalibrate_bn`, returning the number of batches used."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    stream = _batches(data, batches, "recalibrate_bn")
    first = next(stream, None)
    if first is None:
        raise InputError(
            "recalibrate_bn got no batches: pass a non-empty DataLoader (or list) of input "
            "batches, for example some training images"
        )
    if not norms:
        log.info("recalibrate_bn: the model has no BatchNorm with running statistics")
        return 0
    device = _device_of(model)
    momentums = [(m, m.momentum) for m in norms]
    count = 0
    with restored_modes(model):
        try:
            model.eval()
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over the batches seen
                m.train()
            with torch.no_grad():
                for batch in _chain(first, stream):
                    model(*batch_inputs(batch, device))
                    count += 1
        finally:
            for m, momentum in momentums:
                m.momentum = momentum
    log.info("recalibrated %d BatchNorm layer(s) on %d batch(es)", len(norms), count)
    return count


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _patches(conv: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Rows of the unfolded input of `conv`, (n, in/groups · kernel) like its reshaped weight."""
    if isinstance(conv, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, stride = (1, conv.kernel_size[0]), (1, conv.stride[0])
        dilation = (1, conv.dilation[0])
        padding: Any = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
    elif isinstance(conv, nn.Conv2d):
        kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
        padding = conv.padding
    else:
        return None  # Conv3d and others: weight-space errors
    if conv.padding_mode != "zeros" and not isinstance(padding, str):
        pads = conv._reversed_padding_repeated_twice
        if isinstance(conv, nn.Conv1d):
            pads = list(pads) + [0, 0]
        x = F.pad(x, pads, mode=conv.padding_mode)
        padding = (0, 0)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        pads = []
        for k, d in zip(reversed(kernel), reversed(dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        padding = (0, 0)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    n, _, length = cols.shape
    groups = conv.groups
    cols = cols.reshape(n, groups, -1, length).permute(0, 1, 3, 2)
    return cols.reshape(-1, cols.shape[-1])


def capture_conv_inputs(
    model: nn.Module,
    convs: Mapping[str, nn.Module],
    data: Iterable[Any],
    batches: int,
    max_patches: int = MAX_PATCHES,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Run `model` (eval mode, no grad) on `batches` batches; sample each conv's input patches.

    Returns name -> (n, fan_in) float32 tensor with n ≤ `max_patches`, for the convs of `convs`
    that ran (Conv1d/Conv2d; grouped convs contribute the patches of every group). Raises
    `InputError` when `data` yields no batch.
    """
    per_batch = max(1, max_patches // batches)
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in convs}
    handles = []

    def hook_for(name: str, conv: nn.Module):
        def hook(mod: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            rows = _patches(conv, args[0].detach())
            if rows is None or rows.numel() == 0:
                return
            if rows.shape[0] > per_batch:
                pick = torch.randperm(rows.shape[0], generator=gen)[:per_batch]
                rows = rows[pick.to(rows.device)]
            samples[name].append(rows.to(torch.float32).cpu())

        return hook

    device = _device_of(model)
    count = 0
    try:
        for name, conv in convs.items():
            handles.append(conv.register_forward_pre_hook(hook_for(name, conv)))
        with eval_mode(model), torch.no_grad():
            for batch in _batches(data, batches, "calibration"):
                model(*batch_inputs(batch, device))
                count += 1
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise InputError(
            "the calibration data yielded no batches: pass a non-empty DataLoader of inputs"
        )
    out = {name: torch.cat(rows)[:max_patches] for name, rows in samples.items() if rows}
    log.debug("captured input patches of %d/%d convs on %d batches", len(out), len(convs), count)
    return out
