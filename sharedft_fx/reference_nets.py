"""Three small reference CNNs for the digits benchmarks and the demo, trained once and cached.

=========  ============================================================  ======
name       architecture                                                  params
=========  ============================================================  ======
resnet     9 basic blocks, widths 32/64/128 (as in RESEARCH.md)          ~1.08 M
vgg        plain 3x3 conv stack, widths 32/64/128, three convs a stage   ~0.5 M
mobilenet  MobileNetV2-style inverted residuals (expand 4), widths 16-64  ~0.1 M
=========  ============================================================  ======

    >>> model, info = trained_reference("resnet", epochs=30)   # cached under ~/.cache/sharedft-fx
    >>> info["test_accuracy"] > 0.98
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import DIGITS_CLASSES, digits_loaders
from .errors import InputError
from .io import atomic_path, write_json_atomic
from .modes import eval_mode

__all__ = [
    "DigitsResNet",
    "DigitsVGG",
    "DigitsMobileNet",
    "REFERENCE_NETS",
    "build_reference",
    "trained_reference",
    "evaluate_accuracy",
    "cache_dir",
]

log = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """ResNet of 3 stages x 3 basic blocks, widths 32/64/128, for 16x16 inputs."""

    def __init__(self, in_channels: int = 1, num_classes: int = DIGITS_CLASSES,
                 widths: tuple[int, int, int] = (32, 64, 128), blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(cin if j == 0 else w, w, 2 if (j == 0 and i > 0) else 1)
                     for j in range(blocks)]
            layers.append(nn.Sequential(*stage))
            cin = w
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DigitsVGG(nn.Module):
    """Plain VGG-style stack: three 3x3 conv+BN+ReLU per stage, widths 32/64/128, max-pool."""

    def __init__(self, in_channels: int = 1, num_classes: int = DIGITS_CLASSES,
                 widths: tuple[int, int, int] = (32, 64, 128), convs: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            for _ in range(convs):
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                cin = w
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


class DigitsMobileNet(nn.Module):
    """MobileNetV2-style: stem, inverted residual stages (16, 32, 64; 3 blocks each), head."""

    def __init__(self, in_channels: int = 1, num_classes: int = DIGITS_CLASSES,
                 widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 3,
                 expand: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU6(inplace=True),
        )
        layers = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(InvertedResidual(cin, w, 2 if (j == 0 and i > 0) else 1, expand))
                cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(cin, 256, 1, bias=False), nn.BatchNorm2d(256),
                                  nn.ReLU6(inplace=True))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


REFERENCE_NETS: dict[str, Callable[..., nn.Module]] = {
    "resnet": DigitsResNet,
    "vgg": DigitsVGG,
    "mobilenet": DigitsMobileNet,
}


def build_reference(name: str, **kwargs: Any) -> nn.Module:
    if name not in REFERENCE_NETS:
        raise InputError(f"unknown reference net {name!r}; choose from {sorted(REFERENCE_NETS)}")
    return REFERENCE_NETS[name](**kwargs)


def cache_dir() -> Path:
    """Where trained reference nets are kept (``$SHAREDFT_CACHE`` or ~/.cache/sharedft-fx)."""
    root = os.environ.get("SHAREDFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sharedft-fx"
    )
    return Path(root) / "reference"


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    """Top-1 accuracy of a classifier in eval mode (restores its mode)."""
    correct = total = 0
    with eval_mode(model):
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def _train(model: nn.Module, epochs: int, seed: int, lr: float) -> None:
    train, _, _ = digits_loaders(batch_size=64, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * len(train)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        for x, y in train:
            # light augmentation: random shifts of up to one pixel
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("reference training epoch %d/%d loss %.4f", epoch + 1, epochs, loss.item())
    model.eval()


def trained_reference(
    name: str, epochs: int = 30, seed: int = 0, lr: float = 0.05, cache: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """A reference net trained on digits (train split), cached by (name, epochs, seed, lr).

    Returns the model in eval mode and its info: val/test accuracy, parameters, cache path.
    """
    from safetensors.torch import load_model, save_model

    key = hashlib.sha256(json.dumps([name, epochs, seed, lr, 1]).encode()).hexdigest()[:12]
    path = cache_dir() / f"digits-{name}-{key}.safetensors"
    info_path = path.with_suffix(".json")
    torch.manual_seed(seed)
    model = build_reference(name)
    if cache and path.is_file() and info_path.is_file():
        try:
            load_model(model, str(path))
            info = json.loads(info_path.read_text())
            return model.eval(), info
        except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, not fatal
            log.warning("ignoring unreadable cached reference net %s (%s)", path, exc)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _train(model, epochs, seed, lr)
    _, val, test = digits_loaders()
    info = {
        "name": name,
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "params": sum(p.numel() for p in model.parameters()),
        "val_accuracy": evaluate_accuracy(model, val),
        "test_accuracy": evaluate_accuracy(model, test),
        "path": str(path),
    }
    if cache:
        with atomic_path(path) as tmp:
            save_model(model, str(tmp))
        write_json_atomic(info_path, info)
    return model.eval(), info
