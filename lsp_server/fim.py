"""Fill-in-the-middle prompts as token ids.

In: a ``FimContext`` (the prefix before the cursor and the suffix after it, already cut to the token
budget) and the model's ``vocab.Vocab`` (its encodings and ``Sentinels``). Out: the list of token ids
the model is fed.

Code Llama (``style == "codellama"``): the layouts Meta's reference code (codellama ``generation.py:
infilling_prompt_tokens``) builds, and nothing else:

- PSM (prefix-suffix-middle):  ``[BOS, PRE] + enc(prefix) + [SUF] + enc_infill(suffix) + [MID]``
- SPM (suffix-prefix-middle):  ``[BOS, PRE, SUF] + enc_infill(suffix) + [MID] + enc(prefix)``

``enc`` is the ordinary SentencePiece encoding, which puts Llama's implicit leading space (the dummy
prefix ``▁``) in front of the text; ``enc_infill`` encodes *without* that leading space (Meta's
``encode_infilling``), because the suffix continues the text mid-stream. The model generates the middle
and ends it with EOT. SPM is the default because the prefix, the only part that changes while the user
types at the cursor, comes last: everything before it stays identical between keystrokes and its KV
cache is reused.

Other FIM families (``style == "psm"``: StarCoder, Qwen2.5-Coder, DeepSeek-Coder, CodeGemma) were
trained on ``[BOS if the vocabulary adds one] + [PRE] + prefix + [SUF] + suffix + [MID]`` with the text
encoded as it is; they get that layout whatever ``order`` says.

A model without FIM tokens gets the prefix alone (``[BOS] + enc(prefix)`` when the vocabulary adds BOS).

Context from other files (``extra``: chunks of other open files and recently edited regions, each headed
by its path as a comment; ``neighbors``) goes right after BOS, before the FIM part:
``[BOS] + enc(extra) + [PRE, SUF] + ...`` - the part of the prompt that changes least comes first, so its
KV cache is reused from keystroke to keystroke (llama-server's ``/infill`` puts its ``input_extra`` at
the same place). Models without FIM tokens get no extra context: their prompt is the prefix alone.

Special tokens are only ever added here as ids. User text goes through ``Vocab.encode*`` with
special-token parsing off, so a literal ``<EOT>`` in a source file stays text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .vocab import Vocab


class FimOrder(StrEnum):
    SPM = "spm"
    PSM = "psm"


@dataclass(frozen=True)
class FimContext:
    """The text around the cursor that goes into the prompt.

    ``prefix`` ends at the cursor, ``suffix`` starts at it; both are LF-normalised and already cut to
    the token budget by ``context.build``. ``prefix_start``/``suffix_end`` are the character offsets
    (into the LF text) where the windows were cut, kept for logging and tests. ``extra`` is the rendered
    context from other files (``neighbors.render``), "" for none.
    """

    prefix: str
    suffix: str
    prefix_start: int = 0
    suffix_end: int = 0
    extra: str = ""


def prompt_tokens(ctx: FimContext, vocab: Vocab, order: FimOrder = FimOrder.SPM) -> list[int]:
    """Token ids of the prompt for ``ctx`` (see the module docstring)."""
    s = vocab.sentinels
    head = [s.bos] if vocab.add_bos and s.bos is not None else []
    pre, suf, mid = s.pre, s.suf, s.mid
    if pre is None or suf is None or mid is None:  # not s.has_fim: the prefix alone
        return head + vocab.encode(ctx.prefix)
    if s.style == "psm":
        head += vocab.encode_infill(ctx.extra) if ctx.extra else []
        return head + [pre] + vocab.encode_infill(ctx.prefix) + [suf] + vocab.encode_infill(ctx.suffix) + [mid]
    head += vocab.encode(ctx.extra) if ctx.extra else []
    if order is FimOrder.SPM:
        return head + [pre, suf] + vocab.encode_infill(ctx.suffix) + [mid] + vocab.encode(ctx.prefix)
    return head + [pre] + vocab.encode(ctx.prefix) + [suf] + vocab.encode_infill(ctx.suffix) + [mid]


def prefix_ends_prompt(vocab: Vocab, order: FimOrder) -> bool:
    """Whether ``prompt_tokens`` ends with the prefix's tokens (then token healing can apply)."""
    s = vocab.sentinels
    return not s.has_fim or (s.style == "codellama" and order is FimOrder.SPM)
