"""One completion, from document text to the texts the editor shows: shared by the server and the CLI.

In: the LF-normalised document text, the cursor offset, the settings, how many distinct items are
wanted, the engine and the type-through cache. Out: a ``Completion`` (texts relative to the cursor,
still with LF newlines, plus where they came from and what the engine spent).

Stages, each a pure function elsewhere: type-through cache (``cache``) -> engine (``context`` +
``fim`` + llama.cpp on the worker) -> ``postprocess.clean``. The engine call is awaited, never run on
the event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

from . import postprocess
from .cache import TypeThroughCache
from .config import Settings
from .context import Cursor, cursor
from .engines import CompletionRequest, CompletionResult, Engine


@dataclass
class Completion:
    texts: list[str]
    source: Literal["cache", "model", "none"]
    result: CompletionResult | None = None
    pipeline_ms: float = 0.0  # time in this process outside the engine's worker
    timings: dict[str, float] = field(default_factory=dict)


def stop_rule(cur: Cursor):
    """Stop generating once ``postprocess.clean`` would cut what follows anyway."""
    mid_line = bool(cur.line_suffix.strip())
    base = postprocess.indent(cur.line_prefix)

    def rule(raw: str) -> bool:
        if mid_line:
            return "\n" in raw
        # a line after the first that leaves the cursor's block (its indentation is known as soon as it
        # has a non-blank character)
        return any(ln.strip() and postprocess.indent(ln) < base for ln in raw.split("\n")[1:])

    return rule


async def complete(
    engine: Engine,
    cache: TypeThroughCache,
    key: str,
    text: str,
    offset: int,
    settings: Settings,
    n: int = 1,
    request_id: str = "-",
) -> Completion:
    t0 = time.perf_counter()
    hit = cache.get(key, text, offset)
    # a hit holds what an earlier request asked for (often one item): a request for several goes to the model
    if hit is not None and len(hit) >= max(1, n):
        return Completion(texts=hit[: max(1, n)], source="cache", pipeline_ms=(time.perf_counter() - t0) * 1e3)
    cur = cursor(text, offset)
    request = CompletionRequest(text=text, offset=offset, settings=settings, n=n, request_id=request_id, stop_rule=stop_rule(cur))
    t1 = time.perf_counter()
    job = engine.submit(request)
    try:
        result = await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        job.cancel("cancelled")  # $/cancelRequest or a closed connection: stop at the next token
        raise
    t2 = time.perf_counter()
    suffix = result.context.suffix if result.context else cur.line_suffix
    texts: list[str] = []
    truncated = result.stop in ("length", "time")
    for raw in result.texts:
        cleaned = postprocess.clean(raw, cur.line_prefix, cur.line_suffix, suffix, truncated=truncated)
        if cleaned is not None and cleaned not in texts:
            texts.append(cleaned)
    if result.stop not in ("cancelled", "superseded"):
        cache.put(key, text, offset, texts)
    t3 = time.perf_counter()
    return Completion(
        texts=texts,
        source="model" if texts else "none",
        result=result,
        pipeline_ms=((t1 - t0) + (t3 - t2)) * 1e3,
    )
