"""Train/eval modes come back as they were, per submodule."""

from __future__ import annotations

import pytest
from torch import nn

from sharedft_fx.modes import eval_mode, restored_modes


def _mixed() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2)).train()
    model[2].eval()  # a frozen BatchNorm inside a training model
    return model


def test_eval_mode_restores_every_submodules_own_flag() -> None:
    model = _mixed()
    with eval_mode(model) as m:
        assert m is model and not any(x.training for x in model.modules())
    assert [x.training for x in model.modules()] == [True, True, True, False]


def test_restored_modes_also_after_an_error() -> None:
    model, other = _mixed(), nn.Linear(1, 1).eval()
    with pytest.raises(RuntimeError):
        with restored_modes(model, other):
            model.eval()
            other.train()
            raise RuntimeError("boom")
    assert [x.training for x in model.modules()] == [True, True, True, False]
    assert other.training is False
