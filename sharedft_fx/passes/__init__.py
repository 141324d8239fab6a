"""Graph passes of sharedft-fx, one per module, and the default pipeline."""

from __future__ import annotations

from ..config import ShareConfig
from ..planning import SharingPlan
from .add_skip_gates import AddSkipGates
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
    "GroupConvSites",
    "ShareConvWeights",
    "AddSkipGates",
    "PropagateShapes",
    "ALL_PASSES",
    "default_pipeline",
]

ALL_PASSES: tuple[type[Pass], ...] = (
    FindConvSites,
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
) -> list[Pass]:
    """The passes `transform` runs, in order."""
    pipeline: list[Pass] = [
        FindConvSites(),
        GroupConvSites(config, plan),
        ShareConvWeights(config, initialize=initialize),
    ]
    if config.skip_gates:
        if gates is None:
            if example_inputs is None:
                raise ValueError("skip gates need example inputs (for shapes) or a list of sites")
            pipeline.append(PropagateShapes(example_inputs))
        pipeline.append(AddSkipGates(gates))
    return pipeline
