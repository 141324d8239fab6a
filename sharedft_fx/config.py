"""`ShareConfig`: the one configuration schema used by the API, the CLI and saved recipes.

Example::

    >>> cfg = ShareConfig(rank=8, exclude=("fc",))
    >>> ShareConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from .errors import ConfigError
from .config_io import ConfigIO, help_field as _help

__all__ = ["ShareConfig", "LINK_KINDS", "RankSpec"]

LINK_KINDS = ("lowrank", "scale", "lowrank+scale", "none")
RankSpec = Union[int, str]
_JSON_SCALARS = (type(None), bool, int, float, str)




@dataclass(frozen=True)
class ShareConfig(ConfigIO):
    """How `transform` shares convolution weights. Validated on construction."""

    rank: RankSpec = _help(
        "Rank of each site's low-rank residual B·A: an int (capped at the full rank), 'full' "
        "(exact reconstruction, used to verify the rewrite; it grows the model), or 'auto' "
        "(smallest rank whose relative weight error is at most auto_tolerance).",
        default=8,
    )
    link: str = _help(
        "Per-site residual link: 'lowrank' (bank + B·A), 'scale' (per-output-channel scale of "
        "the bank), 'lowrank+scale' (scale·bank + B·A) or 'none' (the bank alone).",
        default="lowrank",
    )
    auto_tolerance: float = _help(
        "Relative weight error ||W - W_eff|| / ||W|| that rank='auto' aims for, in (0, 1].",
        default=0.25,
    )
    min_site_params: int = _help(
        "Convolutions with fewer weight elements than this are never shared.", default=2048
    )
    skip_first_conv: bool = _help(
        "Keep the first convolution in execution order (the stem) unshared.", default=True
    )
    include: tuple[str, ...] = _help(
        "fnmatch patterns on site names (module paths); when given, only matching sites are "
        "shared.",
        default=(),
    )
    exclude: tuple[str, ...] = _help(
        "fnmatch patterns on site names that are never shared.", default=()
    )
    skip_gates: bool = _help(
        "Add a learnable gated skip y = conv(x) + g·x (g = 0 at init) around shared convs "
        "whose output has the input's shape.",
        default=False,
    )
    leaf_modules: tuple[str, ...] = _help(
        "Modules the tracer must not enter: fnmatch patterns on module paths or class names.",
        default=(),
    )
    autowrap_functions: tuple[str, ...] = _help(
        "Functions the tracer records as single calls, as 'package.module:function'.",
        default=(),
    )
    concrete_args: Mapping[str, Any] = _help(
        "Values fixed for arguments of the top-level forward while tracing (JSON scalars).",
        default_factory=dict,
    )
    fallback: bool = _help(
        "When tracing a module fails, make it a leaf and trace its children on their own.",
        default=True,
    )
    verify: bool = _help(
        "Check the rewritten graph against the original model on the example inputs, with "
        "each site fed its original weight (must match to float precision).",
        default=True,
    )
    target_ratio: Optional[float] = _help(
        "Parameter budget: unique parameters after / before, in (0, 1]. When set, groups and "
        "per-site ranks are chosen greedily by estimated error per parameter until the model "
        "fits (rank and auto_tolerance are then ignored).",
        default=None,
    )
    max_group_size: Optional[int] = _help(
        "Largest number of sites that share one bank (>= 2): a shape group is split into runs "
        "of consecutive sites of at most this size. None: one bank per shape group.",
        default=None,
    )
    best_effort: bool = _help(
        "When target_ratio cannot be reached, return the smallest reachable model (with a "
        "warning) instead of raising BudgetError.",
        default=False,
    )
    align: bool = _help(
        "Permute block-internal channels (conv -> BN/activation -> conv chains) so that the "
        "weights of each group line up before the bank is computed; leaves outputs unchanged.",
        default=True,
    )
    calibration_batches: int = _help(
        "Batches of calibration data used (when transform gets calibration=...) to capture "
        "conv inputs for activation-aware error estimates and to recalibrate BatchNorm.",
        default=16,
    )

    def __post_init__(self) -> None:
        for name in ("include", "exclude", "leaf_modules", "autowrap_functions"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"ShareConfig.{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        rank = self.rank
        if isinstance(rank, bool) or not (
            (isinstance(rank, int) and rank >= 0) or rank in ("full", "auto")
        ):
            raise ConfigError(
                f"ShareConfig.rank must be an int >= 0, 'full' or 'auto', got {rank!r}"
            )
        if self.link not in LINK_KINDS:
            raise ConfigError(f"ShareConfig.link must be one of {LINK_KINDS}, got {self.link!r}")
        if not (isinstance(self.auto_tolerance, (int, float)) and 0 < self.auto_tolerance <= 1):
            raise ConfigError(
                f"ShareConfig.auto_tolerance must be in (0, 1], got {self.auto_tolerance!r}"
            )
        if isinstance(self.min_site_params, bool) or not (
            isinstance(self.min_site_params, int) and self.min_site_params >= 0
        ):
            raise ConfigError(
                f"ShareConfig.min_site_params must be an int >= 0, got {self.min_site_params!r}"
            )
        for name in ("skip_first_conv", "skip_gates", "fallback", "verify", "best_effort", "align"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ShareConfig.{name} must be true or false")
        ratio = self.target_ratio
        if ratio is not None:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                raise ConfigError(
                    f"ShareConfig.target_ratio must be a number in (0, 1] or None, got {ratio!r}"
                )
            if self.rank == "full":
                raise ConfigError(
                    "ShareConfig.target_ratio chooses the ranks itself; rank='full' (the exact "
                    "mode) cannot be combined with it: drop one of the two"
                )
            object.__setattr__(self, "target_ratio", float(ratio))
        size = self.max_group_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 2):
            raise ConfigError(
                f"ShareConfig.max_group_size must be an int >= 2 or None, got {size!r}"
            )
        batches = self.calibration_batches
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ConfigError(
                f"ShareConfig.calibration_batches must be an int >= 1, got {batches!r}"
            )
        for spec in self.autowrap_functions:
            if spec.count(":") != 1 or not all(spec.split(":")):
                raise ConfigError(
                    f"ShareConfig.autowrap_functions entry {spec!r} must look like "
                    "'package.module:function'"
                )
        if not isinstance(self.concrete_args, Mapping):
            raise ConfigError("ShareConfig.concrete_args must be a mapping of name to value")
        for key, value in self.concrete_args.items():
            if not isinstance(key, str) or not isinstance(value, _JSON_SCALARS):
                raise ConfigError(
                    f"ShareConfig.concrete_args[{key!r}] must be a JSON scalar, got {value!r}"
                )
        object.__setattr__(self, "concrete_args", dict(self.concrete_args))

    def __hash__(self) -> int:  # concrete_args is a dict; hash the JSON form instead
        return hash(self.to_json())

    @property
    def uses_lowrank(self) -> bool:
        return self.link in ("lowrank", "lowrank+scale")
