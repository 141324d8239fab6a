"""Train/eval modes that come back as they were.

Before::

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        out = model(x)
    finally:
        for m, flag in flags:
            m.training = flag

After::

    with eval_mode(model):
        out = model(x)
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["restored_modes", "eval_mode"]


@contextlib.contextmanager
def restored_modes(*modules: nn.Module) -> Iterator[None]:
    """Within the block modes may change; afterwards every submodule gets its own flag back."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    with restored_modes(module):
        module.eval()
        yield module
