"""Pass infrastructure: a pass returns an honest result; the manager lints, recompiles, checks.

Example::

    >>> manager = PassManager([FindConvSites(), GroupConvSites(config)])
    >>> results = manager(model)          # lints and recompiles every graph after each pass
    >>> [r.modified for r in results]
    [False, False]
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..errors import PassError, SharedftError, VerificationError
from ..modes import eval_mode
from ..numerics import tree_relative_error
from ..tracing import graph_modules

__all__ = ["Pass", "PassResult", "PassManager", "OutputCheck"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    """What a pass did: the module it returns, whether it changed anything, and a few counts."""

    module: nn.Module
    modified: bool
    counts: Mapping[str, int] = field(default_factory=dict)
    name: str = ""


class Pass(abc.ABC):
    """A graph pass over every GraphModule partition of a model.

    Subclasses document themselves through the class attributes below; `tools/gen_pass_docs.py`
    turns them into the `passes/` catalog. Analysis passes only write ``node.meta``; rewrite
    passes read those annotations and change the graph.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "analysis"  # or "rewrite"
    matches: ClassVar[str] = ""
    preconditions: ClassVar[str] = ""
    invariants: ClassVar[str] = ""
    before: ClassVar[str] = ""
    after: ClassVar[str] = ""

    @property
    def preserves_outputs(self) -> bool:
        """Whether the model computes the same outputs after this pass (to float precision)."""
        return self.kind == "analysis"

    @abc.abstractmethod
    def run(self, module: nn.Module) -> PassResult:
        """Apply the pass to `module` (a model whose traced parts are GraphModules)."""

    def __call__(self, module: nn.Module) -> PassResult:
        return self.run(module)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True)
class OutputCheck:
    """Compare outputs before and after every pass that should preserve them.

    `reference` holds the outputs of the model the pipeline starts from.
    """

    example_inputs: tuple
    reference: Any
    tolerance: float = 1e-5

    def outputs(self, module: nn.Module) -> Any:
        """The module's outputs on the example inputs, in eval mode (its mode is restored)."""
        with eval_mode(module), torch.no_grad():
            return module(*self.example_inputs)


class PassManager:
    """Runs passes in order; after each, lints and recompiles every graph and optionally checks.

    Any failure is raised as an error naming the failing pass and the passes that ran before it.
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        check: OutputCheck | None = None,
        after_each: Callable[[Pass, PassResult], None] | None = None,
    ) -> None:
        self.passes = list(passes)
        self.check = check
        self.after_each = after_each  # called after each pass (and its lint and check)

    def __call__(self, module: nn.Module) -> list[PassResult]:
        results: list[PassResult] = []
        expected = self.check.reference if self.check is not None else None
        stale = False  # True once a pass that changes outputs on purpose has run
        for p in self.passes:
            done = [r.name for r in results]
            where = f"pass {p.name!r}" + (f" (after {', '.join(done)})" if done else "")
            # analysis passes never change the module (checked below): no new reference needed
            if self.check is not None and p.preserves_outputs and stale and p.kind != "analysis":
                expected, stale = self.check.outputs(module), False
            try:
                result = p(module)
                module = result.module
                for _, gm in graph_modules(module):
                    gm.graph.lint()
                    gm.recompile()
            except SharedftError as exc:
                raise _with_context(exc, where) from exc
            except Exception as exc:  # noqa: BLE001 - name the pass in every error
                raise PassError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
            if p.kind == "analysis" and result.modified:
                raise PassError(f"{where} is an analysis pass but reported modifying the module; "
                                "this is a bug in the pass, please report it")
            results.append(PassResult(result.module, result.modified, dict(result.counts), p.name))
            log.debug("%s: modified=%s counts=%s", p.name, result.modified, dict(result.counts))
            if self.after_each is not None:
                self.after_each(p, results[-1])
            if self.check is None or not result.modified:
                continue
            if not p.preserves_outputs:
                stale = True
                continue
            err = tree_relative_error(self.check.outputs(module), expected)
            if not err <= self.check.tolerance:
                raise VerificationError(
                    f"{where} changed the model's outputs (relative error {err:.3e} > "
                    f"{self.check.tolerance:g}); this is a bug in the pass, please report it"
                )
        return results


def _with_context(exc: SharedftError, where: str) -> SharedftError:
    new = type(exc)(f"{where}: {exc}")
    return new


