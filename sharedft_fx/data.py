"""Data sets: scikit-learn's digits (real handwritten digits that ship inside the package, split
once and for all) and image folders for users' own data.

    >>> splits = digits_splits(size=16)
    >>> len(splits.train), len(splits.val), len(splits.test)
    (1257, 270, 270)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import InputError

__all__ = ["DigitsSplits", "digits_splits", "digits_loaders", "image_folder", "DIGITS_CLASSES"]

DIGITS_CLASSES = 10
_SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplits:
    """Fixed train / val / test splits (70 / 15 / 15 %, stratified, seed 0)."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    size: int
    channels: int


def digits_splits(size: int = 16, channels: int = 1) -> DigitsSplits:
    """scikit-learn's 8x8 digits, scaled to [0, 1], resized to `size`, normalised."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:  # pragma: no cover - the demo/test extras install it
        raise InputError(
            "the digits data set needs scikit-learn: pip install 'sharedft-fx[demo]'"
        ) from None
    if size < 8 or channels not in (1, 3):
        raise InputError(f"digits need size >= 8 and 1 or 3 channels, got {size}, {channels}")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - 0.3) / 0.4
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx = list(range(len(labels)))
    train_idx, rest = train_test_split(
        idx, test_size=0.3, random_state=_SPLIT_SEED, stratify=labels.numpy()
    )
    val_idx, test_idx = train_test_split(
        rest, test_size=0.5, random_state=_SPLIT_SEED, stratify=labels[rest].numpy()
    )

    def part(ix: list[int]) -> TensorDataset:
        t = torch.tensor(sorted(ix))
        return TensorDataset(images[t], labels[t])

    return DigitsSplits(part(train_idx), part(val_idx), part(test_idx), size, channels)


def digits_loaders(
    batch_size: int = 64, size: int = 16, channels: int = 1, seed: int = 0
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled with `seed`), val and test loaders over `digits_splits`."""
    s = digits_splits(size, channels)
    g = torch.Generator().manual_seed(seed)
    return (
        DataLoader(s.train, batch_size=batch_size, shuffle=True, generator=g),
        DataLoader(s.val, batch_size=256),
        DataLoader(s.test, batch_size=256),
    )


def image_folder(root: str | os.PathLike[str], image_size: int = 224, train: bool = True) -> Dataset:
    """A torchvision `ImageFolder` (one sub-folder per class) with the standard transforms.

    Raises `InputError` when the folder does not exist, has no class folders or no readable
    images.
    """
    from torchvision import datasets, transforms

    path = Path(root)
    if not path.is_dir():
        raise InputError(f"data folder {path} does not exist")
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if train:
        tf = transforms.Compose([
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ])
    else:
        tf = transforms.Compose([
            transforms.Resize(int(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ])
    try:
        dataset = datasets.ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, OSError) as exc:
        raise InputError(
            f"data folder {path} holds no images in class sub-folders ({exc}); expected "
            f"{path}/<class>/<image>.png"
        ) from None
    if len(dataset) == 0:
        raise InputError(f"data folder {path} holds no images")
    try:
        dataset[0]
    except Exception as exc:  # noqa: BLE001 - PIL errors for unreadable files
        raise InputError(f"data folder {path}: {dataset.samples[0][0]} is unreadable ({exc})") from None
    return dataset
