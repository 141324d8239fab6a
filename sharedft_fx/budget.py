"""The budget planner: groups and per-site ranks chosen for a target parameter ratio.

`plan_budget` starts from the smallest model it can build (every shareable convolution shared at
rank 0, shape groups split into runs of at most ``max_group_size`` consecutive sites) and then
spends the remaining parameter budget greedily, on the action with the largest estimated error
reduction per parameter: one more rank for one site's low-rank residual (a few ranks looked
ahead), or leaving a whole run unshared. The error of a site is its relative residual energy,

    weight space (default):      ||W_i - W_eff,i||² / ||W_i||²
    activation-aware (inputs X): ||(W_i - W_eff,i) X_i||² / ||W_i X_i||²

where X_i are input patches the convolution saw on calibration batches. Both are read off one
eigen-decomposition per site (the Gram trick of `numerics._residual_basis`), so resnet50 plans in
seconds.

Before (``ShareConfig(target_ratio=0.5)`` on a randomly initialised resnet18)::

    11,689,512 parameters, 20 convolutions, smallest reachable ratio 0.4607

After::

    g0_256x256x3x3 (3 sites), g1_512x512x3x3 (3 sites), ranks chosen per site;
    5,842,472 parameters (ratio 0.4998); the 64- and 128-channel groups left unshared
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .config import ShareConfig
from .errors import BudgetError
from .numerics import _residual_basis, channel_scale
from .planning import (
    GroupPlan,
    SharingPlan,
    SiteCandidate,
    SitePlan,
    candidate_runs,
    group_name,
    link_params,
    skip_unprofitable,
)

__all__ = ["plan_budget", "SiteProfile", "site_profile", "LOOKAHEAD"]

log = logging.getLogger(__name__)

LOOKAHEAD = 8  # ranks considered at once, so that a weak singular value can be stepped over


@dataclass(frozen=True)
class SiteProfile:
    """How a site's estimated error falls with the rank of its residual.

    ``tail[r]`` is the relative error energy left at rank r (``tail[0]``: the bank alone, or the
    scaled bank), for r up to ``cap``, the largest rank at which the site still saves parameters.
    """

    site: str
    numel: int
    out: int
    fan_in: int
    cap: int
    tail: tuple[float, ...]


def site_profile(
    site: str,
    weight: torch.Tensor,
    bank: torch.Tensor,
    kind: str,
    patches: torch.Tensor | None = None,
) -> SiteProfile:
    """Error profile of one site against its bank (both 2-D (out, fan_in), float64)."""
    out, fan_in = weight.shape
    numel = out * fan_in
    base = bank
    if kind in ("scale", "lowrank+scale"):
        base = bank * channel_scale(weight, bank)[:, None]
    residual = weight - base
    if patches is not None:
        x = patches.to(torch.float64)
        norm = torch.linalg.vector_norm(x @ weight.T).item() ** 2
        total = torch.linalg.vector_norm(x @ residual.T).item() ** 2
    else:
        norm = torch.linalg.vector_norm(weight).item() ** 2
        total = torch.linalg.vector_norm(residual).item() ** 2
    norm = norm if norm > 0 else 1.0
    lowrank = kind in ("lowrank", "lowrank+scale")
    scale_cost = out if kind in ("scale", "lowrank+scale") else 0
    cap = max(0, min(min(out, fan_in), (numel - 1 - scale_cost) // (out + fan_in))) if lowrank else 0
    if cap == 0:
        return SiteProfile(site, numel, out, fan_in, 0, (total / norm,))
    if patches is None:
        # singular values only: eigenvalues of the smaller Gram matrix (float32 is plenty for
        # an estimate; the factors themselves are computed in float64 by the rewrite)
        r32 = residual.to(torch.float32)
        gram = r32 @ r32.T if out <= fan_in else r32.T @ r32
        energy = torch.flip(torch.linalg.eigvalsh(gram).clamp_min(0), [0]).to(torch.float64)
    else:
        # component j of the residual is sigma_j u_j v_j^T; its energy on the inputs is
        # ||X (sigma_j v_j)||², and the components' energies add up (the u_j are orthonormal)
        sigma, basis, left = _residual_basis(residual)
        k = min(out, fan_in)
        sigma, basis = sigma[:k], basis[:, :k]
        scaled_v = residual.T @ basis if left else basis * sigma
        energy = (x @ scaled_v).pow(2).sum(0)
    cum = torch.cumsum(energy[:cap], 0)
    tail = [total] + [max(total - float(c), 0.0) for c in cum]
    return SiteProfile(site, numel, out, fan_in, cap, tuple(t / norm for t in tail))


@dataclass
class _Run:
    members: list[SiteCandidate]
    profiles: list[SiteProfile]
    ranks: list[int]
    kind: str
    shared: bool = True
    version: int = 0

    @property
    def before(self) -> int:
        return sum(p.numel for p in self.profiles)

    def cost(self) -> int:
        if not self.shared:
            return self.before
        p0 = self.profiles[0]
        return p0.numel + sum(
            link_params(self.kind, r, p.out, p.fan_in) for p, r in zip(self.profiles, self.ranks)
        )

    def error(self) -> float:
        if not self.shared:
            return 0.0
        return sum(p.tail[r] for p, r in zip(self.profiles, self.ranks))


def plan_budget(
    candidates: Sequence[SiteCandidate],
    config: ShareConfig,
    weight_of: Callable[[str], torch.Tensor],
    total_params: int,
    site_inputs: Mapping[str, torch.Tensor] | None = None,
) -> SharingPlan:
    """Groups and ranks with unique parameters ≤ ``target_ratio × total_params``.

    Raises `BudgetError` naming the smallest reachable ratio when the target is below it (unless
    ``config.best_effort``, which returns that smallest model with a warning).
    """
    assert config.target_ratio is not None
    kind = config.link
    site_inputs = site_inputs or {}
    candidate_groups, skipped = candidate_runs(candidates, config)
    runs: list[_Run] = []
    for members in candidate_groups:
        out = members[0].out_channels
        weights = [weight_of(c.site).detach().to(torch.float64).reshape(out, -1) for c in members]
        bank = torch.stack(weights).mean(0)
        profiles = [
            site_profile(c.site, w, bank, kind, site_inputs.get(c.site))
            for c, w in zip(members, weights)
        ]
        del weights, bank
        run = _Run(members, profiles, [0] * len(members), kind)
        if run.cost() >= run.before:
            run.shared = False
            skip_unprofitable(skipped, members, run.cost(), run.before, " even at rank 0")
            continue
        runs.append(run)
    other = total_params - sum(r.before for r in runs)
    smallest = other + sum(r.cost() for r in runs)
    limit = math.floor(config.target_ratio * total_params)
    min_ratio = smallest / total_params if total_params else 1.0
    if smallest > limit:
        hint = (
            f"target_ratio={config.target_ratio:g} cannot be reached: the smallest reachable "
            f"ratio with these settings is {min_ratio:.4f} ({smallest:,} of {total_params:,} "
            "parameters, every shareable convolution shared at rank 0"
        )
        hint += f" in runs of <= {config.max_group_size})" if config.max_group_size else ")"
        if not config.best_effort:
            raise BudgetError(
                f"{hint}. Ask for target_ratio >= {math.ceil(min_ratio * 1000) / 1000:.3f}, "
                "allow more sharing (max_group_size=None, a lower min_site_params, "
                "skip_first_conv=False, fewer exclude patterns), or set best_effort=True to get "
                "the smallest reachable model"
            )
        log.warning("%s; best_effort=True: returning the smallest reachable model", hint)
    else:
        _spend(runs, limit - smallest)
    used = other + sum(r.cost() for r in runs)
    groups: list[GroupPlan] = []
    for run in runs:
        if not run.shared:
            for c in run.members:
                skipped[c.site] = (
                    "left unshared by the budget planner: unsharing its group cost fewer "
                    "parameters per unit of error than higher ranks elsewhere"
                )
            continue
        first = run.members[0]
        groups.append(GroupPlan(
            name=group_name(len(groups), first.weight_shape),
            weight_shape=first.weight_shape,
            conv_groups=first.conv_groups,
            sites=tuple(SitePlan(c.site, r, kind) for c, r in zip(run.members, run.ranks)),
        ))
    log.info(
        "budget plan: %d groups, %s -> %s parameters (ratio %.4f, target %.4f, smallest "
        "reachable %.4f), estimated relative error energy %.4f (%s)",
        len(groups), f"{total_params:,}", f"{used:,}", used / max(total_params, 1), config.target_ratio,
        min_ratio, sum(r.error() for r in runs),
        "activation-aware" if site_inputs else "weight space",
    )
    return SharingPlan(tuple(groups), skipped)


def _rank_step(run: _Run, i: int, budget: int) -> tuple[float, int, int] | None:
    """Best (gain per parameter, steps, cost) of raising site i's rank by up to LOOKAHEAD."""
    p, r = run.profiles[i], run.ranks[i]
    unit = p.out + p.fan_in
    best: tuple[float, int, int] | None = None
    for steps in range(1, min(LOOKAHEAD, p.cap - r) + 1):
        cost = steps * unit
        if cost > budget:
            break
        gain = p.tail[r] - p.tail[r + steps]
        if gain > 0 and (best is None or gain / cost > best[0]):
            best = (gain / cost, steps, cost)
    return best


