"""Hypothesis: random conv nets are reproduced exactly at full rank, and the default config
runs, saves and loads. ``SHAREDFT_FUZZ_EXAMPLES`` raises the example count (nightly size)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sharedft_fx import ShareConfig, load, save, transform

EXAMPLES = int(os.environ.get("SHAREDFT_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class RandomConvNet(nn.Module):
    """A chain of conv layers described by `spec`; optional residual adds, functional convs and
    tied weights."""

    def __init__(self, dims: int, channels: int, layers: list[dict], tie: bool) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.dims = dims
        self.layers = layers
        self.convs = nn.ModuleList()
        self.weights = nn.ParameterList()
        for spec in layers:
            k, g = spec["kernel"], spec["groups"]
            if spec["functional"]:
                self.weights.append(nn.Parameter(torch.randn(channels, channels // g, *(k,) * dims) * 0.3))
                self.convs.append(nn.Identity())
            else:
                self.convs.append(conv(channels, channels, k, stride=spec["stride"],
                                       padding=spec["dilation"] * (k // 2), dilation=spec["dilation"],
                                       groups=g, bias=spec["bias"], padding_mode=spec["pad_mode"]))
                self.weights.append(nn.Parameter(torch.zeros(1)))  # placeholder keeps indices aligned
        plain = [i for i, s in enumerate(layers) if not s["functional"]]
        if tie and len(plain) >= 2:
            a, b = plain[0], plain[-1]
            if self.convs[a].weight.shape == self.convs[b].weight.shape and layers[a]["groups"] == layers[b]["groups"]:
                self.convs[b].weight = self.convs[a].weight
        self.fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]

    def forward(self, x):
        for i, spec in enumerate(self.layers):
            if spec["functional"]:
                k = spec["kernel"]
                y = self.fn(x, self.weights[i], None, spec["stride"], spec["dilation"] * (k // 2),
                            spec["dilation"], spec["groups"])
            else:
                y = self.convs[i](x)
            y = torch.tanh(y)
            # stride 1 and "same" padding keep the shape: the residual add is decided statically
            x = x + y if (spec["residual"] and spec["stride"] == 1) else y
        return x

    def expected_groups(self) -> int:
        """Number of weight-shape groups with at least two distinct weight parameters."""
        keys: dict[tuple, set[int]] = {}
        for i, spec in enumerate(self.layers):
            w = self.weights[i] if spec["functional"] else self.convs[i].weight
            keys.setdefault((tuple(w.shape), spec["groups"]), set()).add(id(w))
        return sum(len(ids) >= 2 for ids in keys.values())


@st.composite
def nets(draw):
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    groups_choice = draw(st.sampled_from([1, 1, 2, 4]))
    channels = draw(st.sampled_from([4, 8]))
    kernels = draw(st.sampled_from([[3], [1, 3]] if dims == 3 else [[3], [1, 3], [3, 5]]))
    depth = draw(st.integers(2, 5))
    strided = draw(st.integers(-1, depth - 1))  # at most one stride-2 layer
    layers = []
    for i in range(depth):
        layers.append({
            "kernel": draw(st.sampled_from(kernels)),
            "stride": 2 if i == strided else 1,
            "dilation": draw(st.sampled_from([1, 1, 2])),
            "groups": draw(st.sampled_from(sorted({1, groups_choice}))),
            "bias": draw(st.booleans()),
            "pad_mode": draw(st.sampled_from(["zeros", "zeros", "reflect", "circular"])),
            "functional": draw(st.booleans()) and draw(st.booleans()),
            "residual": draw(st.booleans()),
        })
    tie = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return dims, channels, layers, tie, seed


def build(dims, channels, layers, tie, seed):
    torch.manual_seed(seed)
    model = RandomConvNet(dims, channels, layers, tie).eval()
    size = {1: (16,), 2: (8, 8), 3: (6, 6, 6)}[dims]
    x = torch.randn(2, channels, *size)
    return model, x


EXHAUSTIVE = ShareConfig(rank="full", min_site_params=0, skip_first_conv=False)


@FUZZ
@given(nets())
def test_full_rank_equals_eager(net) -> None:
    model, x = build(*net)
    result = transform(model, x, EXHAUSTIVE)
    assert len(result.groups) == model.expected_groups()
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-6)
    assert result.output_error <= 1e-6


@settings(FUZZ, max_examples=max(EXAMPLES * 2 // 3, 1))
@given(nets(), st.sampled_from(["lowrank", "scale", "lowrank+scale", "none"]))
def test_default_config_runs_saves_and_loads(tmp_path_factory, net, link) -> None:
    model, x = build(*net)
    result = transform(model, x, ShareConfig(rank=1, link=link, min_site_params=0))
    assert result.params_after <= result.params_before
    out = tmp_path_factory.mktemp("saved")
    save(result, out)
    fresh, _ = build(*net[:-1], seed=net[-1] + 1)
    loaded = load(fresh, out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
