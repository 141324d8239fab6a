"""The budget planner: target_ratio, reachable minimum, error estimates, configuration."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

import sharedft_fx
from sharedft_fx import BudgetError, ConfigError, ShareConfig
from sharedft_fx.budget import site_profile
from sharedft_fx.calibration import capture_conv_inputs
from sharedft_fx.numerics import lowrank_factors
from sharedft_fx.reference_nets import build_reference


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_target_ratio_half_on_torchvision_resnets(arch: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    result = sharedft_fx.transform(model, torch.randn(1, 3, 32, 32), ShareConfig(target_ratio=0.5))
    assert result.params_after <= 0.5 * result.params_before
    assert result.params_after >= 0.45 * result.params_before
    assert result.params_after == sharedft_fx.count_parameters(result.model)


def _digits_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_reference("resnet", widths=(16, 32, 64), blocks=2).eval()


def test_impossible_budget_names_the_smallest_reachable_ratio() -> None:
    model = _digits_resnet()
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(BudgetError) as info:
        sharedft_fx.transform(model, x, ShareConfig(target_ratio=0.05, align=False))
    message = str(info.value)
    assert "smallest reachable ratio" in message and "best_effort=True" in message
    smallest = float(re.search(r"smallest reachable ratio with these settings is ([0-9.]+)",
                               message).group(1))
    # best effort returns exactly that model
    best = sharedft_fx.transform(
        model, x, ShareConfig(target_ratio=0.05, best_effort=True, align=False)
    )
    assert best.ratio == pytest.approx(smallest, abs=1e-4)
    assert all(s.rank == 0 for g in best.groups for s in g.sites)
    # and that ratio itself is reachable
    exact = sharedft_fx.transform(model, x, ShareConfig(target_ratio=smallest + 1e-4, align=False))
    assert exact.ratio <= smallest + 1e-4


@pytest.mark.parametrize("ratio", [0.9, 0.6, 0.45])
def test_budget_is_met_and_used(ratio: float) -> None:
    model = _digits_resnet()
    result = sharedft_fx.transform(
        model, torch.randn(1, 1, 16, 16), ShareConfig(target_ratio=ratio, align=False)
    )
    assert result.params_after <= ratio * result.params_before
    # what is left of the budget is smaller than the cheapest step the planner could still take
    slack = ratio * result.params_before - result.params_after
    assert slack < 0.02 * result.params_before


def test_tighter_budget_means_larger_weight_error() -> None:
    model = _digits_resnet()
    x = torch.randn(1, 1, 16, 16)
    errs = []
    for ratio in (0.8, 0.6, 0.45):
        r = sharedft_fx.transform(model, x, ShareConfig(target_ratio=ratio, align=False))
        errs.append(sum(s.weight_error ** 2 for g in r.groups for s in g.sites))
    assert errs[0] < errs[1] < errs[2]


def test_max_group_size_splits_shape_groups_into_consecutive_runs() -> None:
    model = _digits_resnet()
    result = sharedft_fx.transform(
        model, torch.randn(1, 1, 16, 16),
        ShareConfig(target_ratio=0.8, max_group_size=2, align=False),
    )
    order = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert result.groups
    for g in result.groups:
        assert len(g.sites) <= 2
        idx = [order.index(s.name) for s in g.sites]
        same_shape = [i for i, n in enumerate(order)
                      if tuple(model.get_submodule(n).weight.shape) == g.weight_shape]
        assert idx == same_shape[same_shape.index(idx[0]):same_shape.index(idx[0]) + len(idx)]


def test_weight_space_profile_matches_truncated_svd() -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 30, dtype=torch.float64)
    bank = torch.randn(12, 30, dtype=torch.float64) * 0.5
    prof = site_profile("s", w, bank, "lowrank")
    for r in range(prof.cap + 1):
        b, a = lowrank_factors(w - bank, r)
        err = ((w - bank - b @ a).norm() ** 2 / w.norm() ** 2).item()
        assert prof.tail[r] == pytest.approx(err, rel=1e-4, abs=1e-9)


def test_activation_aware_profile_matches_error_on_inputs() -> None:
    torch.manual_seed(0)
    w = torch.randn(10, 24, dtype=torch.float64)
    bank = torch.randn(10, 24, dtype=torch.float64) * 0.5
    x = torch.randn(200, 24) * torch.linspace(0.1, 3, 24)  # anisotropic inputs
    prof = site_profile("s", w, bank, "lowrank", patches=x)
    x64 = x.to(torch.float64)
    for r in range(prof.cap + 1):
        b, a = lowrank_factors(w - bank, r)
        err = ((x64 @ (w - bank - b @ a).T).norm() ** 2 / (x64 @ w.T).norm() ** 2).item()
        assert prof.tail[r] == pytest.approx(err, rel=1e-6, abs=1e-12)
    # and it differs from the weight-space estimate on such inputs
    assert prof.tail[0] != pytest.approx(site_profile("s", w, bank, "lowrank").tail[0], rel=1e-3)


def test_captured_patches_reproduce_the_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
    model = nn.Sequential(conv)
    data = [torch.randn(2, 3, 8, 8)]
    patches = capture_conv_inputs(model, {"0": conv}, data, batches=1, max_patches=10_000)["0"]
    expected = conv(data[0]).permute(0, 2, 3, 1).reshape(-1, 5)
    got = patches @ conv.weight.detach().reshape(5, -1).T
    assert torch.allclose(got, expected, atol=1e-5)


def test_calibration_makes_the_plan_activation_aware() -> None:
    model = _digits_resnet()
    x = torch.randn(1, 1, 16, 16)
    data = [torch.randn(8, 1, 16, 16) for _ in range(2)]
    result = sharedft_fx.transform(
        model, x, ShareConfig(target_ratio=0.6, align=False), calibration=data
    )
    assert result.calibrated_sites == len([m for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert result.recalibrated == 2
    assert result.params_after <= 0.6 * result.params_before


@pytest.mark.parametrize(
    "changes",
    [
        {"target_ratio": 0.0},
        {"target_ratio": 1.5},
        {"target_ratio": True},
        {"target_ratio": "0.5"},
        {"target_ratio": 0.5, "rank": "full"},
        {"max_group_size": 1},
        {"max_group_size": 2.5},
        {"best_effort": "yes"},
        {"align": 1},
        {"calibration_batches": 0},
    ],
)
def test_config_validation(changes: dict) -> None:
    with pytest.raises(ConfigError):
        ShareConfig(**changes)


def test_config_round_trip_with_budget_fields() -> None:
    cfg = ShareConfig(target_ratio=0.4, max_group_size=3, best_effort=True, align=False,
                      calibration_batches=4)
    assert ShareConfig.from_json(cfg.to_json()) == cfg
    for name in ("target_ratio", "max_group_size", "best_effort", "align", "calibration_batches"):
        assert ShareConfig.help()[name]
