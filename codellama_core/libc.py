"""The C library's functions, looked up by name in one place.

In: a symbol name. Out: the ctypes function, or None where this C library has no such symbol or none is found (another
libc, macOS without it, Windows): callers fall back to doing without.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def function(symbol: str) -> Any:
    """A function of the C library by name, or None (not found: another libc, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), symbol)
    except (OSError, AttributeError):
        return None
