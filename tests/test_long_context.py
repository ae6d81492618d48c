"""Long context as Code Llama has it: a 16,384-token context on a model trained at that length, rope theta 1e6.

In: a Code-Llama-shaped GGUF with random weights (``hub_gguf``: Code Llama's vocabulary layout, rope theta 1e6,
``context_length`` 16384 as the converter writes it for theta 1e6), ``--n-ctx`` / ``EngineOptions.n_ctx`` and
the KV cache type. Out: pass/fail of

- the context llama.cpp built, read from llama.cpp itself (its own account of the context's parameters, which
  the adapter routes to the ``llama.cpp`` logger, and ``llama_n_ctx`` of the handle): ``n_ctx`` 16384,
  ``freq_base`` 1e6, and a KV cache of exactly the size ``modelinfo.kv_cache_bytes`` computes (what the
  model pickers' memory estimate uses), f16 and q8_0 (half the memory and a bit);
- a 16k-token prompt budget served end to end by the real server over LSP (``--n-ctx 16384``, ``contextTokens``
  16000): one request evaluates more than 15,000 prompt tokens in that context (the server's request log);
  about 20 s of prompt evaluation on an idle 2-core machine, 2 minutes at a load of 15;
- ``--n-ctx`` above the trained length capped to it (and the server says so); the default still 4096.
"""

from __future__ import annotations

import logging
import re
import sysconfig
from pathlib import Path

import pytest

from lsp_server import modelinfo
from lsp_server.engines import EngineError
from lsp_server.engines.llama_cpp import MAX_DEFAULT_CTX, EngineOptions, LlamaCppEngine, context_size
from tests.fixtures.hub_server import hub_gguf  # noqa: F401
from tests.fixtures.raw_lsp import RawServer

pytestmark = pytest.mark.slow

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAINED = 16384


def long_source(min_chars: int = 160_000) -> str:
    """Python text long enough for more than 16k tokens of the fixture vocabulary (stdlib files, fixed order)."""
    parts, n = [], 0
    for name in ("typing.py", "inspect.py", "argparse.py", "dataclasses.py", "enum.py", "pathlib.py", "ast.py"):
        text = (STDLIB / name).read_text(encoding="utf-8")
        parts.append(text)
        n += len(text)
        if n >= min_chars:
            break
    return "\n".join(parts)


def context_report(records: list[logging.LogRecord]) -> dict[str, str]:
    """llama.cpp's printout of the context it built: ``llama_context: n_ctx = 16384`` ... and the KV cache size."""
    out: dict[str, str] = {}
    for r in records:
        msg = r.getMessage()
        if m := re.match(r"llama_context:\s+(\w+)\s+=\s+(\S+)", msg):
            out[m[1]] = m[2]
        if m := re.match(r"llama_kv_cache: size =\s+([\d.]+) MiB", msg):
            out["kv_mib"] = m[1]
    return out


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_a_16k_context_as_llama_cpp_built_it(hub_gguf: Path, kv_type: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llama.cpp")
    engine = LlamaCppEngine(hub_gguf, "cl-16k", EngineOptions(n_ctx=TRAINED, kv_type=kv_type))
    try:
        from codellama_core import llama

        assert llama.lib().llama_n_ctx(engine._ctx.handle) == TRAINED  # the handle's own n_ctx
        assert engine.info.n_ctx == engine.info.n_ctx_train == TRAINED
        assert float(engine._model.meta("llama.rope.freq_base") or 0) == pytest.approx(1e6)
    finally:
        engine.close()
    got = context_report(caplog.records)
    assert int(got["n_ctx"]) == TRAINED, got
    assert float(got["freq_base"]) == pytest.approx(1e6), got
    assert float(got["freq_scale"]) == 1.0, "no rope scaling: the model's own positions"
    # 2 layers x 16384 positions x 2 KV heads x 64 dims x (K and V): 16 MiB in f16, 8.5 MiB in q8_0
    expected = modelinfo.kv_cache_bytes(2, TRAINED, 2, 64, kv_type) / 2**20
    assert float(got["kv_mib"]) == pytest.approx(expected, abs=0.01), got


def test_n_ctx_is_capped_at_the_trained_length() -> None:
    assert context_size(None, TRAINED) == MAX_DEFAULT_CTX == 4096  # the default stays small
    assert context_size(None, 2048) == 2048
    assert context_size(TRAINED, TRAINED) == TRAINED
    assert context_size(32768, TRAINED) == TRAINED
    assert context_size(32768, 0) == 32768  # a file that does not say its length: what was asked
    with pytest.raises(EngineError, match="expected --n-ctx >= 1, got 0"):
        context_size(0, TRAINED)


def test_the_server_serves_16k_prompts_and_says_when_it_capped(hub_gguf: Path, tmp_path: Path) -> None:
    text = long_source()
    doc = tmp_path / "long.py"
    doc.write_text(text)
    lines = text.split("\n")
    line = len(lines) // 2
    with RawServer(args=("--n-ctx", str(TRAINED), "-vv")) as s:
        s.initialize(str(hub_gguf), {"contextTokens": 16000, "maxTokens": 8, "extraContextTokens": 0, "timeBudgetMs": 600000})
        assert s.statuses()[-1]["state"] == "ready", s.statuses()
        s.notify(
            "textDocument/didOpen", {"textDocument": {"uri": doc.as_uri(), "languageId": "python", "version": 1, "text": text}}
        )
        answer = s.request(
            "textDocument/inlineCompletion",
            # automatic trigger: one item (an invoked one asks for maxItems candidates)
            {"textDocument": {"uri": doc.as_uri()}, "position": {"line": line, "character": 0}, "context": {"triggerKind": 2}},
            timeout=300,
        )
        assert "result" in answer, answer
        log = s.stderr()
    assert re.search(r"llama_context: n_ctx\s+= 16384", log) and re.search(r"llama_context: freq_base\s+= 1000000", log)
    prompts = [int(n) for n in re.findall(r"stop=\w+, prompt=(\d+) ", log)]
    assert prompts and max(prompts) > 15_000, prompts
    with RawServer(args=("--n-ctx", "32768")) as s:
        s.initialize(str(hub_gguf))
        ready = s.statuses()[-1]
        assert ready["state"] == "ready" and "context 16384 tokens, the model's trained length" in ready["message"], ready
