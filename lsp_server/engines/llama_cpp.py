"""llama.cpp in-process engine: one worker thread owns the model and its context.

In: ``CompletionRequest``s from any thread (``submit`` returns at once). Out: ``CompletionResult``s on the
jobs' futures, with counts of prompt tokens reused from the KV cache and actually evaluated.

How a request runs on the worker:

1. ``context.build`` cuts the prefix/suffix windows within the token budget (``contextTokens``, capped by
   ``n_ctx - maxTokens``), counting with this model's tokenizer.
2. ``fim.prompt_tokens`` lays them out (SPM by default). Text is tokenized with special-token parsing off;
   the sentinel ids come from the GGUF (``llama_vocab_fim_pre/suf/mid``, ``llama_vocab_eot``), never from
   llama-cpp-python's ``suffix=`` path, which wraps the text in token 0.
3. KV reuse: the context still holds the tokens the previous request evaluated (prompt and generated
   tokens). The longest common prefix of those and the new prompt is kept; only the rest is evaluated.
   With SPM and anchored windows, typing one character re-evaluates a few tokens at the end of the prefix.
4. Token healing (SPM and prefix-only prompts, where the prefix ends the prompt): the prefix's last tokens
   (up to ``MAX_HEAL``, while some vocabulary token starts with their text) are taken off the prompt, and
   generation is constrained until its output covers their text (a token that starts with all of what is
   left, or spells a first part of it). The cursor often
   sits inside what the model saw as one token in training (after "negati" of "negative", or after the
   space of " total", which SentencePiece attaches to the next word); a prompt that ends on such a
   fragment is one the model never saw, and it answers badly. The healed text is removed from the output.
5. Generation: greedy (or temperature sampling for extra items), one token at a time. Between tokens, and
   between prompt chunks, the worker checks whether the job was cancelled or superseded and whether its
   time budget is spent; it stops at EOT/EOS, at ``maxTokens`` or when the caller's stop rule fires.

Superseding: ``submit`` replaces a job still waiting for the worker (it resolves at once, no text) and
flags the running one, which stops at the next token. A partly evaluated prompt is not wasted: the
tokens that made it into the KV cache count for the next request's common prefix.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import context as context_mod
from .. import fim
from . import CompletionRequest, CompletionResult, EngineError, Job, ModelInfo, Stop

log = logging.getLogger(__name__)

MAX_DEFAULT_CTX = 4096  # a 7B model's f16 KV cache at 16k tokens is about 8 GiB; ask for more explicitly
PROMPT_CHUNK = 128  # tokens per llama_decode call while evaluating a prompt (a cancellation point)
MAX_HEAL = 3  # prompt tokens token healing may take back at the cursor
ALT_TEMPERATURE = 0.7  # for the extra items of an explicitly invoked completion
KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml_type ids


@dataclass(frozen=True)
class EngineOptions:
    n_ctx: int | None = None  # None: the model's training context, capped at MAX_DEFAULT_CTX
    kv_type: str = "f16"
    threads: int | None = None
    n_gpu_layers: int = 0
    verbose: bool = False
    cpu_repack: bool = False  # llama.cpp's extra CPU buffer types (weight repacking, AMX); see below


def _train_ctx(path: Path) -> int:
    """``{arch}.context_length`` from the GGUF header (before a context is allocated for it)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise EngineError(f"expected {gguf.Keys.General.ARCHITECTURE} in {path}, got none")
    arch = arch_field.contents()
    ctx_field = reader.get_field(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch))
    if ctx_field is None:
        return 2048
    return int(ctx_field.contents())


