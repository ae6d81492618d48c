"""FIM prompt ids against a SentencePiece reference, and the llama.cpp engine's KV reuse and superseding.

The reference for the prompt is Meta's ``infilling_prompt_tokens`` computed with the ``sentencepiece``
library on the very ``tokenizer.model`` the GGUF was exported from: ``enc`` is ``sp.encode`` (with
Llama's implicit leading space) and ``enc_infill`` is the same model with ``add_dummy_prefix`` off (what
Meta's ``encode_infilling`` computes with its "☺" trick on Code Llama's vocabulary). The ids under test
come from the engine, which tokenizes with llama.cpp from the GGUF alone.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2 as pb

from lsp_server import fim, pipeline
from lsp_server.config import Settings
from lsp_server.context import cursor
from lsp_server.engines import GenerationRequest
from lsp_server.engines.llama_cpp import LlamaCppEngine
from model_train.tokenizer import fim_ids
from tests.fixtures.lsp_models import lsp_codellama_layout_gguf, lsp_random_gguf  # noqa: F401


class SpReference:
    def __init__(self, model_path: Path) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        proto = pb.ModelProto()
        proto.ParseFromString(model_path.read_bytes())
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp_infill = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        ids = fim_ids(model_path)
        self.ids = (self.sp.bos_id(), ids["pre"], ids["suf"], ids["mid"], ids["eot"])

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_infill(self, text: str) -> list[int]:
        return self.sp_infill.encode(text)

    def meta_prompt(self, pre: str, suf: str, suffix_first: bool) -> list[int]:
        """Meta's infilling_prompt_tokens, written out with this reference tokenizer."""
        bos, pre_id, suf_id, mid_id, _eot = self.ids
        if suffix_first:
            return [bos, pre_id, suf_id] + self.encode_infill(suf) + [mid_id] + self.encode(pre)
        return [bos, pre_id] + self.encode(pre) + [suf_id] + self.encode_infill(suf) + [mid_id]


@pytest.fixture(scope="module")
def engine(lsp_random_gguf: Path):
    e = LlamaCppEngine(lsp_random_gguf, "tiny")
    yield e
    e.close()


@pytest.fixture(scope="module")
def cl_engine(lsp_codellama_layout_gguf: Path):
    e = LlamaCppEngine(lsp_codellama_layout_gguf, "tiny-cl")
    yield e
    e.close()


CASES = [
    ("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"),
    ("", ""),
    ("x", ""),
    ("", "    pass\n"),
    ("\tif x:\n\t\t", "y = 2\n"),
    ("s = '😀中文' + ", " # コメント\n"),
    ("literal = '<EOT> <PRE> ▁<SUF> <MID>'\n", "'▁<EOT>'"),
    ("  leading spaces", "  trailing  \n\n"),
    ("a\r\nb", "\n"),
]

CODE_CHARS = st.sampled_from(
    list("abcxyz_ ()[]:=+-*/.,'\"#\t\n0123456789") + ["    ", "def ", "return ", "😀", "中", "é", "<EOT>", "▁"]
)


def _ids(eng: LlamaCppEngine) -> tuple:
    s = eng.vocab.sentinels
    return (s.bos, s.pre, s.suf, s.mid, s.eot)


def _check_layouts(eng: LlamaCppEngine, ref: SpReference, pre: str, suf: str) -> None:
    assert _ids(eng) == ref.ids
    ctx = fim.FimContext(prefix=pre, suffix=suf)
    assert fim.prompt_tokens(ctx, eng.vocab, fim.FimOrder.SPM) == ref.meta_prompt(pre, suf, True)
    assert fim.prompt_tokens(ctx, eng.vocab, fim.FimOrder.PSM) == ref.meta_prompt(pre, suf, False)


