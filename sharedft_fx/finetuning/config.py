"""`FinetuneConfig`: how `finetune` trains a shared model (one schema for the API and the CLI).

    >>> cfg = FinetuneConfig(epochs=3, lr=1e-3)
    >>> FinetuneConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..config_io import ConfigIO, help_field as _help

__all__ = ["FinetuneConfig", "OPTIMIZERS", "AMP_MODES", "OUTPUT_LOSSES", "BANK_LR_SCALES"]

OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("auto", "off", "bf16", "fp16")
OUTPUT_LOSSES = ("auto", "kl", "mse")
BANK_LR_SCALES = ("1/k", "1/sqrt(k)", "none")




@dataclass(frozen=True)
class FinetuneConfig(ConfigIO):
    """Recipe of a fine-tune: losses, optimizer, schedule, checkpoints. Validated on construction.

    The defaults are the recipe measured in BENCHMARKS.md (digits ResNet at 36% of its
    parameters): AdamW at lr 5e-4 with 10 warmup steps and cosine decay, bank lr / k, residual
    weight decay 1e-4, clipping at 1.0, KL at T=2 plus 0.5 x cross-entropy, frozen BN statistics.
    """

    epochs: int = _help("Passes over the training data.", default=3)
    max_steps: int | None = _help(
        "Stop after this many optimizer steps in total (None: epochs decide).", default=None
    )
    batch_size: int = _help(
        "Global batch size (split evenly over the processes of a distributed run).", default=64
    )
    optimizer: str = _help("'adamw' or 'sgd' (momentum 0.9, Nesterov).", default="adamw")
    lr: float = _help("Peak learning rate (after warmup).", default=5e-4)
    min_lr_ratio: float = _help("The cosine schedule ends at lr * min_lr_ratio.", default=0.0)
    warmup_steps: int = _help("Linear warmup steps before the cosine decay.", default=10)
    bank_lr_scale: str = _help(
        "Learning rate of a bank used by k sites: lr/k ('1/k', its gradient is a sum over k "
        "uses), lr/sqrt(k) or lr ('none').",
        default="1/k",
    )
    weight_decay: float = _help(
        "Decay of plain weights (unshared convs, linear layers, banks).", default=0.0
    )
    residual_weight_decay: float = _help(
        "Decay of the low-rank residual factors B, A: the regulariser that pulls each site "
        "towards the shared weight. BatchNorm, biases, scales and gates are never decayed.",
        default=1e-4,
    )
    grad_clip: float | None = _help("Clip the gradient norm to this (None: no clipping).",
                                    default=1.0)
    temperature: float = _help("Distillation temperature T of the KL loss on logits.", default=2.0)
    distill_weight: float = _help("Weight of the distillation loss.", default=1.0)
    label_weight: float = _help(
        "Weight of the cross-entropy on labels, when the data has labels.", default=0.5
    )
    output_loss: str = _help(
        "Loss on outputs: 'kl' (logits, with temperature), 'mse' (normalised MSE, for "
        "non-logit outputs) or 'auto' (KL on 2-D float outputs, MSE on the rest).",
        default="auto",
    )
    feature_layers: tuple[str, ...] = _help(
        "Module paths (fnmatch patterns) whose outputs the student matches to the teacher's "
        "(normalised MSE); ['auto'] picks the last BatchNorm of each top-level stage.",
        default=(),
    )
    feature_weight: float = _help("Weight of the feature-matching loss.", default=1.0)
    freeze_bn_stats: bool = _help(
        "Keep BatchNorm running statistics fixed (eval-mode BN) while training its affine "
        "parameters: recalibrate before fine-tuning; it also makes a distributed run equal a "
        "single-process one.",
        default=True,
    )
    amp: str = _help(
        "Mixed precision: 'auto' (bf16 on GPUs that support it, fp16 with loss scaling on "
        "older GPUs, off on CPU), 'off', 'bf16' or 'fp16'.",
        default="auto",
    )
    seed: int = _help("Seed of the data order (a function of seed and epoch) and of torch.",
                      default=0)
    eval_every_epoch: bool = _help("Evaluate on the validation data after each epoch.",
                                   default=True)
    keep_best: bool = _help(
        "Return the weights of the best validation epoch (accuracy when labelled, else "
        "distillation loss).",
        default=True,
    )
    checkpoint_every: int = _help(
        "Write a checkpoint every N optimizer steps (0: only at epoch ends and on signals).",
        default=0,
    )
    num_workers: int = _help(
        "DataLoader worker processes (0 keeps resumption exact with random augmentation).",
        default=0,
    )
    progress: bool = _help("Show tqdm progress bars (rank 0 only).", default=True)
    handle_signals: bool = _help(
        "On SIGINT/SIGTERM finish the current step, write a checkpoint and return.", default=True
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_layers", self._strings("feature_layers"))
        for name in ("epochs", "batch_size"):
            self._int(name, minimum=1)
        for name in ("warmup_steps", "checkpoint_every", "num_workers", "seed"):
            self._int(name, minimum=0)
        if self.max_steps is not None:
            self._int("max_steps", minimum=1)
        for name in ("lr", "temperature"):
            self._float(name, positive=True)
        for name in ("weight_decay", "residual_weight_decay", "distill_weight", "label_weight",
                     "feature_weight", "min_lr_ratio"):
            self._float(name, positive=False)
        if self.min_lr_ratio > 1:
            raise ConfigError(f"FinetuneConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None:
            self._float("grad_clip", positive=True)
        for name, allowed in (("optimizer", OPTIMIZERS), ("amp", AMP_MODES),
                              ("output_loss", OUTPUT_LOSSES), ("bank_lr_scale", BANK_LR_SCALES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"FinetuneConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        for name in ("freeze_bn_stats", "eval_every_epoch", "keep_best", "progress",
                     "handle_signals"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"FinetuneConfig.{name} must be true or false")
        if self.distill_weight == 0 and self.label_weight == 0:
            raise ConfigError(
                "FinetuneConfig.distill_weight and label_weight are both 0: nothing to train on"
            )

    def _strings(self, name: str) -> tuple[str, ...]:
        value = getattr(self, name)
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"FinetuneConfig.{name} must be a list of strings, got {value!r}")
        return tuple(value)

    def _int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"FinetuneConfig.{name} must be an int >= {minimum}, got {value!r}")

    def _float(self, name: str, positive: bool) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        if not ok or (value <= 0 if positive else value < 0):
            bound = "> 0" if positive else ">= 0"
            raise ConfigError(f"FinetuneConfig.{name} must be a number {bound}, got {value!r}")
