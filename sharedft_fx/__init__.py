"""sharedft-fx: make trained PyTorch models smaller by sharing convolution weights.

    >>> import torch, torchvision, sharedft_fx
    >>> model = torchvision.models.resnet18(weights=None)
    >>> result = sharedft_fx.transform(model, torch.randn(1, 3, 224, 224))
    >>> result.params_after < 0.6 * result.params_before
    True
"""

from __future__ import annotations

from .calibration import recalibrate_bn
from .config import ShareConfig
from .errors import (
    BudgetError,
    ConfigError,
    ExportError,
    ExportSizeError,
    InputError,
    NonFiniteWeightError,
    PassError,
    SharedftError,
    TracingError,
    UntrustedFileError,
    VerificationError,
)
from .export import ExportResult, OrtCheck, export_onnx, ort_session
from .finetuning import FinetuneConfig, FinetuneResult, finetune
from .planning import SharingPlan
from .result import GroupReport, SiteReport, TransformResult, count_parameters
from .serialization import load, save
from .tracing import TraceReport
from .transform import transform

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "transform",
    "finetune",
    "FinetuneConfig",
    "FinetuneResult",
    "recalibrate_bn",
    "save",
    "load",
    "export_onnx",
    "ExportResult",
    "OrtCheck",
    "ort_session",
    "ShareConfig",
    "SharingPlan",
    "TransformResult",
    "GroupReport",
    "SiteReport",
    "TraceReport",
    "count_parameters",
    "SharedftError",
    "ConfigError",
    "InputError",
    "NonFiniteWeightError",
    "TracingError",
    "PassError",
    "VerificationError",
    "BudgetError",
    "UntrustedFileError",
    "ExportError",
    "ExportSizeError",
]