def test_fim_sentinel_ids_come_from_the_gguf(
    engine: LlamaCppEngine, cl_engine: LlamaCppEngine, fixture_tokenizer: Path, codellama_tokenizer: Path
) -> None:
    assert _ids(engine) == SpReference(fixture_tokenizer).ids
    s = cl_engine.vocab.sentinels
    assert (s.pre, s.suf, s.mid, s.eot) == (32007, 32008, 32009, 32010)  # Code Llama's real ids
    assert all(s.source[k] == "metadata" for k in ("pre", "suf", "mid", "eot")), s.source
    assert s.style == "codellama" and s.eot in s.eog


@pytest.mark.parametrize("pre,suf", CASES)
def test_prompt_ids_match_reference(engine: LlamaCppEngine, fixture_tokenizer: Path, pre: str, suf: str) -> None:
    _check_layouts(engine, SpReference(fixture_tokenizer), pre, suf)


@pytest.mark.parametrize("pre,suf", CASES)
def test_prompt_ids_match_reference_codellama_layout(
    cl_engine: LlamaCppEngine, codellama_tokenizer: Path, pre: str, suf: str
) -> None:
    _check_layouts(cl_engine, SpReference(codellama_tokenizer), pre, suf)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(CODE_CHARS, max_size=30).map("".join), st.lists(CODE_CHARS, max_size=30).map("".join))
def test_prompt_ids_match_reference_fuzzed(engine: LlamaCppEngine, fixture_tokenizer: Path, pre: str, suf: str) -> None:
    _check_layouts(engine, _REFS.setdefault(fixture_tokenizer, SpReference(fixture_tokenizer)), pre, suf)


_REFS: dict[Path, SpReference] = {}


def test_special_text_is_not_a_control_token(engine: LlamaCppEngine) -> None:
    s = engine.vocab.sentinels
    for text in ("<EOT>", "▁<EOT>", " <PRE>", "<SUF><MID>"):
        toks = engine.vocab.encode(text) + engine.vocab.encode_infill(text)
        assert not set(toks) & {s.pre, s.suf, s.mid, s.eot}, text


LINES = st.sampled_from(["", "    ", "\t", "def f(a, b):", "    return a  # é", " x = 1", "<PRE> ▁<EOT>", "😀中", "  ", "end"])


def _tokenized_whole(vocab, infill: bool, text: str) -> list[int]:
    """llama.cpp's tokenizer on the whole text (what ``encode`` returned before it went line by line)."""
    return vocab._whole(infill, text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LINES, max_size=12).map("\n".join))
def test_line_by_line_tokens_equal_the_whole_texts(engine: LlamaCppEngine, cl_engine: LlamaCppEngine, text: str) -> None:
    """A window's tokens are put together from its lines' (a keystroke changes one line of hundreds): both
    vocabularies (the fixture's and Code Llama's own) must give exactly what tokenizing the whole text gives."""
    for vocab in (engine.vocab, cl_engine.vocab):
        assert vocab._by_lines
        assert vocab.encode(text) == _tokenized_whole(vocab, False, text), repr(text)
        assert vocab.encode_infill(text) == _tokenized_whole(vocab, True, text), repr(text)


def test_line_by_line_tokens_of_whole_source_files(engine: LlamaCppEngine, cl_engine: LlamaCppEngine) -> None:
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("textwrap.py", "shlex.py", "heapq.py"):
        text = (stdlib / name).read_text(encoding="utf-8")
        for vocab in (engine.vocab, cl_engine.vocab):
            for cut in (text, text[text.index("\n") :], text[1000:5000]):
                assert vocab.encode(cut) == _tokenized_whole(vocab, False, cut)
                assert vocab.encode_infill(cut) == _tokenized_whole(vocab, True, cut)


# ---- engine behaviour --------------------------------------------------------------------------------
DOC = "".join(f"def function_{i}(a, b):\n    return a * {i} + b\n\n" for i in range(60))


def _request(engine: LlamaCppEngine, text: str, offset: int, **kw) -> GenerationRequest:
    """The pipeline's request for ``text`` at ``offset`` (context windows, SPM/PSM prompt, healing)."""
    s = Settings(**{"max_tokens": 4, "time_budget_ms": 30_000, **kw})
    return pipeline.build_request(engine, text, offset, s, 1, "-", cursor(text, offset))[0]


