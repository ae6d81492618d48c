"""Unit tests of the pure stages around the engine: sentinel resolution, FIM layouts per style, token
healing and sampling. The vocabularies here are small tables written out in the test (these stages take a
``Vocab`` and nothing else); the real llama.cpp vocabularies are tested in ``test_lsp_hub_gguf``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_server import fim, healing
from lsp_server.sampling import sample
from lsp_server.vocab import Sentinels, resolve_sentinels

# ---- sentinel resolution -------------------------------------------------------------------------------
CL_TEXTS = ["<unk>", "<s>", "</s>", "▁a", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", "<EOT>"]


def test_codellama_ids_from_metadata_win_over_text() -> None:
    meta = {"tokenizer.ggml.fim_pre_token_id": 4, "tokenizer.ggml.fim_suf_token_id": 5,
            "tokenizer.ggml.fim_mid_token_id": 6, "tokenizer.ggml.eot_token_id": 8}  # fmt: skip
    s = resolve_sentinels(CL_TEXTS, meta, bos=1, eos=2)
    assert (s.pre, s.suf, s.mid, s.eot) == (4, 5, 6, 8)
    assert s.source == {"pre": "metadata", "suf": "metadata", "mid": "metadata", "eot": "metadata"}
    assert s.style == "codellama" and s.has_fim
    # every EOT spelling the file has ends generation, and so does EOS
    assert s.eog == {2, 7, 8}


def test_old_hub_codellama_by_text_finds_the_sentencepiece_eot() -> None:
    """No FIM keys (files written before llama.cpp had them): ▁<EOT>, not ASCII _<EOT>, is the EOT."""
    s = resolve_sentinels(CL_TEXTS[:8], {}, bos=1, eos=2, eog=[2])
    assert (s.pre, s.suf, s.mid, s.eot) == (4, 5, 6, 7)
    assert set(s.source.values()) == {"text"}
    assert s.eog == {2, 7}
    assert "eot=7 (text)" in s.describe()


def test_older_prefix_suffix_middle_keys_count_as_metadata() -> None:
    meta = {"tokenizer.ggml.prefix_token_id": 4, "tokenizer.ggml.suffix_token_id": 5, "tokenizer.ggml.middle_token_id": 6}
    s = resolve_sentinels(CL_TEXTS[:8], meta, bos=1, eos=2)
    assert s.source == {"pre": "metadata", "suf": "metadata", "mid": "metadata", "eot": "text"}


@pytest.mark.parametrize(
    "texts,expected",
    [
        (["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<file_sep>", "a"], (1, 3, 2, 0, {0, 4})),
        (
            ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>"],
            (1, 3, 2, 0, {0, 4, 5}),
        ),
        (
            ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<|EOT|>"],
            (3, 2, 4, 5, {1, 5}),
        ),
        (
            ["<pad>", "<eos>", "<bos>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>"],
            (3, 5, 4, 6, {1, 6}),
        ),
    ],
    ids=["starcoder", "qwen", "deepseek", "codegemma"],
)
def test_other_families_are_psm_with_their_own_end_tokens(texts: list[str], expected: tuple) -> None:
    eos = next(i for i, t in enumerate(texts) if t in ("<|endoftext|>", "<｜end▁of▁sentence｜>", "<eos>"))
    s = resolve_sentinels(texts, {}, bos=None, eos=eos)
    pre, suf, mid, eot, eog = expected
    assert (s.pre, s.suf, s.mid, s.eot) == (pre, suf, mid, eot)
    assert s.eog == eog and s.style == "psm"


def test_no_fim_tokens() -> None:
    s = resolve_sentinels(["<unk>", "<s>", "</s>", "▁a"], {}, bos=1, eos=2)
    assert not s.has_fim and s.eot is None and s.eog == {2}
    assert s.source == dict.fromkeys(("pre", "suf", "mid", "eot"), "none")


# ---- FIM layouts ---------------------------------------------------------------------------------------
@dataclass
class TableVocab:
    """Characters are tokens 100 + ord(c); ``encode`` puts a space (token 132) in front when asked to."""

    sentinels: Sentinels
    space_prefix: bool = True
    add_bos: bool = True
    n_vocab: int = 1000

    def encode(self, text: str) -> list[int]:
        return ([132] if self.space_prefix and text else []) + self.encode_infill(text)

    def encode_infill(self, text: str) -> list[int]:
        return [100 + ord(c) for c in text]

    def piece(self, token: int) -> bytes:
        return chr(token - 100).encode() if token >= 100 else b""

    def decode(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode()


CL = Sentinels(bos=1, eos=2, pre=3, suf=4, mid=5, eot=6, eog=frozenset({2, 6}), style="codellama")
CTX = fim.FimContext(prefix="ab", suffix="c")
A, B, C, SP = 197, 198, 199, 132


def test_codellama_layouts_are_metas() -> None:
    v = TableVocab(CL)
    assert fim.prompt_tokens(CTX, v, fim.FimOrder.SPM) == [1, 3, 4, C, 5, SP, A, B]
    assert fim.prompt_tokens(CTX, v, fim.FimOrder.PSM) == [1, 3, SP, A, B, 4, C, 5]
    assert fim.prefix_ends_prompt(v, fim.FimOrder.SPM) and not fim.prefix_ends_prompt(v, fim.FimOrder.PSM)


def test_psm_style_has_no_leading_space_and_ignores_spm() -> None:
    s = Sentinels(bos=None, eos=0, pre=3, suf=4, mid=5, eot=0, eog=frozenset({0}), style="psm")
    v = TableVocab(s, space_prefix=False, add_bos=False)
    for order in fim.FimOrder:
        assert fim.prompt_tokens(CTX, v, order) == [3, A, B, 4, C, 5]
        assert not fim.prefix_ends_prompt(v, order)
    with_bos = TableVocab(Sentinels(bos=9, eos=0, pre=3, suf=4, mid=5, eot=0, eog=frozenset({0}), style="psm"))
    assert fim.prompt_tokens(CTX, with_bos)[:2] == [9, 3]


def test_prefix_only_without_fim() -> None:
    s = Sentinels(bos=1, eos=2, pre=None, suf=None, mid=None, eot=None, eog=frozenset({2}))
    assert fim.prompt_tokens(CTX, TableVocab(s)) == [1, SP, A, B]
    assert fim.prompt_tokens(CTX, TableVocab(s, add_bos=False)) == [SP, A, B]
    assert fim.prefix_ends_prompt(TableVocab(s), fim.FimOrder.PSM)


# ---- token healing ---------------------------------------------------------------------------------------
PIECES = [b"", b" ", b" t", b" to", b" total", b"tot", b"al", b"a", b"l", b"\n", b" x", b"<EOT>"]
INDEX = healing.PieceIndex(PIECES, exclude=[11])


def test_piece_index_prefix_queries() -> None:
    assert sorted(INDEX.starting_with(b" t").tolist()) == [2, 3, 4]
    assert INDEX.exactly(b"al").tolist() == [6]
    assert INDEX.starting_with(b"<").size == 0  # excluded (a sentinel), not just absent
    assert INDEX.starting_with(b"zz").size == 0


def test_take_back_tail_a_longer_token_starts_with() -> None:
    # prompt ... [" to"] at the cursor (the user typed " to"): " total" starts with it, so it is taken back
    prompt = [50, 51, 3]
    assert healing.take_back(prompt, 2, PIECES.__getitem__, INDEX) == ([50, 51], b" to")
    # the last token always qualifies (it starts with itself); " t" + "al" = " tal" starts no token
    assert healing.take_back([50, 2, 6], 3, PIECES.__getitem__, INDEX) == ([50, 2], b"al")
    # never across a newline, never the whole prefix
    assert healing.take_back([50, 9, 3], 3, PIECES.__getitem__, INDEX) == ([50, 9], b" to")
    assert healing.take_back([50, 3], 1, PIECES.__getitem__, INDEX) == ([50, 3], b"")


def test_allowed_tokens_cover_the_healed_text_either_way() -> None:
    # after taking back " to": the token must start with " to", or be a first part of it (" ", " t")
    assert sorted(healing.allowed(b" to", INDEX).tolist()) == [1, 2, 3, 4]
    assert healing.advance(b" to", b" total") == b""
    assert healing.advance(b" to", b" t") == b"o"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(1, 11)), min_size=2, max_size=8), st.integers(1, 8))
def test_take_back_returns_a_prefix_and_the_exact_tail(prompt: list[int], n_prefix: int) -> None:
    n_prefix = min(n_prefix, len(prompt))
    kept, heal = healing.take_back(prompt, n_prefix, PIECES.__getitem__, INDEX)
    assert prompt[: len(kept)] == kept
    assert heal == b"".join(PIECES[t] for t in prompt[len(kept) :])
    assert len(prompt) - len(kept) <= min(healing.MAX_HEAL, max(0, n_prefix - 1))


# ---- sampling -------------------------------------------------------------------------------------------
def test_greedy_is_the_argmax_and_respects_allowed() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, 0.0, rng) == 1
    assert sample(logits, 0.0, rng, allowed=np.array([2, 3])) == 3


def test_temperature_top_k_and_top_p_limit_the_choices() -> None:
    logits = np.array([5.0, 4.9, 0.0, -1.0, 4.8], dtype=np.float32)
    rng = np.random.default_rng(1)
    draws = {sample(logits, 1.0, rng, top_k=2) for _ in range(200)}
    assert draws == {0, 1}
    draws = {sample(logits, 1.0, rng, top_k=5, top_p=0.3) for _ in range(200)}
    assert draws == {0}
    draws = {sample(logits, 1.0, rng, allowed=np.array([2, 3])) for _ in range(300)}
    assert draws == {2, 3}


def test_sampling_is_reproducible_with_a_seed() -> None:
    logits = np.random.default_rng(5).normal(size=500).astype(np.float32)
    a = [sample(logits, 0.8, np.random.default_rng((0, 1))) for _ in range(3)]
    b = [sample(logits, 0.8, np.random.default_rng((0, 1))) for _ in range(3)]
    assert a == b
