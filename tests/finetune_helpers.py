"""Tiny models and data for the fine-tune tests (seconds on 2 CPU cores)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import sharedft_fx
from sharedft_fx.data import digits_splits


class TinyNet(nn.Module):
    """Four same-shape 3x3 convs (so two can share a bank with the others), BN, a linear head."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False)
                                   for _ in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(4))
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        for conv, bn in zip(self.convs, self.bns):
            x = F.relu(bn(conv(x))) + x
        return self.fc(x.mean((2, 3)))


def tiny_setup(seed: int = 0, n_train: int = 128, rank: int = 2):
    """(teacher, shared student, train set, val set) on 8x8 digits; the teacher is trained briefly."""
    torch.manual_seed(seed)
    splits = digits_splits(size=8)
    train = TensorDataset(*(t[:n_train] for t in splits.train.tensors))
    val = TensorDataset(*(t[:64] for t in splits.val.tensors))
    teacher = TinyNet()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    x, y = train.tensors
    for _ in range(15):
        loss = F.cross_entropy(teacher(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    result = sharedft_fx.transform(
        teacher, x[:4], sharedft_fx.ShareConfig(rank=rank, min_site_params=0)
    )
    return teacher, result, train, val


class NoisyDigits(torch.utils.data.Dataset):
    """Digits with Gaussian noise drawn from the global torch RNG (so resumption must restore it);
    calls `on_item[1]()` when item number `on_item[0]` is read."""

    def __init__(self, base: TensorDataset, on_item: tuple | None = None) -> None:
        self.base, self.on_item, self.reads = base, on_item, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        self.reads += 1
        if self.on_item is not None and self.reads == self.on_item[0]:
            self.on_item[1]()
        x, y = self.base[i]
        return x + 0.05 * torch.randn_like(x), y


RESUME_CONFIG = dict(epochs=2, batch_size=16, lr=3e-3, checkpoint_every=3, warmup_steps=2,
                     progress=False, seed=3)


def resume_case(on_item: tuple | None = None):
    """(teacher, shared model, noisy train set, val set, config) of the resume tests:
    64 samples, batch 16 -> 4 steps an epoch, 2 epochs, a checkpoint every 3 steps."""
    from sharedft_fx import FinetuneConfig

    teacher, result, train, val = tiny_setup(n_train=64)
    return (teacher, result.model, NoisyDigits(train, on_item), val,
            FinetuneConfig(**RESUME_CONFIG))
