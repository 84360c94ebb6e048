"""Keep freed memory in the process, so that a training step does not fault its activations in afresh.

glibc hands blocks above a moving threshold straight back to the kernel when they are freed (and trims the
heap's free top), so every step's multi-megabyte activations arrive as new pages, zeroed by the kernel one
4 KiB fault at a time. Raising the mmap threshold to glibc's maximum (32 MiB) and the trim threshold to
1 GiB keeps those blocks for reuse. It changes where tensors live, never what is computed; what it gave here
is in the README (Performance, "A study in less time").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30}


def keep_freed_memory() -> bool:
    """Apply SETTINGS through glibc's mallopt; False where there is no glibc (macOS, musl) or where the user
    tuned malloc through MALLOC_* environment variables, which are left to rule."""
    if any(key.startswith("MALLOC_") for key in os.environ):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
