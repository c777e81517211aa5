"""Giving freed memory back to the operating system between large steps."""

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` on another C library."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None


def release_heap():
    """Return the C heap's free pages to the OS (glibc; a no-op elsewhere).

    Arrays below glibc's mmap threshold (up to 32 MiB once it has adapted) live
    in the heap, and the heap keeps their pages after they are freed. A walk that
    frees one layer's arrays before making the next one's calls this between
    layers, so that its resident memory is one layer's, not the high-water mark
    of fragments. Returns whether anything was released.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
