"""Graph passes of sharedft-fx, one per module, and the default pipeline."""

from __future__ import annotations

from typing import Any, Iterable

from ..config import ShareConfig
from ..planning import SharingPlan
from .add_skip_gates import AddSkipGates
from .align_channels import AlignChannels
from .base import OutputCheck, Pass, PassManager, PassResult
from .find_conv_sites import FindConvSites
from .group_conv_sites import GroupConvSites
from .propagate_shapes import PropagateShapes
from .share_conv_weights import ShareConvWeights

__all__ = [
    "Pass",
    "PassResult",
    "PassManager",
    "OutputCheck",
    "FindConvSites",
    "AlignChannels",
    "GroupConvSites",
    "ShareConvWeights",
    "AddSkipGates",
    "PropagateShapes",
    "ALL_PASSES",
    "default_pipeline",
]

ALL_PASSES: tuple[type[Pass], ...] = (
    FindConvSites,
    AlignChannels,
    GroupConvSites,
    ShareConvWeights,
    PropagateShapes,
    AddSkipGates,
)


def default_pipeline(
    config: ShareConfig,
    plan: SharingPlan | None = None,
    initialize: bool = True,
    gates: tuple[str, ...] | None = None,
    example_inputs: tuple | None = None,
    calibration: Iterable[Any] | None = None,
) -> list[Pass]:
    """The passes `transform` runs, in order.

    Channel alignment runs only when weights are initialised from the model (`initialize`):
    a saved recipe's weights are already aligned. `calibration` batches feed the
    activation-aware error estimates of the budget planner.
    """
    pipeline: list[Pass] = [FindConvSites()]
    if config.align and initialize:
        pipeline.append(AlignChannels(config, plan, lazy=True))
    pipeline += [
        GroupConvSites(config, plan, calibration),
        ShareConvWeights(config, initialize=initialize),
    ]
    if config.skip_gates:
        if gates is None:
            if example_inputs is None:
                raise ValueError("skip gates need example inputs (for shapes) or a list of sites")
            pipeline.append(PropagateShapes(example_inputs))
        pipeline.append(AddSkipGates(gates))
    return pipeline
