"""The one llama.cpp adapter: load a GGUF, read its vocabulary, decode tokens, read logits.

In: a GGUF path and load/context options. Out: a ``Model`` (vocabulary access, metadata) and a
``Context`` (a KV cache of ``n_ctx`` positions that ``decode`` fills, ``truncate`` cuts back, ``rearrange`` moves
pieces of (KV shifting) and ``save_state``/``load_state`` copy to and from host memory), both
over llama.cpp's C API through llama-cpp-python's ctypes bindings (0.3.36). Everything in the project
that runs llama.cpp - the completion engine, ``model_export.verify``, ``quantize`` (report, imatrix,
quantize) and ``model_train.eval`` - goes through this module, so the platform workarounds live here once:

- AMX / weight repacking: llama.cpp's "extra" CPU buffer types are off unless asked for
  (``extra_bufts=True``). With them on, llama.cpp 0.3.36 crashes (SIGSEGV in the first ``llama_decode``)
  on Xeon CPUs that report AMX, for quantized matrices (ggml-org/llama.cpp#20824); the plain kernels are
  also the reference implementation, the same on every machine. The completion engine turns them on
  where the CPU has no AMX (``cpu_has_amx``): repacked weights are what llama-server runs by default.
- Flash attention: off (the reference path) unless asked for (``ContextOptions.flash_attn``) or needed by
  a quantized V cache; the completion engine asks for it, as llama-server does by default.
- Threads on a busy machine: llama-cpp-python's llama.cpp is built with OpenMP (libgomp), whose threads spin
  at every barrier (dozens a token) before they sleep. On an idle machine that is the fastest wait; when other
  processes hold the cores, each barrier waits for a descheduled thread while its partner burns the time slice:
  5-20x slower generation (docs/benchmarks.md, "A busy machine"). A passive wait policy (``OMP_WAIT_POLICY``)
  fixes that but costs 1.5-1.8x on an idle machine, so libgomp keeps its default here and the completion engine
  lowers the thread count instead while other processes keep cores busy (``Context.set_threads``, chosen per
  request by ``codellama_core.cpuload``): one thread has no barrier to wait at. The user's ``OMP_WAIT_POLICY`` /
  ``GOMP_SPINCOUNT`` reach libgomp unchanged and are logged. llama.cpp's own threadpool
  (``llama_attach_threadpool``) does not help here: an OpenMP build computes every graph in an OpenMP team.
- Logging: llama.cpp's log goes to the Python logger ``llama.cpp`` (errors at WARNING, warnings at INFO,
  the rest at DEBUG) instead of llama-cpp-python's handler, which prints everything to stderr; the last
  error lines are kept so that a failed load can say why in one line.

Nothing here reaches into llama-cpp-python's private attributes except ``ggml_library`` (the ggml shared
library handle, which has no public name; ``tests/test_llama_adapter.py`` pins it to 0.3.36). This module
imports only the standard library and numpy at import time; ``llama_cpp`` is imported on first use, so
``quantize``, ``model_export`` and ``model_train`` import it without pulling in the language server.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import libc

log = logging.getLogger("llama.cpp")

KV_TYPES = {"f16": 1, "q8_0": 8, "f32": 0}  # ggml_type ids of the KV cache types offered
_GGML_LOG_WARN, _GGML_LOG_ERROR, _GGML_LOG_CONT = 3, 4, 5  # ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT

_init_lock = threading.Lock()
_ready = False
_errors: collections.deque[str] = collections.deque(maxlen=8)
_callback: Any = None  # keeps the ctypes callback alive for the life of the process


class LlamaError(Exception):
    """llama.cpp refused a file or an operation; the message says what was expected and what happened."""


class Aborted(LlamaError):
    """A ``decode`` stopped by ``Context.abort`` (from another thread) before it finished: the cache holds what it held
    before the batch that was running (llama.cpp removes that batch's positions), ``Context.tokens`` says what."""


def _strlen() -> Any:
    """The address of the C library's ``strlen``, or None.

    It is the abort callback llama.cpp calls between two graph nodes (``bool (*)(void *)``) with a 2-byte flag buffer
    as its argument: the length of the flag's string is 1 once ``abort`` set its first byte, 0 otherwise. A C function
    reads it without the GIL; a Python callback would take the GIL at every node of every decode."""
    strlen = libc.function("strlen")
    return None if strlen is None else ctypes.cast(strlen, ctypes.c_void_p).value


_WAIT_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # libgomp's own settings: the user's, left alone


def wait_policy() -> str:
    """What libgomp's threads do at a barrier, for the log: the user's own setting or libgomp's default."""
    chosen = [f"{k}={os.environ[k]}" for k in _WAIT_KNOBS if os.environ.get(k, "").strip()]
    if chosen:
        return " ".join(chosen) + " (the user's)"
    return "libgomp's default (spin, then sleep); the engine runs fewer threads while other processes hold cores"


def lib() -> Any:
    """The ``llama_cpp`` bindings, with the backend initialised and the log routed (once per process)."""
    global _ready, _callback
    if not _ready:
        with _init_lock:
            if not _ready:
                policy = wait_policy()
                import llama_cpp

                llama_cpp.llama_backend_init()
                _callback = llama_cpp.llama_log_callback(_on_log)
                llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
                log.debug("OpenMP wait policy: %s", policy)
                _ready = True
    import llama_cpp

    return llama_cpp


_pending: list[str] = []
_pending_level = [0]


# what llama.cpp logs about a decode that the abort callback stopped (ggml's status 1 is GGML_STATUS_ABORTED)
_ABORT_LINES = re.compile(r"compute status: 1\b|failed with error 1\b|failed to decode, ret = 2\b|removing memory module entries")


def _on_log(level: int, text: bytes, _user: Any) -> None:
    # llama.cpp sends a line in pieces; CONT pieces carry on the level of the line they continue
    s = text.decode("utf-8", errors="replace")
    if not _pending and level != _GGML_LOG_CONT:
        _pending_level[0] = level
    _pending.append(s)
    if not s.endswith("\n"):
        return
    line = "".join(_pending).rstrip()
    _pending.clear()
    if not line:
        return
    if _ABORT_LINES.search(line):  # a decode stopped on purpose (``Context.abort``): not an error
        log.debug("%s", line)
    elif _pending_level[0] == _GGML_LOG_ERROR:
        _errors.append(line.strip())
        log.warning("%s", line)
    elif _pending_level[0] == _GGML_LOG_WARN:
        log.info("%s", line)
    else:
        log.debug("%s", line)


def last_error() -> str:
    """The most recent error line llama.cpp logged (or "")."""
    return _errors[-1] if _errors else ""


def ggml_library() -> ctypes.CDLL:
    """The ggml shared library llama-cpp-python loaded (same handle, so the same process-wide state).

    llama-cpp-python 0.3.36 keeps it in the private ``llama_cpp._ggml.libggml``; the imatrix collector
    needs ggml's tensor functions, which the public bindings do not wrap.
    """
    lib()
    from llama_cpp._ggml import libggml

    return cast(ctypes.CDLL, libggml)


@dataclass(frozen=True)
class LoadOptions:
    n_gpu_layers: int = 0
    extra_bufts: bool = False  # llama.cpp's repacked CPU weights / AMX; see the module docstring
    vocab_only: bool = False
    progress: Callable[[float], None] | None = None  # load progress 0.0 .. 1.0, called on the loading thread


class Model:
    """A loaded GGUF: vocabulary, metadata, parameter count. ``close`` frees it (contexts first)."""

    def __init__(self, path: str | os.PathLike[str], options: LoadOptions = LoadOptions()) -> None:
        lc = lib()
        self.path = Path(path)
        params = lc.llama_model_default_params()
        params.n_gpu_layers = options.n_gpu_layers
        params.use_extra_bufts = options.extra_bufts
        params.vocab_only = options.vocab_only
        callback = None
        if options.progress is not None:
            report = options.progress

            def on_progress(value: float, _user_data: object) -> bool:
                try:
                    report(float(value))
                except Exception:  # an exception must not cross the C callback; a lost report is harmless
                    log.debug("load progress callback failed", exc_info=True)
                return True  # go on loading

            # referenced until the load returns: llama.cpp holds only the raw function pointer
            callback = lc.llama_progress_callback(on_progress)
            params.progress_callback = callback
        _errors.clear()
        handle = lc.llama_model_load_from_file(str(self.path).encode(), params)
        del callback
        if not handle:
            raise LlamaError(f"expected llama.cpp to load {self.path}, got: {last_error() or 'a load failure'}")
        self.handle = handle
        self._vocab = lc.llama_model_get_vocab(handle)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(handle))
        self.n_params = int(lc.llama_model_n_params(handle))
        self._buf = ctypes.create_string_buffer(256)

    # ---- metadata and special ids ---------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """The GGUF metadata value of ``key`` as text, or None when the file has no such key."""
        lc = lib()
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.handle, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def special(self) -> dict[str, int | None]:
        """The ids llama.cpp itself settled on (metadata or its own text guess); None for missing ones."""
        lc = lib()
        v = self._vocab
        got = {
            "bos": lc.llama_vocab_bos(v), "eos": lc.llama_vocab_eos(v), "eot": lc.llama_vocab_eot(v),
            "pre": lc.llama_vocab_fim_pre(v), "suf": lc.llama_vocab_fim_suf(v), "mid": lc.llama_vocab_fim_mid(v),
        }  # fmt: skip
        return {k: (int(t) if t >= 0 else None) for k, t in got.items()}

    @property
    def bos(self) -> int | None:
        return self.special()["bos"]

    @property
    def add_bos(self) -> bool:
        return bool(lib().llama_vocab_get_add_bos(self._vocab))

    def texts(self) -> list[str]:
        """Every token's text as stored in the GGUF (``▁<PRE>``, ``<0x0A>``, ``Ġdef``)."""
        lc = lib()
        return [(lc.llama_vocab_get_text(self._vocab, t) or b"").decode("utf-8", errors="replace") for t in range(self.n_vocab)]

    def eog_ids(self) -> frozenset[int]:
        """Every id llama.cpp treats as end of generation."""
        lc = lib()
        return frozenset(t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t))

    def is_control(self, token: int) -> bool:
        lc = lib()
        return bool(lc.llama_vocab_get_attr(self._vocab, token) & lc.LLAMA_TOKEN_ATTR_CONTROL)

    # ---- text <-> tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` with special-token parsing off (a literal ``<EOT>`` stays text).

        ``add_special``: let the vocabulary add BOS (and the like) where it asks for it.
        """
        lc = lib()
        data = text.encode("utf-8", errors="replace")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, False)
        if n < 0:  # buffer too small: llama.cpp returns -needed
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, False)
        if n < 0:
            raise LlamaError(f"expected text llama.cpp can tokenize, got tokenizer status {n}")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for in text (b"" for control tokens)."""
        n = lib().llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[: max(n, 0)]

    def close(self) -> None:
        if self.handle:
            lib().llama_model_free(self.handle)
            self.handle = None


