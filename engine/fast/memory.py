"""Memory and BLAS tuning for the fast path: glibc malloc keeps freed memory for the next
step, and numpy's BLAS runs on one thread while the parts of a batch run on separate cores.
The other way round for a long-lived server: return_freed_memory gives it back after a burst.
"""

import ctypes
import os
import sys

try:  # optional: pins BLAS to one thread while the parts of a batch run on separate cores
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - exercised only where threadpoolctl is missing
    ThreadpoolController = None

_blas_controller = None
_memory_tuned = False


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates the same large arrays every time; by default glibc serves each
    from fresh mmap'd pages (and trims freed heap), so every step pays page faults again. This
    is the tuning of GLIBC_TUNABLES=glibc.malloc.mmap_threshold/trim_threshold, applied from
    inside the process: arrays up to 32 MiB come from the heap and freed memory is kept.
    Linux with glibc only (elsewhere nothing happens); KERNELSCOPE_MALLOC_TUNING=0 skips it.
    Called by engine.fast.model.build_model. Returns True when the setting was applied.
    """
    global _memory_tuned
    if _memory_tuned or not sys.platform.startswith("linux") or os.environ.get("KERNELSCOPE_MALLOC_TUNING") == "0":
        return _memory_tuned
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, mmap_threshold = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD in malloc.h
    _memory_tuned = bool(mallopt(mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(trim_threshold, 2**31 - 1))
    return _memory_tuned


def blas_on_one_thread():
    """A context that limits numpy's BLAS to one thread (a no-op without threadpoolctl)."""
    global _blas_controller
    if ThreadpoolController is None:
        return _NoLimit()
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


class _NoLimit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def return_freed_memory():
    """Give the memory glibc holds in its free lists back to the OS (malloc_trim(0)).

    A long-lived process that made something big once (a server that drew a large GIF or
    zipped an export on a thread-pool thread) otherwise keeps those pages, in every thread's
    arena, until it needs them again. Linux with glibc only (elsewhere nothing happens).
    Returns True when some memory was released.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(malloc_trim(0))
