"""Process-wide allocator setting for the scripts: keep freed memory for reuse.

A MAML-TRPO step on CPU allocates and frees thousands of tensors of a few MB (one task's
activations, ``[4000, 100]`` float32 = 1.6 MB, and their gradients). glibc's ``malloc`` serves
blocks above its mmap threshold (128 KB at start, raised as blocks are freed) with fresh
``mmap`` calls and returns the heap's free top to the system beyond its trim threshold, so
the next tensor of that size is paged in again: 60,000-150,000 page faults per outer step of
the halfcheetah-vel preset, each zeroing a page that the op then overwrites. With both
thresholds raised, freed blocks stay in the heap and are reused: the same step took 20-12,000
faults (``python -m experiments.bench_fisher --settings exact:0.1``, key ``minor_page_faults``).
That saves kernel time; the wall-clock gain is small (README, "One meta-iteration, and the
outer update").

:func:`keep_freed_memory` sets them with ``mallopt`` where the C library is glibc (Linux); it
does nothing elsewhere. ``ADAPTBED_MALLOC=system`` leaves the allocator as it is (to compare).
The process's peak resident memory is the same high-water mark either way; memory freed from
the peak is kept for reuse rather than returned, so the resident memory between iterations
stays at that mark.
"""

from __future__ import annotations

import ctypes
import os

#: ``mallopt`` parameter numbers of glibc's ``malloc.h``.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

#: Blocks below this come from the heap and free memory up to this stays there: 1 GiB.
THRESHOLD_BYTES = 1 << 30

#: The largest mmap threshold older glibc releases accept on 64-bit (``HEAP_MAX_SIZE / 2``).
OLD_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20

_ENV = "ADAPTBED_MALLOC"


def supported() -> bool:
    """Whether :func:`keep_freed_memory` applies here (glibc, and ``ADAPTBED_MALLOC`` is not
    ``system``); changes nothing."""
    return os.environ.get(_ENV, "") != "system" and _glibc() is not None


def keep_freed_memory(threshold: int = THRESHOLD_BYTES) -> bool:
    """Raise glibc ``malloc``'s mmap and trim thresholds to ``threshold`` bytes.

    Where glibc refuses so large an mmap threshold (older releases), it is set to 32 MiB, the
    most those accept. ``ADAPTBED_MALLOC=system`` leaves the allocator alone; any
    other value (or none) applies the setting.

    Returns whether the setting is in effect: False where ``ADAPTBED_MALLOC=system``, where
    the C library is not glibc, or where ``mallopt`` refused both values.
    """
    libc = _glibc() if os.environ.get(_ENV, "") != "system" else None
    if libc is None:
        return False
    mmap_set = (libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
                or libc.mallopt(M_MMAP_THRESHOLD, min(threshold, OLD_GLIBC_MAX_MMAP_THRESHOLD)) == 1)
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, threshold) == 1
    return mmap_set and trim_set


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library when it is glibc (it has ``gnu_get_libc_version``), else
    None. ``CDLL(None)`` looks the symbols up in the running process: no library search."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
