"""Small models for the report tests (importable as a model spec: tests/_report_models.py:small_net)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FunctionalConv(nn.Module):
    """A conv subclass-like module that reads its weight and calls F.conv2d (a "read" use)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, c, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, 1, 1)


class SmallNet(nn.Module):
    """Stem, two stages of same-shape 3x3 convs (one with bias and reflect padding), a head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stage1 = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=True, padding_mode="reflect"), nn.ReLU(),
            FunctionalConv(16), nn.ReLU(),
        )
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.stage2 = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.ReLU(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(torch.relu(self.stem(x)))
        x = self.stage2(torch.relu(self.down(x)))
        return self.head(x.mean((2, 3)))


def small_net(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return SmallNet(num_classes)
