"""A thin session over llama.cpp's C API (through llama-cpp-python's ctypes bindings) for evaluation.

In: a GGUF path. Out: a :class:`Session` that tokenizes text exactly as the model's vocab does (special-token
parsing off, so literal ``<EOT>`` in source code stays text) and returns the logits of *every* position of
a chunk as a float32 array of shape (n_tokens, n_vocab).

The report and the importance-matrix collector both need this; the high-level ``llama_cpp.Llama`` cannot
take an evaluation callback, so both use the C API directly. llama.cpp's own log lines are captured while
a call runs: informational ones go to this module's logger at debug level, and the last error line is kept
so that a failure can be reported in one line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp._logger as _llama_logger
import numpy as np

from quantize.errors import QuantizeError

log = logging.getLogger(__name__)

_backend_ready = False
_log_lock = threading.Lock()


def backend_init() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


def clamp_threads(threads: int | None) -> int:
    """A thread count for llama.cpp: None/0 -> every usable core; more than that -> that many, with a warning.

    llama.cpp starts the threads it is asked for (``--threads 100000`` crashed it); more threads than cores
    only make it slower. A negative count is an error.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads is None or threads == 0:
        return max(1, cores)
    if threads < 0:
        raise QuantizeError(f"expected a positive number of threads, got {threads}")
    if threads > cores:
        log.warning("using %d threads, the number of usable CPU cores, instead of the %d asked for", cores, threads)
        return cores
    return threads


class LlamaLog:
    """Collects llama.cpp log lines while installed (see :func:`capture_llama_log`)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.lines: list[str] = []

    @property
    def last_error(self) -> str:
        return self.errors[-1] if self.errors else ""


@contextmanager
def capture_llama_log() -> Iterator[LlamaLog]:
    """Route llama.cpp's log to Python logging for the duration; restore llama-cpp-python's handler after.

    The callback is process-global in llama.cpp, hence the lock: two captures never interleave.
    """
    sink = LlamaLog()
    pending: list[str] = []
    line_level = [1]

    def on_log(level: int, text: bytes, _user: Any) -> None:
        s = text.decode("utf-8", errors="replace")
        if not pending and level != 5:  # GGML_LOG_LEVEL_CONT continues the previous line's level
            line_level[0] = level
        pending.append(s)
        if not s.endswith("\n"):
            return
        line = "".join(pending).rstrip()
        pending.clear()
        if not line:
            return
        sink.lines.append(line)
        if line_level[0] == 4:  # GGML_LOG_LEVEL_ERROR (ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT)
            sink.errors.append(line.strip())
            log.debug("llama.cpp error: %s", line)
        else:
            log.debug("llama.cpp: %s", line)

    callback = llama_cpp.llama_log_callback(on_log)
    with _log_lock:
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        try:
            yield sink
        finally:
            llama_cpp.llama_log_set(_llama_logger.llama_log_callback, ctypes.c_void_p(0))


class Session:
    """One model and one context; use :func:`open_session`."""

    def __init__(self, model: Any, ctx: Any, n_ctx: int) -> None:
        self.model = model
        self.ctx = ctx
        self.n_ctx = n_ctx
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.n_params = int(llama_cpp.llama_model_n_params(model))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS and with special-token parsing off."""
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, False, False)
        if n < 0:  # buffer too small: llama.cpp returns -needed
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, False, False)
        if n < 0:
            raise QuantizeError(f"expected text llama.cpp can tokenize, got tokenizer status {n}")
        return list(buf[:n])

    def decode(self, tokens: list[int], *, all_logits: bool = False) -> None:
        """Evaluate ``tokens`` from an empty cache (logits for every position or only the last)."""
        n = len(tokens)
        if not 0 < n <= self.n_ctx:
            raise QuantizeError(f"expected 1..{self.n_ctx} tokens per chunk, got {n}")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == n - 1
            batch.n_tokens = n
            rc = llama_cpp.llama_decode(self.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        if rc != 0:
            raise QuantizeError(f"expected llama_decode to return 0, got {rc}")

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Float32 logits of every position of ``tokens``: shape (len(tokens), n_vocab)."""
        self.decode(tokens, all_logits=True)
        n = len(tokens)
        ptr = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n * self.n_vocab,)).reshape(n, self.n_vocab).copy()


@contextmanager
def open_session(
    path: str | os.PathLike[str],
    *,
    n_ctx: int = 512,
    threads: int | None = None,
    cb_eval: Any = None,
) -> Iterator[Session]:
    """Load ``path`` on the CPU with a context of ``n_ctx`` tokens and one batch of the same size.

    ``cb_eval`` is a ``llama_cpp.ggml_backend_sched_eval_callback`` (the importance-matrix collector);
    the caller keeps it alive for the duration.
    """
    backend_init()
    threads = clamp_threads(threads)
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0  # quality numbers are measured on the CPU backend: reproducible in CI
    # No "extra" CPU buffer types (AMX / repacked weights): on the Xeon VMs of our CI, whose CPUs report
    # AMX, llama.cpp's AMX path crashes (SIGSEGV in llama_decode) for every quantized type, and the plain
    # ggml kernels are the reference implementation anyway.
    mparams.use_extra_bufts = False
    with capture_llama_log() as llog:
        model = llama_cpp.llama_model_load_from_file(str(Path(path)).encode(), mparams)
    if not model:
        raise QuantizeError(f"expected llama.cpp to load {path}, got: {llog.last_error or 'load failure'}")
    ctx = None
    try:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = n_ctx
        cparams.n_seq_max = 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        if cb_eval is not None:
            cparams.cb_eval = cb_eval
            cparams.cb_eval_user_data = None
        with capture_llama_log() as llog:
            ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise QuantizeError(f"expected a llama.cpp context for {path}, got: {llog.last_error or 'init failure'}")
        yield Session(model, ctx, n_ctx)
    finally:
        with capture_llama_log():
            if ctx:
                llama_cpp.llama_free(ctx)
            llama_cpp.llama_model_free(model)
