"""Code Llama's fill-in-the-middle (FIM) training objective and prompt layout, token by token.

In: a document (a string), a tokenizer.model with the four Code Llama pieces, a random generator.
Out: the token ids the model trains on - either the plain document ``[BOS] + enc(doc) + [EOS]`` or,
with probability ``fim_rate`` (0.9 in the paper), the document cut at two character positions into
prefix / middle / suffix and laid out as

    PSM: [BOS, PRE] + enc(prefix) + [SUF] + enc_nls(suffix) + [MID] + enc_nls(middle) + [EOT]
    SPM: [BOS, PRE, SUF] + enc_nls(suffix) + [MID] + enc(prefix + middle) + [EOT]

half of the transformed documents in each order. ``prompt_tokens`` builds the inference prompt exactly
as Meta's ``infilling_prompt_tokens`` (codellama ``llama/generation.py``): the layouts above cut after
``[MID]`` (PSM) or after ``enc(prefix)`` (SPM); the generated middle is decoded with ``decode_nls``.

``enc`` is SentencePiece's ordinary encoding, which adds the "dummy prefix" ``▁`` (a space) in front of
the text. ``enc_nls`` ("no leading space") is Meta's ``Tokenizer.encode_infilling``: encode
``"☺" + text`` and drop the tokens that spell the marker, so the text is tokenized as a continuation,
not as the start of a new text. The paper (section 2.3) applies it to the suffix and to the middle -
"we suppress the implicit leading space that SentencePiece tokenizers add upon encoding the middle part
and the suffix" - and, in SPM, encodes prefix and middle together, so the middle there is simply the
continuation of the prefix's tokens. Meta drops exactly 2 tokens (``▁`` and ``☺``, both pieces of
Llama's vocabulary); our small vocabularies may spell ``☺`` with byte-fallback pieces, so we drop
``len(enc("☺"))`` tokens and check that they are exactly ``enc("☺")`` - identical to Meta's ``[2:]``
on Llama's vocabulary. Meta's ``decode_infilling`` is the mirror image: decode ``[☺ tokens] + ids`` and
drop the marker.

The split points are uniform over character positions (not tokens), as in the paper, so a split may
fall inside a word or an indentation run; the model learns to continue mid-token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from model_train.errors import TrainError
from model_train.tokenizer import fim_ids

MARKER = "☺"


@dataclass(frozen=True)
class FimSample:
    """One transformed document: its token ids and, for tests and logs, how it was cut."""

    tokens: list[int]
    mode: str  # "plain", "psm" or "spm"
    prefix: str = ""
    middle: str = ""
    suffix: str = ""


class Codec:
    """A SentencePiece tokenizer.model with Code Llama's special ids and Meta's two encodings."""

    def __init__(self, model_path: str | Path):
        import sentencepiece as spm

        self.path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        ids = fim_ids(self.path)
        self.pre_id, self.suf_id, self.mid_id, self.eot_id = ids["pre"], ids["suf"], ids["mid"], ids["eot"]
        self.vocab_size = self.sp.get_piece_size()
        self._marker = self.sp.encode(MARKER)

    def enc(self, text: str) -> list[int]:
        """SentencePiece encoding with its implicit leading space (Meta's ``encode(s, bos=False, eos=False)``)."""
        return self.sp.encode(text)

    def enc_nls(self, text: str) -> list[int]:
        """Encoding without the implicit leading space (Meta's ``encode_infilling``)."""
        ids = self.sp.encode(MARKER + text)
        n = len(self._marker)
        if ids[:n] != self._marker:
            raise TrainError(
                f"expected {MARKER!r} to tokenize apart from the text after it, got {ids[:n]} "
                f"instead of {self._marker} for {text[:20]!r}"
            )
        return ids[n:]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def decode_nls(self, ids: list[int]) -> str:
        """Decode tokens that continue a text (Meta's ``decode_infilling``): keep their leading space."""
        return self.sp.decode(self._marker + list(ids))[len(MARKER) :]


def psm_tokens(c: Codec, prefix: str, suffix: str, middle: str | None = None) -> list[int]:
    """PSM: ``[BOS, PRE] prefix [SUF] suffix [MID]`` (+ ``middle [EOT]`` when training)."""
    out = [c.bos_id, c.pre_id] + c.enc(prefix) + [c.suf_id] + c.enc_nls(suffix) + [c.mid_id]
    if middle is not None:
        out += c.enc_nls(middle) + [c.eot_id]
    return out


def spm_tokens(c: Codec, prefix: str, suffix: str, middle: str | None = None) -> list[int]:
    """SPM: ``[BOS, PRE, SUF] suffix [MID] prefix`` (+ ``middle [EOT]``, encoded with the prefix, when training)."""
    out = [c.bos_id, c.pre_id, c.suf_id] + c.enc_nls(suffix) + [c.mid_id]
    if middle is None:
        return out + c.enc(prefix)
    return out + c.enc(prefix + middle) + [c.eot_id]


def prompt_tokens(c: Codec, prefix: str, suffix: str, *, suffix_first: bool = False) -> list[int]:
    """Meta's ``infilling_prompt_tokens(tokenizer, pre, suf, suffix_first)``."""
    return spm_tokens(c, prefix, suffix) if suffix_first else psm_tokens(c, prefix, suffix)


def transform(doc: str, c: Codec, rng: random.Random, fim_rate: float = 0.9, spm_rate: float = 0.5) -> FimSample:
    """The paper's infilling transformation of one document (or the plain document, 1 - fim_rate of the time)."""
    if rng.random() >= fim_rate:
        return FimSample([c.bos_id] + c.enc(doc) + [c.eos_id], "plain")
    # Two independent uniform character positions in [0, len(doc)], sorted: prefix | middle | suffix.
    a, b = sorted((rng.randint(0, len(doc)), rng.randint(0, len(doc))))
    prefix, middle, suffix = doc[:a], doc[a:b], doc[b:]
    if rng.random() < spm_rate:
        return FimSample(spm_tokens(c, prefix, suffix, middle), "spm", prefix, middle, suffix)
    return FimSample(psm_tokens(c, prefix, suffix, middle), "psm", prefix, middle, suffix)
