"""Distillation losses for any model output: KL on logits, normalised MSE on the rest.

All losses are means over the samples of a batch, so a distributed run (which averages
gradients over processes holding equal shares of the global batch) computes the same gradient
as one process holding the whole batch.

    >>> s, t = torch.randn(8, 10), torch.randn(8, 10)
    >>> float(kl_logits(t, t, temperature=2.0))
    0.0
    >>> float(distill_loss({"a": s, "b": [s]}, {"a": s, "b": [s]}, temperature=2.0))
    0.0
"""

from __future__ import annotations

import contextlib
import fnmatch
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..numerics import flatten_tensors

__all__ = [
    "kl_logits",
    "normalized_mse",
    "distill_loss",
    "is_logits",
    "check_same_structure",
    "FeatureTaps",
    "auto_feature_layers",
]

_EPS = 1e-8


def kl_logits(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * (t * t)


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||s - t||² / ||t||²`` averaged over the batch (first dimension)."""
    s = student.float().reshape(student.shape[0], -1) if student.dim() else student.float()[None]
    t = teacher.float().reshape(teacher.shape[0], -1) if teacher.dim() else teacher.float()[None]
    num = (s - t).pow(2).sum(-1)
    den = t.pow(2).sum(-1).clamp_min(_EPS)
    return (num / den).mean()


def is_logits(t: torch.Tensor) -> bool:
    """2-D float tensors with more than one column are treated as class logits."""
    return t.is_floating_point() and t.dim() == 2 and t.shape[1] > 1


def distill_loss(student: Any, teacher: Any, temperature: float, kind: str = "auto") -> torch.Tensor:
    """Mean over the tensor leaves of two outputs of the same structure (tensors, dicts, lists).

    `kind`: 'kl' (all leaves are logits), 'mse', or 'auto' (KL where `is_logits`, else MSE).
    """
    s_leaves, _ = flatten_tensors(student)
    t_leaves, _ = flatten_tensors(teacher)
    losses = []
    for s, t in zip(s_leaves, t_leaves):
        if not (isinstance(s, torch.Tensor) and s.is_floating_point()):
            continue
        use_kl = kind == "kl" or (kind == "auto" and is_logits(t))
        losses.append(kl_logits(s, t.detach(), temperature) if use_kl
                      else normalized_mse(s, t.detach()))
    if not losses:
        raise InputError("the model outputs hold no floating-point tensors to distill")
    return torch.stack(losses).mean()


def check_same_structure(student: Any, teacher: Any) -> None:
    """Raise `InputError` when two outputs differ in structure or tensor shapes."""
    s_leaves, s_spec = flatten_tensors(student)
    t_leaves, t_spec = flatten_tensors(teacher)
    if s_spec != t_spec:
        raise InputError(
            f"the teacher's outputs do not have the model's structure (model: {s_spec}, teacher: "
            f"{t_spec}); the teacher must be the original model the shared one was made from"
        )
    for i, (s, t) in enumerate(zip(s_leaves, t_leaves)):
        if isinstance(s, torch.Tensor) and isinstance(t, torch.Tensor) and s.shape != t.shape:
            raise InputError(
                f"output {i} of the teacher has shape {tuple(t.shape)} but the model's has "
                f"{tuple(s.shape)}; the teacher must be the original model the shared one was "
                "made from"
            )


def auto_feature_layers(teacher: nn.Module, student: nn.Module) -> list[str]:
    """The last BatchNorm of each top-level child of `teacher` that the student also has."""
    names = dict(student.named_modules())
    picked = []
    for child_name, child in teacher.named_children():
        last = None
        for name, mod in child.named_modules(prefix=child_name):
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and name in names:
                last = name
        if last is not None:
            picked.append(last)
    return picked


class FeatureTaps:
    """Forward hooks recording the outputs of the named modules of a student and its teacher.

    >>> taps = FeatureTaps(student, teacher, ["layer1.2.bn2"])
    >>> with taps.recording():
    ...     s_out, t_out = student(x), teacher(x)
    >>> taps.loss()          # normalised MSE averaged over the layers
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, patterns: list[str]) -> None:
        s_names = dict(student.named_modules())
        t_names = dict(teacher.named_modules())
        if list(patterns) == ["auto"]:
            self.layers = auto_feature_layers(teacher, student)
        else:
            self.layers = sorted({
                n for p in patterns for n in t_names if n and fnmatch.fnmatchcase(n, p)
            })
            missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in t_names)]
            if missing:
                raise InputError(f"feature_layers {missing} match no module of the teacher")
        absent = [n for n in self.layers if n not in s_names]
        if absent:
            raise InputError(
                f"feature layers {absent} exist in the teacher but not in the model (convs that "
                "were shared are functional calls now: pick BatchNorm or activation modules)"
            )
        self._student = {n: s_names[n] for n in self.layers}
        self._teacher = {n: t_names[n] for n in self.layers}
        self.student_out: dict[str, torch.Tensor] = {}
        self.teacher_out: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator["FeatureTaps"]:
        handles = []
        self.student_out, self.teacher_out = {}, {}
        try:
            for store, mods in ((self.student_out, self._student), (self.teacher_out, self._teacher)):
                for name, mod in mods.items():
                    handles.append(mod.register_forward_hook(
                        (lambda st, n: (lambda m, i, o: st.__setitem__(n, o)))(store, name)
                    ))
            yield self
        finally:
            for h in handles:
                h.remove()

    def loss(self) -> torch.Tensor:
        """Normalised MSE between the recorded outputs, averaged over the layers."""
        missing = [n for n in self.layers if n not in self.student_out or n not in self.teacher_out]
        if missing:
            raise InputError(
                f"feature layers {missing} did not run in the forward pass of the model or the "
                "teacher; name modules that are called"
            )
        return torch.stack([
            normalized_mse(self.student_out[n], self.teacher_out[n].detach()) for n in self.layers
        ]).mean()
