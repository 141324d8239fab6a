"""BatchNorm recalibration after sharing (private: replaced by ``sharedft_fx.recalibrate_bn``
when that lands).

    >>> _recalibrate_bn(shared_model, splits.train, batches=20)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__: list[str] = []


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, data: Any, batches: int | None = None,
                    batch_size: int = 128) -> nn.Module:
    """Recompute BatchNorm running statistics of `model` in place on up to `batches` batches.

    Running stats are reset and averaged cumulatively (momentum=None); only the BN modules run
    in train mode; no parameter changes. Returns `model`.
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size,
                                                                  shuffle=False)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return model
    flags = [(m, m.training) for m in model.modules()]
    saved = [(m, m.momentum) for m in bns]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i, batch in enumerate(loader):
            if batches is not None and i >= batches:
                break
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(x.to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        for m, flag in flags:
            m.training = flag
    return model
