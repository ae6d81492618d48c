"""GGUF files as users find them on the Hugging Face Hub, through the real llama.cpp engine.

- An older Code Llama GGUF (no FIM/EOT metadata keys, ``▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>`` typed NORMAL), made
  with gguf-py from the memorising micro model: llama.cpp itself finds no EOT in it, the engine finds
  ``▁<EOT>`` by its text, and a completion comes back exactly AND ends at EOT (not at the token limit, the
  time budget or a stop rule).

  What the trained micro model does depends on the CPU that trained it (training is seeded and step-based,
  but floating point differs between CPUs): on an AMD EPYC it never ends a blanked line with EOT on its own,
  elsewhere it does at a few lines. So the EOT tests do not name lines. They run on a copy of the model whose
  EOT output row is 1.25x its newline's (``hub_ggufs.eot_at_line_ends``): it ends with EOT wherever it would
  start a new line, on any CPU; the lines come from scanning every line of the corpus. Lines where the model as
  trained ends with EOT, if any, are checked as well.
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
from tests.fixtures.hub_ggufs import FAMILIES, as_old_hub_codellama, eot_at_line_ends, family_gguf
from tests.fixtures.lsp_client import lsp_session
from tests.fixtures.micro_model import micro_model  # noqa: F401
from tests.test_lsp_micro import _blank

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


@pytest.fixture(scope="module")
def eot_pair(micro_model, tmp_path_factory: pytest.TempPathFactory):
    """Engines on the micro model with EOT forced at line ends: (our exporter's file, its old-hub-style copy)."""
    d = tmp_path_factory.mktemp("eot")
    forced = eot_at_line_ends(micro_model.gguf, d / "micro-eot-at-line-ends.gguf")
    old = as_old_hub_codellama(forced, d / "micro-eot-at-line-ends-old-hub.gguf")
    engines = [LlamaCppEngine(path, path.stem, EngineOptions(n_ctx=2048)) for path in (forced, old)]
    yield engines[0], engines[1]
    for e in engines:
        e.close()


def _blanked_lines(files: dict[str, str]):
    """Every non-blank line of the corpus, blanked after its indentation: (name, line, doc, offset, expected)."""
    for name, source in files.items():
        lines = source.split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            keep = line[: len(line) - len(line.lstrip())]
            doc, expected = _blank(source, i, keep)
            yield name, i, doc, sum(len(ln) + 1 for ln in lines[:i]) + len(keep), expected


SETTINGS = Settings(max_tokens=48, time_budget_ms=60_000)


def eot_id_of(engine: LlamaCppEngine) -> int:
    eot = engine.vocab.sentinels.eot
    assert eot is not None
    return eot


async def test_old_hub_file_completes_exactly_and_stops_at_eot(eot_pair, old_hub_engine: LlamaCppEngine, micro_model) -> None:
    """Through the old-style file (EOT found by its text), the lines the model knows come back exactly and the
    generation stops on that EOT, not at the token limit (llama.cpp's own end-of-generation ids do not include
    it). Relies on: the micro model reproducing at least 3 memorised lines exactly and its newline
    logit being positive where a line ends (the scan finds which lines on this CPU)."""
    _reference, old = eot_pair
    found = []
    for name, i, doc, offset, expected in _blanked_lines(micro_model.files):
        r = await asyncio.to_thread(_raw_generation, old, doc, offset, SETTINGS)
        if r.stop == "eot" and [c.text for c in r.candidates] == [expected]:
            found.append((name, i, doc, offset, expected))
    assert len(found) >= 3, f"expected the micro model to end at least 3 known lines with the forced EOT, got {found}"
    assert eot_id_of(old) not in old._model.eog_ids()  # llama.cpp alone would not stop there: the engine found it by text
    for name, i, doc, offset, expected in found[:3]:
        done = await pipeline.complete(old, TypeThroughCache(), name, doc, offset, SETTINGS)
        assert done.texts == [expected], (name, i)
    # and where the model as trained ends a line with EOT on its own (some CPUs' training, not others'), the same
    for name, i, doc, offset, expected in _blanked_lines(micro_model.files):
        r = await asyncio.to_thread(_raw_generation, old_hub_engine, doc, offset, SETTINGS)
        if r.stop == "eot" and r.candidates[0].text.rstrip("\n") == expected:
            done = await pipeline.complete(old_hub_engine, TypeThroughCache(), name, doc, offset, SETTINGS)
            assert done.texts == [expected], (name, i)


def test_old_hub_file_generates_as_the_file_with_metadata(eot_pair, old_hub_engine: LlamaCppEngine, micro_model) -> None:
    """Every non-blank line of the micro corpus blanked in turn: the old-style file (ids found by text)
    generates the same text and stops for the same reason as the file our exporter wrote (ids from
    metadata), EOT stops included - where llama.cpp alone would run on to the token limit. Both for the model
    as trained (whose EOT stops depend on the CPU that trained it: none on an AMD EPYC) and for the copy with
    EOT forced at line ends, whose EOT stops make the comparison cover real EOT stops on any CPU."""
    reference = LlamaCppEngine(micro_model.gguf, "micro", EngineOptions(n_ctx=2048))
    eot_stops = 0
    try:
        for ref, old in ((reference, old_hub_engine), eot_pair):
            for name, i, doc, offset, _expected in _blanked_lines(micro_model.files):
                want = _raw_generation(ref, doc, offset, SETTINGS)
                got = _raw_generation(old, doc, offset, SETTINGS)
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
