"""The one llama.cpp adapter (``codellama_core.llama``) on a real tiny GGUF from our exporter.

KV-cache bookkeeping (decode, truncate, reuse) against a fresh evaluation, failures that say why, the
log routed to Python logging, and the one private part of llama-cpp-python it relies on, pinned to the
version it was written for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from codellama_core import llama
from tests.fixtures.lsp_models import lsp_random_gguf  # noqa: F401


def test_pinned_llama_cpp_python_and_its_private_ggml_handle() -> None:
    """``ggml_library`` reads ``llama_cpp._ggml.libggml`` (no public name); the imatrix collector reads
    ``struct ggml_tensor`` through it. Both are checked against 0.3.36: a new version needs a new look."""
    import llama_cpp

    assert llama_cpp.__version__ == "0.3.36"
    lib = llama.ggml_library()
    lib.ggml_tensor_overhead.restype = __import__("ctypes").c_size_t
    assert lib.ggml_tensor_overhead() > 0


def test_decode_truncate_reuse_match_a_fresh_evaluation(lsp_random_gguf: Path) -> None:
    with llama.open_context(lsp_random_gguf, llama.ContextOptions(n_ctx=256, all_logits=True)) as ctx:
        prompt = [ctx.model.bos] + ctx.model.tokenize("def add(a, b):\n    return a + b\n")
        full = ctx.evaluate(prompt)
    assert full.shape == (len(prompt), ctx.model.n_vocab)
    tol = 2e-3 * float(np.abs(full).max())
    with llama.open_context(lsp_random_gguf, llama.ContextOptions(n_ctx=256, n_batch=8)) as ctx:
        ctx.decode(prompt[:5])
        ctx.decode(prompt[5:])  # in batches of 8
        assert ctx.tokens == prompt
        np.testing.assert_allclose(ctx.logits(), full[-1], atol=tol)
        ctx.truncate(3)  # keep three positions, evaluate the rest again
        assert ctx.tokens == prompt[:3]
        ctx.decode(prompt[3:])
        np.testing.assert_allclose(ctx.logits(), full[-1], atol=tol)
        with pytest.raises(llama.LlamaError, match="expected at most 256 tokens"):
            ctx.decode([prompt[0]] * 300)


def test_an_aborted_decode_leaves_the_cache_as_it_was(lsp_random_gguf: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``abort`` (the C library's strlen over a flag, no GIL) stops a decode from another thread: the batch under way
    is dropped by llama.cpp, the cache and ``tokens`` hold what they held, and decoding the same batch again gives
    exactly the logits of a context that was never aborted. The lines llama.cpp logs about it are not errors."""
    opts = llama.ContextOptions(n_ctx=256, n_batch=32)
    with llama.open_context(lsp_random_gguf, opts) as ref:
        prompt = [ref.model.bos] + ref.model.tokenize("def add(a, b):\n    return a + b\n" * 3)
        ref.decode(prompt[:10])
        ref.decode(prompt[10:])
        expected = ref.logits().copy()
    with llama.open_context(lsp_random_gguf, opts) as ctx, caplog.at_level(logging.DEBUG, logger="codellama_core.llama"):
        ctx.decode(prompt[:10])
        assert ctx.enable_abort()
        assert ctx.tokens == prompt[:10]  # the probe left nothing behind
        ctx.abort()
        with pytest.raises(llama.Aborted):
            ctx.decode(prompt[10:])
        lc = llama.lib()
        assert ctx.tokens == prompt[:10]
        assert lc.llama_memory_seq_pos_max(lc.llama_get_memory(ctx.handle), 0) == 9
        with pytest.raises(llama.Aborted):  # every decode, until reset
            ctx.decode(prompt[10:11])
        ctx.reset_abort()
        ctx.decode(prompt[10:])
        assert ctx.tokens == prompt
        assert np.array_equal(ctx.logits(), expected)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "llama" in r.name]
    assert "aborted" not in llama.last_error() and "status: 1" not in llama.last_error()


def test_a_file_llama_cpp_refuses_says_why(lsp_random_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(lsp_random_gguf.read_bytes()[:5000])
    with pytest.raises(llama.LlamaError, match=r"expected llama.cpp to load .*truncated.gguf, got: .+"):
        llama.Model(bad)


def test_llama_cpp_log_goes_to_python_logging(lsp_random_gguf: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="llama.cpp"):
        model = llama.Model(lsp_random_gguf, llama.LoadOptions(vocab_only=True))
        model.close()
    assert any(r.name == "llama.cpp" and "llama_model_loader" in r.getMessage() for r in caplog.records)


def test_vocab_only_load_reads_metadata(lsp_random_gguf: Path) -> None:
    model = llama.Model(lsp_random_gguf, llama.LoadOptions(vocab_only=True))
    try:
        assert model.meta("general.architecture") == "llama"
        assert model.meta("no.such.key") is None
        assert model.n_vocab == 1004 and model.add_bos
        assert model.piece(model.tokenize("x")[0]).endswith(b"x")
    finally:
        model.close()