@contextlib.contextmanager
def _extra_buffer_types(enabled: bool, progress: Callable[[float], None] | None = None) -> Iterator[None]:
    """Load with llama.cpp's extra CPU buffer types (repacked weights, AMX) on or off.

    With them on, llama.cpp 0.3.36 (as built by llama-cpp-python here) crashes with SIGSEGV in the first
    ``llama_decode`` of a Q4_1 model on a CPU with AMX (SmolLM2-135M Q4_1 on a Sapphire Rapids core);
    off, the same file runs. A crash takes the editor's server down, so they are off unless asked for
    (``--cpu-repack``). llama-cpp-python does not expose the flag (``use_extra_bufts``), so the default
    model parameters it starts from are adjusted for the duration of the load. The same way, ``progress``
    (0.0 .. 1.0, called on the loading thread) becomes llama.cpp's load progress callback.
    """
    import llama_cpp.llama as high

    original = high.llama_cpp.llama_model_default_params

    def report(value: float, _user_data: object) -> bool:
        try:
            progress(float(value))  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - an exception must not cross the C callback; a lost report is harmless
            log.debug("load progress callback failed", exc_info=True)
        return True  # go on loading

    # kept referenced until the load is over: llama.cpp holds only the raw function pointer
    callback = high.llama_cpp.llama_progress_callback(report) if progress else None

    def params() -> object:
        p = original()
        p.use_extra_bufts = enabled
        if callback is not None:
            p.progress_callback = callback
        return p

    with _LOAD_LOCK:
        high.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            high.llama_cpp.llama_model_default_params = original


_LOAD_LOCK = threading.Lock()


