"""Check an exported file: `onnx.checker`, then ONNX Runtime against torch on several inputs.

Errors per output, computed in float64::

    max_abs_error = max |ort - torch|
    rel_error     = ||ort - torch|| / ||torch||

An output passes when it is finite and ``rel_error <= rtol`` or ``max_abs_error <= atol`` (the
norm ratio is robust on deep random-weight nets whose activations reach 1e3; the absolute bound
covers outputs that are close to zero).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..errors import VerificationError
from ..modes import eval_mode
from .runtime import default_providers, ort_session

__all__ = ["OrtCheck", "check_onnx_file", "verify_onnx", "torch_outputs", "random_like"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrtCheck:
    """One output of one input run in one ONNX Runtime provider, compared with torch."""

    provider: str
    input: str
    output: str
    max_abs_error: float
    rel_error: float
    passed: bool


def check_onnx_file(path: str | os.PathLike[str]) -> None:
    """Run `onnx.checker` on the file (external data included); raise `VerificationError`."""
    try:
        onnx.checker.check_model(os.fspath(path))
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerificationError(f"onnx.checker rejects {path}: {first}") from None


def torch_outputs(model: nn.Module, args: tuple) -> list[np.ndarray]:
    """The tensor leaves of ``model(*args)`` in eval mode, as numpy arrays."""
    with eval_mode(model), torch.no_grad():
        out = model(*args)
    return [t.detach().cpu().numpy() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def random_like(args: tuple, seed: int) -> tuple:
    """Standard-normal inputs shaped like `args` (integer and bool tensors are kept as given)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(a.shape, generator=gen, dtype=a.dtype).to(a.device)
        if a.is_floating_point() else a
        for a in args
    )


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    got64 = np.asarray(got, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    if got64.shape != ref64.shape:
        return float("inf"), float("inf")
    if not np.isfinite(got64).all():
        return float("inf"), float("inf")
    diff = got64 - ref64
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    norm_ref = float(np.linalg.norm(ref64))
    norm_diff = float(np.linalg.norm(diff))
    rel = norm_diff / norm_ref if norm_ref > 0 else (0.0 if norm_diff == 0 else float("inf"))
    return max_abs, rel


def verify_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    args: tuple,
    *,
    random_inputs: int = 2,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    seed: int = 20_260_001,
    providers: list[str] | None = None,
) -> tuple[OrtCheck, ...]:
    """Compare ONNX Runtime with torch on `args` and `random_inputs` random inputs.

    Runs every provider of `default_providers()` (CPU; CUDA too when present) with the "fast"
    session. Raises `VerificationError` naming the worst output when any output is over
    tolerance; returns every comparison otherwise.
    """
    inputs: list[tuple[str, tuple]] = [("example", args)]
    # a seed of its own, so that a random input never repeats an example drawn with seed 0
    inputs += [(f"random {i + 1}", random_like(args, seed + i)) for i in range(random_inputs)]
    references = [(label, feed, torch_outputs(model, feed)) for label, feed in inputs]
    checks: list[OrtCheck] = []
    for provider in providers or default_providers():
        session = ort_session(path, memory="fast", providers=[provider])
        names = [i.name for i in session.get_inputs()]
        out_names = [o.name for o in session.get_outputs()]
        for label, feed, refs in references:
            if len(refs) != len(out_names):
                raise VerificationError(
                    f"the ONNX model has {len(out_names)} outputs but torch returns {len(refs)} "
                    "tensors; the export lost or added an output"
                )
            arrays: dict[str, Any] = {n: a.detach().cpu().numpy() for n, a in zip(names, feed)}
            got = session.run(None, arrays)
            for name, g, r in zip(out_names, got, refs):
                max_abs, rel = _compare(g, r)
                ok = bool(np.isfinite(rel) and (rel <= rtol or max_abs <= atol))
                checks.append(OrtCheck(provider, label, name, max_abs, rel, ok))
                log.debug("%s %s %s: max abs %.3e rel %.3e", provider, label, name, max_abs, rel)
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = max(failed, key=lambda c: (c.rel_error, c.max_abs_error))
        raise VerificationError(
            f"ONNX Runtime ({worst.provider}) output {worst.output!r} on the {worst.input} input "
            f"differs from torch: max abs error {worst.max_abs_error:.3e}, relative error "
            f"{worst.rel_error:.3e} (tolerance rtol {rtol:g}, atol {atol:g}; "
            f"{len(failed)} of {len(checks)} comparisons failed); no file was written"
        )
    return tuple(checks)
