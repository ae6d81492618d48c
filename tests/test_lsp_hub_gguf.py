"""GGUF files as users find them on the Hugging Face Hub, through the real llama.cpp engine.

- An older Code Llama GGUF (no FIM/EOT metadata keys, ``▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>`` typed NORMAL), made
  with gguf-py from the memorising micro model: llama.cpp itself finds no EOT in it, the engine finds
  ``▁<EOT>`` by its text, and every completion comes back exactly AND ends at EOT (not at the token
  limit, the time budget or a stop rule).
- Other FIM families (StarCoder, Qwen2.5-Coder, DeepSeek-Coder, CodeGemma vocabularies over random tiny
  weights): the sentinel and end-of-generation ids resolve to their tokens and the prompt is their PSM
  layout, token by token, without Code Llama's leading space.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from codellama_core import llama
from lsp_server import context, fim, pipeline
from lsp_server.cache import TypeThroughCache
from lsp_server.config import Settings
from lsp_server.engines.llama_cpp import EngineOptions, LlamaCppEngine
from lsp_server.vocab import LlamaVocab
from model_train.tokenizer import fim_ids
from tests.fixtures.hub_ggufs import FAMILIES, as_old_hub_codellama, family_gguf
from tests.fixtures.lsp_client import lsp_session
from tests.fixtures.micro_model import micro_model  # noqa: F401
from tests.test_lsp_micro import _blank, _line_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def old_hub_gguf(micro_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return as_old_hub_codellama(micro_model.gguf, tmp_path_factory.mktemp("hub") / "micro-old-hub.gguf")


@pytest.fixture(scope="module")
def old_hub_engine(old_hub_gguf: Path):
    engine = LlamaCppEngine(old_hub_gguf, "micro-old-hub", EngineOptions(n_ctx=2048))
    yield engine
    engine.close()


def test_old_hub_file_has_no_fim_metadata_and_llama_cpp_finds_no_eot(old_hub_gguf: Path, micro_model) -> None:
    model = llama.Model(old_hub_gguf, llama.LoadOptions(vocab_only=True))
    try:
        for key in ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.eot_token_id"):
            assert model.meta(key) is None
        assert model.special()["eot"] is None  # the bug this works around: llama_vocab_eot == -1
        ids = fim_ids(micro_model.tokenizer)
        assert ids["eot"] not in model.eog_ids()
        s = LlamaVocab(model).sentinels
    finally:
        model.close()
    assert (s.pre, s.suf, s.mid, s.eot) == (ids["pre"], ids["suf"], ids["mid"], ids["eot"])
    assert dict(s.source) == dict.fromkeys(("pre", "suf", "mid", "eot"), "text")
    assert s.style == "codellama" and ids["eot"] in s.eog


async def test_old_hub_file_ready_status_says_where_the_ids_came_from(old_hub_gguf: Path, micro_model) -> None:
    eot = fim_ids(micro_model.tokenizer)["eot"]
    async with lsp_session(old_hub_gguf) as client:
        ready = next(s for s in client.status.items if s["state"] == "ready")
        assert ready["message"].startswith("FIM/EOT ids found by their text: ")
        assert f"eot={eot}" in ready["message"]
        assert not client.messages  # it works: nothing to warn about


def _raw_generation(engine: LlamaCppEngine, doc: str, offset: int, settings: Settings):
    """The engine's own answer to the pipeline's prompt, without the pipeline's early stop rule (which ends a
    completion at the end of its line or block, before the model's own end)."""
    request, _ctx = pipeline.build_request(engine, doc, offset, settings, 1, "t", context.cursor(doc, offset))
    return engine.submit(dataclasses.replace(request, stop_text=None)).future.result(timeout=120)


async def test_old_hub_file_completes_exactly_and_stops_at_eot(old_hub_engine: LlamaCppEngine, micro_model) -> None:
    """The one blanked line the micro model both completes exactly and ends with EOT on its own (a scan of
    every line of its corpus found it): through the old-style file, the completion is exact, and the
    generation stops on the EOT id found by its text - not at the token limit."""
    source = micro_model.files["unicode_line.py"]
    line_no = _line_of(source, "def add(a, b):")
    doc, expected = _blank(source, line_no, "")
    offset = sum(len(ln) + 1 for ln in doc.split("\n")[:line_no])
    settings = Settings(max_tokens=48, time_budget_ms=60_000)
    done = await pipeline.complete(old_hub_engine, TypeThroughCache(), "unicode_line.py", doc, offset, settings)
    assert done.texts == [expected]
    result = await asyncio.to_thread(_raw_generation, old_hub_engine, doc, offset, settings)
    assert result.stop == "eot" and [c.stop for c in result.candidates] == ["eot"], result
    assert result.candidates[0].text == expected + "\n"  # the line and its newline, then EOT


