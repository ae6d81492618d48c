"""tokenizer.model -> the GGUF vocabulary llama.cpp's SentencePiece ("llama") tokenizer reads.

In: a SentencePiece ``tokenizer.model`` and the number of rows of the model's token embedding.
Out: ``Vocab`` (one token text, score and ``gguf.TokenType`` per embedding row, special ids), written into a
``GGUFWriter`` by ``write_vocab`` with gguf-py's named keys.

Token types follow the SentencePiece piece types (NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE), with one
deliberate change: Code Llama's fill-in-the-middle pieces ``▁<PRE>``, ``▁<SUF>``, ``▁<MID>``, ``▁<EOT>``
are NORMAL pieces in ``tokenizer.model`` but are written as CONTROL. llama.cpp never produces a CONTROL
token from text when special-token parsing is off, so a source file that spells ``<PRE>`` or ``▁<EOT>`` is
tokenized as ordinary text and cannot inject a FIM marker; and the ids are written explicitly
(``tokenizer.ggml.fim_pre_token_id`` / ``_suf_`` / ``_mid_`` and ``eot_token_id``) rather than left to
llama.cpp's guess by token text. The ids are looked up in the tokenizer, never assumed: a Code Llama
download has them at 32007..32010, a tokenizer trained here has them wherever they were appended. A
tokenizer without them (Code Llama 34B, Llama 2) gets no FIM keys.

Embedding rows beyond the tokenizer's pieces (Code Llama 7B/13B have 32016 rows for 32016 or fewer
pieces in some releases) get placeholder tokens ``[PAD<id>]`` typed UNUSED; an embedding with fewer rows
than the tokenizer has pieces cannot be served and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from codellama_core.fim import CODELLAMA_FIM_PIECES
from model_export.errors import ExportError

FIM_PIECES = CODELLAMA_FIM_PIECES


@dataclass(frozen=True)
class FimIds:
    pre: int
    suf: int
    mid: int
    eot: int


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    bos: int
    eos: int
    unk: int
    fim: FimIds | None
    add_space_prefix: bool
    n_pieces: int  # pieces in tokenizer.model; len(tokens) - n_pieces are [PAD] rows

    @property
    def n_padding(self) -> int:
        return len(self.tokens) - self.n_pieces


def _piece_type(sp: Any, i: int) -> gguf.TokenType:  # sp: a sentencepiece.SentencePieceProcessor
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def load_vocab(tokenizer_path: Path, n_rows: int) -> Vocab:
    """Read ``tokenizer_path`` and shape its vocabulary to ``n_rows`` embedding rows (see module docstring)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    try:
        data = Path(tokenizer_path).read_bytes()
        proto = pb.ModelProto()
        proto.ParseFromString(data)
        sp = spm.SentencePieceProcessor(model_proto=data)
    except Exception as e:  # protobuf and sentencepiece raise a variety of types for a bad file
        raise ExportError(f"expected a SentencePiece tokenizer.model at {tokenizer_path}, got an unreadable file ({e})") from None
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise ExportError(
            f"expected a BPE SentencePiece model at {tokenizer_path}, got model type {proto.trainer_spec.model_type}"
        )

    n_pieces = sp.get_piece_size()
    if n_rows < n_pieces:
        raise ExportError(
            f"expected at least {n_pieces} token embedding rows (one per piece of {tokenizer_path.name}), got "
            f"{n_rows}: this tokenizer does not belong to these weights"
        )
    tokens = [sp.id_to_piece(i) for i in range(n_pieces)]
    scores = [float(sp.get_score(i)) for i in range(n_pieces)]
    types = [int(_piece_type(sp, i)) for i in range(n_pieces)]

    fim: FimIds | None = None
    ids = {k: sp.piece_to_id(p) for k, p in FIM_PIECES.items()}
    present = {k: i for k, i in ids.items() if i != sp.unk_id() and tokens[i] == FIM_PIECES[k]}
    if len(present) == len(FIM_PIECES):
        fim = FimIds(**present)
        for i in present.values():
            types[i] = int(gguf.TokenType.CONTROL)
    elif present:
        missing = sorted(set(FIM_PIECES) - set(present))
        raise ExportError(
            f"expected all four Code Llama FIM pieces {list(FIM_PIECES.values())} in {tokenizer_path} or none, "
            f"got {missing} missing"
        )

    for i in range(n_pieces, n_rows):  # Code Llama's embedding padding
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))

    return Vocab(
        tokens=tokens,
        scores=scores,
        types=types,
        bos=sp.bos_id(),
        eos=sp.eos_id(),
        unk=sp.unk_id(),
        fim=fim,
        add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        n_pieces=n_pieces,
    )


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """Add the vocabulary and special ids to ``writer`` (before its header is written)."""
    writer.add_tokenizer_model("llama")  # llama.cpp's SentencePiece tokenizer
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.bos >= 0:
        writer.add_bos_token_id(vocab.bos)
    if vocab.eos >= 0:
        writer.add_eos_token_id(vocab.eos)
    if vocab.unk >= 0:
        writer.add_unk_token_id(vocab.unk)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.fim is not None:
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, vocab.fim.pre)
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, vocab.fim.suf)
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, vocab.fim.mid)
        writer.add_eot_token_id(vocab.fim.eot)
