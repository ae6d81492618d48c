"""Code Llama fill-in-the-middle prompts as token ids.

In: a ``FimContext`` (the prefix before the cursor and the suffix after it, already cut to the token
budget), a ``Tokenizer`` and the model's ``FimIds``. Out: the list of token ids the model is fed.

The layouts are the ones Meta's reference code (codellama ``generation.py: infilling_prompt_tokens``)
builds, and nothing else:

- PSM (prefix-suffix-middle):  ``[BOS, PRE] + enc(prefix) + [SUF] + enc_infill(suffix) + [MID]``
- SPM (suffix-prefix-middle):  ``[BOS, PRE, SUF] + enc_infill(suffix) + [MID] + enc(prefix)``

``enc`` is the ordinary SentencePiece encoding, which puts Llama's implicit leading space (the dummy
prefix ``▁``) in front of the text; ``enc_infill`` encodes *without* that leading space (Meta's
``encode_infilling``), because the suffix continues the text mid-stream. The model generates the middle
and ends it with EOT.

SPM is the default here because the prefix, the only part that changes while the user types at the
cursor, comes last: everything before it stays identical between keystrokes and its KV cache is reused.

Special tokens are only ever added here as ids. User text goes through ``Tokenizer.encode*`` with
special-token parsing off, so a literal ``<EOT>`` in a source file stays text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class FimOrder(str, Enum):
    SPM = "spm"
    PSM = "psm"


@dataclass(frozen=True)
class FimIds:
    """Ids of the sentinel tokens, read from the model (never assumed)."""

    bos: int
    pre: int
    suf: int
    mid: int
    eot: int


@dataclass(frozen=True)
class FimContext:
    """The text around the cursor that goes into the prompt.

    ``prefix`` ends at the cursor, ``suffix`` starts at it; both are LF-normalised and already cut to
    the token budget by ``context.build``. ``prefix_start``/``suffix_end`` are the character offsets
    (into the LF text) where the windows were cut, kept for logging and tests.
    """

    prefix: str
    suffix: str
    prefix_start: int = 0
    suffix_end: int = 0


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]:
        """SentencePiece encoding with the implicit leading space, no BOS, special parsing off."""
        ...

    def encode_infill(self, text: str) -> list[int]:
        """The same encoding without the implicit leading space (Meta's ``encode_infilling``)."""
        ...


def prompt_tokens(ctx: FimContext, tok: Tokenizer, ids: FimIds, order: FimOrder = FimOrder.SPM) -> list[int]:
    """Token ids of the infilling prompt for ``ctx`` in ``order`` (see the module docstring)."""
    if order is FimOrder.SPM:
        return [ids.bos, ids.pre, ids.suf] + tok.encode_infill(ctx.suffix) + [ids.mid] + tok.encode(ctx.prefix)
    return [ids.bos, ids.pre] + tok.encode(ctx.prefix) + [ids.suf] + tok.encode_infill(ctx.suffix) + [ids.mid]


def prefix_only_tokens(ctx: FimContext, tok: Tokenizer, bos: int | None) -> list[int]:
    """Prompt for a model without FIM tokens: plain left-to-right continuation of the prefix."""
    head = [bos] if bos is not None else []
    return head + tok.encode(ctx.prefix)