class LlamaCppEngine:
    """Loads the GGUF (blocking: call it off the event loop) and starts the worker thread."""

    def __init__(
        self, path: Path, name: str, options: EngineOptions = EngineOptions(), progress: Callable[[float], None] | None = None
    ) -> None:
        """``progress``, when given, receives llama.cpp's load progress (0.0 .. 1.0) on the loading thread."""
        import llama_cpp

        self._lc = llama_cpp
        if options.kv_type not in KV_TYPES:
            raise EngineError(f"expected --kv-type one of {', '.join(KV_TYPES)}, got {options.kv_type!r}")
        try:
            n_train = _train_ctx(path)
        except (ValueError, OSError, IndexError, KeyError) as exc:
            raise EngineError(f"expected a readable GGUF model at {path}, got: {exc}") from None
        n_ctx = options.n_ctx or min(n_train, MAX_DEFAULT_CTX)
        kv = KV_TYPES[options.kv_type]
        try:
            with _extra_buffer_types(options.cpu_repack, progress):
                self._llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=512,
                    n_threads=options.threads,
                    n_threads_batch=options.threads,
                    n_gpu_layers=options.n_gpu_layers,
                    type_k=kv,
                    type_v=kv,
                    # llama.cpp needs flash attention for a quantized V cache
                    flash_attn=options.kv_type != "f16",
                    logits_all=False,
                    verbose=options.verbose,
                )
        except (ValueError, RuntimeError) as exc:
            hint = "" if options.kv_type == "f16" else f" (a {options.kv_type} KV cache needs a head size divisible by 32)"
            raise EngineError(f"expected llama.cpp to load {path}, got: {exc}{hint}") from None
        self._vocab = self._llm._model.vocab
        self._n_vocab = self._llm.n_vocab()
        v = self._vocab
        pre, suf, mid = llama_cpp.llama_vocab_fim_pre(v), llama_cpp.llama_vocab_fim_suf(v), llama_cpp.llama_vocab_fim_mid(v)
        eot = llama_cpp.llama_vocab_eot(v)
        bos = llama_cpp.llama_vocab_bos(v)
        self.has_fim = min(pre, suf, mid) >= 0
        self.fim_ids = fim.FimIds(bos=bos, pre=pre, suf=suf, mid=mid, eot=eot) if self.has_fim else None
        # the prefix-only prompt starts with BOS only where the vocabulary asks for it (SentencePiece
        # Llamas do; many BPE models do not)
        self.bos: int | None = bos if bos >= 0 and llama_cpp.llama_vocab_get_add_bos(v) else None
        self.info = ModelInfo(
            name=name, path=str(path), n_ctx=self._llm.n_ctx(), n_ctx_train=n_train, has_fim=self.has_fim, vocab_size=self._n_vocab
        )
        if not self.has_fim:
            log.warning("model %s has no FIM tokens: completing from the prefix only", name)
        self._memo: OrderedDict[tuple[bool, str], list[int]] = OrderedDict()
        nl = self._tokenize("\n")
        self._nl_ids = nl  # the leading-space + newline tokens stripped by encode_infill
        self.counter = context_mod.TokenCounter(
            lambda t: len(self.encode(t)), lambda t: len(self.encode_infill(t)), count_line=lambda t: len(self._tokenize(t))
        )
        self._tokens: list[int] = []  # what the KV cache holds, position by position
        # every token's text, for token healing (control tokens have none, so they never qualify)
        self._pieces = [self._piece_bytes([t]) for t in range(self._n_vocab)]
        self._heal_memo: OrderedDict[bytes, np.ndarray] = OrderedDict()
        order = sorted((b, t) for t, b in enumerate(self._pieces) if b)
        self._sorted_pieces = [b for b, _ in order]
        self._sorted_ids = [t for _, t in order]
        self._piece_ids: dict[bytes, np.ndarray] = {}
        for b, t in order:
            self._piece_ids[b] = np.append(self._piece_ids.get(b, np.empty(0, dtype=np.int64)), t)
        # llama.cpp sets up its compute graphs and thread pool on the first decode (~0.4 s even for a tiny
        # model): pay that here, before "ready", with the two batch shapes requests use
        warm = [self.bos if self.bos is not None else 0] * min(PROMPT_CHUNK, max(1, self.info.n_ctx // 2))
        self._eval(warm)
        self._eval(warm[:1])
        self._truncate(0)
        self._rng = np.random.default_rng(0)
        self._cv = threading.Condition()
        self._pending: Job | None = None
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llama-cpp-worker", daemon=True)
        self._thread.start()

    # ---- tokenizer (fim.Tokenizer) --------------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8", errors="replace"), add_bos=False, special=False)

    def encode(self, text: str) -> list[int]:
        """With the implicit leading space (llama.cpp adds it for SentencePiece vocabularies)."""
        return self._memoized(False, text)

    def encode_infill(self, text: str) -> list[int]:
        """Without the leading space: encode "\\n" + text and drop the tokens of "\\n" (the space and the
        newline byte; no piece contains a newline, so nothing merges across it)."""
        return self._memoized(True, text)

    def _memoized(self, infill: bool, text: str) -> list[int]:
        key = (infill, text)
        ids = self._memo.get(key)
        if ids is None:
            if not text:
                ids = []
            elif infill:
                both = self._tokenize("\n" + text)
                k = len(self._nl_ids)
                ids = both[k:] if both[:k] == self._nl_ids else self._tokenize(text)
            else:
                ids = self._tokenize(text)
            self._memo[key] = ids
            if len(self._memo) > 16:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._piece_bytes(ids).decode("utf-8", errors="replace")

    def _piece_bytes(self, ids: list[int]) -> bytes:
        buf = ctypes.create_string_buffer(256)
        out = bytearray()
        for t in ids:
            n = self._lc.llama_token_to_piece(self._vocab, t, buf, len(buf), 0, False)
            out += buf.raw[: max(n, 0)]
        return bytes(out)

    # ---- public API --------------------------------------------------------------------------------
    @property
    def cached_tokens(self) -> int:
        return len(self._tokens)

    def reset(self, timeout: float = 60.0) -> None:
        """Forget the KV cache (the next request evaluates its whole prompt); for baselines and tests.

        Waits for the worker to finish what it is doing first.
        """
        with self._cv:
            if not self._cv.wait_for(lambda: self._running is None and self._pending is None, timeout):
                raise EngineError(f"expected the engine to become idle within {timeout:g} s, got a request still running")
            self._truncate(0)

    def submit(self, request: CompletionRequest) -> Job:
        job = Job(request)
        job.submitted = time.perf_counter()  # type: ignore[attr-defined]
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
            self._closed = True
            if self._pending is not None:
                self._resolve_empty(self._pending, "cancelled")
                self._pending = None
            if self._running is not None:
                self._running.cancel("cancelled")
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self._llm.close()

    # ---- worker ------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_empty(job: Job, stop: Stop) -> None:
        if not job.future.done():
            job.future.set_result(CompletionResult(texts=[], stop=stop))

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
                    result = self._complete(job)
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

    def _interrupted(self, job: Job, deadline: float) -> Stop | None:
        if job.cancelled:
            return job.reason
        if time.perf_counter() > deadline:
            return "time"
        return None

    def _complete(self, job: Job) -> CompletionResult:
        req = job.request
        s = req.settings
        t0 = time.perf_counter()
        deadline = getattr(job, "submitted", t0) + s.time_budget_ms / 1000.0
        max_new = min(s.max_tokens, self.info.n_ctx // 4)
        budget = min(s.context_tokens, self.info.n_ctx - max_new - 4)
        # without FIM the suffix cannot be shown to the model: the whole budget goes to the prefix
        ratio = s.prefix_ratio if self.fim_ids is not None else 1.0
        ctx = context_mod.build(req.text, req.offset, self.counter, budget, ratio)
        if self.fim_ids is not None:
            prompt = fim.prompt_tokens(ctx, self, self.fim_ids, s.fim_order)
        else:
            prompt = fim.prefix_only_tokens(ctx, self, self.bos)
        heal = b""
        if self.fim_ids is None or s.fim_order is fim.FimOrder.SPM:  # the prefix ends the prompt
            k = self._heal_length(prompt, len(self.encode(ctx.prefix)))
            if k:
                heal = b"".join(self._pieces[t] for t in prompt[-k:])
                prompt = prompt[:-k]
        t1 = time.perf_counter()
        result = CompletionResult(texts=[], stop="eot", context=ctx, prompt_tokens=len(prompt), context_ms=(t1 - t0) * 1e3)

        reused = self._reuse(prompt)
        result.reused_tokens = reused
        stop = self._eval_prompt(job, prompt, reused, deadline, result)
        result.prompt_ms = (time.perf_counter() - t1) * 1e3
        if stop is not None:
            result.stop = stop
            return self._finish(result, job, t0)

        t2 = time.perf_counter()
        texts: list[str] = []
        firsts: list[int] = []  # each item's first token: later items start differently, so they differ
        for i in range(max(1, req.n)):
            if i > 0:
                # back to the end of the prompt; re-run its last token to get its logits again
                self._truncate(len(prompt) - 1)
                self._eval(prompt[-1:])
            text, stop_i, n_gen = self._generate(
                job, max_new, deadline, 0.0 if i == 0 else ALT_TEMPERATURE, s.temperature, req.stop_rule, heal, firsts
            )
            result.generated_tokens += n_gen
            if i == 0:
                result.stop = stop_i
            if stop_i in ("cancelled", "superseded"):
                result.stop = stop_i
                texts = []
                break
            if text not in texts:
                texts.append(text)
            if stop_i == "time":
                break
        result.texts = texts
        result.generate_ms = (time.perf_counter() - t2) * 1e3
        return self._finish(result, job, t0)

    @staticmethod
    def _finish(result: CompletionResult, job: Job, t0: float) -> CompletionResult:
        result.total_ms = (time.perf_counter() - getattr(job, "submitted", t0)) * 1e3
        if result.stop in ("cancelled", "superseded"):
            result.texts = []
        return result

    def _reuse(self, prompt: list[int]) -> int:
        """Keep the longest common prefix of the KV cache and ``prompt`` (at least one token to evaluate)."""
        old = self._tokens
        n = min(len(old), len(prompt) - 1)
        # compare in numpy: prompts are thousands of tokens and this runs on every keystroke
        if n > 0:
            a = np.asarray(old[:n], dtype=np.int64)
            b = np.asarray(prompt[:n], dtype=np.int64)
            diff = np.flatnonzero(a != b)
            n = int(diff[0]) if diff.size else n
        self._truncate(max(n, 0))
        return max(n, 0)

    def _truncate(self, n: int) -> None:
        self._llm._ctx.kv_cache_seq_rm(-1, n, -1)
        self._llm.n_tokens = n
        del self._tokens[n:]

    def _eval(self, tokens: list[int]) -> None:
        self._llm.eval(tokens)
        self._tokens.extend(tokens)

    def _eval_prompt(self, job: Job, prompt: list[int], start: int, deadline: float, result: CompletionResult) -> Stop | None:
        pos = start
        while pos < len(prompt):
            if (why := self._interrupted(job, deadline)) is not None:
                return why
            chunk = prompt[pos : pos + PROMPT_CHUNK]
            self._eval(chunk)
            pos += len(chunk)
            result.evaluated_tokens += len(chunk)
        return None

    def _heal_length(self, prompt: list[int], n_prefix: int) -> int:
        """How many of the prompt's last tokens (all from the prefix, at least one kept) to take back: the
        longest tail, up to MAX_HEAL tokens, whose text some single token of the vocabulary starts with."""
        best = 0
        for k in range(1, min(MAX_HEAL, n_prefix - 1) + 1):
            text = b"".join(self._pieces[t] for t in prompt[-k:])
            if b"\n" in text or not self._healing_tokens(text).size:
                break
            best = k
        return best

    def _healing_choices(self, pending: bytes) -> np.ndarray:
        """Tokens that may come next while ``pending`` healed text is not yet covered: those that start
        with all of it, or that spell a first part of it (the model may re-tokenize it its own way)."""
        parts = [self._piece_ids[pending[:i]] for i in range(1, len(pending)) if pending[:i] in self._piece_ids]
        return np.concatenate([self._healing_tokens(pending), *parts]) if parts else self._healing_tokens(pending)

    def _healing_tokens(self, heal: bytes) -> np.ndarray:
        """Ids of the tokens whose text starts with ``heal`` (a contiguous run of the sorted texts)."""
        ids = self._heal_memo.get(heal)
        if ids is None:
            i = bisect.bisect_left(self._sorted_pieces, heal)
            j = i
            while j < len(self._sorted_pieces) and self._sorted_pieces[j].startswith(heal):
                j += 1
            ids = np.asarray(self._sorted_ids[i:j], dtype=np.int64)
            self._heal_memo[heal] = ids
            if len(self._heal_memo) > 64:
                self._heal_memo.popitem(last=False)
        return ids

    def _sample(self, temperature: float, allowed: np.ndarray | None = None, banned: list[int] | None = None) -> int:
        logits = np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(self._n_vocab,))
        if allowed is not None:
            masked = np.full(self._n_vocab, -np.inf, dtype=np.float32)
            masked[allowed] = logits[allowed]
            logits = masked
        if banned:
            logits = logits.copy()
            logits[banned] = -np.inf
            if not np.isfinite(logits).any():  # everything allowed was banned: nothing better to offer
                return banned[0]
        if temperature <= 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        top = np.argpartition(z, -40)[-40:] if z.size > 40 else np.arange(z.size)
        p = np.exp(z[top] - z[top].max())
        p /= p.sum()
        return int(top[self._rng.choice(top.size, p=p)])

    def _generate(
        self, job: Job, max_new: int, deadline: float, alt_temp: float, temperature: float, stop_rule: object,
        heal: bytes = b"", firsts: list[int] | None = None,
    ) -> tuple[str, Stop, int]:
        """One item. ``firsts``: the first tokens of the items before this one, banned (with end-of-text) as
        this item's first token, and this item's first token is appended to it."""
        out: list[int] = []
        raw = b""
        temp = alt_temp or temperature
        rule: Callable[[str], bool] | None = stop_rule if callable(stop_rule) else None
        room = self.info.n_ctx - len(self._tokens)
        stop: Stop = "length"
        pending = heal  # healed text the output has not covered yet
        for step in range(min(max_new, room)):
            banned = None
            if step == 0 and firsts:
                banned = [*firsts, *(t for t in (self.fim_ids.eot if self.fim_ids else -1, self._lc.llama_vocab_eos(self._vocab)) if t >= 0)]
            tok = self._sample(temp, self._healing_choices(pending) if pending else None, banned)
            if step == 0 and firsts is not None:
                firsts.append(tok)
            piece = self._pieces[tok]
            pending = b"" if piece.startswith(pending) else pending[len(piece) :]
            if self._lc.llama_vocab_is_eog(self._vocab, tok) or (self.fim_ids is not None and tok == self.fim_ids.eot):
                stop = "eot"
                break
            out.append(tok)
            raw = self._piece_bytes(out)[len(heal) :]
            if rule is not None and rule(raw.decode("utf-8", errors="ignore")):
                stop = "rule"
                break
            if (why := self._interrupted(job, deadline)) is not None:
                stop = why
                break
            self._eval([tok])
        return raw.decode("utf-8", errors="ignore"), stop, len(out)
