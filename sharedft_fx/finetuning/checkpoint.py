"""Checkpoints that resume a fine-tune exactly: model, optimizer, scheduler, RNG states, and the
position in the data order (epoch + batches done; the order is a function of seed and epoch).

    >>> save_checkpoint("run/checkpoint.pt", state)     # atomic: a kill never leaves half a file
    >>> state = load_checkpoint("run/checkpoint.pt")
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_path, check_format

__all__ = ["CHECKPOINT_FILE", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT = "sharedft-fx.finetune-checkpoint"
_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python random states, as weights-only-loadable data."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write `state` (plus a format tag) atomically with `torch.save`."""
    with atomic_path(path) as tmp:
        torch.save({"format": _FORMAT, "version": _VERSION, **state}, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights-only: no code runs)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise InputError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {exc})") from None
    return check_format(state, fmt=_FORMAT, version=_VERSION, what=str(p),
                        kind="fine-tune checkpoint")
