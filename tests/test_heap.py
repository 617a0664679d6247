"""bulkbatch.heap: after ``give_back``, glibc maps large blocks on their own again.

Run in a child process: the setting is the whole process's, and the test raises glibc's
dynamic threshold on purpose first (as the stages before the results stage do), with no
``MALLOC_*`` setting from the environment (one would fix the threshold from the start).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bulkbatch import heap

_PROBE = textwrap.dedent(
    """
    import ctypes
    from bulkbatch import heap

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2

    def mapped_by_a_block_of(size):
        before = libc.mallinfo2().hblkhd
        block = libc.malloc(size)
        grew = libc.mallinfo2().hblkhd - before
        libc.free(block)
        return grew

    libc.free(libc.malloc(8 << 20))  # freeing a mapped 8 MiB block raises the threshold
    before = mapped_by_a_block_of(1 << 20)
    took = heap.give_back()
    after = mapped_by_a_block_of(1 << 20)
    print(before, took, after)
    """
)


@pytest.mark.skipif(heap._glibc() is None, reason="glibc only (mallopt, malloc_trim)")
def test_give_back_maps_large_blocks_on_their_own_again() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    before, took, after = int(out[0]), out[1], int(out[2])
    assert before == 0  # the raised threshold: a 1 MiB block came from the heap
    assert took == "True"
    assert after >= 1 << 20  # mapped on its own, so unmapped when freed


def test_give_back_says_false_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    assert heap.give_back() is False
