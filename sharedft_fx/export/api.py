"""`export_onnx`: a deployment file in which every shared tensor is stored once, verified.

    >>> result = sharedft_fx.transform(resnet18, torch.randn(1, 3, 224, 224))
    >>> out = sharedft_fx.export_onnx(result.model, torch.randn(1, 3, 224, 224), "r18.onnx")
    >>> out.bytes <= 1.02 * out.torch_bytes + 65536       # ~22.5 MB, not 46.8 MB
    True

Before (the transformed model)::

    w = self.sharedft.links.layer1_0_conv1(self.sharedft.banks.g0)
    y = torch.conv2d(x, w, None, (1, 1), (1, 1))

After, mode="compact" (ONNX)::

    w = Add(sharedft.banks.g0, Reshape(MatMul(links.layer1_0_conv1.B, ...A), [64, 64, 3, 3]))
    y = Conv(x, w)

After, mode="dense"::

    y = Conv(x, layer1_0_conv1.weight)      # merged, one dense weight per layer
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from ..errors import ConfigError, InputError
from ..modes import eval_mode
from ..transform import as_args
from .accounting import check_size, torch_bytes, torch_tensors
from .exporters import DEFAULT_OPSET, to_onnx, merge_links
from .files import EXTERNAL_DATA_THRESHOLD, write_onnx
from .verify import OrtCheck, check_onnx_file, torch_outputs, verify_onnx

__all__ = ["EXPORT_MODES", "ExportResult", "export_onnx"]

log = logging.getLogger(__name__)

EXPORT_MODES = ("compact", "dense")


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote and measured."""

    path: Path
    files: tuple[Path, ...]
    bytes: int  # all files together (model + external data)
    initializer_bytes: Mapping[str, int]  # every stored tensor, by name
    torch_bytes: int  # unique parameter + buffer bytes of the exported torch module
    torch_parameter_bytes: int  # unique parameter bytes alone
    mode: str
    opset: int
    external_data: bool
    checks: tuple[OrtCheck, ...] = field(default_factory=tuple)  # empty when verify=False

    @property
    def stored_bytes(self) -> int:
        """Sum of `initializer_bytes`."""
        return sum(self.initializer_bytes.values())

    @property
    def max_abs_error(self) -> float | None:
        return max((c.max_abs_error for c in self.checks), default=None)

    @property
    def max_rel_error(self) -> float | None:
        return max((c.rel_error for c in self.checks), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "bytes": self.bytes,
            "stored_bytes": self.stored_bytes,
            "torch_bytes": self.torch_bytes,
            "torch_parameter_bytes": self.torch_parameter_bytes,
            "mode": self.mode,
            "opset": self.opset,
            "external_data": self.external_data,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "checks": [c.__dict__ for c in self.checks],
        }

    def summary(self) -> str:
        """A short size and error table."""
        lines = [f"{'file':<40} {'bytes':>14}"]
        lines += [f"{str(f):<40} {f.stat().st_size if f.exists() else 0:>14,}" for f in self.files]
        lines.append(
            f"{'tensors stored (' + str(len(self.initializer_bytes)) + ')':<40} "
            f"{self.stored_bytes:>14,}"
        )
        lines.append(f"{'unique torch parameters + buffers':<40} {self.torch_bytes:>14,}")
        lines.append(
            f"mode {self.mode}, opset {self.opset}, "
            f"{'external data' if self.external_data else 'single file'}"
        )
        if self.checks:
            lines.append(f"{'ONNX Runtime check':<40} {'max abs err':>14} {'rel err':>10}")
            seen: dict[tuple[str, str], list[OrtCheck]] = {}
            for c in self.checks:
                seen.setdefault((c.provider.replace("ExecutionProvider", ""), c.input), []).append(c)
            for (prov, label), cs in seen.items():
                lines.append(
                    f"{prov + ' / ' + label:<40} {max(c.max_abs_error for c in cs):>14.3e} "
                    f"{max(c.rel_error for c in cs):>10.3e}"
                )
        else:
            lines.append("ONNX Runtime check: skipped (verify=False)")
        return "\n".join(lines)


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    mode: str = "compact",
    opset: int | None = None,
    dynamic_batch: bool = True,
    verify: bool = True,
    *,
    random_inputs: int = 2,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    exporter: str = "dynamo",
) -> ExportResult:
    """Export `model` to ONNX at `path`, check its size, and verify it in ONNX Runtime.

    mode="compact" stores each bank and each residual factor once and computes every effective
    weight in the graph; mode="dense" merges the links into per-layer weights first (for
    runtimes that cannot fold constants). Every export checks that the stored tensors take at
    most ``unique torch parameter + buffer bytes * 1.01 + 64 KiB`` (`ExportSizeError` names the
    tensors that grew). With `verify`, `onnx.checker` and ONNX Runtime run on the written file
    (example input + `random_inputs` random ones) before it is moved into place
    (`VerificationError` when over rtol/atol). Files above `external_data_threshold` bytes of
    tensors get their data in ``<path>.data``. `exporter` other than "dynamo" exists to compare
    with torch's constant-folding exporters, which duplicate shared weights. `model` is not
    modified (eval mode is set for the export and restored).
    """
    if mode not in EXPORT_MODES:
        raise ConfigError(f"mode must be one of {', '.join(EXPORT_MODES)}, got {mode!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"export_onnx expects a torch.nn.Module, got {type(model).__name__}")
    if random_inputs < 0 or rtol < 0 or atol < 0:
        raise ConfigError("random_inputs, rtol and atol must be non-negative")
    args = as_args(example_inputs)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    with eval_mode(model):
        try:
            num_outputs = len(torch_outputs(model, args))
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"the model does not run on the example inputs ({type(exc).__name__}: {exc})"
            ) from exc
        exported = merge_links(model, args).eval() if mode == "dense" else model
        proto = to_onnx(
            exported, args, exporter=exporter, opset=opset, dynamic_batch=dynamic_batch,
            num_outputs=num_outputs,
        )
        tensors = torch_tensors(exported)
        sizes = check_size(proto, tensors)
        checks: list[tuple[OrtCheck, ...]] = []

        def validate(tmp: Path) -> None:
            check_onnx_file(tmp)
            if verify:
                checks.append(verify_onnx(
                    tmp, model, args, random_inputs=random_inputs, rtol=rtol, atol=atol,
                ))

        files = write_onnx(
            proto, path, tensor_bytes=sum(sizes.values()), threshold=external_data_threshold,
            validate=validate,
        )
    result = ExportResult(
        path=Path(path), files=files, bytes=sum(f.stat().st_size for f in files),
        initializer_bytes=MappingProxyType(dict(sizes)),
        torch_bytes=sum(t.nbytes for t in tensors),
        torch_parameter_bytes=torch_bytes(exported, buffers=False), mode=mode, opset=opset,
        external_data=len(files) > 1, checks=checks[0] if checks else (),
    )
    log.info("exported %s: %d bytes, max rel error %s", path, result.bytes, result.max_rel_error)
    return result
