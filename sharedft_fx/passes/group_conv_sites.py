"""Analysis: decide which conv sites share a bank, and with which link and rank."""

from __future__ import annotations

import logging
from typing import Any, Iterable

from torch import nn

from ..calibration import capture_conv_inputs

from ..config import ShareConfig
from ..errors import InputError
from ..lazy_weights import weight_source
from ..planning import SharingPlan, SiteCandidate, plan_sharing
from ..tracing import CONV_TYPES, graph_modules
from .base import Pass, PassResult
from .find_conv_sites import SITE_KEY, ConvUse

__all__ = ["GroupConvSites", "SHARE_KEY", "collect_sites", "site_candidates"]

log = logging.getLogger(__name__)

SHARE_KEY = "sharedft.share"


def site_candidates(sites: dict[str, list[ConvUse]]) -> list[SiteCandidate]:
    """The planner's view of each site (from its uses)."""
    return [
        SiteCandidate(
            site=name,
            order=uses[0].order,
            weight_shape=uses[0].weight_shape,
            conv_groups=uses[0].conv_groups,
            key=uses[0].key,
            eligible=all(u.eligible for u in uses),
            reason=next((u.reason for u in uses if u.reason), ""),
        )
        for name, uses in sites.items()
    ]


def collect_sites(module: nn.Module) -> dict[str, list[ConvUse]]:
    """Site name -> its uses (ConvUse annotations), in execution order."""
    sites: dict[str, list[ConvUse]] = {}
    for _, gm in graph_modules(module):
        for node in gm.graph.nodes:
            use = node.meta.get(SITE_KEY)
            if isinstance(use, ConvUse):
                sites.setdefault(use.site, []).append(use)
    return sites


def _unique_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


class GroupConvSites(Pass):
    """Annotate each use of a shared site with its group and link plan."""

    name = "group_conv_sites"
    kind = "analysis"
    matches = "Nodes annotated by `find_conv_sites`."
    preconditions = "`find_conv_sites` ran on the same graphs."
    invariants = (
        "Changes no graph. Sites in one group have identical (weight shape, groups, dtype, "
        "device) and are consecutive runs of at most max_group_size; a group is never planned to "
        "cost as many parameters as it replaces (except rank='full', the exact mode); the stem, "
        "tiny and excluded convs are left out with a reason. With target_ratio the unique "
        "parameters of the planned model are at most target_ratio x the original's (errors "
        "measured on captured conv inputs when calibration data is given)."
    )
    before = "conv1 = self.layer1.0.conv1(x)   # meta['sharedft.site'] = ConvUse(...)"
    after = (
        "conv1 = self.layer1.0.conv1(x)   # meta['sharedft.share'] = (GroupPlan('g0_64x64x3x3'), "
        "SitePlan(rank=8, link='lowrank'))"
    )

    def __init__(
        self,
        config: ShareConfig,
        plan: SharingPlan | None = None,
        calibration: Iterable[Any] | None = None,
    ) -> None:
        self.config = config
        self.fixed_plan = plan
        self.calibration = calibration
        self.plan = SharingPlan()
        self.captured = 0  # sites whose errors were measured on captured inputs

    def _capture(self, module: nn.Module, sites: dict[str, list[ConvUse]]) -> dict:
        """Input patches of every conv-module site, on the calibration batches."""
        convs = {}
        for name, uses in sites.items():
            if any(u.use == "module" for u in uses):
                conv = module.get_submodule(name)
                if isinstance(conv, CONV_TYPES):
                    convs[name] = conv
        inputs = capture_conv_inputs(
            module, convs, self.calibration, self.config.calibration_batches
        )
        self.captured = len(inputs)
        missing = len(sites) - len(inputs)
        if missing:
            log.info("%d conv site(s) keep weight-space error estimates (inputs not captured)",
                     missing)
        return inputs

    def run(self, module: nn.Module) -> PassResult:
        sites = collect_sites(module)
        candidates = site_candidates(sites)
        self.captured = 0
        if self.fixed_plan is not None:
            self.plan = self._check_fixed(self.fixed_plan, sites)
        else:
            params = {name: uses[0].param for name, uses in sites.items()}
            inputs = None
            if self.config.target_ratio is not None and self.calibration is not None:
                inputs = self._capture(module, sites)
            self.plan = plan_sharing(
                candidates, self.config, lambda s: weight_source(module, params[s]).read(),
                total_params=_unique_parameters(module), site_inputs=inputs,
            )
        chosen = self.plan.site_plans()
        for _, gm in graph_modules(module):
            for node in gm.graph.nodes:
                node.meta.pop(SHARE_KEY, None)
                use = node.meta.get(SITE_KEY)
                if isinstance(use, ConvUse) and use.site in chosen:
                    node.meta[SHARE_KEY] = chosen[use.site]
        shared = sum(len(g.sites) for g in self.plan.groups)
        log.debug("planned %d groups over %d sites", len(self.plan.groups), shared)
        return PassResult(module, False, {"groups": len(self.plan.groups), "shared_sites": shared})

    @staticmethod
    def _check_fixed(plan: SharingPlan, sites: dict[str, list[ConvUse]]) -> SharingPlan:
        for group in plan.groups:
            for s in group.sites:
                uses = sites.get(s.site)
                if not uses:
                    raise InputError(
                        f"the plan shares {s.site!r}, which this model does not have as a "
                        "convolution site; is it the same architecture the recipe was made for?"
                    )
                if uses[0].weight_shape != group.weight_shape or not all(u.eligible for u in uses):
                    raise InputError(
                        f"the plan's site {s.site!r} has weight shape {uses[0].weight_shape} here, "
                        f"not {group.weight_shape} (or cannot be shared); the recipe does not fit "
                        "this model"
                    )
        return plan
