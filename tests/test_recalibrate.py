"""recalibrate_bn and BN recalibration inside transform."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sharedft_fx
from sharedft_fx import InputError, ShareConfig, recalibrate_bn
from sharedft_fx.data import digits_loaders
from sharedft_fx.reference_nets import build_reference, evaluate_accuracy


def test_running_stats_are_recomputed_from_the_data() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, momentum=0.3)).eval()
    data = [torch.randn(16, 2, 4, 4) * 2 + 1 for _ in range(5)]
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x in data])
    recalibrate_bn(model, data)
    bn = model[1]
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, feats.var((0, 2, 3)), rtol=0.05)
    assert bn.momentum == 0.3 and not bn.training and not model.training
    assert int(bn.num_batches_tracked) == 5


def test_batches_limit_tuples_and_modes_restored() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Dropout(0.5))
    model.train()
    model[2].eval()
    xs = torch.randn(40, 1, 3, 3)
    loader = DataLoader(TensorDataset(xs, torch.zeros(40, dtype=torch.long)), batch_size=10)
    recalibrate_bn(model, loader, batches=2)
    assert int(model[1].num_batches_tracked) == 2
    with torch.no_grad():
        feats = model[0](xs[:20])
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert model.training and model[1].training and not model[2].training


def test_empty_or_bad_data_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    before = model[1].running_mean.clone()
    with pytest.raises(InputError, match="no batches"):
        recalibrate_bn(model, [])
    assert torch.equal(model[1].running_mean, before)
    with pytest.raises(InputError):
        recalibrate_bn(model, [{"x": torch.randn(1, 1, 2, 2)}])
    with pytest.raises(InputError):
        recalibrate_bn(model, 3)


def _train_tiny(epochs: int = 4) -> tuple[nn.Module, DataLoader, DataLoader]:
    torch.manual_seed(0)
    model = build_reference("resnet", widths=(16, 32, 64), blocks=2)
    train, _, test = digits_loaders(batch_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), train, test


def test_budget_with_recalibration_keeps_accuracy_on_a_trained_net() -> None:
    """A fast version of the digits acceptance check (the full one is tools/bench_policy.py)."""
    model, train, test = _train_tiny()
    original = evaluate_accuracy(model, test)
    assert original > 0.9
    x = next(iter(test))[0][:2]
    cfg = ShareConfig(target_ratio=0.6)
    plain = sharedft_fx.transform(model, x, cfg)
    assert plain.recalibrated == 0
    calibrated = sharedft_fx.transform(model, x, cfg, calibration=train)
    assert calibrated.recalibrated == cfg.calibration_batches or calibrated.recalibrated == len(train)
    assert calibrated.params_after <= 0.6 * calibrated.params_before
    acc_plain = evaluate_accuracy(plain.model, test)
    acc_cal = evaluate_accuracy(calibrated.model, test)
    assert acc_cal >= original - 0.03
    assert acc_cal >= acc_plain
    # recalibration is what brings it back: the same plan without it is worse
    recalibrate_bn(plain.model, train, batches=cfg.calibration_batches)
    assert evaluate_accuracy(plain.model, test) > acc_plain or acc_plain >= original - 0.01
