"""Which sites share a bank, with which link and rank: the `SharingPlan`.

The default planner groups sites by (weight shape, conv groups, dtype, device), keeps out the
stem, tiny convs and excluded names, gives each site the configured rank, and leaves a group
unshared when its bank plus links would cost as many parameters as the convs it replaces.
"""

from __future__ import annotations

import math
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
    "shareable_pool",
    "split_runs",
    "candidate_runs",
    "skip_unprofitable",
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
        return math.prod(self.weight_shape)

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


def shareable_pool(
    candidates: Sequence[SiteCandidate], config: ShareConfig
) -> tuple[list[SiteCandidate], dict[str, str]]:
    """Sites that pass the filters (eligibility, stem, size, include/exclude), in execution order,
    and the others with the reason."""
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
    return pool, skipped


def split_runs(members: Sequence[SiteCandidate], max_size: int | None) -> list[list[SiteCandidate]]:
    """Consecutive runs of at most `max_size` sites, as even in size as possible.

    >>> [len(r) for r in split_runs(list(range(7)), 3)]   # doctest: +SKIP
    [3, 2, 2]
    """
    members = list(members)
    if max_size is None or len(members) <= max_size:
        return [members]
    count = -(-len(members) // max_size)
    base, extra = divmod(len(members), count)
    runs, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        runs.append(members[start:start + size])
        start += size
    return runs


def candidate_runs(
    candidates: Sequence[SiteCandidate], config: ShareConfig
) -> tuple[list[list[SiteCandidate]], dict[str, str]]:
    """Shape groups of the shareable sites, split into runs of <= max_group_size; runs of one site
    are returned as skipped with the reason."""
    pool, skipped = shareable_pool(candidates, config)
    by_key: dict[tuple, list[SiteCandidate]] = defaultdict(list)
    for c in pool:
        by_key[c.key].append(c)
    runs: list[list[SiteCandidate]] = []
    for members in by_key.values():
        for run in split_runs(members, config.max_group_size):
            if len(run) < 2:
                skipped[run[0].site] = (
                    f"no other shareable convolution has weight shape {run[0].weight_shape}"
                    + (" in its run (max_group_size)" if len(members) > 1 else "")
                )
            else:
                runs.append(run)
    return runs, skipped


def plan_sharing(
    candidates: Sequence[SiteCandidate],
    config: ShareConfig,
    weight_of: Callable[[str], torch.Tensor],
    *,
    total_params: int | None = None,
    site_inputs: Mapping[str, torch.Tensor] | None = None,
) -> SharingPlan:
    """The plan: shape groups (split into runs of <= max_group_size), filters, ranks, and the
    never-grow guard.

    With ``config.target_ratio`` set this dispatches to the budget planner
    (`sharedft_fx.budget.plan_budget`), which needs `total_params` (the model's unique
    parameters) and uses `site_inputs` (sampled input patches per site) for activation-aware
    error estimates when given.
    """
    if config.target_ratio is not None:
        from .budget import plan_budget

        if total_params is None:
            raise InputError("a target_ratio plan needs the model's total parameter count")
        return plan_budget(candidates, config, weight_of, total_params, site_inputs)
    runs, skipped = candidate_runs(candidates, config)
    groups: list[GroupPlan] = []
    for members in runs:
        shape = members[0].weight_shape
        ranks = _ranks(members, config, weight_of)
        plan = GroupPlan(
            name=group_name(len(groups), shape),
            weight_shape=shape,
            conv_groups=members[0].conv_groups,
            sites=tuple(SitePlan(c.site, r, config.link) for c, r in zip(members, ranks)),
        )
        if config.rank != "full" and plan.params_after() >= plan.params_before():
            skip_unprofitable(skipped, members, plan.params_after(), plan.params_before())
            continue
        groups.append(plan)
    return SharingPlan(tuple(groups), skipped)


def skip_unprofitable(
    skipped: dict[str, str],
    members: Sequence[SiteCandidate],
    after: int,
    before: int,
    qualifier: str = "",
) -> None:
    """Record why a group is left unshared: sharing it would not save parameters."""
    for c in members:
        skipped[c.site] = (
            f"sharing its group would not save parameters{qualifier} ({after} after vs "
            f"{before} before)"
        )


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