def _run(engine: LlamaCppEngine, text: str, offset: int, **kw):
    return engine.submit(_request(engine, text, offset, **kw)).future.result(timeout=120)


def test_kv_reuse_when_typing_at_the_cursor(engine: LlamaCppEngine) -> None:
    """SPM + anchored windows: a keystroke re-evaluates a handful of tokens; PSM too, the suffix moved."""
    cut = DOC.index("def function_30")
    typed = "def fun"
    results = {}
    moved: dict[str, list[int]] = {}
    for order in ("spm", "psm"):
        from lsp_server.fim import FimOrder

        first = _run(engine, DOC[:cut] + DOC[cut:], cut, fim_order=FimOrder(order), context_tokens=800)
        assert first.prompt_tokens > 200
        evaluated = []
        for k in range(1, len(typed) + 1):
            text = DOC[:cut] + typed[:k] + DOC[cut:]
            r = _run(engine, text, cut + k, fim_order=FimOrder(order), context_tokens=800)
            assert r.reused_tokens + r.evaluated_tokens == r.prompt_tokens
            evaluated.append(r.evaluated_tokens)
            moved.setdefault(order, []).append(r.moved_tokens)
        results[order] = evaluated
    assert max(results["spm"]) <= 8, results
    # PSM: the typed tokens come before the whole suffix; they are evaluated there and the suffix's KV cache is
    # moved after them (engines/kept.py), not evaluated again (before KV shifting: the whole suffix, 500+ tokens)
    assert max(results["psm"]) <= 8, results
    assert moved["psm"] and min(moved["psm"]) > 50, moved


def test_identical_request_evaluates_one_token(engine: LlamaCppEngine) -> None:
    _run(engine, DOC, 500)
    r = _run(engine, DOC, 500)
    assert r.evaluated_tokens == 1 and r.reused_tokens == r.prompt_tokens - 1


def test_newest_request_supersedes(engine: LlamaCppEngine) -> None:
    requests = [_request(engine, DOC, 100 + i, max_tokens=64) for i in range(20)]
    jobs = [engine.submit(r) for r in requests]
    results = [j.future.result(timeout=120) for j in jobs]
    assert all(r.stop == "superseded" and r.texts == [] for r in results[:-1])
    assert results[-1].stop not in ("superseded", "cancelled")
    done, _ = concurrent.futures.wait([j.future for j in jobs], timeout=1)
    assert len(done) == 20


def test_cancel_stops_generation(engine: LlamaCppEngine) -> None:
    job = engine.submit(_request(engine, DOC, 200, max_tokens=2000, time_budget_ms=60_000, context_tokens=128))
    job.cancel()
    r = job.future.result(timeout=60)
    assert r.stop == "cancelled" and r.texts == []


def test_time_budget(engine: LlamaCppEngine) -> None:
    r = _run(engine, DOC * 3, len(DOC), max_tokens=2000, time_budget_ms=10, context_tokens=2000)
    assert r.stop == "time"


def test_every_decode_runs_on_the_worker_thread(lsp_random_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-up at load and every request decode on one thread, the engine's worker: llama.cpp's
    OpenMP build keeps a thread team per calling thread, and a second caller's team made generation with
    2 threads a third slower (bench/latency.py --vs-server; the engine's ``_warm_up`` says why)."""
    import threading

    from codellama_core import llama

    callers: list[str] = []
    real = llama.Context.decode

    def decode(self, tokens, **kw):
        callers.append(threading.current_thread().name)
        return real(self, tokens, **kw)

    monkeypatch.setattr(llama.Context, "decode", decode)
    eng = LlamaCppEngine(lsp_random_gguf, "random")
    try:
        assert callers, "the engine warms up before it is ready"
        warm = len(callers)
        r = _run(eng, DOC, 300)
        assert r.generated_tokens > 0 and len(callers) > warm
        assert set(callers) == {"llama-cpp-worker"}, callers
    finally:
        eng.close()
