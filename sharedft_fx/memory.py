"""Give freed heap memory back to the operating system between the phases of a transform.

glibc's malloc keeps memory freed in the middle of its heap (and, after a large block is freed,
serves blocks up to that size from the heap rather than from fresh mappings), so a forward pass
or a rewrite that allocates and frees many weight-sized temporaries leaves the process's
resident memory far above what is alive. ``malloc_trim(0)`` returns every whole free page to
the kernel; it changes no allocator setting and frees nothing that is in use.

Before (resnet50, resident memory over the start of `transform`, after alignment)::

    64 MiB resident, ~1 MiB of it alive

After ``release_free_memory()``::

    1 MiB resident
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Callable

__all__ = ["release_free_memory"]

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no C library handle
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (not musl)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim``); False where unavailable."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
