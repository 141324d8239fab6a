"""One exception hierarchy for everything sharedft-fx raises on purpose.

Every message says what was wrong and what to do about it, so that the CLI can print it as
one line.
"""

from __future__ import annotations

__all__ = [
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


class SharedftError(Exception):
    """Base class of all errors raised by sharedft-fx on purpose."""

    exit_code: int = 1


class ConfigError(SharedftError, ValueError):
    """A configuration value is invalid (names the field and the allowed values)."""

    exit_code = 2


class InputError(SharedftError, ValueError):
    """The model, its example inputs, a data set or a file given by the user cannot be used."""

    exit_code = 3


class NonFiniteWeightError(InputError):
    """A weight of the input model holds NaN or Inf (names the layer)."""


class TracingError(SharedftError):
    """The model could not be traced, not even with the leaf fallback."""

    exit_code = 4


class PassError(SharedftError):
    """A graph pass failed (names the pass and the passes that ran before it)."""

    exit_code = 5


class VerificationError(SharedftError):
    """A check against the original model (or ONNX Runtime) failed (names the tensor or output)."""

    exit_code = 6


class BudgetError(SharedftError):
    """The requested parameter budget cannot be reached (names the smallest reachable ratio)."""

    exit_code = 7


class UntrustedFileError(InputError):
    """A file would run code when loaded and the user did not say it is trusted."""


class ExportError(SharedftError):
    """The model could not be exported to ONNX, or the file could not be written."""

    exit_code = 8


class ExportSizeError(ExportError):
    """An export stores more bytes than the model's unique tensors (names the tensors that grew).

    `tensors` holds the names of the ONNX tensors that are not a torch tensor stored once.
    """

    def __init__(self, message: str, tensors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tensors = tuple(tensors)
