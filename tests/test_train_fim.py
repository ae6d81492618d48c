"""The FIM training objective and prompt layout, token by token (model_train.fim).

A tokenizer trained on the micro corpus (deterministic, ~0.1 s) spells small examples; the expected
piece sequences are written out by hand from Meta's layouts, so a change in the layout - or in how the
implicit leading space is dropped - shows up as a readable diff of pieces.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from model_train.fim import Codec, prompt_tokens, psm_tokens, spm_tokens, transform
from model_train.tokenizer import add_pieces, train_tokenizer

CORPUS = Path(__file__).resolve().parent / "data" / "micro_corpus"


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> Codec:
    texts = [p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.py"))]
    return Codec(train_tokenizer(texts, tmp_path_factory.mktemp("fim") / "t.model", 400))


def pieces(c: Codec, ids: list[int]) -> list[str]:
    return [c.sp.id_to_piece(i) for i in ids]


PRE, MID, SUF = "def add(a, b):\n", "    return a + b", "\n"


def test_psm_training_layout(codec: Codec) -> None:
    assert pieces(codec, psm_tokens(codec, PRE, SUF, MID)) == [
        "<s>",
        "▁<PRE>",
        "▁def",
        "▁",
        "ad",
        "d",
        "(",
        "a",
        ",",
        "▁b",
        "):",
        "<0x0A>",  # enc(prefix): dummy ▁ in front
        "▁<SUF>",
        "<0x0A>",  # enc_nls(suffix): no leading ▁
        "▁<MID>",
        "▁▁▁▁",
        "return",
        "▁a",
        "▁",
        "+",
        "▁b",  # enc_nls(middle): exactly four spaces, not five
        "▁<EOT>",
    ]


def test_spm_training_layout(codec: Codec) -> None:
    # SPM: prefix and middle are encoded together, after [MID].
    assert pieces(codec, spm_tokens(codec, PRE, SUF, MID)) == [
        "<s>",
        "▁<PRE>",
        "▁<SUF>",
        "<0x0A>",
        "▁<MID>",
        "▁def",
        "▁",
        "ad",
        "d",
        "(",
        "a",
        ",",
        "▁b",
        "):",
        "<0x0A>",
        "▁▁▁▁",
        "return",
        "▁a",
        "▁",
        "+",
        "▁b",
        "▁<EOT>",
    ]


def test_split_inside_a_line_with_cjk_and_emoji(codec: Codec) -> None:
    pre = '    label = "数据 😀"; '
    got = pieces(codec, psm_tokens(codec, pre, "\n", "total = add(a, b)"))
    assert got == [
        "<s>",
        "▁<PRE>",
        "▁▁▁▁▁",
        "label",
        "▁=",
        "▁",
        '"',
        "数",
        "据",
        "▁",
        "😀",
        '"',
        ";",
        "▁",
        "▁<SUF>",
        "<0x0A>",
        "▁<MID>",
        "t",
        "otal",
        "▁=",
        "▁",
        "ad",
        "d",
        "(",
        "a",
        ",",
        "▁b",
        ")",
        "▁<EOT>",
    ]
    assert codec.decode_nls(psm_tokens(codec, pre, "\n", "total = add(a, b)")[-12:-1]) == "total = add(a, b)"


def test_prompts_are_the_training_layouts_cut_before_the_middle(codec: Codec) -> None:
    full_psm = psm_tokens(codec, PRE, SUF, MID)
    assert prompt_tokens(codec, PRE, SUF) == full_psm[: full_psm.index(codec.mid_id) + 1]
    # SPM's prompt ends with enc(prefix); the training sequence has enc(prefix + middle) there instead.
    assert prompt_tokens(codec, PRE, SUF, suffix_first=True) == (
        [codec.bos_id, codec.pre_id, codec.suf_id] + codec.enc_nls(SUF) + [codec.mid_id] + codec.enc(PRE)
    )


def test_enc_nls_is_metas_encode_infilling_when_the_marker_is_a_piece(tmp_path: Path, codec: Codec) -> None:
    """With ☺ in the vocabulary (as in Llama's), enc_nls is literally Meta's ``sp.encode("☺" + s)[2:]``."""
    model = tmp_path / "with_marker.model"
    model.write_bytes(add_pieces(codec.path.read_bytes(), ["☺"]))
    c = Codec(model)
    for s in ["\n", "    return a + b", "\tself.jobs = []\n", "x", " x", "  ", "数据 😀", ""]:
        assert c.enc_nls(s) == c.sp.encode("☺" + s)[2:]
        assert c.decode_nls(c.enc_nls(s)) == s
        assert codec.decode_nls(codec.enc_nls(s)) == s  # and without ☺ (byte fallback marker) too


def test_transform_rates_and_invariants(codec: Codec) -> None:
    doc = (CORPUS / "spaces.py").read_text(encoding="utf-8")
    rng = random.Random(0)
    modes = Counter()
    for _ in range(2000):
        s = transform(doc, codec, rng)
        modes[s.mode] += 1
        if s.mode == "plain":
            assert s.tokens == [codec.bos_id] + codec.enc(doc) + [codec.eos_id]
            continue
        assert s.prefix + s.middle + s.suffix == doc  # character-level split, nothing lost
        assert s.tokens[-1] == codec.eot_id and s.tokens.count(codec.mid_id) == 1
        layout = psm_tokens if s.mode == "psm" else spm_tokens
        assert s.tokens == layout(codec, s.prefix, s.suffix, s.middle)
    assert abs(modes["plain"] / 2000 - 0.1) < 0.03
    assert abs(modes["psm"] / (modes["psm"] + modes["spm"]) - 0.5) < 0.05
