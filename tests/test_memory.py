"""Returning freed heap memory to the operating system."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sharedft_fx.memory import _MALLOC_TRIM, release_free_memory


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


@pytest.mark.skipif(_MALLOC_TRIM is None, reason="needs glibc's malloc_trim (Linux)")
def test_freed_heap_memory_goes_back_to_the_os() -> None:
    # 64 KiB tensors stay below glibc's mmap threshold: they live on the heap, and one that is
    # still alive at the end pins the heap's top, so freeing the others alone returns nothing
    start = _rss_mib()
    chunks = [torch.ones(16 * 1024) for _ in range(1024)]  # 64 MiB, touched
    assert _rss_mib() - start >= 48
    keep = chunks[-1]
    del chunks
    assert release_free_memory() is True
    assert _rss_mib() - start <= 16  # what was freed is no longer resident
    assert float(keep[0]) == 1.0


def test_without_malloc_trim_it_does_nothing(monkeypatch) -> None:
    monkeypatch.setattr(sys.modules["sharedft_fx.memory"], "_MALLOC_TRIM", None)
    assert release_free_memory() is False
