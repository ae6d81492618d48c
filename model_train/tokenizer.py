"""SentencePiece tokenizers with Llama's settings and Code Llama's fill-in-the-middle pieces.

In: source text (an iterator of strings or a text file). Out: a ``tokenizer.model`` file.

Llama's tokenizer is a SentencePiece BPE model with identity normalization, runs of spaces kept, digits
split into single characters, byte fallback for anything not in the vocabulary, whitespace-only pieces
allowed, and ids unk=0, bos=1, eos=2. SentencePiece's defaults differ (NFKC, extra whitespace removed),
and with them indentation silently disappears, so every setting is spelled out here.

Code Llama appends four pieces to that vocabulary: ``▁<PRE>``, ``▁<SUF>``, ``▁<MID>``, ``▁<EOT>``. They are
ordinary (NORMAL) pieces in the model file, added after training; nothing in the code may assume their
ids: readers look them up with ``piece_to_id``. ``add_pieces`` appends them (and optional filler pieces,
to reproduce Code Llama's layout where they sit at ids 32007-32010 of a 32016-token vocabulary).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from codellama_core.fim import CODELLAMA_FIM_PIECES
from codellama_core.outfile import write_file
from model_train.errors import TrainError

FIM_PIECES = tuple(CODELLAMA_FIM_PIECES.values())  # pre, suf, mid, eot: the order Code Llama appends them in

LLAMA_TRAINER_OPTIONS: dict[str, Any] = dict(
    model_type="bpe",
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    split_digits=True,
    byte_fallback=True,
    allow_whitespace_only_pieces=True,
    split_by_whitespace=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    character_coverage=0.99995,
    max_sentence_length=1 << 16,
    num_threads=2,
    minloglevel=2,
)


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | Path,
    vocab_size: int,
    *,
    fim_pieces: bool = True,
    seed_sentencepiece_size: int = 200_000,
) -> Path:
    """Train a Llama-style BPE tokenizer on ``texts`` and write it to ``out_path``.

    Each text is split into lines for SentencePiece (it trains on "sentences"); newlines themselves are
    not pieces in Llama's vocabulary and are encoded through byte fallback (<0x0A>), as in Llama.
    ``vocab_size`` counts the trained pieces; the FIM pieces are appended after them.
    """
    import sentencepiece as spm

    def sentences():
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    yield line

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(),
        model_writer=buf,
        vocab_size=vocab_size,
        seed_sentencepiece_size=seed_sentencepiece_size,
        **LLAMA_TRAINER_OPTIONS,
    )
    data = buf.getvalue()
    if fim_pieces:
        data = add_pieces(data, FIM_PIECES)
    out_path = Path(out_path)
    write_file(out_path, data, TrainError)
    return out_path


def add_pieces(model: bytes, pieces: Iterable[str], *, at: int | None = None, pad_to: int | None = None) -> bytes:
    """Append NORMAL pieces (score 0) to a serialized SentencePiece model.

    ``at``: id the first piece must get; filler pieces ``<filler_N>`` (type UNUSED) fill the gap.
    ``pad_to``: after appending, add filler pieces until the vocabulary has this many entries.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model)

    def filler():
        p = proto.pieces.add()
        p.piece = f"<filler_{len(proto.pieces) - 1}>"
        p.score = 0.0
        p.type = pb.ModelProto.SentencePiece.UNUSED

    if at is not None:
        if at < len(proto.pieces):
            raise ValueError(f"expected at >= {len(proto.pieces)} (current vocab size), got {at}")
        while len(proto.pieces) < at:
            filler()
    for piece in pieces:
        p = proto.pieces.add()
        p.piece = piece
        p.score = 0.0
        p.type = pb.ModelProto.SentencePiece.NORMAL
    if pad_to is not None:
        while len(proto.pieces) < pad_to:
            filler()
    return proto.SerializeToString()


def fim_ids(model_path: str | Path) -> dict[str, int]:
    """The ids of the FIM pieces in a tokenizer.model, read from it (never assumed)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    out = {}
    for name, piece in CODELLAMA_FIM_PIECES.items():
        pid = sp.piece_to_id(piece)
        if pid == sp.unk_id():
            raise ValueError(f"expected the piece {piece!r} in {model_path}, got none")
        out[name] = pid
    return out
