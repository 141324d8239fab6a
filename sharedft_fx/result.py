"""What `transform` returns: the new model and an account of what changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import ShareConfig
from .passes.align_channels import AlignmentReport
from .passes.base import PassResult
from .planning import SharingPlan
from .tracing import TraceReport

__all__ = ["SiteReport", "GroupReport", "TransformResult", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    """Unique parameters (a tensor tied under several names counts once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@dataclass(frozen=True)
class SiteReport:
    """One shared conv site."""

    name: str
    link: str
    rank: int
    link_params: int
    weight_error: float  # ||W_i - W_eff,i|| / ||W_i|| at initialisation


@dataclass(frozen=True)
class GroupReport:
    """One bank and the sites that use it."""

    name: str
    weight_shape: tuple[int, ...]
    conv_groups: int
    sites: tuple[SiteReport, ...]
    params_before: int
    params_after: int

    @property
    def bank_params(self) -> int:
        return self.params_after - sum(s.link_params for s in self.sites)


@dataclass(frozen=True)
class TransformResult:
    """The rewritten model (a new module) and the accounting of the rewrite."""

    model: nn.Module
    config: ShareConfig
    groups: tuple[GroupReport, ...]
    params_before: int
    params_after: int
    trace: TraceReport
    plan: SharingPlan
    modified: bool
    output_error: float | None = None
    gates: tuple[str, ...] = ()
    passes: tuple[PassResult, ...] = field(default_factory=tuple)
    alignment: AlignmentReport | None = None  # None when align=False
    recalibrated: int = 0  # calibration batches BatchNorm statistics were recomputed on
    calibrated_sites: int = 0  # sites whose planning errors were measured on captured inputs

    @property
    def ratio(self) -> float:
        """Unique parameters after / before."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def skipped(self) -> dict[str, str]:
        """Conv sites left unshared, with the reason."""
        return dict(self.plan.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "ratio": self.ratio,
            "modified": self.modified,
            "output_error": self.output_error,
            "trace": self.trace.to_dict(),
            "gates": list(self.gates),
            "alignment": self.alignment.to_dict() if self.alignment is not None else None,
            "recalibrated": self.recalibrated,
            "calibrated_sites": self.calibrated_sites,
            "groups": [
                {
                    "name": g.name,
                    "weight_shape": list(g.weight_shape),
                    "conv_groups": g.conv_groups,
                    "params_before": g.params_before,
                    "params_after": g.params_after,
                    "sites": [
                        {
                            "name": s.name,
                            "link": s.link,
                            "rank": s.rank,
                            "link_params": s.link_params,
                            "weight_error": s.weight_error,
                        }
                        for s in g.sites
                    ],
                }
                for g in self.groups
            ],
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        """A readable table of groups, sites and totals."""
        lines = [
            f"{'group':<24} {'weight shape':<18} {'sites':>5} {'params before':>14} "
            f"{'params after':>13} {'max weight err':>15}"
        ]
        for g in self.groups:
            worst = max((s.weight_error for s in g.sites), default=0.0)
            lines.append(
                f"{g.name:<24} {'x'.join(map(str, g.weight_shape)):<18} {len(g.sites):>5} "
                f"{g.params_before:>14,} {g.params_after:>13,} {worst:>15.4f}"
            )
        lines.append(
            f"unique parameters: {self.params_before:,} -> {self.params_after:,} "
            f"({self.ratio:.1%}); {sum(len(g.sites) for g in self.groups)} sites in "
            f"{len(self.groups)} groups; {len(self.skipped)} conv sites left unshared"
        )
        if self.alignment is not None and self.alignment.chains:
            a = self.alignment
            lines.append(
                f"channel alignment: {a.permuted}/{a.chains} chains permuted; residual energy "
                f"{a.energy_before:.4f} -> {a.energy_after:.4f} ({a.reduction:.1%} lower)"
            )
        if self.recalibrated:
            lines.append(f"BatchNorm statistics recalibrated on {self.recalibrated} batch(es)")
        if self.output_error is not None:
            lines.append(f"relative output error on the example inputs: {self.output_error:.3e}")
        if self.trace.leaves:
            lines.append(
                "ran eagerly (not traced): "
                + ", ".join(f"{k or '<root>'}" for k in self.trace.leaves)
            )
        if not self.modified:
            lines.append("model unchanged: no shareable convolutions")
        return "\n".join(lines)
