"""The process's C heap (glibc ``malloc``): give freed memory back before the results stage.

Why: DuckDB hands its query results to Arrow in buffers it gets from ``malloc`` (its own
buffer manager uses its bundled jemalloc, Arrow's pool mimalloc), and the results stage
streams every row through them, after the stages before it have used glibc's heaps too.
glibc's *dynamic* mmap threshold keeps freed large blocks there: once a large block mapped on
its own is freed, blocks up to that size come from the heaps instead, where freeing one maps
nothing back and the heaps fragment. Measured inside 10M sends (round 20 of #19, ``mallinfo2``
at the stage's highest RSS): glibc held 297-321 MiB from the system, 139-212 MiB of it free.

:func:`give_back` fixes the threshold at glibc's own starting value (blocks of 128 KiB or more are
mapped on their own and unmapped when freed) and trims the heaps. Called as the results stage
starts, the 10M sends peaked at 494-513 MiB against 515-542, as fast (results 17.2-18.6 s
against 16.6-18.8). Set for the whole process instead (glibc's free memory at the peak then
15 MiB, the peak 496), it made the load of a 1M run 14 % slower (1.06-1.08 against
0.93-0.95 s, three pairs: every large block a fresh mapping). It stays set after the stage
(glibc has no way back to the dynamic threshold): a long-lived process (a notebook) keeps
mapping large blocks on their own, which is glibc's behaviour until the first is freed.

Why ``ctypes``: ``mallopt`` and ``malloc_trim`` are glibc calls with no maintained Python
wrapper (Dask calls ``malloc_trim`` the same way). Where they do not exist (macOS, musl),
:func:`give_back` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import functools
import sys

__all__ = ["LARGE_BLOCK", "give_back"]

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's <malloc.h>
LARGE_BLOCK = 128 * 1024
"""Blocks at least this large are mapped on their own (glibc's starting threshold)."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library, when it is glibc (it has both calls)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # no C library to open, or not glibc (musl)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def give_back() -> bool:
    """Map large blocks on their own from now on, and return the free memory glibc's heaps
    hold to the system (``malloc_trim``). Returns whether the C library is glibc and took
    the setting."""
    libc = _glibc()
    if libc is None:
        return False
    mapped = bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK))
    libc.malloc_trim(0)
    return mapped
