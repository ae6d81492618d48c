"""The training data and the Llama-style tokenizer (model_train.data, model_train.tokenizer).

- The shipped demo tokenizer round-trips every file of the corpus: decode(encode(code)) == code.
- A freshly trained tokenizer keeps runs of spaces, splits digits, falls back to bytes and has the four
  Code Llama pieces.
- The data manifest is reproducible: rebuilding it from this interpreter's stdlib gives the same list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from model_train import data
from model_train.fim import Codec
from model_train.tokenizer import FIM_PIECES, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = REPO / "lsp_server" / "models" / "demo" / "tokenizer.model"

EDGE_CASES = [
    "",
    " leading space",
    "  two leading spaces\n",
    "\tdef f():\n\t\treturn 1\n",
    "x = 1  \n\n\n    y = 2\r\n",
    'label = "数据 😀"; total = add(a, b)\n',
    "literal <PRE> <SUF> <MID> <EOT> text\n",  # (U+2581 "▁" itself never round-trips: it is the space symbol)
    "1234567890 0x1F 3.14e-10\n",
    "\u00a0non-breaking\u3000ideographic space\ufeff",
]


@pytest.fixture(scope="module")
def corpus() -> data.Corpus:
    return data.load_corpus()


def test_demo_tokenizer_round_trips_the_whole_corpus(corpus: data.Corpus) -> None:
    sp = Codec(DEMO_TOKENIZER).sp
    files = corpus.train + corpus.heldout
    assert len(files) > 500
    bad = [f.path for f in files if sp.decode(sp.encode(f.text)) != f.text]
    assert bad == []
    for s in EDGE_CASES:
        assert sp.decode(sp.encode(s)) == s


def test_fresh_tokenizer_has_llama_settings(tmp_path: Path, corpus: data.Corpus) -> None:
    texts = [f.text for f in corpus.train[:30]]
    c = Codec(train_tokenizer(texts, tmp_path / "t.model", 1000))
    sp = c.sp
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert [sp.id_to_piece(i) for i in (c.pre_id, c.suf_id, c.mid_id, c.eot_id)] == list(FIM_PIECES)
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["▁", "2", "0", "2", "4"]  # digits split
    assert "".join(sp.id_to_piece(i) for i in sp.encode("        return")).startswith("▁" * 9)  # spaces kept
    assert "<0xF0>" in [sp.id_to_piece(i) for i in sp.encode("😀")]  # byte fallback, not <unk>
    for s in EDGE_CASES + texts:
        assert sp.decode(sp.encode(s)) == s


def test_manifest_is_reproducible_and_split_by_file() -> None:
    shipped = json.loads(data.DEFAULT_MANIFEST.read_text())
    if shipped["python"] != ".".join(map(str, sys.version_info[:3])):
        pytest.fail(
            f"the shipped manifest was made with Python {shipped['python']}; "
            f"regenerate it with python -m model_train.data on this interpreter"
        )
    rebuilt = data.build_manifest()
    assert rebuilt["files"] == shipped["files"]
    assert rebuilt["near_duplicates"] == shipped["near_duplicates"]
    splits = {f["path"]: f["split"] for f in shipped["files"]}
    assert all(data.split_of(p) == s for p, s in splits.items())
    held = sum(s == "heldout" for s in splits.values())
    assert 20 <= held <= len(splits) // 10
