"""Optimizer parameter groups for a shared model, and the warmup + cosine schedule.

================  ==========================================  ======================
group             parameters                                  lr / weight decay
================  ==========================================  ======================
``bank_k{k}``     banks used by k sites                       lr/k (bank_lr_scale) / weight_decay
``residual``      low-rank factors B, A of the links          lr / residual_weight_decay
``decay``         other weights (unshared convs, linear)      lr / weight_decay
``no_decay``      BatchNorm, biases, scales, skip gates       lr / 0
================  ==========================================  ======================

    >>> groups = param_groups(shared_model, FinetuneConfig(lr=1e-3))
    >>> [(g["name"], g["lr"]) for g in groups]
    [('bank_k5', 0.0002), ('residual', 0.001), ('decay', 0.001), ('no_decay', 0.001)]
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..links import LowRankLink, LowRankScaleLink, SharedWeights, SkipGate, WeightLink
from .config import FinetuneConfig

__all__ = ["bank_uses", "param_groups", "build_optimizer", "warmup_cosine"]

log = logging.getLogger(__name__)


def bank_uses(model: nn.Module) -> dict[int, int]:
    """``id(bank parameter) -> k``, the number of links that read the bank in the graphs.

    Found by walking every `torch.fx.GraphModule` inside `model`: each ``get_attr`` of a bank
    feeds the links of its sites (a link called twice counts once).
    """
    banks = {
        id(p): p for m in model.modules() if isinstance(m, SharedWeights)
        for p in m.banks.values()
    }
    users: dict[int, set[int]] = {i: set() for i in banks}
    for gm in model.modules():
        if not isinstance(gm, fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op != "get_attr":
                continue
            try:
                value = gm.get_parameter(node.target)
            except AttributeError:
                continue
            if id(value) not in banks:
                continue
            for user in node.users:
                if user.op == "call_module":
                    users[id(value)].add(id(gm.get_submodule(user.target)))
                else:
                    users[id(value)].add(id(user))
    uses = {i: max(len(u), 1) for i, u in users.items()}
    for i, u in users.items():
        if not u:
            log.warning("bank of shape %s is read by no graph node found; using k=1",
                        tuple(banks[i].shape))
    return uses


def _lr_factor(k: int, mode: str) -> float:
    return {"1/k": 1.0 / k, "1/sqrt(k)": 1.0 / math.sqrt(k), "none": 1.0}[mode]


def param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Parameter groups with per-group lr and weight decay (see the module docstring).

    Frozen parameters (``requires_grad=False``) are left out; a parameter tied under several
    names appears once.
    """
    uses = bank_uses(model)
    residual: set[int] = set()
    no_decay: set[int] = set()
    for m in model.modules():
        if isinstance(m, (LowRankLink, LowRankScaleLink)):
            residual.update(id(p) for p in m.residual_parameters())
        if isinstance(m, (WeightLink, SkipGate, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                          nn.LayerNorm)):
            no_decay.update(id(p) for p in m.parameters(recurse=False) if id(p) not in residual)
    buckets: dict[str, list[nn.Parameter]] = {}
    lrs: dict[str, float] = {}
    decays: dict[str, float] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in uses:
            k = uses[id(p)]
            key, lr, wd = f"bank_k{k}", config.lr * _lr_factor(k, config.bank_lr_scale), \
                config.weight_decay
        elif id(p) in residual:
            key, lr, wd = "residual", config.lr, config.residual_weight_decay
        elif id(p) in no_decay or p.dim() <= 1:
            key, lr, wd = "no_decay", config.lr, 0.0
        else:
            key, lr, wd = "decay", config.lr, config.weight_decay
        buckets.setdefault(key, []).append(p)
        lrs[key], decays[key] = lr, wd
    order = sorted(buckets, key=lambda k: (not k.startswith("bank"), k != "residual", k))
    groups = [
        {"name": k, "params": buckets[k], "lr": lrs[k], "initial_lr": lrs[k],
         "weight_decay": decays[k]}
        for k in order
    ]
    for g in groups:
        log.debug("param group %s: %d tensors, lr %.3g, weight decay %.3g", g["name"],
                  len(g["params"]), g["lr"], g["weight_decay"])
    return groups


def build_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) over `param_groups`."""
    groups = param_groups(model, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to each group's lr over `warmup_steps`, then cosine decay to
    ``lr * min_lr_ratio`` at `total_steps`."""
    total = max(int(total_steps), 1)
    warm = min(int(warmup_steps), total - 1) if total > 1 else 0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / (warm + 1)
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
