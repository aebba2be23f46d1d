"""glibc's malloc set up for CPU training: freed tensor buffers stay in the heap for reuse.

glibc serves every allocation above its mmap threshold (128 KiB, rising by itself to at
most 32 MiB) with fresh pages from the kernel and gives them back on free. A CPU training
step allocates and frees activations and gradients of tens of MiB each, thousands of
times, so each of those pages is zero-filled again by a page fault on its first touch: on
a 2-core AMD EPYC, `train/source_only_plain_camvid.yaml` spent a third of its time in the
kernel. With both thresholds raised, the buffers are reused from the heap instead
(`benchmarks/cpu_malloc_train.py` measures both in one run). The price is that the
process keeps its peak memory until it exits, which a training process reaches on every
iteration anyway. Arithmetic is unchanged: only where the bytes come from.
"""

from __future__ import annotations

import ctypes
import platform

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks below this come from the heap (mallopt takes a C int: at most 2 GiB - 1)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap is returned to the kernel only beyond this
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (its later allocations).

    Returns whether they were set: False where the C library is not glibc (musl, macOS,
    Windows), whose allocator is left as it is."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # the trim threshold first: with the mmap threshold alone, frees at the heap's top
    # would still be handed back to the kernel at the default 128 KiB
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
