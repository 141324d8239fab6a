"""Which sites share a bank, with which link and rank: the `SharingPlan`.

The default planner groups sites by (weight shape, conv groups, dtype, device), keeps out the
stem, tiny convs and excluded names, gives each site the configured rank, and leaves a group
unshared when its bank plus links would cost as many parameters as the convs it replaces.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .config import ShareConfig
from .errors import InputError
from .numerics import rank_for_tolerance

__all__ = [
    "SiteCandidate",
    "SitePlan",
    "GroupPlan",
    "SharingPlan",
    "plan_sharing",
    "link_params",
    "group_name",
]


@dataclass(frozen=True)
class SiteCandidate:
    """A conv site as the planner sees it."""

    site: str
    order: int
    weight_shape: tuple[int, ...]
    conv_groups: int
    key: tuple
    eligible: bool = True
    reason: str = ""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.weight_shape:
            n *= s
        return n

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def fan_in(self) -> int:
        return self.numel // self.weight_shape[0]


@dataclass(frozen=True)
class SitePlan:
    site: str
    rank: int
    link: str


@dataclass(frozen=True)
class GroupPlan:
    name: str
    weight_shape: tuple[int, ...]
    conv_groups: int
    sites: tuple[SitePlan, ...]

    @property
    def bank_params(self) -> int:
        n = 1
        for s in self.weight_shape:
            n *= s
        return n

    def params_after(self) -> int:
        out = self.weight_shape[0]
        fan_in = self.bank_params // out
        return self.bank_params + sum(link_params(s.link, s.rank, out, fan_in) for s in self.sites)

    def params_before(self) -> int:
        return self.bank_params * len(self.sites)


@dataclass(frozen=True)
class SharingPlan:
    """Groups to share, and the sites left alone with the reason."""

    groups: tuple[GroupPlan, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)

    def site_plans(self) -> dict[str, tuple[GroupPlan, SitePlan]]:
        return {s.site: (g, s) for g in self.groups for s in g.sites}

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [
                {
                    "name": g.name,
                    "weight_shape": list(g.weight_shape),
                    "conv_groups": g.conv_groups,
                    "sites": [{"site": s.site, "rank": s.rank, "link": s.link} for s in g.sites],
                }
                for g in self.groups
            ],
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SharingPlan":
        try:
            groups = tuple(
                GroupPlan(
                    name=str(g["name"]),
                    weight_shape=tuple(int(x) for x in g["weight_shape"]),
                    conv_groups=int(g["conv_groups"]),
                    sites=tuple(
                        SitePlan(str(s["site"]), int(s["rank"]), str(s["link"])) for s in g["sites"]
                    ),
                )
                for g in data["groups"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the sharing plan in the recipe is malformed ({exc!r})") from None
        return cls(groups, dict(data.get("skipped", {})))


def link_params(kind: str, rank: int, out: int, fan_in: int) -> int:
    """Parameters of one site's link."""
    lowrank = rank * (out + fan_in) if kind in ("lowrank", "lowrank+scale") else 0
    scale = out if kind in ("scale", "lowrank+scale") else 0
    return lowrank + scale


def group_name(index: int, shape: Sequence[int]) -> str:
    return f"g{index}_" + "x".join(str(s) for s in shape)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_sharing(
    candidates: Sequence[SiteCandidate],
    config: ShareConfig,
    weight_of: Callable[[str], torch.Tensor],
) -> SharingPlan:
    """The default plan: shape groups, filters, configured ranks, and the never-grow guard."""
    skipped: dict[str, str] = {}
    ordered = sorted(candidates, key=lambda c: c.order)
    pool = []
    for i, c in enumerate(ordered):
        if not c.eligible:
            skipped[c.site] = c.reason
        elif i == 0 and config.skip_first_conv:
            skipped[c.site] = "first convolution (stem); set skip_first_conv=False to share it"
        elif c.numel < config.min_site_params:
            skipped[c.site] = f"{c.numel} weights < min_site_params={config.min_site_params}"
        elif config.include and not _matches(c.site, config.include):
            skipped[c.site] = "not matched by include"
        elif _matches(c.site, config.exclude):
            skipped[c.site] = "matched by exclude"
        else:
            pool.append(c)
    by_key: dict[tuple, list[SiteCandidate]] = defaultdict(list)
    for c in pool:
        by_key[c.key].append(c)
    groups: list[GroupPlan] = []
    for members in by_key.values():
        shape = members[0].weight_shape
        if len(members) < 2:
            skipped[members[0].site] = f"no other shareable convolution has weight shape {shape}"
            continue
        ranks = _ranks(members, config, weight_of)
        plan = GroupPlan(
            name=group_name(len(groups), shape),
            weight_shape=shape,
            conv_groups=members[0].conv_groups,
            sites=tuple(SitePlan(c.site, r, config.link) for c, r in zip(members, ranks)),
        )
        if config.rank != "full" and plan.params_after() >= plan.params_before():
            for c in members:
                skipped[c.site] = (
                    f"sharing its group would not save parameters ({plan.params_after()} after vs "
                    f"{plan.params_before()} before)"
                )
            continue
        groups.append(plan)
    return SharingPlan(tuple(groups), skipped)


def _ranks(
    members: Sequence[SiteCandidate],
    config: ShareConfig,
    weight_of: Callable[[str], torch.Tensor],
) -> list[int]:
    first = members[0]
    full = min(first.out_channels, first.fan_in)
    if not config.uses_lowrank:
        return [0] * len(members)
    if config.rank == "full":
        return [full] * len(members)
    if isinstance(config.rank, int):
        return [min(config.rank, full)] * len(members)
    # "auto": the smallest rank that meets the tolerance, capped where a site stops saving
    weights = [weight_of(c.site).detach().to(torch.float64).reshape(first.out_channels, -1)
               for c in members]
    bank = torch.stack(weights).mean(0)
    cap = max(0, (first.numel - 1) // (first.out_channels + first.fan_in))
    out = []
    for w in weights:
        norm = torch.linalg.vector_norm(w).item()
        out.append(min(cap, rank_for_tolerance(w - bank, norm, config.auto_tolerance)))
    return out
