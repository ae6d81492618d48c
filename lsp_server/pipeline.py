"""One completion, from document text to the texts the editor shows: shared by the server and the CLI.

In: the LF-normalised document text, the cursor offset, the settings, how many distinct items are
wanted, the engine and the type-through cache. Out: a ``Completion`` (texts relative to the cursor,
still with LF newlines, plus where they came from, the context windows and what the engine spent).

The pipeline owns the prompt; data flows one way: type-through cache (``cache``) -> context windows
(``context.build``, counted in the model's tokens) and chunks of other files (``neighbors``) -> token ids (``fim.prompt_tokens`` with the engine's
``Vocab`` and sentinels) -> token healing (``healing.take_back``, where the prefix ends the prompt) ->
the engine (a leaf: token ids in, text out) -> ``postprocess.clean``. Building the prompt runs on a
worker thread and the engine on its own, so the event loop is never blocked. For languages with a
grammar, ``syntax.analyze`` parses the document on the syntax thread at the same time; the engine's
early stop uses it once it is ready, and post-processing (which parses again, with each candidate
inserted) runs on a thread too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from . import context, fim, healing, neighbors, postprocess, syntax
from .cache import TypeThroughCache
from .config import Settings
from .context import Cursor, cursor
from .engines import Engine, GenerationRequest, GenerationResult, Sampling
from .fim import FimContext
from .neighbors import Doc, Neighbors
from .vocab import Vocab

log = logging.getLogger(__name__)

SENTINEL_ROOM = 4  # prompt tokens that are not text: BOS and the three FIM sentinels


SyntaxSource = syntax.SyntaxInfo | concurrent.futures.Future[syntax.SyntaxInfo | None] | None


@dataclass
class Completion:
    texts: list[str]
    source: Literal["cache", "model", "none"]
    result: GenerationResult | None = None
    context: FimContext | None = None
    pipeline_ms: float = 0.0  # time in this process outside the engine's worker
    timings: dict[str, float] = field(default_factory=dict)


def stop_rule(cur: Cursor, info: SyntaxSource = None, rules: frozenset[str] = postprocess.RULES) -> Callable[[str], bool]:
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


SYNTAX_WAIT_S = 1.0  # how long an answer waits for its parse after the engine is done

# The newest request per engine (event-loop thread only): prompts are built on worker threads, so a
# request whose prompt was built after a newer one's must not reach the engine after it.
_TICKETS = itertools.count(1)
_LATEST: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

_COUNTERS: weakref.WeakKeyDictionary[object, context.TokenCounter] = weakref.WeakKeyDictionary()
_COUNTERS_LOCK = threading.Lock()


def token_counter(vocab: Vocab) -> context.TokenCounter:
    """The ``TokenCounter`` of a vocabulary (its per-line memo lives as long as the vocabulary)."""
    with _COUNTERS_LOCK:
        counter = _COUNTERS.get(vocab)
        if counter is None:
            counter = context.TokenCounter(lambda t: len(vocab.encode(t)), lambda t: len(vocab.encode_infill(t)))
            _COUNTERS[vocab] = counter
        return counter


@dataclass(frozen=True)
class Extra:
    """Where context from other files comes from: the server's ``Neighbors``, the document being completed
    (its ``text`` is the request's) and the other open documents (already filtered for privacy)."""

    neighbors: Neighbors
    doc: Doc
    others: tuple[Doc, ...]


def build_request(
    engine: Engine,
    text: str,
    offset: int,
    settings: Settings,
    n: int,
    request_id: str,
    cur: Cursor,
    info: SyntaxSource = None,
    extra: Extra | None = None,
) -> tuple[GenerationRequest, FimContext]:
    """Context windows (and chunks of other files) -> prompt ids -> token healing -> the engine's request
    (blocking: run off the loop)."""
    vocab = engine.vocab
    s = vocab.sentinels
    max_new = min(settings.max_tokens, engine.info.n_ctx // 4)
    room = engine.info.n_ctx - max_new - SENTINEL_ROOM
    if not s.has_fim:
        extra = None  # the prompt is the prefix alone (fim.py)
    # other files' chunks get extraContextTokens, at least a quarter of the context if the windows would
    # otherwise take it all; the windows' budget does not depend on what is chosen, so it stays put
    reserve = min(settings.extra_context_tokens, room // 4) if extra is not None else 0
    budget = min(settings.context_tokens, room - reserve)
    # without FIM the suffix cannot be shown to the model: the whole budget goes to the prefix
    ratio = settings.prefix_ratio if s.has_fim else 1.0
    counter = token_counter(vocab)
    ctx = context.build(text, offset, counter, budget, ratio, cur.line)
    if extra is not None and reserve > 0:
        window = (ctx.prefix_start, ctx.suffix_end)
        extra_budget = min(settings.extra_context_tokens, room - budget)
        chunks = extra.neighbors.select(extra.doc, offset, window, extra.others, extra_budget, counter.count, cur.line)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: other files' chunks: %s", request_id, ", ".join(f"{c.path}:{c.start_line}" for c in chunks) or "none")
        ctx = replace(ctx, extra=neighbors.render(chunks))
    prompt = fim.prompt_tokens(ctx, vocab, settings.fim_order)
    heal = b""
    if engine.info.can_heal and fim.prefix_ends_prompt(vocab, settings.fim_order):
        prompt, heal = healing.take_back(prompt, len(vocab.encode(ctx.prefix)), vocab.piece, healing.index_for(vocab))
    request = GenerationRequest(
        prompt=prompt, max_tokens=max_new, time_budget_s=settings.time_budget_ms / 1000.0, stop_tokens=s.eog,
        sampling=Sampling(temperature=settings.temperature), n=max(1, n), heal=heal, stop_text=stop_rule(cur, info, settings.rule_set),
        request_id=request_id,
    )  # fmt: skip
    return request, ctx


async def complete(
    engine: Engine,
    cache: TypeThroughCache,
    key: str,
    text: str,
    offset: int,
    settings: Settings,
    n: int = 1,
    request_id: str = "-",
    extra: Extra | None = None,
    language_id: str | None = None,
    line: int | None = None,
) -> Completion:
    """``line``: the line ``offset`` is on, when the caller knows it (a request's position): nothing then walks the
    document up to the cursor (see ``context.build``)."""
    t0 = time.perf_counter()
    hit = cache.get(key, text, offset, language_id or "")
    # a hit holds what an earlier request asked for (often one item): a request for several goes to the model
    if hit is not None and len(hit) >= max(1, n):
        return Completion(texts=hit[: max(1, n)], source="cache", pipeline_ms=(time.perf_counter() - t0) * 1e3)
    cur = cursor(text, offset, line)
    ticket = _LATEST[engine] = next(_TICKETS)
    # the syntax at the cursor: an incremental parse on the syntax thread, beside the prompt's evaluation
    # (by the editor's language id first: an ``untitled:`` buffer has no extension; a big document is not parsed)
    parsing = (
        syntax.submit(key, text, offset, language_id)
        if syntax.language_for(key, language_id) and len(text) <= syntax.MAX_BYTES
        else None
    )
    request, ctx = await asyncio.to_thread(build_request, engine, text, offset, settings, n, request_id, cur, parsing, extra)
    t1 = time.perf_counter()
    if _LATEST.get(engine) != ticket:  # a newer request arrived while this prompt was being built
        ms = (t1 - t0) * 1e3
        result = GenerationResult(candidates=[], stop="superseded", prompt_tokens=len(request.prompt), total_ms=ms)
        return Completion(texts=[], source="none", result=result, context=ctx, pipeline_ms=ms)
    job = engine.submit(request)
    try:
        result = await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        job.cancel("cancelled")  # $/cancelRequest or a closed connection: stop at the next token
        raise
    t2 = time.perf_counter()
    info: syntax.SyntaxInfo | None = None
    if parsing is not None:
        try:
            # the parse has had the engine's time; a parse that takes much longer (another document's, queued
            # on the one syntax thread) must not hold this answer: indentation rules then
            info = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(parsing)), SYNTAX_WAIT_S)
        except TimeoutError:
            log.info("%s: syntax analysis not done within %.1f s; indentation rules decide", request_id, SYNTAX_WAIT_S)
        except Exception:  # a grammar that fails on this text: indentation rules, and a trace in the log
            log.exception("%s: syntax analysis failed", request_id)
    rules = settings.rule_set

    def clean_all() -> list[str]:
        texts: list[str] = []
        for gen in result.candidates:
            truncated = gen.stop in ("length", "time", "context")  # cut off, not ended by EOT or a rule
            cleaned = postprocess.clean(gen.text, cur.line_prefix, cur.line_suffix, ctx.suffix, truncated, info, rules)
            if cleaned is not None and cleaned not in texts:
                texts.append(cleaned)
        return texts

    # with syntax, cleaning parses the document with each candidate inserted: off the event loop too
    texts = await asyncio.to_thread(clean_all) if info is not None and result.candidates else clean_all()
    if result.stop not in ("cancelled", "superseded"):
        cache.put(key, text, offset, texts, language_id or "")
    t3 = time.perf_counter()
    return Completion(
        texts=texts,
        source="model" if texts else "none",
        result=result,
        context=ctx,
        pipeline_ms=((t1 - t0) + (t3 - t2)) * 1e3,
        timings={"prompt_build_ms": (t1 - t0) * 1e3},
    )
