"""Fine-tuning a shared model: distillation from the original, regularisation towards the shared
weights, distributed training under torchrun, exact resumption.

    >>> from sharedft_fx import finetune, FinetuneConfig
    >>> tuned = finetune(result.model, original, train_set, val_set, FinetuneConfig(epochs=3))
"""

from __future__ import annotations

from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .config import FinetuneConfig
from .distill import distill_loss, kl_logits, normalized_mse
from .optim import bank_uses, build_optimizer, param_groups, warmup_cosine
from .train import BEST_FILE, METRICS_FILE, FinetuneResult, evaluate, finetune

__all__ = [
    "finetune",
    "evaluate",
    "FinetuneConfig",
    "FinetuneResult",
    "distill_loss",
    "kl_logits",
    "normalized_mse",
    "param_groups",
    "build_optimizer",
    "bank_uses",
    "warmup_cosine",
    "save_checkpoint",
    "load_checkpoint",
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "BEST_FILE",
]