def clamp_threads(threads: int | None) -> int:
    """A thread count for llama.cpp: None/0 -> every usable core; more than that -> that many, with a warning.

    llama.cpp starts as many threads as it is asked for (``--threads 100000`` crashed it), and more threads
    than cores only make it slower. A negative count is an error.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not threads:
        return max(1, cores)
    if threads < 0:
        raise LlamaError(f"expected a positive number of threads, got {threads}")
    if threads > cores:
        log.warning("using %d threads, the number of usable CPU cores, instead of the %d asked for", cores, threads)
        return cores
    return threads


def cpu_has_amx() -> bool:
    """Whether the CPU reports AMX (Linux ``/proc/cpuinfo``; False where that cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (llama-server's default thread count):
    hyper-threads share a core's arithmetic units, so a second thread per core only adds contention."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        try:
            top = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
            cores.add(((top / "physical_package_id").read_text().strip(), (top / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)  # no topology (not Linux, or hidden): every CPU counts
    return max(1, len(cores))


class Sampler:
    """llama.cpp's own sampler chain over a context's logits: top-k -> top-p -> temperature -> a seeded
    draw, in C (a tenth of the cost of the same steps in NumPy on a 32k vocabulary). ``sample(ctx, i)``
    picks from the logits of position ``i`` of the last decode. Greedy decoding needs no chain: an argmax
    over ``Context.logits`` is cheaper than llama.cpp's greedy sampler, which copies the whole vocabulary
    into a candidate array on every call."""

    def __init__(self, temperature: float, top_k: int = 40, top_p: float = 1.0, seed: int = 0) -> None:
        if temperature <= 0.0:
            raise LlamaError(f"expected a sampling temperature > 0 (greedy is an argmax), got {temperature}")
        lc = lib()
        params = lc.llama_sampler_chain_default_params()
        params.no_perf = True
        self.handle = lc.llama_sampler_chain_init(params)
        if top_k > 0:
            lc.llama_sampler_chain_add(self.handle, lc.llama_sampler_init_top_k(top_k))
        if top_p < 1.0:
            lc.llama_sampler_chain_add(self.handle, lc.llama_sampler_init_top_p(top_p, 1))
        lc.llama_sampler_chain_add(self.handle, lc.llama_sampler_init_temp(temperature))
        lc.llama_sampler_chain_add(self.handle, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: Context, i: int = -1) -> int:
        return int(lib().llama_sampler_sample(self.handle, ctx.handle, i))

    def close(self) -> None:
        if self.handle:
            lib().llama_sampler_free(self.handle)
            self.handle = None


@dataclass(frozen=True)
class ContextOptions:
    n_ctx: int = 512
    n_batch: int = 512  # most tokens one decode call takes (and the physical batch size)
    threads: int | None = None  # None: the physical cores this process may run on (as llama-server)
    flash_attn: bool = False  # llama.cpp's fused attention (faster at long contexts; not the reference path)
    kv_type: str = "f16"  # "f16" | "q8_0" | "f32"
    all_logits: bool = False  # keep every position's logits of a decode (evaluation), not only the last
    # a second sequence that ``rearrange`` parks cache cells in while it evaluates new tokens before them (the KV
    # cache shared by both: llama.cpp's unified cache of n_ctx cells)
    scratch: bool = False
    cb_eval: Any = None  # a ggml_backend_sched_eval_callback the caller keeps alive (imatrix)


@dataclass(frozen=True)
class SavedState:
    """What a context's cache held (``Context.save_state``): its tokens and llama.cpp's copy of their cells."""

    tokens: tuple[int, ...]
    data: Any  # a ctypes uint8 array of ``size`` bytes
    size: int


class Context:
    """A llama.cpp context on one sequence: ``decode`` appends tokens at the end of what the KV cache
    holds, ``truncate`` forgets positions from ``n`` on. ``tokens`` mirrors the cache position by position."""

    def __init__(self, model: Model, options: ContextOptions = ContextOptions()) -> None:
        lc = lib()
        if options.kv_type not in KV_TYPES:
            raise LlamaError(f"expected a KV cache type in {', '.join(KV_TYPES)}, got {options.kv_type!r}")
        threads = clamp_threads(options.threads) if options.threads else physical_cores()
        p = lc.llama_context_default_params()
        p.n_ctx = options.n_ctx
        p.n_batch = p.n_ubatch = min(options.n_batch, options.n_ctx)
        p.n_seq_max = 2 if options.scratch else 1
        if options.scratch:
            p.kv_unified = True  # one set of n_ctx cells that both sequences refer to (parking copies no data)
        p.n_threads = p.n_threads_batch = threads
        p.type_k = p.type_v = KV_TYPES[options.kv_type]
        # llama.cpp needs flash attention for a quantized V cache; elsewhere the plain path is the reference
        quantized = options.kv_type not in ("f16", "f32")
        if quantized:
            p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        else:  # "auto": on where the backend has it (every CPU build does)
            p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO if options.flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        if options.cb_eval is not None:
            p.cb_eval = options.cb_eval
            p.cb_eval_user_data = None
        _errors.clear()
        handle = lc.llama_init_from_model(model.handle, p)
        if not handle:
            hint = f" (a {options.kv_type} KV cache needs a head size divisible by 32)" if quantized else ""
            raise LlamaError(f"expected a llama.cpp context for {model.path}, got: {last_error() or 'an init failure'}{hint}")
        self.handle = handle
        self.model = model
        self.n_ctx = int(lc.llama_n_ctx(handle))
        self.n_batch = int(p.n_batch)
        self.all_logits = options.all_logits
        self.scratch = options.scratch
        self.threads = threads
        self.tokens: list[int] = []
        self._shift_pending = False  # moved keys not yet rotated (``rearrange``)
        self._abort_flag: Any = None  # see enable_abort
        self._abort_callback: Any = None
        self._batch = lc.llama_batch_init(self.n_batch, 0, 1)
        for i in range(self.n_batch):  # one sequence: set once, never changes
            self._batch.n_seq_id[i] = 1
            self._batch.seq_id[i][0] = 0

    def set_threads(self, threads: int) -> None:
        """Run the next decodes on ``threads`` threads (generation and prompt alike; llama.cpp applies it per call)."""
        if threads < 1:
            raise LlamaError(f"expected at least one thread, got {threads}")
        if threads != self.threads:
            lib().llama_set_n_threads(self.handle, threads, threads)
            self.threads = threads

    def decode(self, tokens: list[int], *, every_logits: bool = False) -> None:
        """Evaluate ``tokens`` after what the cache holds (in batches of ``n_batch``).

        ``every_logits``: keep the logits of every position of this call (read them with ``logits(i)``,
        ``i`` the index in ``tokens``; one batch at most), not only the last one's.
        """
        lc = lib()
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise LlamaError(f"expected at most {self.n_ctx} tokens in the context, got {len(self.tokens) + len(tokens)}")
        if every_logits and len(tokens) > self.n_batch:
            raise LlamaError(f"expected at most {self.n_batch} tokens with every position's logits, got {len(tokens)}")
        b = self._batch
        every = every_logits or self.all_logits
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            pos = len(self.tokens)
            n = len(chunk)
            # the batch was allocated once (llama_batch_init) and its sequence ids set then
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = pos + i
                b.logits[i] = every
            b.logits[n - 1] = True
            b.n_tokens = n
            rc = lc.llama_decode(self.handle, b)
            if rc == 2 and self._abort_flag is not None and self._abort_flag[0] != b"\x00":
                raise Aborted(f"a decode of {n} tokens was aborted; the cache holds its {len(self.tokens)} tokens before it")
            if rc != 0:
                raise LlamaError(f"expected llama_decode to return 0, got {rc}{': ' + last_error() if last_error() else ''}")
            self.tokens.extend(chunk)
            self._shift_pending = False

    # ---- stopping a decode from another thread ------------------------------------------------------------
    def enable_abort(self) -> bool:
        """Let ``abort`` (from any thread) stop a running ``decode`` between two graph nodes (``Aborted``); until
        ``reset_abort`` every decode stops at once. Returns whether this build honours it: probed with a one-token
        decode that must come back aborted and leave the cache as it was (CPU builds do; a backend without the hook
        finishes the decode, and then this returns False and leaves the context as it was)."""
        lc = lib()
        address = _strlen()
        if address is None or not hasattr(lc, "llama_set_abort_callback") or len(self.tokens) >= self.n_ctx:
            return False
        flag = ctypes.create_string_buffer(2)
        callback = lc.ggml_abort_callback(address)
        lc.llama_set_abort_callback(self.handle, callback, ctypes.cast(flag, ctypes.c_void_p))
        self._abort_flag, self._abort_callback = flag, callback  # alive as long as the context uses them
        held = len(self.tokens)
        flag[0] = b"\x01"
        try:
            self.decode([self.model.bos or 0])
        except Aborted:
            pos_max = int(lc.llama_memory_seq_pos_max(lc.llama_get_memory(self.handle), 0))
            if pos_max == held - 1:
                return True
        finally:
            flag[0] = b"\x00"
        lc.llama_set_abort_callback(self.handle, lc.ggml_abort_callback(), None)
        self._abort_flag = self._abort_callback = None
        self.clear()  # whatever that decode left, the cache no longer matches ``tokens``: start from nothing
        return False

    def abort(self) -> None:
        """Stop the running decode, and every one after it until ``reset_abort`` (no-op unless ``enable_abort``)."""
        if self._abort_flag is not None:
            self._abort_flag[0] = b"\x01"

    def reset_abort(self) -> None:
        if self._abort_flag is not None:
            self._abort_flag[0] = b"\x00"

    def logits(self, i: int = -1) -> np.ndarray:
        """Logits of the last decode's position ``i`` (-1: its last), float32 (n_vocab,): a view, valid
        until the next decode."""
        ptr = lib().llama_get_logits_ith(self.handle, i)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def evaluate(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits of every position of ``tokens`` evaluated from an empty cache: (len(tokens), n_vocab)
        float32. Needs a context made with ``all_logits``."""
        if not self.all_logits:
            raise LlamaError("expected a context with all_logits=True for evaluate, got one without")
        self.truncate(0)
        n, n_vocab = len(tokens), self.model.n_vocab
        out = np.empty((n, n_vocab), dtype=np.float32)
        for start in range(0, n, self.n_batch):
            chunk = [int(t) for t in tokens[start : start + self.n_batch]]
            self.decode(chunk)
            ptr = lib().llama_get_logits(self.handle)
            out[start : start + len(chunk)] = np.ctypeslib.as_array(ptr, shape=(len(chunk), n_vocab))
        return out

    def truncate(self, n: int) -> None:
        """Forget cache positions ``n`` and later."""
        lc = lib()
        if n < len(self.tokens):
            if n == 0:
                lc.llama_memory_clear(lc.llama_get_memory(self.handle), True)
                self._shift_pending = False
            else:
                lc.llama_memory_seq_rm(lc.llama_get_memory(self.handle), -1, n, -1)
            del self.tokens[n:]

    # ---- moving and keeping what the cache holds ----------------------------------------------------------
    @property
    def can_shift(self) -> bool:
        """Whether the KV cache can move positions (``rearrange``): llama.cpp re-applies RoPE to the keys."""
        return bool(lib().llama_memory_can_shift(lib().llama_get_memory(self.handle)))

    def rearrange(self, pieces: Sequence[tuple[int, int] | list[int]]) -> None:
        """Make the cache hold, at positions 0, 1, ..., the concatenation of ``pieces`` and nothing else; ``tokens``
        follows. A piece is an old position range ``(start, length)`` (non-overlapping, any order), or a list of new
        tokens, evaluated there (a context made with ``scratch`` only).

        This is llama-server's ``--cache-reuse``, and more: ``llama_memory_seq_rm`` drops the cells no piece keeps and
        ``llama_memory_seq_add`` moves each piece to its new place, which re-rotates its keys by the distance moved
        (RoPE is relative). The values are the ones computed in the old context, so a moved piece is an
        approximation of evaluating it again (``lsp_server.engines.kept`` says how close). llama.cpp appends only
        after a sequence's last position, so ranges after new tokens are parked in sequence 1 first
        (``llama_memory_seq_cp``), the new tokens decoded, then the ranges moved after them and copied back. Keys
        moved are rotated in the next ``decode``; ``save_state`` makes sure one ran.
        """
        lc = lib()
        mem = lc.llama_get_memory(self.handle)
        old = self.tokens
        if self.scratch:  # nothing may be left parked by an earlier call that failed half-way
            lc.llama_memory_seq_rm(mem, 1, -1, -1)
        first_new = next((i for i, p in enumerate(pieces) if isinstance(p, list)), len(pieces))
        taken = np.zeros(len(old) + 1, dtype=np.int32)  # +1/-1 at piece bounds: a count of pieces per cell
        head = np.zeros(len(old) + 1, dtype=np.int32)  # the same for the pieces before the first new tokens
        total = 0
        for i, piece in enumerate(pieces):
            if isinstance(piece, list):
                total += len(piece)
                continue
            start, length = piece
            if length <= 0:
                continue
            if start < 0 or start + length > len(old):
                raise LlamaError(f"expected pieces within the {len(old)} cached positions, got ({start}, {length})")
            for arr in (taken, head) if i < first_new else (taken,):
                arr[start] += 1
                arr[start + length] -= 1
            total += length
        cover = np.cumsum(taken[:-1])
        if cover.size and int(cover.max()) > 1:
            raise LlamaError("expected non-overlapping pieces of the cache, got pieces that share positions")
        parked = [p for p in pieces[first_new:] if isinstance(p, tuple) and p[1] > 0]
        if first_new < len(pieces) and not self.scratch:
            raise LlamaError("expected a context made with scratch=True to evaluate new tokens between cached ones")
        for start, length in parked:  # cells kept for after the new tokens: into sequence 1 (and out of 0, below)
            lc.llama_memory_seq_cp(mem, 0, 1, start, start + length)
        kept = np.cumsum(head[:-1]) > 0
        # drop from sequence 0 every cell the head pieces do not keep, one run of free positions at a time
        free = np.flatnonzero(np.diff(np.concatenate(([1], kept.astype(np.int8), [1]))))  # run bounds
        for a, b in zip(free[0::2], free[1::2], strict=True):
            if not lc.llama_memory_seq_rm(mem, 0, int(a), int(b)):
                raise LlamaError(f"expected llama.cpp to remove cache positions {a}..{b}, got a refusal")
        away = len(old) + total + 1  # past every old and new position
        moves: list[tuple[int, int, int]] = []  # (old start, length, new start) of the head pieces
        new: list[int] = []
        for piece in pieces[:first_new]:
            assert isinstance(piece, tuple)
            start, length = piece
            if length <= 0:
                continue
            if start != len(new):
                moves.append((start, length, len(new)))
            new.extend(old[start : start + length])
        if (moves or parked) and not self.can_shift:
            raise LlamaError("expected a KV cache that can shift positions, got one that cannot")
        # two steps, so that no piece lands on positions another piece still has to leave: every moving piece goes
        # past all old and new positions first, then to its place
        for start, length, _ in moves:
            lc.llama_memory_seq_add(mem, 0, start, start + length, away)
        for start, length, to in moves:
            lc.llama_memory_seq_add(mem, 0, start + away, start + away + length, to - start - away)
        self._shift_pending = self._shift_pending or bool(moves)
        self.tokens = new
        if first_new == len(pieces):
            return
        lc.llama_memory_seq_add(mem, 1, -1, -1, away)  # the parked cells past everything sequence 0 will hold
        for piece in pieces[first_new:]:
            if isinstance(piece, list):
                self.decode(piece)
                continue
            start, length = piece
            if length <= 0:
                continue
            to = len(self.tokens)
            lc.llama_memory_seq_add(mem, 1, start + away, start + away + length, to - start - away)
            lc.llama_memory_seq_cp(mem, 1, 0, to, to + length)
            lc.llama_memory_seq_rm(mem, 1, to, to + length)
            self.tokens.extend(old[start : start + length])
            self._shift_pending = True
        lc.llama_memory_seq_rm(mem, 1, -1, -1)

    def clear(self) -> None:
        """Forget everything the cache holds, in every sequence (after a failed operation: a known empty state)."""
        lc = lib()
        lc.llama_memory_clear(lc.llama_get_memory(self.handle), True)
        self.tokens = []
        self._shift_pending = False

    def state_size(self) -> int:
        """Bytes that ``save_state`` takes now (the cells of the sequence and their keys and values)."""
        return int(lib().llama_state_seq_get_size(self.handle, 0))

    def save_state(self) -> SavedState:
        """A copy of what the cache holds, in host memory (``llama_state_seq_get_data``), with its tokens."""
        lc = lib()
        if self._shift_pending and self.tokens:  # moved keys are rotated by the next decode: run one
            last = self.tokens[-1]
            self.truncate(len(self.tokens) - 1)
            self.decode([last])
        size = self.state_size()
        buf = (ctypes.c_uint8 * size)()
        got = int(lc.llama_state_seq_get_data(self.handle, buf, size, 0))
        if got != size:
            raise LlamaError(f"expected llama.cpp to copy {size} bytes of cache state, got {got}")
        return SavedState(tuple(self.tokens), buf, size)

    def load_state(self, saved: SavedState) -> None:
        """Replace what the cache holds by ``saved`` (``llama_state_seq_set_data``)."""
        lc = lib()
        lc.llama_memory_clear(lc.llama_get_memory(self.handle), True)
        self.tokens = []
        self._shift_pending = False
        if not saved.tokens:
            return
        if int(lc.llama_state_seq_set_data(self.handle, saved.data, saved.size, 0)) == 0:
            lc.llama_memory_clear(lc.llama_get_memory(self.handle), True)
            raise LlamaError(f"expected llama.cpp to restore a saved cache state of {len(saved.tokens)} tokens, got a refusal")
        self.tokens = list(saved.tokens)

    def close(self) -> None:
        if self.handle:
            lc = lib()
            lc.llama_batch_free(self._batch)
            lc.llama_free(self.handle)
            self.handle = None


@contextlib.contextmanager
def open_context(
    path: str | os.PathLike[str], options: ContextOptions = ContextOptions(), load: LoadOptions = LoadOptions()
) -> Iterator[Context]:
    """Load ``path`` and make one context on it; both are freed on exit (``ctx.model`` is the model)."""
    model = Model(path, load)
    try:
        ctx = Context(model, options)
        try:
            yield ctx
        finally:
            ctx.close()
    finally:
        model.close()


def model_quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], params: Any) -> None:
    """llama.cpp's quantizer: ``src`` -> ``dst`` with ``params`` (a ``llama_model_quantize_params``)."""
    lc = lib()
    _errors.clear()
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise LlamaError(last_error().removeprefix("llama_model_quantize: ").strip() or f"status {rc}")
