"""Open an exported model in ONNX Runtime with the memory/speed trade-off made explicit.

    >>> sess = ort_session("resnet18-shared.onnx", memory="fast")     # dense weights, full speed
    >>> sess = ort_session("resnet18-shared.onnx", memory="shared")   # banks stay shared in memory
    >>> sess.run(None, {"input": x})

"fast": ONNX Runtime folds each ``bank + reshape(B @ A)`` into a dense weight when the session is
created, then fuses Conv+BatchNorm(+ReLU): the small file runs as fast as the original, but
memory holds one dense weight per layer. "shared": constant folding is disabled, so only the
banks and factors live in memory and each effective weight is recomputed on every run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import onnxruntime as ort

from ..errors import ConfigError, InputError

__all__ = ["MEMORY_MODES", "ort_session", "default_providers"]

log = logging.getLogger(__name__)

MEMORY_MODES = ("fast", "shared")


def default_providers() -> list[str]:
    """The CPU provider, preceded by the CUDA provider when this ONNX Runtime has it."""
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def ort_session(
    path: str | os.PathLike[str],
    memory: str = "fast",
    *,
    providers: Sequence[str] | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An `onnxruntime.InferenceSession` for `path` in the given memory mode.

    `options` is copied into the session as given, except that memory="shared" adds the
    ConstantFolding optimizer to the disabled ones. External data is found relative to `path`.
    """
    if memory not in MEMORY_MODES:
        raise ConfigError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
    if not os.path.isfile(path):
        raise InputError(f"ONNX file {path} does not exist")
    options = ort.SessionOptions() if options is None else options
    kwargs = {}
    if memory == "shared":
        kwargs["disabled_optimizers"] = ["ConstantFolding"]
    providers = list(providers) if providers else default_providers()
    log.debug("opening %s with %s, memory=%s", path, providers, memory)
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers, **kwargs)
