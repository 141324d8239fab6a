"""transform() on the table of small models: exact at full rank, structure, invariants."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sharedft_fx
from sharedft_fx import ShareConfig, transform
from sharedft_fx.links import LowRankLink, SharedWeights
from sharedft_fx.numerics import tree_relative_error

from .models import CASES, Case, build_case

EXHAUSTIVE = dict(min_site_params=0, skip_first_conv=False)
IDS = [c.name for c in CASES]


def outputs(model: nn.Module, x):
    with torch.no_grad():
        return model(*(x if isinstance(x, tuple) else (x,)))


def site_sets(result) -> list[set[str]]:
    return [{s.name for s in g.sites} for g in result.groups]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_full_rank_matches_eager(case: Case) -> None:
    model, x = build_case(case)
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    ref, out = outputs(model, x), outputs(result.model, x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert tree_relative_error(out, ref) <= 1e-5
    assert result.output_error <= 1e-5
    assert result.modified == case.shareable
    assert (len(result.groups) >= 1) == case.shareable
    for group in result.groups:
        for site in group.sites:
            assert site.weight_error <= 1e-6, site


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_default_config_runs_and_never_grows(case: Case) -> None:
    model, x = build_case(case)
    result = transform(model, x)
    assert result.params_after <= result.params_before
    assert result.params_after == sharedft_fx.count_parameters(result.model)
    out = outputs(result.model, x)
    assert math.isfinite(tree_relative_error(out, outputs(model, x)))


@pytest.mark.parametrize("config", [ShareConfig(rank="full", **EXHAUSTIVE), ShareConfig(rank=2, **EXHAUSTIVE)],
                         ids=["full", "rank2"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_transform_is_idempotent(case: Case, config: ShareConfig) -> None:
    model, x = build_case(case)
    first = transform(model, x, config)
    second = transform(first.model, x, config)
    assert not second.modified
    assert second.params_after == first.params_after
    torch.testing.assert_close(outputs(second.model, x), outputs(first.model, x), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_user_model_is_never_modified(case: Case) -> None:
    model, x = build_case(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids_before = {k: id(v) for k, v in model.named_parameters()}
    ref = outputs(model, x)
    model.train()
    result = transform(model, x, ShareConfig(rank=2, **EXHAUSTIVE))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: id(v) for k, v in model.named_parameters()} == ids_before
    model.eval()
    torch.testing.assert_close(outputs(model, x), ref, rtol=0, atol=0)
    theirs = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    ours = [t for t in list(result.model.parameters()) + list(result.model.buffers()) if t.numel()]
    assert not any(t.data_ptr() in theirs for t in ours)


def test_tied_weights_are_one_site_and_stay_tied() -> None:
    model, x = build_case(next(c for c in CASES if c.name == "tied"))
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    assert site_sets(result) == [{"conv1", "conv3"}]
    # the tied pair still reads one effective weight: conv1's link feeds both convs
    code = result.model.code
    assert code.count("self.sharedft.links.conv1(") == 1
    assert code.count("conv1_weight,") == 2


def test_reused_module_is_one_site_with_two_uses() -> None:
    model, x = build_case(next(c for c in CASES if c.name == "reused"))
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    assert site_sets(result) == [{"shared", "other"}]
    assert result.passes[-1].counts == {"groups": 1, "sites": 2, "uses": 3}


def test_functional_convs_share_parameters_but_not_buffers() -> None:
    model, x = build_case(next(c for c in CASES if c.name == "functional"))
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    assert site_sets(result) == [{"w1", "w2"}]
    assert "fixed" in dict(result.model.named_buffers())
    assert "b2" in dict(result.model.named_parameters())  # conv bias stays as it is


def test_custom_conv_subclasses_keep_their_forward() -> None:
    model, x = build_case(next(c for c in CASES if c.name == "custom_conv"))
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    assert site_sets(result) == [{"ws1", "ws2", "reflect", "same"}]
    code = result.model.code
    assert "std" in code  # weight standardisation still runs on the effective weight
    assert "reflect" in code  # padding_mode kept through F.pad


def test_grouped_and_depthwise_group_by_shape_and_groups() -> None:
    model, x = build_case(next(c for c in CASES if c.name == "grouped"))
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    assert site_sets(result) == [{"g1", "g2", "g3"}]
    assert result.groups[0].conv_groups == 4
    assert "no other shareable convolution" in result.skipped["plain"]
    model, x = build_case(next(c for c in CASES if c.name == "depthwise"))
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    shapes = sorted(g.weight_shape for g in result.groups)
    assert shapes == [(24, 1, 3, 3), (24, 24, 1, 1)]
    assert all(len(g.sites) == 3 for g in result.groups)


def test_control_flow_falls_back_to_leaves() -> None:
    model, x = build_case(next(c for c in CASES if c.name == "control_flow"))
    result = transform(model, x, ShareConfig(rank="full", **EXHAUSTIVE))
    assert "" in result.trace.leaves
    assert set(result.trace.traced) == {"features", "branch"}
    assert isinstance(result.model.features, torch.fx.GraphModule)
    assert not isinstance(result.model, torch.fx.GraphModule)
    names = set().union(*site_sets(result))
    assert {"features.convs.0", "branch.2"} <= names  # sites in both partitions, one bank


def test_no_convs_returns_an_unchanged_copy(caplog) -> None:
    model, x = build_case(next(c for c in CASES if c.name == "no_conv"))
    result = transform(model, x)
    assert not result.modified and result.groups == ()
    assert result.model is not model
    assert result.params_after == result.params_before
    torch.testing.assert_close(outputs(result.model, x), outputs(model, x), rtol=0, atol=0)
    assert "no shareable convolutions" in result.summary()


def test_default_pipeline_state_dict_holds_one_bank_per_group() -> None:
    model, x = build_case(CASES[0])
    result = transform(model, x, ShareConfig(rank=3, **EXHAUSTIVE))
    banks = [k for k in result.model.state_dict() if ".banks." in k]
    assert len(banks) == len(result.groups) == 1
    assert not any(k.startswith("convs.") and k.endswith(".weight") for k in result.model.state_dict())
    container = result.model.get_submodule("sharedft")
    assert isinstance(container, SharedWeights)
    assert all(isinstance(link, LowRankLink) and link.rank == 3 for link in container.links.values())


@pytest.mark.parametrize("link", ["scale", "lowrank+scale", "none", "lowrank"])
def test_link_kinds_count_parameters_exactly(link: str) -> None:
    model, x = build_case(CASES[0])
    result = transform(model, x, ShareConfig(rank=2, link=link, **EXHAUSTIVE))
    (group,) = result.groups
    width, fan_in = 16, 16 * 9
    per_site = {"scale": width, "lowrank+scale": width + 2 * (width + fan_in), "none": 0,
                "lowrank": 2 * (width + fan_in)}[link]
    assert [s.link_params for s in group.sites] == [per_site] * 4
    assert group.params_after == 16 * fan_in + 4 * per_site
    assert result.params_before - result.params_after == group.params_before - group.params_after


def test_weight_error_falls_with_rank_and_scale_helps() -> None:
    model, x = build_case(CASES[0])
    errs = []
    for rank in (0, 2, 8, "full"):
        result = transform(model, x, ShareConfig(rank=rank, **EXHAUSTIVE))
        errs.append(max(s.weight_error for s in result.groups[0].sites))
    assert errs[0] > errs[1] > errs[2] > errs[3] and errs[3] < 1e-6
    none = transform(model, x, ShareConfig(link="none", **EXHAUSTIVE)).groups[0]
    scale = transform(model, x, ShareConfig(link="scale", **EXHAUSTIVE)).groups[0]
    assert all(s.weight_error <= n.weight_error + 1e-12 for s, n in zip(scale.sites, none.sites))


def test_rank_auto_meets_its_tolerance_or_stops_at_break_even() -> None:
    model, x = build_case(CASES[0])
    result = transform(model, x, ShareConfig(rank="auto", auto_tolerance=0.5, **EXHAUSTIVE))
    for site in result.groups[0].sites:
        assert site.weight_error <= 0.5 or site.rank == (16 * 144 - 1) // (16 + 144)


def test_skip_gates_start_closed_and_are_learnable() -> None:
    model, x = build_case(CASES[0])
    plain = transform(model, x, ShareConfig(rank=2, **EXHAUSTIVE))
    gated = transform(model, x, ShareConfig(rank=2, skip_gates=True, **EXHAUSTIVE))
    assert len(gated.gates) == 4  # the four 16->16 stride-1 convs keep their input's shape
    torch.testing.assert_close(outputs(gated.model, x), outputs(plain.model, x), rtol=0, atol=0)
    gates = [p for n, p in gated.model.named_parameters() if n.endswith(".gate")]
    assert len(gates) == 4 and all(float(g) == 0.0 and g.requires_grad for g in gates)
    again = transform(gated.model, x, ShareConfig(rank=2, skip_gates=True, **EXHAUSTIVE))
    assert not again.modified


def test_exclude_include_and_min_size_filters() -> None:
    model, x = build_case(CASES[0])
    result = transform(model, x, ShareConfig(exclude=("convs.0",), **EXHAUSTIVE))
    assert site_sets(result) == [{"convs.1", "convs.2", "convs.3"}]
    assert result.skipped["convs.0"] == "matched by exclude"
    result = transform(model, x, ShareConfig(rank=2, include=("convs.[12]",), **EXHAUSTIVE))
    assert site_sets(result) == [{"convs.1", "convs.2"}]
    result = transform(model, x, ShareConfig(min_site_params=16 * 16 * 9 + 1, skip_first_conv=False))
    assert not result.modified
    result = transform(model, x, ShareConfig(min_site_params=0))
    assert "stem" in result.skipped["stem"]


def test_never_grows_a_group() -> None:
    model, x = build_case(CASES[0])
    # rank 15 on 16x144 weights: each link costs 15*(16+144) = 2400 > 2304 saved per site
    result = transform(model, x, ShareConfig(rank=15, **EXHAUSTIVE))
    assert not result.modified
    assert "would not save parameters" in result.skipped["convs.0"]


def test_train_mode_is_kept_and_bn_still_trains() -> None:
    model, x = build_case(CASES[0])
    model.train()
    result = transform(model, x, ShareConfig(rank=2, **EXHAUSTIVE))
    assert result.model.training
    bn = result.model.get_submodule("bns.0")
    before = bn.running_mean.clone()
    result.model(x)
    assert not torch.equal(before, bn.running_mean)