def test_old_hub_file_generates_as_the_file_with_metadata(old_hub_engine: LlamaCppEngine, micro_model) -> None:
    """Every non-blank line of the micro corpus blanked in turn: the old-style file (ids found by text)
    generates the same text and stops for the same reason as the file our exporter wrote (ids from
    metadata), EOT stops included - where llama.cpp alone would run on to the token limit."""
    reference = LlamaCppEngine(micro_model.gguf, "micro", EngineOptions(n_ctx=2048))
    settings = Settings(max_tokens=48, time_budget_ms=60_000)
    eot_stops = 0
    try:
        for name, source in micro_model.files.items():
            lines = source.split("\n")
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                keep = line[: len(line) - len(line.lstrip())]
                doc, _expected = _blank(source, i, keep)
                offset = sum(len(ln) + 1 for ln in lines[:i]) + len(keep)
                want = _raw_generation(reference, doc, offset, settings)
                got = _raw_generation(old_hub_engine, doc, offset, settings)
                assert [(c.text, c.stop) for c in got.candidates] == [(c.text, c.stop) for c in want.candidates], (name, i)
                eot_stops += got.stop == "eot"
    finally:
        reference.close()
    assert eot_stops >= 3  # the comparison covers real EOT stops, not only token-limit ones


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory: pytest.TempPathFactory):
    path = family_gguf(tmp_path_factory.mktemp("family") / f"{request.param}.gguf", request.param)
    engine = LlamaCppEngine(path, request.param, EngineOptions(n_ctx=256))
    raw = llama.Model(path, llama.LoadOptions(vocab_only=True))  # raw tokenization, nothing added
    yield request.param, engine, raw
    raw.close()
    engine.close()


EXPECTED_ENDS = {
    "starcoder": {"<|endoftext|>", "<file_sep>", "<fim_pad>"},
    "qwen": {"<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>", "<|repo_name|>"},
    "deepseek": {"<｜end▁of▁sentence｜>", "<|EOT|>"},
    "codegemma": {"<eos>", "<|file_separator|>", "<end_of_turn>"},
}
PRE_SUF_MID = {
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "qwen": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "deepseek": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    "codegemma": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
}


def test_family_sentinels_and_end_of_generation(family) -> None:
    name, engine, _raw = family
    specials = FAMILIES[name][1]
    s = engine.vocab.sentinels
    assert (s.pre, s.suf, s.mid) == tuple(specials.index(t) for t in PRE_SUF_MID[name])
    assert s.style == "psm" and s.source["pre"] == "text"
    assert {specials[i] for i in s.eog} == EXPECTED_ENDS[name]
    assert s.eot is not None and specials[s.eot] in EXPECTED_ENDS[name]


@pytest.mark.parametrize("order", ["spm", "psm"])
def test_family_prompt_is_psm_without_leading_space(family, order: str) -> None:
    name, engine, raw = family
    vocab = engine.vocab
    s = vocab.sentinels
    prefix, suffix = "def f(x):\n    return ", "\n\nprint(f(2))\n"
    raw_pre, raw_suf = raw.tokenize(prefix), raw.tokenize(suffix)
    assert vocab.decode(raw_pre) == prefix and vocab.decode(raw_suf) == suffix  # no space was put in front
    head = [s.bos] if FAMILIES[name][4] else []
    got = fim.prompt_tokens(fim.FimContext(prefix=prefix, suffix=suffix), vocab, fim.FimOrder(order))
    assert got == head + [s.pre] + raw_pre + [s.suf] + raw_suf + [s.mid]


async def test_family_model_runs_through_the_pipeline(family) -> None:
    name, engine, _raw = family
    doc = "def f(x):\n    return \n"
    settings = Settings(max_tokens=8, time_budget_ms=30_000)
    done = await pipeline.complete(engine, TypeThroughCache(), name, doc, doc.index("return ") + 7, settings)
    r = done.result
    assert r is not None and r.prompt_tokens > 6 and r.stop in ("eot", "length", "rule")
    assert r.generated_tokens <= 8
