"""The table of small test models: each case is (name, factory, example-input factory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


class Conv2dStack(nn.Module):
    """Stem + four same-shape 3x3 convs with BN/ReLU and a residual add."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(4))
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = self.stem(x)
        for conv, bn in zip(self.convs, self.bns):
            x = x + torch.relu(bn(conv(x)))
        return self.head(x.mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(4, 12, 5, padding=2), nn.ReLU(),
            nn.Conv1d(12, 12, 5, padding=2), nn.ReLU(),
            nn.Conv1d(12, 12, 5, padding=4, dilation=2), nn.ReLU(),
            nn.Conv1d(12, 12, 5, stride=2, padding=2),
        )

    def forward(self, x):
        return self.layers(x)


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(2, 8, 3, padding=1)
        self.b = nn.Conv3d(8, 8, 3, padding=1)
        self.c = nn.Conv3d(8, 8, 3, padding=1, bias=False)
        self.d = nn.Conv3d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


class GroupedNet(nn.Module):
    """Grouped convs (groups=4) with stride / dilation / padding mixes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.g1 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.g2 = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
        self.g3 = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4)
        self.plain = nn.Conv2d(16, 16, 3, padding=1)  # same weight shape as none of the grouped

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.plain(self.g3(torch.relu(self.g2(torch.relu(self.g1(x))))))


class DepthwiseNet(nn.Module):
    """MobileNet-style depthwise + pointwise pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        blocks = []
        for i in range(3):
            blocks += [
                nn.Conv2d(24, 24, 3, padding=1, groups=24, stride=1 + (i == 2)),
                nn.BatchNorm2d(24), nn.ReLU6(),
                nn.Conv2d(24, 24, 1), nn.BatchNorm2d(24), nn.ReLU6(),
            ]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(self.stem(x))


class FunctionalConvNet(nn.Module):
    """Convs written as F.conv2d with parameter weights, and one weight held in a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.w0 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.w1 = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.2)
        self.w2 = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.2)
        self.b2 = nn.Parameter(torch.randn(8) * 0.1)
        self.register_buffer("fixed", torch.randn(8, 8, 3, 3) * 0.2)

    def forward(self, x):
        x = torch.relu(F.conv2d(x, self.w0, padding=1))
        x = torch.relu(F.conv2d(x, self.w1, padding=1))
        x = torch.relu(F.conv2d(x, self.w2, self.b2, stride=2, padding=1))
        return F.conv2d(x, self.fixed, padding=1)


class TiedNet(nn.Module):
    """conv2 uses conv1's weight parameter (tied by the user); conv3 is separate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2.weight = self.conv1.weight
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


class ReusedConvNet(nn.Module):
    """One conv module called twice in the forward (one site, two uses)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.other = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.shared(x))
        x = torch.relu(self.other(x))
        return self.shared(x)


class ControlFlowNet(nn.Module):
    """Data-dependent control flow at the top level: symbolic tracing fails there."""

    def __init__(self) -> None:
        super().__init__()
        self.features = Conv2dStack(8)
        self.branch = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x):
        if x.mean() > 100:  # data-dependent: never true for the test inputs
            return self.features(x) * 0
        return self.features(x) + self.branch(x).mean()


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv: a subclass with its own forward (the tracer enters it)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class CustomConvNet(nn.Module):
    """Conv subclasses with their own forward, reflect padding and 'same' padding."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.ws1 = StdConv2d(8, 8, 3, padding=1)
        self.ws2 = StdConv2d(8, 8, 3, padding=1)
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.same = nn.Conv2d(8, 8, 3, padding="same", dilation=2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.ws2(torch.relu(self.ws1(x))))
        return self.same(torch.relu(self.reflect(x)))


class NoConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.mlp(x)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], Any]
    shareable: bool = True  # has at least one group under the exhaustive test config


def _img(c: int = 3, s: int = 12) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, c, s, s)


CASES: tuple[Case, ...] = (
    Case("conv2d_stack", Conv2dStack, _img()),
    Case("conv1d", Conv1dNet, lambda: torch.randn(2, 4, 32)),
    Case("conv3d", Conv3dNet, lambda: torch.randn(1, 2, 6, 8, 8)),
    Case("grouped", GroupedNet, _img()),
    Case("depthwise", DepthwiseNet, _img()),
    Case("functional", FunctionalConvNet, _img()),
    Case("tied", TiedNet, _img()),
    Case("reused", ReusedConvNet, _img()),
    Case("control_flow", ControlFlowNet, _img()),
    Case("custom_conv", CustomConvNet, _img()),
    Case("no_conv", NoConvNet, lambda: torch.randn(4, 12), shareable=False),
)


def build_case(case: Case, seed: int = 0) -> tuple[nn.Module, Any]:
    torch.manual_seed(seed)
    model = case.build().eval()
    return model, case.inputs()
