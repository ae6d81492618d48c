"""llama.cpp in-process engine: one worker thread owns the model's context and its KV cache.

In: ``GenerationRequest``s from any thread (``submit`` returns at once). Out: ``GenerationResult``s on
the jobs' futures. The model is loaded through the adapter (``codellama_core.llama``); its tokenizer view is
a ``vocab.LlamaVocab``, whose sentinels (from metadata or by text) add to the stop tokens, so a file
whose EOT llama.cpp does not know as end-of-generation still stops there.

How a request runs on the worker:

1. Reuse (``_prepare``): the context holds the tokens the previous request evaluated (prompt and generated
   tokens), and host memory holds copies of the contexts of recent places (``kept.KeptPrompts``, within
   ``EngineOptions.kept_prompts_mib``; by default eight full contexts, at most an eighth of the RAM). The live
   context and the kept copies are planned against the new prompt (``kept.plan``): the common prefix, then runs
   of ``reuse_min`` or more tokens found elsewhere in the cache, moved to their new positions (KV shifting, as
   llama-server's ``--cache-reuse``). The copy that reuses the most is put back (``llama_state_seq_set_data``),
   after the live context was copied out if it would lose evaluated tokens - also a prompt the time budget cut
   short, so its evaluation continues when the user comes back instead of starting over. Only the rest is
   evaluated, in chunks of ``PROMPT_CHUNK`` tokens. Typing at the cursor (SPM, anchored windows) re-evaluates a
   few tokens; a revisit of a kept place a few; a line inserted above the cursor the lines after it.
2. Generation, one token at a time: candidate 1 with ``sampling.temperature`` (greedy by default), the
   others with ``alt_temperature``, each from the end of the prompt. While part of ``heal`` is not yet
   covered, only the tokens ``healing.allowed`` names may come next; the healed text is removed from
   the output. It stops at an end-of-generation or stop token ("eot"), at ``max_tokens`` ("length"), when
   ``stop_text`` fires ("rule"), when the context is full ("context").
3. Between tokens, and between prompt chunks, the worker checks whether the job was cancelled or
   superseded and whether its time budget is spent.

Superseding: ``submit`` replaces a job still waiting for the worker (it resolves at once, no text) and
flags the running one, which stops at the next token. A partly evaluated prompt is not wasted: the
tokens that made it into the KV cache are reused by the next request (or kept, see 1).

Background requests (``GenerationRequest.background``, the server's prefill of a place the user opened or
rests at) evaluate the prompt only; they never supersede a real request and any real request supersedes them.
Where llama.cpp honours an abort callback (CPU builds; probed at warm-up, ``Context.enable_abort``) a real request
that has no use for the chunk under way (its prompt does not start with it: the user went elsewhere) stops that
decode between two graph nodes; one that would evaluate the same tokens again at once (a key at the place being
prefilled, the key after a cut prompt) lets the chunk finish and reuses it. So background work runs in chunks of
about ``BACKGROUND_CHUNK_MS`` (up to ``n_batch`` tokens: 1.4-1.6x the speed of 64-token chunks on the 92 M model)
and a request never waits for work it does not need. Elsewhere the chunks take about ``PREFILL_MS``, and a real
request waits at most one. A request whose prompt the time budget cut
(it answers nothing) goes on the same way once its answer is out (``_continuation``): the next key's request, which
wants nearly the same prompt, finds it evaluated instead of evaluating the rest in its own time.

Speed: the warm-up and every evaluated prompt chunk measure what a prompt token costs at its position (``Speed``: a
base plus a slope per position, attention's share) and ms per generated token, which the server uses to size
prompts for a latency target.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from codellama_core import cpuload, llama

from .. import healing
from ..lookup import DraftPolicy, Lookup
from ..sampling import sample
from ..vocab import LlamaVocab
from . import EngineError, EngineInfo, Generation, GenerationRequest, GenerationResult, Job, Stop, tokens_within
from .kept import KeptPrompts, Plan, common_prefix, plan

log = logging.getLogger(__name__)

MAX_DEFAULT_CTX = 4096  # a 7B model's f16 KV cache at 16k tokens is about 8 GiB; ask for more explicitly
PROMPT_CHUNK = 128  # tokens per decode call while evaluating a prompt (a cancellation point)
PREFILL_MS = 30.0  # a background prompt evaluation decodes in chunks of about this long (what a real request may wait)
PREFILL_MAX_MS = 100.0  # ... but in chunks of 64 tokens while they take at most this long (see _prefill_chunk)
BACKGROUND_CHUNK_MS = 150.0  # ... where a real request aborts the running decode: chunks of about this long
CONTINUE_BUDGET_S = 120.0  # a cut prompt's evaluation continued in the background: its own cap (any request stops it)
SAVE_MIN = 64  # evaluated tokens a request would lose that are worth a copy in host memory
RESTORE_GAIN = 16  # tokens a kept copy must reuse beyond the live context to be put back
KV_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class EngineOptions:
    n_ctx: int | None = None  # None: the model's training context, capped at MAX_DEFAULT_CTX; at most that context
    kv_type: str = "f16"
    threads: int | None = None
    n_gpu_layers: int = 0
    # llama.cpp's extra CPU buffer types (weight repacking, AMX); None: on unless the CPU has AMX (codellama_core.llama)
    cpu_repack: bool | None = None
    prompt_lookup: int = 8  # greedy decoding drafts up to this many tokens by prompt lookup (0: off)
    # host memory for the evaluated prompts of recent places (MiB; None: sized to the model, see ``kept_budget``; 0: off)
    kept_prompts_mib: int | None = None
    reuse_min: int = 64  # shortest run of moved tokens reused by KV shifting (0: the common prefix only)
    reuse_gap: int = 512  # most new tokens evaluated between two reused runs (0: reuse stops at the first new token)


SPEED_MIN_CHUNK = 64  # a smaller chunk measures llama.cpp's per-call cost more than the model (1.4-12 ms a token at 32-54)
SPEED_SAMPLES = 64  # recent prompt chunks the speed is fitted to (a full prompt is 10-20 of them)
SPEED_DECAY = 0.95  # weight of a chunk per newer one: a machine that gets busy shows within a prompt or two
SPEED_SPREAD = 256.0  # tokens: positions must spread this much (weighted std) before the slope is fitted again
WARM_DEPTH_S = 0.4  # the warm-up measures a deeper position too when filling the context that far takes at most this
WARM_DEPTH = 1024  # ... that far at most


@dataclass
class Speed:
    """What this engine measured on this machine: how long a prompt token takes and ms per generated token, from the
    warm-up and then from every evaluated prompt chunk (recent ones weigh more, so a machine that gets busy shows).

    A prompt token costs more the later it comes: attention reads every position before it. So the time per token is
    fitted as ``base_ms + ms_per_position * position`` (weighted least squares over the recent chunks, each at its
    middle position): on the 92 M test model a 128-token chunk took 52 ms at position 0 and 155 ms at 2,200, and a
    speed measured at the start of a prompt alone promised a cold 2,300-token jump in 0.8 s that took 1.65 s."""

    prompt_tps: float = 0.0  # at the start of a prompt (1000 / base_ms)
    gen_ms: float = 0.0
    samples: int = 0
    ms_per_position: float = 0.0  # what a prompt token costs more per position before it (ms)
    _chunks: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=SPEED_SAMPLES))

    @property
    def base_ms(self) -> float:
        return 1e3 / self.prompt_tps if self.prompt_tps > 0 else 0.0

    def chunk(self, start: int, tokens: int, ms: float) -> None:
        """One evaluated prompt chunk: ``tokens`` from position ``start`` in ``ms`` (fewer than ``SPEED_MIN_CHUNK`` are
        left out: they measure the call overhead, not the model)."""
        if tokens < SPEED_MIN_CHUNK or ms <= 0:
            return
        self._chunks.append((start + (tokens - 1) / 2, ms / tokens, float(tokens)))
        self.samples += 1
        self._fit()

    def _fit(self) -> None:
        n = len(self._chunks)
        x = np.array([c[0] for c in self._chunks])
        y = np.array([c[1] for c in self._chunks])
        w = np.array([c[2] for c in self._chunks]) * SPEED_DECAY ** np.arange(n - 1, -1, -1)
        mx, my = float(np.average(x, weights=w)), float(np.average(y, weights=w))
        var = float(np.average((x - mx) ** 2, weights=w))
        slope = self.ms_per_position
        if var >= SPEED_SPREAD**2:  # positions far enough apart to tell the slope (else the last one holds)
            slope = max(0.0, float(np.average((x - mx) * (y - my), weights=w)) / var)
        base = my - slope * mx
        if base <= 0.0:  # noise: a slope steeper than the samples allow; the mean alone then
            slope, base = 0.0, my
        self.ms_per_position = slope
        self.prompt_tps = 1e3 / base

    def prompt_ms(self, tokens: int, start: int = 0) -> float:
        """The predicted time to evaluate ``tokens`` prompt tokens from position ``start``."""
        return tokens * (self.base_ms + self.ms_per_position * (start + (tokens - 1) / 2))

    def tokens_within(self, ms: float, start: int = 0) -> int:
        """How many prompt tokens from position ``start`` are evaluated in about ``ms``."""
        return int(tokens_within(ms, self.base_ms + self.ms_per_position * start, self.ms_per_position))

    def generated(self, tokens: int, ms: float) -> None:
        if tokens > 0 and ms > 0:
            self.gen_ms = _average(self.gen_ms, ms / tokens)


def _average(old: float, new: float, weight: float = 0.2) -> float:
    return new if old <= 0 else (1 - weight) * old + weight * new


def kept_budget(bytes_per_token: float, n_ctx: int, ram: int | None = None) -> int:
    """The default host memory for kept prompts: eight full contexts, at most an eighth of the RAM and 8 GiB, but
    always one full context (a 7B model's f16 cache takes 0.5 MiB per token: 2 GiB for 4096 tokens)."""
    full = int(bytes_per_token * n_ctx)
    if ram is None:
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            ram = 8 << 30
    return max(full, min(8 * full, ram // 8, 8 << 30))


def context_size(asked: int | None, n_ctx_train: int) -> int:
    """The context to allocate: ``asked`` (``--n-ctx``), at most the length the model was trained at (Code Llama:
    16,384; past it the rope positions are ones the model never saw), or by default the trained length capped at
    ``MAX_DEFAULT_CTX`` (the KV cache grows with it: a 7B model's f16 cache is 0.5 MiB a token, 8 GiB at 16k,
    half that with ``kv_type`` q8_0). A model that does not say its length (0) gets what was asked, else 2048."""
    if asked is not None and asked < 1:
        raise EngineError(f"expected --n-ctx >= 1, got {asked}")
    if asked is None:
        return min(n_ctx_train or 2048, MAX_DEFAULT_CTX)
    if n_ctx_train and asked > n_ctx_train:
        log.warning("--n-ctx %d is more than the model's trained context %d: using %d", asked, n_ctx_train, n_ctx_train)
        return n_ctx_train
    return asked


@dataclass
class SpeculationStats:
    """Prompt-lookup counters since the engine started (the worker writes, anyone may read)."""

    decodes: int = 0  # decode calls during generation
    drafts: int = 0  # of them with a draft
    drafted: int = 0  # draft tokens evaluated
    accepted: int = 0  # draft tokens the model agreed with (generated without a decode call of their own)


class LlamaCppEngine:
    """Loads the GGUF (blocking: call it off the event loop) and starts the worker thread."""

    def __init__(
        self, path: Path, name: str, options: EngineOptions = EngineOptions(), progress: Callable[[float], None] | None = None
    ) -> None:
        """``progress``, when given, receives llama.cpp's load progress (0.0 .. 1.0) on the loading thread."""
        if options.kv_type not in KV_TYPES:
            raise EngineError(f"expected --kv-type one of {', '.join(KV_TYPES)}, got {options.kv_type!r}")
        try:
            repack = options.cpu_repack if options.cpu_repack is not None else not llama.cpu_has_amx()
            self._model = llama.Model(
                path, llama.LoadOptions(n_gpu_layers=options.n_gpu_layers, extra_bufts=repack, progress=progress)
            )
        except llama.LlamaError as exc:
            raise EngineError(str(exc)) from None
        try:
            self.vocab = LlamaVocab(self._model)
            n_ctx = context_size(options.n_ctx, self._model.n_ctx_train)
            ctx_options = llama.ContextOptions(
                n_ctx=n_ctx, threads=options.threads, kv_type=options.kv_type, flash_attn=True, scratch=options.reuse_gap > 0
            )
            self._ctx = llama.Context(self._model, ctx_options)
        except llama.LlamaError as exc:
            self._model.close()
            raise EngineError(str(exc)) from None
        self.info = EngineInfo(
            name=name, where=str(path), n_ctx=self._ctx.n_ctx, n_ctx_train=self._model.n_ctx_train,
            vocab_size=self._model.n_vocab, can_heal=True, kind="llama.cpp",
        )  # fmt: skip
        self._heal_index = healing.index_for(self.vocab)
        self._lookup_n = max(0, options.prompt_lookup)
        self._policy = DraftPolicy(self._lookup_n)  # draft lengths that pay on this model and machine
        self.stats = SpeculationStats()
        self.speed = Speed()
        self._options = options
        self._reuse_min = max(0, options.reuse_min) if self._ctx.can_shift else 0
        self._reuse_gap = max(0, options.reuse_gap) if self._reuse_min else 0
        self._kept = KeptPrompts(0)
        self._abortable = False  # llama.cpp stops a decode when asked (set at warm-up)
        self._armed: Job | None = None  # the background job whose decodes a real request aborts
        self._inflight: tuple[Sequence[int], int] = ((), 0)  # its prompt, and where the decode under way ends
        # threads: the configured count on an idle machine, the cores left over while other processes hold some
        # (codellama_core.cpuload); --threads fixes the count
        self._threads_most = self._ctx.threads
        cpus = cpuload.cpus()
        self._cores = len(cpus) if cpus else (os.cpu_count() or self._threads_most)  # the CPUs the load is sampled on
        adaptive = options.threads is None and self._threads_most > 1 and cpuload.adaptive()
        self._load = cpuload.OtherLoad().start() if adaptive else None
        self._live_saved: tuple[int, ...] = ()  # the live tokens as last copied to or from the kept prompts
        self.bytes_per_token = 0.0
        log.info("model %s sentinels: %s", name, self.vocab.sentinels.describe())
        self._cv = threading.Condition()
        self._pending: Job | None = None
        self._running: Job | None = None
        self._closed = False
        self._warm = Future[None]()
        self._thread = threading.Thread(target=self._loop, name="llama-cpp-worker", daemon=True)
        self._thread.start()
        try:
            self._warm.result()
        except Exception as exc:
            self.close()
            raise EngineError(f"expected llama.cpp to evaluate a first batch, got: {exc}") from None

    # ---- public API --------------------------------------------------------------------------------
    @property
    def cached_tokens(self) -> int:
        return len(self._ctx.tokens)

    @property
    def kept(self) -> KeptPrompts:
        """The evaluated prompts kept in host memory (read-only use: the worker changes it)."""
        return self._kept

    def reset(self, timeout: float = 60.0) -> None:
        """Forget the KV cache (the next request evaluates its whole prompt); for baselines and tests.

        Waits for the worker to finish what it is doing first.
        """
        with self._cv:
            if not self._cv.wait_for(lambda: self._running is None and self._pending is None, timeout):
                raise EngineError(f"expected the engine to become idle within {timeout:g} s, got a request still running")
            self._ctx.truncate(0)
            self._kept.clear()
            self._live_saved = ()

    def submit(self, request: GenerationRequest) -> Job:
        """Queue ``request``; it supersedes a waiting one and stops a running one at its next token. A background
        request (``request.background``) never does: it is dropped when a real one waits or runs, and any real
        request supersedes it."""
        job = Job(request)
        with self._cv:
            if self._closed:
                job.future.set_exception(EngineError("expected a running engine, got one that was closed"))
                return job
            if request.background and any(j is not None and not j.request.background for j in (self._pending, self._running)):
                self._resolve_empty(job, "superseded")
                return job
            if self._pending is not None:
                self._pending.cancel("superseded")
                self._resolve_empty(self._pending, "superseded")
            if self._running is not None:
                self._running.cancel("superseded")
                if self._armed is self._running and not self._needs_inflight(request.prompt):
                    self._ctx.abort()  # a background decode the request has no use for: stop it now
            self._pending = job
            self._cv.notify_all()
        return job

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            if self._pending is not None:
                self._resolve_empty(self._pending, "cancelled")
                self._pending = None
            if self._running is not None:
                self._running.cancel("cancelled")
                if self._armed is self._running:
                    self._ctx.abort()
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        if self._load is not None:
            self._load.stop()
        self._ctx.close()
        self._model.close()

    # ---- worker ------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_empty(job: Job, stop: Stop) -> None:
        if not job.future.done():
            job.future.set_result(GenerationResult(candidates=[], stop=stop))

    def _warm_up(self) -> None:
        """The first decodes, on the worker thread, before "ready".

        llama.cpp sets up its compute graphs and OpenMP thread team on the first decode (~0.4 s even for a
        tiny model): pay that here, with the two batch shapes requests use. It runs on the worker because
        every decode of a context must come from one thread: libgomp keeps a team of threads per calling
        thread, and once two callers' teams exist together it counts more busy threads than cores and stops
        spinning at its barriers (futex sleeps at every layer): generation with 2 threads measured 4.0-4.2
        instead of 3.1 ms per token here when the warm-up ran on the loading thread.
        """
        try:
            # the machine's load decides the threads from the first decode: the speed measured here sizes the prompts
            self._fit_threads(wait_s=0.15)
            warm = [self.vocab.sentinels.bos or 0] * min(PROMPT_CHUNK, max(1, self.info.n_ctx // 2))
            self._ctx.decode(warm)
            self._ctx.decode(warm[:1])
            # the first measure of this machine's speed (the first decode above also set up llama.cpp's graphs)
            ms = []
            for _ in range(2):  # the faster of two: a scheduler hiccup on a shared machine is not the model's speed
                self._ctx.truncate(0)
                t = time.perf_counter()
                self._ctx.decode(warm)
                ms.append((time.perf_counter() - t) * 1e3)
            self.speed.chunk(0, len(warm), min(ms))
            ms = []
            for _ in range(2):  # the faster of two here too: one slow token on a busy machine sized prompts to the least
                t = time.perf_counter()
                self._ctx.decode(warm[:1])
                ms.append((time.perf_counter() - t) * 1e3)
            self.speed.generated(1, min(ms))
            self.bytes_per_token = self._ctx.state_size() / len(self._ctx.tokens)
            self._warm_depth(warm)
            self._ctx.truncate(0)
            try:
                self._abortable = self._ctx.enable_abort()
            except (llama.LlamaError, OSError, AttributeError, TypeError, ValueError) as exc:  # a hook we cannot set
                log.info("llama.cpp's abort callback is not available (%s): background work in small chunks", exc)
                self._ctx.clear()
            self._ctx.truncate(0)
            self._set_kept_budget()
        except Exception as exc:
            self._warm.set_exception(exc)
            raise
        self._warm.set_result(None)

    def _warm_depth(self, warm: list[int]) -> None:
        """Where filling the context takes little time (small models, fast machines), the speed deeper in a prompt too:
        there attention, which reads every earlier position, costs the most next to the rest of the model, and a speed
        measured at position 0 alone sizes prompts that take twice the time (``Speed``). Slower engines learn it from
        their first prompts."""
        depth = min(WARM_DEPTH, self.info.n_ctx // 2, self.speed.tokens_within(WARM_DEPTH_S * 1e3))
        depth = depth // len(warm) * len(warm)
        if depth < 4 * len(warm) or depth + len(warm) > self.info.n_ctx:
            return
        self._ctx.truncate(0)
        for _ in range(0, depth, len(warm)):
            self._ctx.decode(warm)
        ms = []
        for _ in range(2):  # the faster of two, as at position 0
            self._ctx.truncate(depth)
            t = time.perf_counter()
            self._ctx.decode(warm)
            ms.append((time.perf_counter() - t) * 1e3)
        self.speed.chunk(depth, len(warm), min(ms))

    def _set_kept_budget(self) -> None:
        mib = self._options.kept_prompts_mib
        budget = kept_budget(self.bytes_per_token, self.info.n_ctx) if mib is None else max(0, mib) << 20
        self._kept.budget = budget
        full = self.bytes_per_token * self.info.n_ctx
        log.info(
            "kept prompts: up to %.0f MiB of host memory%s (%.1f KiB per token: %.1f full contexts of %d tokens); "
            "moved text reused from %s; speed at warm-up: %.0f prompt tokens/s (%s), %.1f ms per generated token; threads: %s; "
            "background work %s",
            budget / 2**20, "" if mib is None else " (--kept-prompts-mib)", self.bytes_per_token / 1024,
            budget / full if full else 0.0, self.info.n_ctx,
            f"runs of {self._reuse_min}+ tokens" if self._reuse_min else "nowhere (the common prefix only)",
            self.speed.prompt_tps,
            f"{1e3 / (self.speed.base_ms + self.speed.ms_per_position * 2048):.0f} at token 2048"
            if self.speed.ms_per_position else "at the start of a prompt; deeper ones measured as they come",
            self.speed.gen_ms,
            f"{self._threads_most}" + (", fewer while other processes keep cores busy" if self._load else " (fixed)"),
            "aborted by a request that has no use for it" if self._abortable else f"in chunks of about {PREFILL_MS:.0f} ms",
        )  # fmt: skip

    def _loop(self) -> None:
        try:
            self._warm_up()
        except Exception:
            return
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                job = self._pending
                if self._closed or job is None:
                    return
                self._pending = None
                self._running = job
            try:
                if job.cancelled:
                    self._resolve_empty(job, job.reason)
                else:
                    result = self._run(job)
                    if not job.future.done():
                        job.future.set_result(result)
                    if (more := self._continuation(job, result)) is not None:
                        self._continue(more)
            except Exception as exc:  # the worker must survive; the job's caller sees the error
                log.exception("completion %s failed", job.request.request_id)
                self._ctx.clear()  # what the cache holds may no longer match its tokens: start from nothing
                self._live_saved = ()
                if not job.future.done():
                    job.future.set_exception(EngineError(f"expected llama.cpp to complete, got: {exc}"))
            finally:
                with self._cv:
                    self._running = None
                    self._cv.notify_all()

    def _continuation(self, job: Job, result: GenerationResult) -> Job | None:
        """A real request whose prompt the time budget cut (nothing generated): its evaluation goes on in the
        background once the answer is out, so that the next key, which wants nearly the same prompt, finds it done
        instead of evaluating the rest itself. None when nothing is left or a request waits."""
        req = job.request
        if req.background or result.stop != "time" or result.generated_tokens:
            return None
        if result.reused_tokens + result.evaluated_tokens >= result.prompt_tokens:
            return None
        more = Job(replace(req, background=True, time_budget_s=CONTINUE_BUDGET_S, request_id=f"{req.request_id}+"))
        with self._cv:
            if self._pending is not None or self._closed:
                return None
            self._running = more  # a real request submitted now supersedes it (between two small chunks)
        return more

    def _continue(self, more: Job) -> None:
        r = self._run(more)
        more.future.set_result(r)
        log.info(
            "%s continued in the background (its prompt was cut by the time budget): stop=%s prompt=%d reused=%d "
            "evaluated=%d in %.1f ms",
            more.request.request_id, r.stop, r.prompt_tokens, r.reused_tokens, r.evaluated_tokens, r.prompt_ms,
        )  # fmt: skip

    @staticmethod
    def _interrupted(job: Job) -> Stop | None:
        if job.cancelled:
            return job.reason
        if time.perf_counter() > job.deadline:
            return "time"
        return None

    def _fit_threads(self, wait_s: float = 0.0) -> int:
        """Threads for the next request: as many as the cores other processes leave free (see ``cpuload``)."""
        if self._load is not None:
            others = self._load.cores(wait_s)
            n = cpuload.threads_beside(others, self._threads_most, self._cores)
            if n != self._ctx.threads:
                log.info("threads: %d (other processes keep %.1f of %d CPUs busy)", n, others, self._cores)
                self._ctx.set_threads(n)
        return self._ctx.threads

    def _run(self, job: Job) -> GenerationResult:
        req = job.request
        prompt = list(req.prompt)
        result = GenerationResult(candidates=[], stop="eot", prompt_tokens=len(prompt), threads=self._fit_threads())
        if not prompt or len(prompt) >= self.info.n_ctx:
            result.stop = "context"
            return self._finish(result, job)
        t1 = time.perf_counter()
        pos = self._prepare(prompt, result)
        step = self._prefill_chunk() if req.background else PROMPT_CHUNK
        with self._armed_for(job):
            while pos < len(prompt):
                if (why := self._interrupted(job)) is not None:
                    result.stop = why
                    result.prompt_ms = (time.perf_counter() - t1) * 1e3
                    return self._finish(result, job)
                chunk = prompt[pos : pos + step]
                self._inflight = (prompt, pos + len(chunk))
                t = time.perf_counter()
                try:
                    self._ctx.decode(chunk)
                except llama.Aborted:  # a real request came (``submit``): the cache holds what it held before the chunk
                    if self._interrupted(job) is None:  # (only ``submit`` and ``close`` abort, after cancelling the job)
                        job.cancel("superseded")
                    continue
                # every chunk is a measurement, a cut evaluation's too (only finished ones would miss the slowest)
                self.speed.chunk(pos, len(chunk), (time.perf_counter() - t) * 1e3)
                pos += len(chunk)
                result.evaluated_tokens += len(chunk)
        t2 = time.perf_counter()
        result.prompt_ms = (t2 - t1) * 1e3
        if req.background:  # a prefill: the prompt is evaluated, nothing to generate
            result.stop = "length"
            return self._finish(result, job)
        stops = req.stop_tokens | self.vocab.sentinels.eog
        firsts: list[int] = []  # each candidate's first choice past the healed text: later ones choose otherwise
        for i in range(max(1, req.n)):
            if i > 0:  # back to the end of the prompt; re-run its last token to get its logits again
                self._ctx.truncate(len(prompt) - 1)
                self._ctx.decode(prompt[-1:])
            temp = req.sampling.temperature if i == 0 else req.sampling.alt_temperature
            # candidates after the first may not start with an earlier one's first token, nor end at once
            banned = [*firsts, *stops] if firsts else []
            gen = self._generate(job, stops, temp, np.random.default_rng((req.sampling.seed, i)), banned)
            if (first := self._first_choice(gen.tokens, req.heal)) is not None:
                firsts.append(first)
            result.generated_tokens += len(gen.tokens)
            if i == 0 or gen.stop in ("cancelled", "superseded"):
                result.stop = gen.stop
            if gen.stop in ("cancelled", "superseded"):
                break
            result.candidates.append(gen)
            if gen.stop == "time":
                break
        result.generate_ms = (time.perf_counter() - t2) * 1e3
        self.speed.generated(result.generated_tokens, result.generate_ms)
        return self._finish(result, job)

    def _first_choice(self, tokens: Sequence[int], heal: bytes) -> int | None:
        """The first of ``tokens`` that goes past the healed text ``heal`` (None if none does).

        Tokens before it only re-spell ``heal`` (say four spaces of indentation): banning those would
        not make a later candidate say something else, only make it spell the same text in pieces the
        model never saw there, and then write nonsense.
        """
        pending = heal
        for tok in tokens:
            piece = self.vocab.piece(tok)
            if not (pending and pending.startswith(piece)):
                return tok
            pending = healing.advance(pending, piece)
        return None

    @staticmethod
    def _finish(result: GenerationResult, job: Job) -> GenerationResult:
        result.total_ms = (time.perf_counter() - job.submitted) * 1e3
        if result.stop in ("cancelled", "superseded"):
            result.candidates = []
        return result

    def _needs_inflight(self, prompt: Sequence[int]) -> bool:
        """Whether ``prompt`` starts with everything the running background decode will have evaluated: then the
        request would evaluate that chunk again at once (a key at the place being prefilled, the key after a cut
        prompt), and letting the chunk finish costs it nothing; it is aborted only when the request has no use for it."""
        evaluating, end = self._inflight
        return len(prompt) >= end and list(prompt[:end]) == list(evaluating[:end])

    @contextlib.contextmanager
    def _armed_for(self, job: Job) -> Iterator[None]:
        """While a background ``job`` evaluates its prompt, a real request aborts its running decode (``submit``)."""
        if not (self._abortable and job.request.background):
            yield
            return
        with self._cv:
            self._ctx.reset_abort()
            self._armed = job
            if job.cancelled:  # superseded before it was armed
                self._ctx.abort()
        try:
            yield
        finally:
            with self._cv:
                self._armed = None
                self._ctx.reset_abort()

    def _prefill_chunk(self) -> int:
        """Tokens per decode of a background evaluation: about ``PREFILL_MS`` on this machine, so a real request
        that supersedes it waits that long at most; 64 while that takes at most ``PREFILL_MAX_MS``.

        A small model's decode of a few dozen tokens costs mostly per-call overhead (thread barriers), the more on a
        busy machine: measured on the 92 M model, 2 threads, load 8, a 1,906-token prompt evaluated in chunks of 32
        ran at 214-306 tokens/s, of 64 at 322-535, of 128 at 461-688. A big model's decode is compute: there 32
        tokens already take about ``PREFILL_MS`` or more, and stay the chunk. The speed is the one at the start of a
        prompt (``Speed``), deeper chunks take longer: sized by the position, they were smaller and slower (the 92 M
        model's 2,300-token prompt in chunks of about 150 ms there: 2.1 s; of 440 tokens: 1.86 s; of 512: 1.81 s)."""
        tps = self.speed.prompt_tps
        if self._abortable:  # a real request does not wait for the chunk: only an aborted chunk's work is lost
            return int(min(self._ctx.n_batch, max(PROMPT_CHUNK, tps * BACKGROUND_CHUNK_MS / 1e3)))
        return int(min(PROMPT_CHUNK, max(32, tps * PREFILL_MS / 1e3, min(64, tps * PREFILL_MAX_MS / 1e3))))

    def _prepare(self, prompt: list[int], result: GenerationResult) -> int:
        """Make the context hold as much of ``prompt`` as can be reused, and say how many tokens that is (at least
        one token is left to evaluate: its logits start the generation).

        The live context and every kept copy are planned against the prompt (``kept.plan``: the common prefix plus
        moved runs); the best is used. Before the live context loses evaluated tokens it is copied to host memory,
        so that coming back costs nothing, also for a prompt the time budget cut short.
        """
        limit = len(prompt) - 1
        live = self._ctx.tokens
        best = plan(live, prompt, limit, self._reuse_min, max_gap=self._reuse_gap)
        source: int | None = None
        if self._kept.budget and len(self._kept) and best.reused < limit - RESTORE_GAIN:
            p = np.asarray(prompt, dtype=np.int64)
            # a cheap score first (the common prefix, or the prompt's grams the copy has), full plans for the best few
            ranked = sorted(
                self._kept.entries(), key=lambda e: max(common_prefix(e[1].tokens, p, limit), e[1].index.hits(p)), reverse=True
            )
            for key, e in ranked[:3]:
                got = plan(e.tokens, prompt, limit, self._reuse_min, e.index, self._reuse_gap)
                if got.reused > best.reused + RESTORE_GAIN:
                    best, source = got, key
        # the chosen copy first: saving the live context may drop it from the store (over the budget, or made
        # redundant by the live copy), and it is still put back from here
        kept = self._kept.take(source) if source is not None else None
        if kept is not None or len(live) - best.reused >= SAVE_MIN:
            self._save_live()
        if kept is not None:
            self._ctx.load_state(kept.state)
            self._live_saved = kept.tokens
            result.restored_tokens = len(kept.tokens)
        self._apply(best)
        result.reused_tokens = best.reused
        result.moved_tokens = best.moved
        result.evaluated_tokens += best.inserted
        return best.covered

    def _apply(self, p: Plan) -> None:
        n = len(self._ctx.tokens)
        if p.covered == p.prefix:  # the common prefix: cut the rest
            self._ctx.truncate(p.covered)
        elif p.pieces != ((0, n),):
            self._ctx.rearrange(list(p.pieces))

    def _save_live(self) -> None:
        """Copy the live context to host memory, unless it is small or already kept as it is."""
        tokens = tuple(self._ctx.tokens)
        if len(tokens) < SAVE_MIN or not self._kept.budget or tokens == self._live_saved:
            return
        if self.bytes_per_token * len(tokens) > self._kept.budget:
            return
        self._kept.add(self._ctx.save_state())
        self._live_saved = tuple(self._ctx.tokens)

    def _generate(
        self, job: Job, stops: frozenset[int], temperature: float, rng: np.random.Generator, banned: Sequence[int] = ()
    ) -> Generation:
        """One candidate from the end of the prompt (its logits are the last decode's).

        Per token the Python side does a fixed amount of work: an argmax over the logits (greedy) or
        llama.cpp's sampler chain (sampled; NumPy only while token healing constrains the choice), the
        token's text is decoded incrementally (never the whole output again), and the batch it is
        evaluated in was allocated once. With greedy decoding, prompt lookup drafts the next tokens from
        the prompt and the output so far (as many as pay for themselves on this model:
        ``lookup.DraftPolicy``); they are evaluated with the token in one batch and kept as far as the
        model's own choice agrees, so the output is exactly the plain greedy one (``lookup``).
        """
        req = job.request
        s = req.sampling
        heal = req.heal
        out: list[int] = []
        text = ""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        skip = len(heal)  # bytes of the output that repeat the healed text (covered first, then dropped)
        room = self.info.n_ctx - len(self._ctx.tokens)
        limit = min(req.max_tokens, room)
        stop: Stop = "length" if req.max_tokens <= room else "context"
        pending = heal  # healed text the output has not covered yet
        greedy = temperature <= 0.0
        # sampled candidates: llama.cpp's sampler chain (top-k, top-p, temperature, a seeded draw) in C. Greedy:
        # an argmax over the logits view, which costs a tenth of llama_sampler_sample (that builds a
        # candidate array of the whole vocabulary on every call): 6 vs 61 us for 32016 ids here
        sampler = None if greedy else llama.Sampler(temperature, s.top_k, s.top_p, int(rng.integers(2**32)))
        spec = self._lookup_n if greedy else 0
        history = Lookup(self._ctx.tokens, len(self._ctx.tokens) + limit + spec + 1) if spec else None
        draft: list[int] = []  # evaluated after the token at ``row``, not yet confirmed
        drafted = 0  # the length of the last draft
        row = -1  # the logits row (index in the last decode's batch) the next token comes from
        chosen = False  # whether a token past the healed text came yet (``_first_choice``)
        try:
            while len(out) < limit:
                if banned and not chosen:  # a later candidate's first choice: not one an earlier one made
                    logits = self._ctx.logits(row).copy()
                    logits[list(banned)] = -np.inf
                    allowed = healing.allowed(pending, self._heal_index) if pending else None
                    if not np.isfinite(logits if allowed is None else logits[allowed]).any():
                        break  # nothing else to offer
                    tok = sample(logits, temperature, rng, top_k=s.top_k, top_p=s.top_p, allowed=allowed)
                elif pending:
                    allowed = healing.allowed(pending, self._heal_index)
                    tok = sample(self._ctx.logits(row), temperature, rng, top_k=s.top_k, top_p=s.top_p, allowed=allowed)
                elif sampler is None:
                    tok = int(np.argmax(self._ctx.logits(row)))
                else:
                    tok = sampler.sample(self._ctx, row)
                if tok in stops:
                    stop = "eot"
                    break
                piece = self.vocab.piece(tok)
                chosen = chosen or not (pending and pending.startswith(piece))
                if pending:
                    pending = healing.advance(pending, piece)
                if skip:
                    cut = min(skip, len(piece))
                    skip -= cut
                    piece = piece[cut:]
                out.append(tok)
                text += utf8.decode(piece)
                if req.stop_text is not None and req.stop_text(text):
                    stop = "rule"
                    break
                if (why := self._interrupted(job)) is not None:
                    stop = why
                    break
                if len(out) >= limit:
                    break
                if history is not None:
                    history.extend((tok,))
                if draft and draft[0] == tok:  # the model chose the drafted token: already evaluated
                    draft.pop(0)
                    row += 1
                    self.stats.accepted += 1
                    if not draft:
                        self._policy.verified(drafted, drafted)
                    continue
                if draft:  # rejected: the cache positions after the last agreed token are wrong now
                    self._policy.verified(drafted, drafted - len(draft))
                    self._ctx.truncate(len(self._ctx.tokens) - len(draft))
                draft = []
                if history is not None and not pending:
                    n_draft = self._policy.size(min(limit - len(out) - 1, self.info.n_ctx - len(self._ctx.tokens) - 1))
                    draft = history.draft(n_draft) if n_draft else []
                drafted = len(draft)
                t = time.perf_counter()
                self._ctx.decode([tok, *draft], every_logits=bool(draft))
                self._policy.decoded((time.perf_counter() - t) * 1e3, drafted)
                row = 0
                if draft:
                    self.stats.drafts += 1
                    self.stats.drafted += drafted
                self.stats.decodes += 1
        finally:
            if sampler is not None:
                sampler.close()
        text += utf8.decode(b"", final=True)
        return Generation(text=text, tokens=out, stop=stop)
