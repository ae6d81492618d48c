"""llama.cpp in-process engine: one worker thread owns the model's context and its KV cache.

In: ``GenerationRequest``s from any thread (``submit`` returns at once). Out: ``GenerationResult``s on
the jobs' futures. The model is loaded through the adapter (``lsp_server.llama``); its tokenizer view is
a ``vocab.LlamaVocab``, whose sentinels (from metadata or by text) add to the stop tokens, so a file
whose EOT llama.cpp does not know as end-of-generation still stops there.

How a request runs on the worker:

1. KV reuse: the context still holds the tokens the previous request evaluated (prompt and generated
   tokens). The longest common prefix of those and the new prompt is kept; only the rest is evaluated,
   in chunks of ``PROMPT_CHUNK`` tokens. With SPM prompts and anchored windows, typing one character
   re-evaluates a few tokens at the end of the prefix.
2. Generation, one token at a time: candidate 1 with ``sampling.temperature`` (greedy by default), the
   others with ``alt_temperature``, each from the end of the prompt. While part of ``heal`` is not yet
   covered, only the tokens ``healing.allowed`` names may come next; the healed text is removed from
   the output. It stops at an end-of-generation or stop token ("eot"), at ``max_tokens`` ("length"), when
   ``stop_text`` fires ("rule"), when the context is full ("context").
3. Between tokens, and between prompt chunks, the worker checks whether the job was cancelled or
   superseded and whether its time budget is spent.

Superseding: ``submit`` replaces a job still waiting for the worker (it resolves at once, no text) and
flags the running one, which stops at the next token. A partly evaluated prompt is not wasted: the
tokens that made it into the KV cache count for the next request's common prefix.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import healing, llama
from ..sampling import sample
from ..vocab import LlamaVocab
from . import EngineError, EngineInfo, Generation, GenerationRequest, GenerationResult, Job, Stop

log = logging.getLogger(__name__)

MAX_DEFAULT_CTX = 4096  # a 7B model's f16 KV cache at 16k tokens is about 8 GiB; ask for more explicitly
PROMPT_CHUNK = 128  # tokens per decode call while evaluating a prompt (a cancellation point)
KV_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class EngineOptions:
    n_ctx: int | None = None  # None: the model's training context, capped at MAX_DEFAULT_CTX
    kv_type: str = "f16"
    threads: int | None = None
    n_gpu_layers: int = 0
    cpu_repack: bool = False  # llama.cpp's extra CPU buffer types (weight repacking, AMX); see lsp_server.llama


class LlamaCppEngine:
    """Loads the GGUF (blocking: call it off the event loop) and starts the worker thread."""

    def __init__(self, path: Path, name: str, options: EngineOptions = EngineOptions()) -> None:
        if options.kv_type not in KV_TYPES:
            raise EngineError(f"expected --kv-type one of {', '.join(KV_TYPES)}, got {options.kv_type!r}")
        try:
            self._model = llama.Model(path, llama.LoadOptions(n_gpu_layers=options.n_gpu_layers, extra_bufts=options.cpu_repack))
        except llama.LlamaError as exc:
            raise EngineError(str(exc)) from None
        try:
            n_ctx = options.n_ctx or min(self._model.n_ctx_train or 2048, MAX_DEFAULT_CTX)
            self._ctx = llama.Context(self._model, llama.ContextOptions(n_ctx=n_ctx, threads=options.threads, kv_type=options.kv_type))
            self.vocab = LlamaVocab(self._model)
        except llama.LlamaError as exc:
            self._model.close()
            raise EngineError(str(exc)) from None
        self.info = EngineInfo(
            name=name, where=str(path), n_ctx=self._ctx.n_ctx, n_ctx_train=self._model.n_ctx_train,
            vocab_size=self._model.n_vocab, can_heal=True, kind="llama.cpp",
        )  # fmt: skip
        self._heal_index = healing.index_for(self.vocab)
        log.info("model %s sentinels: %s", name, self.vocab.sentinels.describe())
        # llama.cpp sets up its compute graphs and thread pool on the first decode (~0.4 s even for a tiny
        # model): pay that here, before "ready", with the two batch shapes requests use
        warm = [self.vocab.sentinels.bos or 0] * min(PROMPT_CHUNK, max(1, self.info.n_ctx // 2))
        self._ctx.decode(warm)
        self._ctx.decode(warm[:1])
        self._ctx.truncate(0)
        self._cv = threading.Condition()
        self._pending: Job | None = None
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llama-cpp-worker", daemon=True)
        self._thread.start()

    # ---- public API --------------------------------------------------------------------------------
    @property
    def cached_tokens(self) -> int:
        return len(self._ctx.tokens)

    def reset(self, timeout: float = 60.0) -> None:
        """Forget the KV cache (the next request evaluates its whole prompt); for baselines and tests.

        Waits for the worker to finish what it is doing first.
        """
        with self._cv:
            if not self._cv.wait_for(lambda: self._running is None and self._pending is None, timeout):
                raise EngineError(f"expected the engine to become idle within {timeout:g} s, got a request still running")
            self._ctx.truncate(0)

    def submit(self, request: GenerationRequest) -> Job:
        job = Job(request)
        with self._cv:
            if self._closed:
                job.future.set_exception(EngineError("expected a running engine, got one that was closed"))
                return job
            if self._pending is not None:
                self._pending.cancel("superseded")
                self._resolve_empty(self._pending, "superseded")
            if self._running is not None:
                self._running.cancel("superseded")
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
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self._ctx.close()
        self._model.close()

    # ---- worker ------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_empty(job: Job, stop: Stop) -> None:
        if not job.future.done():
            job.future.set_result(GenerationResult(candidates=[], stop=stop))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                job, self._pending = self._pending, None
                self._running = job
            try:
                if job.cancelled:
                    self._resolve_empty(job, job.reason)
                else:
                    result = self._run(job)
                    if not job.future.done():
                        job.future.set_result(result)
            except Exception as exc:  # the worker must survive; the job's caller sees the error
                log.exception("completion %s failed", job.request.request_id)
                if not job.future.done():
                    job.future.set_exception(EngineError(f"expected llama.cpp to complete, got: {exc}"))
            finally:
                with self._cv:
                    self._running = None
                    self._cv.notify_all()

    @staticmethod
    def _interrupted(job: Job) -> Stop | None:
        if job.cancelled:
            return job.reason
        if time.perf_counter() > job.deadline:
            return "time"
        return None

    def _run(self, job: Job) -> GenerationResult:
        req = job.request
        prompt = list(req.prompt)
        result = GenerationResult(candidates=[], stop="eot", prompt_tokens=len(prompt))
        if not prompt or len(prompt) >= self.info.n_ctx:
            result.stop = "context"
            return self._finish(result, job)
        t1 = time.perf_counter()
        result.reused_tokens = self._reuse(prompt)
        pos = result.reused_tokens
        while pos < len(prompt):
            if (why := self._interrupted(job)) is not None:
                result.stop = why
                return self._finish(result, job)
            chunk = prompt[pos : pos + PROMPT_CHUNK]
            self._ctx.decode(chunk)
            pos += len(chunk)
            result.evaluated_tokens += len(chunk)
        t2 = time.perf_counter()
        result.prompt_ms = (t2 - t1) * 1e3
        stops = req.stop_tokens | self.vocab.sentinels.eog
        for i in range(max(1, req.n)):
            if i > 0:  # back to the end of the prompt; re-run its last token to get its logits again
                self._ctx.truncate(len(prompt) - 1)
                self._ctx.decode(prompt[-1:])
            temp = req.sampling.temperature if i == 0 else req.sampling.alt_temperature
            gen = self._generate(job, stops, temp, np.random.default_rng((req.sampling.seed, i)))
            result.generated_tokens += len(gen.tokens)
            if i == 0 or gen.stop in ("cancelled", "superseded"):
                result.stop = gen.stop
            if gen.stop in ("cancelled", "superseded"):
                break
            result.candidates.append(gen)
            if gen.stop == "time":
                break
        result.generate_ms = (time.perf_counter() - t2) * 1e3
        return self._finish(result, job)

    @staticmethod
    def _finish(result: GenerationResult, job: Job) -> GenerationResult:
        result.total_ms = (time.perf_counter() - job.submitted) * 1e3
        if result.stop in ("cancelled", "superseded"):
            result.candidates = []
        return result

    def _reuse(self, prompt: list[int]) -> int:
        """Keep the longest common prefix of the KV cache and ``prompt`` (at least one token to evaluate)."""
        old = self._ctx.tokens
        n = min(len(old), len(prompt) - 1)
        # compare in numpy: prompts are thousands of tokens and this runs on every keystroke
        if n > 0:
            diff = np.flatnonzero(np.asarray(old[:n], dtype=np.int64) != np.asarray(prompt[:n], dtype=np.int64))
            n = int(diff[0]) if diff.size else n
        n = max(n, 0)
        self._ctx.truncate(n)
        return n

    def _generate(self, job: Job, stops: frozenset[int], temperature: float, rng: np.random.Generator) -> Generation:
        req = job.request
        heal = req.heal
        out: list[int] = []
        raw = b""
        stop: Stop = "length" if req.max_tokens <= self.info.n_ctx - len(self._ctx.tokens) else "context"
        pending = heal  # healed text the output has not covered yet
        for _ in range(min(req.max_tokens, self.info.n_ctx - len(self._ctx.tokens))):
            allowed = healing.allowed(pending, self._heal_index) if pending else None
            s = req.sampling
            tok = sample(self._ctx.logits(), temperature, rng, top_k=s.top_k, top_p=s.top_p, allowed=allowed)
            if tok in stops:
                stop = "eot"
                break
            piece = self.vocab.piece(tok)
            pending = healing.advance(pending, piece)
            out.append(tok)
            raw += piece
            if req.stop_text is not None and req.stop_text(raw[len(heal) :].decode("utf-8", errors="ignore")):
                stop = "rule"
                break
            if (why := self._interrupted(job)) is not None:
                stop = why
                break
            self._ctx.decode([tok])
        return Generation(text=raw[len(heal) :].decode("utf-8", errors="ignore"), tokens=out, stop=stop)
