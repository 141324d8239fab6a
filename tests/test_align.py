"""Channel alignment: chains found, outputs unchanged, residual energy lowered."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import sharedft_fx
from sharedft_fx import ShareConfig
from sharedft_fx.lazy_weights import is_lazy, materialize_all
from sharedft_fx.numerics import tree_relative_error
from sharedft_fx.passes import ALL_PASSES, AlignChannels, FindConvSites, default_pipeline
from sharedft_fx.passes.align_channels import find_channel_chains
from sharedft_fx.reference_nets import build_reference

EXPECTED_CHAINS = {"resnet": 9, "vgg": 8, "mobilenet": 9}


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_reference(name).eval()
    # non-trivial BatchNorm state, so that a wrong permutation of it would show
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _aligned(model: nn.Module) -> tuple[fx.GraphModule, AlignChannels]:
    gm = fx.symbolic_trace(copy.deepcopy(model))
    FindConvSites().run(gm)
    align = AlignChannels(ShareConfig())
    result = align.run(gm)
    gm.recompile()
    return result.module, align


@pytest.mark.parametrize("name", sorted(EXPECTED_CHAINS))
def test_alignment_keeps_outputs_and_lowers_energy(name: str) -> None:
    model = _net(name)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
    aligned, align = _aligned(model)
    report = align.report
    assert report.chains == EXPECTED_CHAINS[name]
    assert report.permuted > 0
    assert report.energy_after < report.energy_before
    with torch.no_grad():
        out = aligned(x)
    assert tree_relative_error(out, ref) <= 1e-5
    # the permutation really moved weights (not a no-op that trivially keeps outputs)
    moved = [n for n, p in aligned.named_parameters()
             if p.dim() >= 3 and not torch.equal(p, model.get_parameter(n))]
    assert moved


def test_running_alignment_again_never_raises_the_energy() -> None:
    aligned, first = _aligned(_net("resnet"))
    assert first.report.permuted > 0
    again = AlignChannels(ShareConfig())
    again.run(aligned)
    assert again.report.energy_before == pytest.approx(first.report.energy_after, rel=1e-9)
    assert again.report.energy_after <= again.report.energy_before


def test_chain_stops_at_residual_add_and_shared_tensors() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.d = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b(F.relu(self.bn(self.a(x))))  # a -> b: a chain
            z = self.c(y) + y                       # b's output also feeds the add: no chain
            return self.d(torch.cat([z, z], 1)[:, :8])  # c -> add -> cat: no chain

    chains = find_channel_chains(fx.symbolic_trace(Block()))
    assert [(c.producer, c.channelwise, c.consumer) for c in chains] == [("a", ("bn",), "b")]


def test_depthwise_conv_is_inside_the_chain() -> None:
    gm = fx.symbolic_trace(build_reference("mobilenet"))
    chains = find_channel_chains(gm)
    first = chains[0]
    assert first.producer == "features.0.block.0"
    assert first.channelwise == ("features.0.block.1", "features.0.block.3", "features.0.block.4")
    assert first.consumer == "features.0.block.6"


def test_transform_full_rank_with_alignment_is_exact_and_user_model_untouched() -> None:
    model = _net("resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 16, 16)
    result = sharedft_fx.transform(model, x, ShareConfig(rank="full", align=True))
    assert result.alignment is not None and result.alignment.permuted > 0
    assert result.output_error <= 1e-5
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_alignment_lowers_shared_weight_error() -> None:
    model = _net("vgg")
    x = torch.randn(2, 1, 16, 16)
    plain = sharedft_fx.transform(model, x, ShareConfig(rank=0, align=False))
    aligned = sharedft_fx.transform(model, x, ShareConfig(rank=0, align=True))
    err = lambda r: sum(s.weight_error ** 2 for g in r.groups for s in g.sites)  # noqa: E731
    assert err(aligned) < err(plain)
    assert aligned.params_after == plain.params_after


def test_pipeline_order_and_catalog() -> None:
    names = [p.name for p in default_pipeline(ShareConfig())]
    assert names[:3] == ["find_conv_sites", "align_channels", "group_conv_sites"]
    assert "align_channels" not in [p.name for p in default_pipeline(ShareConfig(align=False))]
    assert "align_channels" not in [p.name for p in default_pipeline(ShareConfig(), initialize=False)]
    assert AlignChannels in ALL_PASSES
    for attr in ("name", "kind", "matches", "preconditions", "invariants", "before", "after"):
        assert getattr(AlignChannels, attr)


def test_save_and_load_keep_the_aligned_weights(tmp_path) -> None:
    model = _net("mobilenet")
    x = torch.randn(2, 1, 16, 16)
    result = sharedft_fx.transform(model, x, ShareConfig(rank=4, align=True, min_site_params=512))
    assert result.alignment.permuted > 0
    sharedft_fx.save(result, tmp_path / "saved")
    loaded = sharedft_fx.load(build_reference("mobilenet").eval(), tmp_path / "saved")
    with torch.no_grad():
        assert tree_relative_error(loaded(x), result.model(x)) <= 1e-6


@pytest.mark.parametrize("name", sorted(EXPECTED_CHAINS))
def test_lazy_alignment_equals_eager_alignment_and_copies_no_shared_weight(name: str) -> None:
    model = _net(name)
    x = torch.randn(2, 1, 16, 16)
    eager, eager_pass = _aligned(model)
    work = copy.deepcopy(model, {id(p): p for p in model.parameters() if p.dim() >= 3})
    gm = fx.symbolic_trace(work)
    FindConvSites().run(gm)
    lazy_pass = AlignChannels(ShareConfig(), lazy=True)
    lazy = lazy_pass.run(gm).module
    assert lazy_pass.report == eager_pass.report
    lazy_sites = [m for m in lazy.modules() if is_lazy(m, "weight")]
    assert lazy_sites
    user_storage = {p.data_ptr() for p in model.parameters()}
    assert all(m.parametrizations.weight.original.data_ptr() in user_storage for m in lazy_sites)
    with torch.no_grad():
        assert torch.equal(lazy(x), eager(x))
    assert materialize_all(lazy) == len(lazy_sites)
    ours = dict(lazy.named_parameters())
    assert all(torch.equal(ours[n], p) for n, p in eager.named_parameters())


@pytest.mark.parametrize("config", [ShareConfig(rank=2), ShareConfig(rank=30),
                                    ShareConfig(target_ratio=0.95)])
def test_transform_result_holds_no_lazy_weight(config: ShareConfig) -> None:
    model = _net("resnet")
    result = sharedft_fx.transform(model, torch.randn(2, 1, 16, 16), config)  # verified
    assert result.alignment is not None and result.alignment.permuted > 0
    assert not any(parametrize.is_parametrized(m) for m in result.model.modules())
    shared = {s.name for g in result.groups for s in g.sites}
    permuted = {path.rpartition(".")[0] for path in result.alignment.permutations}
    if config.rank == 30 or config.target_ratio:
        # sites aligned for a group the planner then dropped keep their permuted weights
        assert permuted - shared
        state = result.model.state_dict()
        site = sorted(permuted - shared)[0]
        assert not torch.equal(state[f"{site}.weight"], model.get_parameter(f"{site}.weight"))


def test_float64_recheck_accepts_alignment_and_rejects_a_wrong_one() -> None:
    from sharedft_fx.errors import VerificationError
    from sharedft_fx.transform import _check_alignment

    model = _net("resnet")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    aligned, _ = _aligned(model)
    # tolerance -1: float32 is never conclusive, so the float64 comparison decides
    out = _check_alignment(aligned, model, (x,), ref, tolerance=-1.0)
    assert tree_relative_error(out, ref) <= 1e-5
    assert all(p.dtype == torch.float32 for p in aligned.parameters())
    assert all(torch.equal(before[k], v) and v.dtype == before[k].dtype
               for k, v in model.state_dict().items())
    wrong = copy.deepcopy(aligned)
    with torch.no_grad():
        next(m for m in wrong.modules() if isinstance(m, nn.Conv2d)).weight.mul_(1.5)
    with pytest.raises(VerificationError, match="float64 relative error"):
        _check_alignment(wrong, model, (x,), ref, tolerance=-1.0)
