"""Pass infrastructure: honest results, idempotent rewrites, errors that name the pass."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

from sharedft_fx import PassError, ShareConfig, VerificationError
from sharedft_fx.config import ShareConfig as Config
from sharedft_fx.passes import (
    FindConvSites,
    GroupConvSites,
    OutputCheck,
    Pass,
    PassManager,
    PassResult,
    ShareConvWeights,
)
from sharedft_fx.passes.find_conv_sites import SITE_KEY
from sharedft_fx.passes.group_conv_sites import SHARE_KEY

from .models import CASES, build_case


def traced_stack():
    model, x = build_case(CASES[0])
    return fx.symbolic_trace(model), model, x


class Scale(Pass):
    """Multiplies the output by 2 while claiming to preserve outputs (a buggy pass)."""

    name = "scale_output"
    kind = "rewrite"

    @property
    def preserves_outputs(self) -> bool:
        return True

    def run(self, module):
        out = next(n for n in module.graph.nodes if n.op == "output")
        with module.graph.inserting_before(out):
            doubled = module.graph.call_function(torch.mul, (out.args[0], 2))
        out.args = (doubled,)
        return PassResult(module, True, {"nodes": 1})


class Crash(Pass):
    """Raises inside."""

    name = "crash"

    def run(self, module):
        raise KeyError("boom")


class BreakOrder(Pass):
    """Leaves a node that uses a value defined after it: lint must catch it."""

    name = "break_order"
    kind = "rewrite"

    def run(self, module):
        graph = module.graph
        out = next(n for n in graph.nodes if n.op == "output")
        first = next(n for n in graph.nodes if n.op == "placeholder")
        with graph.inserting_after(first):
            graph.call_function(torch.neg, (out.args[0],))
        return PassResult(module, True)


def test_errors_name_the_pass_and_those_before_it() -> None:
    gm, _, _ = traced_stack()
    manager = PassManager([FindConvSites(), GroupConvSites(Config()), Crash()])
    with pytest.raises(PassError, match=r"pass 'crash' \(after find_conv_sites, group_conv_sites\) failed: KeyError"):
        manager(gm)


def test_manager_lints_after_each_pass() -> None:
    gm, _, _ = traced_stack()
    with pytest.raises(PassError, match="pass 'break_order'"):
        PassManager([BreakOrder()])(gm)


def test_output_check_catches_a_pass_that_changes_outputs() -> None:
    gm, model, x = traced_stack()
    check = OutputCheck((x,), model(x))
    with pytest.raises(VerificationError, match=r"pass 'scale_output' .*changed the model's outputs"):
        PassManager([FindConvSites(), Scale()], check)(gm)


def test_analysis_passes_only_annotate() -> None:
    gm, _, _ = traced_stack()
    code = gm.code
    results = PassManager([FindConvSites(), GroupConvSites(ShareConfig(min_site_params=0, rank=2))])(gm)
    assert [r.modified for r in results] == [False, False]
    assert gm.code == code
    assert results[0].counts == {"sites": 5, "uses": 5}
    assert results[1].counts == {"groups": 1, "shared_sites": 4}
    annotated = [n for n in gm.graph.nodes if SHARE_KEY in n.meta]
    assert len(annotated) == 4 and all(SITE_KEY in n.meta for n in annotated)


def test_rewrite_pass_is_idempotent_and_honest() -> None:
    gm, model, x = traced_stack()
    cfg = ShareConfig(rank="full", min_site_params=0)
    check = OutputCheck((x,), model(x), tolerance=1e-5)
    first = PassManager([FindConvSites(), GroupConvSites(cfg), ShareConvWeights(cfg)], check)(gm)
    assert first[-1].modified and first[-1].counts == {"groups": 1, "sites": 4, "uses": 4}
    again = PassManager([FindConvSites(), GroupConvSites(cfg), ShareConvWeights(cfg)])(first[-1].module)
    assert [r.modified for r in again] == [False, False, False]
    assert again[0].counts["sites"] == 1  # only the stem is left as a plain conv site


def test_rewritten_code_shows_bank_and_links() -> None:
    gm, _, _ = traced_stack()
    cfg = ShareConfig(rank=2, min_site_params=0)
    out = PassManager([FindConvSites(), GroupConvSites(cfg), ShareConvWeights(cfg)])(gm)[-1].module
    code = out.code
    assert code.count("self.sharedft.banks.g0_16x16x3x3") == 1
    for i in range(4):
        assert f"convs_{i}_weight = self.sharedft.links.convs_{i}(sharedft_banks_g0_16x16x3x3)" in code
    assert code.count("torch.conv2d(") == 4
    assert "self.stem(" in code  # the stem stays a module call


def test_output_check_leaves_modes_alone() -> None:
    model, x = build_case(CASES[0])
    model.train()
    check = OutputCheck((x,), None)
    check.outputs(model)
    assert all(m.training for m in model.modules())
    assert isinstance(model, nn.Module)


class ClaimsToModify(Pass):
    """An analysis pass that says it modified the module (a buggy pass)."""

    name = "claims_to_modify"
    kind = "analysis"

    def run(self, module):
        return PassResult(module, True)


def test_an_analysis_pass_must_not_modify() -> None:
    gm, model, x = traced_stack()
    with pytest.raises(PassError, match="pass 'claims_to_modify'.*analysis pass but reported"):
        PassManager([FindConvSites(), ClaimsToModify()], OutputCheck((x,), model(x)))(gm)
