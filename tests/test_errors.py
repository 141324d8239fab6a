"""Bad input gets a clear error naming the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharedft_fx import (
    ConfigError,
    InputError,
    NonFiniteWeightError,
    ShareConfig,
    TracingError,
    transform,
)

from .models import CASES, build_case


def stack():
    return build_case(CASES[0])


def test_not_a_module() -> None:
    with pytest.raises(InputError, match="expects a torch.nn.Module, got list"):
        transform([1, 2], torch.randn(1))


def test_example_inputs_that_do_not_run() -> None:
    model, _ = stack()
    with pytest.raises(InputError, match="does not run on the example inputs.*RuntimeError"):
        transform(model, torch.randn(2, 5, 12, 12))
    with pytest.raises(InputError, match="example_inputs is required"):
        transform(model, None)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"rank": -1}, "rank"),
        ({"rank": "big"}, "rank"),
        ({"rank": True}, "rank"),
        ({"link": "dense"}, "link"),
        ({"auto_tolerance": 0}, "auto_tolerance"),
        ({"min_site_params": -5}, "min_site_params"),
        ({"include": "conv*"}, "include"),
        ({"skip_gates": "yes"}, "skip_gates"),
        ({"autowrap_functions": ("nocolon",)}, "autowrap_functions"),
        ({"concrete_args": {"flag": object()}}, "concrete_args"),
    ],
)
def test_invalid_config_values_name_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=f"ShareConfig.{field}|{field}"):
        ShareConfig(**kwargs)


def test_unknown_config_field_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown ShareConfig field\(s\) \['rnak'\]; valid fields"):
        ShareConfig.from_dict({"rnak": 4})
    with pytest.raises(ConfigError, match="malformed"):
        ShareConfig.from_json("{rank: 4")
    with pytest.raises(ConfigError, match="must be a ShareConfig"):
        transform(stack()[0], stack()[1], {"rank": 4})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_layer(bad) -> None:
    model, x = stack()
    with torch.no_grad():
        model.convs[2].weight[0, 0, 0, 0] = bad
    with pytest.raises(NonFiniteWeightError, match=r"convs\.2\.weight of layer convs\.2 holds 1 NaN/Inf"):
        transform(model, x)


def test_non_finite_buffer_is_named() -> None:
    model, x = stack()
    model.bns[1].running_var[3] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"buffer bns\.1\.running_var"):
        transform(model, x)


def test_untraceable_without_fallback_says_what_to_do() -> None:
    model, x = build_case(next(c for c in CASES if c.name == "control_flow"))
    with pytest.raises(TracingError, match="could not trace the model.*fallback=True"):
        transform(model, x, ShareConfig(fallback=False))


class Opaque(nn.Module):
    """Every module holding conv weights iterates over a proxy: nothing traces."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))

    def forward(self, x):
        for i in range(int(x.shape[0])):  # noqa: B007 - data-dependent loop bound
            pass
        for conv in self.convs:
            x = conv(x)
        return x


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Opaque()

    def forward(self, x):
        return self.body(x)


def test_fallback_reaches_single_convs() -> None:
    """Even when no container traces, the convs themselves are traced and shared."""
    torch.manual_seed(0)
    model = Wrapper().eval()
    x = torch.randn(2, 4, 8, 8)
    result = transform(model, x, ShareConfig(rank="full", min_site_params=0, skip_first_conv=False))
    assert {"", "body"} <= set(result.trace.leaves)
    assert set(result.trace.traced) == {"body.convs.0", "body.convs.1", "body.convs.2"}
    assert result.modified and len(result.groups) == 1
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-4, atol=1e-5)


def sign_fix(x):
    """Data-dependent Python control flow: untraceable unless autowrapped."""
    return x if bool(x.sum() > -1e9) else -x


class StackWrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = CASES[0].build()

    def forward(self, x):
        return sign_fix(self.body(x))


def test_autowrap_functions_from_config() -> None:
    torch.manual_seed(0)
    model, x = StackWrapper().eval(), torch.randn(2, 3, 12, 12)
    plain = transform(model, x, ShareConfig(rank="full", min_site_params=0))
    assert "" in plain.trace.leaves and plain.trace.traced == ("body",)
    wrapped = transform(model, x, ShareConfig(rank="full", min_site_params=0,
                                              autowrap_functions=("tests.test_errors:sign_fix",)))
    assert wrapped.trace.traced == ("",) and not wrapped.trace.leaves
    assert "sign_fix" in wrapped.model.code
    torch.testing.assert_close(wrapped.model(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="cannot be imported"):
        transform(model, x, ShareConfig(autowrap_functions=("no_such_module_xyz:fn",)))


@pytest.mark.parametrize("leaf", ["body", "Conv2dStack", "bo*"])
def test_leaf_modules_hide_their_convs(leaf: str) -> None:
    torch.manual_seed(0)
    model, x = StackWrapper().eval(), torch.randn(2, 3, 12, 12)
    cfg = dict(rank=2, min_site_params=0, autowrap_functions=("tests.test_errors:sign_fix",))
    assert transform(model, x, ShareConfig(**cfg)).modified
    hidden = transform(model, x, ShareConfig(leaf_modules=(leaf,), **cfg))
    assert not hidden.modified


class FlagNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, double: bool = False):
        y = self.c(self.b(self.a(x)))
        if double:
            y = y * 2
        return y


def test_concrete_args_fix_python_flags() -> None:
    torch.manual_seed(0)
    model = FlagNet().eval()
    x = torch.randn(1, 4, 6, 6)
    result = transform(model, x, ShareConfig(rank="full", min_site_params=0,
                                             concrete_args={"double": False}))
    assert result.trace.traced == ("",)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-4, atol=1e-5)
