"""One completion, from document text to the texts the editor shows: shared by the server and the CLI.

In: the LF-normalised document text, the cursor offset, the settings, how many distinct items are
wanted, the engine and the type-through cache. Out: a ``Completion`` (texts relative to the cursor,
still with LF newlines, plus where they came from and what the engine spent).

Stages, each a pure function elsewhere: type-through cache (``cache``) -> engine (``context`` +
``fim`` + llama.cpp on the worker) -> ``postprocess.clean``. The engine call is awaited, never run on
the event loop. For languages with a grammar, ``syntax.analyze`` parses the document on the syntax
thread at the same time as the engine evaluates the prompt; the engine's early stop uses it once it is
ready, and post-processing (which parses again, with each candidate inserted) runs on a thread too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from . import postprocess, syntax
from .cache import TypeThroughCache
from .config import Settings
from .context import Cursor, cursor
from .engines import CompletionRequest, CompletionResult, Engine

log = logging.getLogger(__name__)


SyntaxSource = syntax.SyntaxInfo | concurrent.futures.Future | None


@dataclass
class Completion:
    texts: list[str]
    source: Literal["cache", "model", "none"]
    result: CompletionResult | None = None
    pipeline_ms: float = 0.0  # time in this process outside the engine's worker
    timings: dict[str, float] = field(default_factory=dict)


def stop_rule(cur: Cursor, info: SyntaxSource = None, rules: frozenset[str] = postprocess.RULES):
    """Stop generating once ``postprocess.clean`` would cut what follows anyway (``postprocess.end``).

    ``info``: the syntax at the cursor, or the future of its parse (running beside the prompt's
    evaluation): until that is done, the indentation rules decide.
    """

    def rule(raw: str) -> bool:
        return postprocess.end(raw, cur.line_prefix, cur.line_suffix, _syntax_now(info), rules) is not None

    return rule


def _syntax_now(info: SyntaxSource) -> syntax.SyntaxInfo | None:
    if not isinstance(info, concurrent.futures.Future):
        return info
    return info.result() if info.done() and info.exception() is None else None


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
    if hit is not None:
        return Completion(texts=hit[: max(1, n)], source="cache", pipeline_ms=(time.perf_counter() - t0) * 1e3)
    cur = cursor(text, offset)
    rules = settings.rule_set
    # the syntax at the cursor: an incremental parse on the syntax thread, while the engine evaluates the prompt
    info = syntax.submit(key, text, offset) if syntax.language_for(key) else None
    request = CompletionRequest(
        text=text, offset=offset, settings=settings, n=n, request_id=request_id, stop_rule=stop_rule(cur, info, rules)
    )
    t1 = time.perf_counter()
    job = engine.submit(request)
    try:
        result = await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        job.cancel("cancelled")  # $/cancelRequest or a closed connection: stop at the next token
        raise
    t2 = time.perf_counter()
    suffix = result.context.suffix if result.context else cur.line_suffix
    truncated = result.stop in ("length", "time")
    if info is not None:
        try:
            info = await asyncio.wrap_future(info)
        except Exception:  # a grammar that fails on this text: indentation rules, and a trace in the log
            log.exception("%s: syntax analysis failed", request_id)
            info = None

    def clean_all() -> list[str]:
        texts: list[str] = []
        for raw in result.texts:
            cleaned = postprocess.clean(raw, cur.line_prefix, cur.line_suffix, suffix, truncated, info, rules)
            if cleaned is not None and cleaned not in texts:
                texts.append(cleaned)
        return texts

    # with syntax, cleaning parses the document with each candidate inserted: off the event loop too
    texts = await asyncio.to_thread(clean_all) if info is not None and result.texts else clean_all()
    if result.stop not in ("cancelled", "superseded"):
        cache.put(key, text, offset, texts)
    t3 = time.perf_counter()
    return Completion(
        texts=texts,
        source="model" if texts else "none",
        result=result,
        pipeline_ms=((t1 - t0) + (t3 - t2)) * 1e3,
    )