def _spend(runs: list[_Run], budget: int) -> None:
    """Greedy: apply the action with the best error reduction per parameter while it fits."""
    heap: list[tuple[float, int, str, int, int, int]] = []
    counter = 0

    def push_rank(j: int, i: int) -> None:
        nonlocal counter
        step = _rank_step(runs[j], i, budget)
        if step is not None:
            counter += 1
            heapq.heappush(heap, (-step[0], counter, "rank", j, i, runs[j].version))

    def push_unshare(j: int) -> None:
        nonlocal counter
        run = runs[j]
        cost = run.before - run.cost()
        gain = run.error()
        if run.shared and gain > 0 and 0 < cost <= budget:
            counter += 1
            heapq.heappush(heap, (-gain / cost, counter, "unshare", j, -1, run.version))

    for j, run in enumerate(runs):
        push_unshare(j)
        for i in range(len(run.members)):
            push_rank(j, i)
    while heap:
        _, _, action, j, i, version = heapq.heappop(heap)
        run = runs[j]
        if not run.shared or version != run.version:
            continue
        if action == "unshare":
            cost = run.before - run.cost()
            if cost > budget:
                continue
            run.shared = False
            budget -= cost
            run.version += 1
            continue
        step = _rank_step(run, i, budget)
        if step is None:
            continue
        run.ranks[i] += step[1]
        budget -= step[2]
        run.version += 1
        # the run's other pending actions are now stale: push them again
        for k in range(len(run.members)):
            push_rank(j, k)
        push_unshare(j)
