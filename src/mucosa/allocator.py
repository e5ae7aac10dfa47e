"""glibc's memory allocator settings (``mallopt``), the one place mucosa changes them.

Training keeps freed blocks in the heap (no page faults on every step); the web service caps the number of
arenas (its memory stays flat under load). Elsewhere than Linux with glibc nothing changes.

Example:
    >>> from mucosa.allocator import mallopt
    >>> isinstance(mallopt(), bool)  # no settings: only says whether glibc's allocator is there
    True
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["mallopt"]

_OPTIONS = {"trim_threshold": -1, "mmap_max": -4, "arena_max": -8}  # glibc's M_* constants


def mallopt(**settings: int) -> bool:
    """Set glibc ``mallopt`` options by name (``trim_threshold``, ``mmap_max``, ``arena_max``); returns
    whether every setting took (False where glibc's allocator is not in use)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        function = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    function.argtypes, function.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(bool(function(_OPTIONS[name], value)) for name, value in settings.items())
