"""What the server holds in memory, for ``codellama/memory``: a leak told from a cache filling up to its bound.

In: the server (its documents, caches, ring, request tables and engine). Out: a ``messages.Memory`` - each bounded
store's size, the process's resident set (``/proc/self/statm``), glibc's bytes in use (``mallinfo2``, which counts
llama.cpp's allocations too), Python's tracked objects and, under ``PYTHONTRACEMALLOC``, its allocated bytes.

Issue 23, item 12: RSS grew about 2 KB a keystroke over 10,000 pipelined ones. Read through this report (and
tracemalloc snapshots diffed by traceback), all of the growth after warm-up was the engine's kept prompts filling
their budget (``engines.kept``: 64 MiB for the demo model, reached after about 5,000 keystrokes of the soak); the
rest of the heap stays flat. ``bench/soak.py`` prints both.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import tracemalloc
from functools import cache
from typing import Any

from codellama_core import libc

from .. import messages


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


@cache
def _mallinfo2() -> Any:
    """glibc's ``mallinfo2`` (2.33+), or None."""
    fn = libc.function("mallinfo2")
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def trim() -> bool:
    """Give the allocator's free memory back to the system (glibc's ``malloc_trim``); False where there is none.
    What comes back is what the RSS held that no allocation used: fragmentation and free pages kept by the arenas,
    not a leak."""
    fn = libc.function("malloc_trim")
    if fn is None:
        return False
    fn(ctypes.c_size_t(0))
    return True


def report(server: Any, trim_first: bool = False) -> messages.Memory:
    """The memory report of ``server`` (a ``CodeLlamaServer``); called on the event loop. ``trim_first``: ``trim``
    before measuring (``codellama/memory`` with ``{"trim": true}``)."""
    if trim_first:
        gc.collect()
        trim()
    mi = _mallinfo2()
    info = mi() if mi is not None else None
    docs = list(server.workspace.text_documents.values())
    protocol = server.protocol
    kept = getattr(server.engine, "kept", None)
    return messages.Memory(
        rss_bytes=_rss(),
        malloc_in_use_bytes=None if info is None else int(info.uordblks + info.hblkhd),
        python_heap_bytes=tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        gc_objects=len(gc.get_objects()),
        asyncio_tasks=len(asyncio.all_tasks()),
        pending_requests=max(len(protocol._pending), len(protocol._request_futures), len(protocol._dispatched_on)),
        documents=len(docs),
        document_chars=sum(len(d.source) for d in docs),
        line_indexes=len(server.lines),
        cache_places=len(server.cache),
        ring_chunks=len(server.neighbors.ring),
        kept_prompts=0 if kept is None else len(kept),
        kept_prompt_bytes=0 if kept is None else kept.bytes,
        kept_prompt_budget=0 if kept is None else kept.budget,
    )
