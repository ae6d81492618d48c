"""The model's tokenizer as the prompt builder needs it, and where its sentinel ids come from.

In: a loaded model's vocabulary (through the llama.cpp adapter, or any engine's own ``Vocab``). Out: a
``Vocab`` - encode with and without SentencePiece's implicit leading space (special-token parsing off, so
a literal ``<EOT>`` in a source file stays text), the bytes of each token, decode - and its ``Sentinels``:
BOS/EOS, the FIM ids (PRE, SUF, MID), EOT, the set of ids that end generation, and the prompt style.

Sentinel resolution (``resolve_sentinels``, pure): an id comes from the GGUF metadata when the file has the
key (``tokenizer.ggml.fim_pre_token_id`` ... ``eot_token_id``, or the older ``prefix/suffix/middle``
keys), else from the vocabulary by the token's text. Older Code Llama GGUFs on the Hugging Face Hub
were written before those keys existed, with ``▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>`` typed NORMAL; llama.cpp
finds PRE/SUF/MID there by text but looks for EOT as ``<EOT>``/``_<EOT>`` (ASCII underscore), so it
never stops on ``▁<EOT>``. Here EOT is found by text as well and goes into ``eog``, which the engine
stops on. ``source`` says for each sentinel whether it came from "metadata", "text" or nowhere ("none").

Other code models' FIM tokens are found the same way: StarCoder's ``<fim_prefix>``/``<fim_suffix>``/
``<fim_middle>``, Qwen2.5-Coder's and CodeGemma's ``<|fim_prefix|>``..., DeepSeek-Coder's
``<｜fim▁begin｜>``/``<｜fim▁hole｜>``/``<｜fim▁end｜>``. Their ``style`` is "psm": prefix-suffix-middle with
the text encoded as it is (no Code Llama leading-space rules); Code Llama's is "codellama".
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from codellama_core.fim import CODELLAMA_FIM_PIECES

if TYPE_CHECKING:
    from codellama_core.llama import Model

Style = Literal["codellama", "psm"]
SENTINELS = ("pre", "suf", "mid", "eot")

# GGUF metadata keys per sentinel, newest first (gguf.Keys.Tokenizer.FIM_PRE_ID, PREFIX_ID, ...); spelled
# out so that this module does not import gguf-py on the server's hot path.
META_KEYS: dict[str, tuple[str, ...]] = {
    "pre": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    "suf": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    "mid": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
    "eot": ("tokenizer.ggml.eot_token_id",),
}


@dataclass(frozen=True)
class Family:
    """A FIM token family: the texts of its sentinels (first found wins) and its prompt style."""

    name: str
    style: Style
    pre: tuple[str, ...]
    suf: tuple[str, ...]
    mid: tuple[str, ...]
    eot: tuple[str, ...]  # every one present ends generation; the first present is "the" EOT


_CL = CODELLAMA_FIM_PIECES  # Code Llama's pieces (codellama_core.fim), first of their family's spellings

FAMILIES = (
    Family("codellama", "codellama", (_CL["pre"], "<PRE>"), (_CL["suf"], "<SUF>"), (_CL["mid"], "<MID>"), (_CL["eot"], "<EOT>")),
    Family("starcoder", "psm", ("<fim_prefix>",), ("<fim_suffix>",), ("<fim_middle>",), ("<|endoftext|>", "<file_sep>")),
    # Qwen2.5-Coder and CodeGemma share the texts; they differ in what ends a completion
    Family(
        "qwen/codegemma",
        "psm",
        ("<|fim_prefix|>",),
        ("<|fim_suffix|>",),
        ("<|fim_middle|>",),
        ("<|endoftext|>", "<|file_separator|>", "<|file_sep|>", "<|fim_pad|>"),
    ),
    Family(
        "deepseek", "psm", ("<｜fim▁begin｜>",), ("<｜fim▁hole｜>",), ("<｜fim▁end｜>",), ("<|EOT|>", "<｜end▁of▁sentence｜>")
    ),
)


@dataclass(frozen=True)
class Sentinels:
    bos: int | None
    eos: int | None
    pre: int | None
    suf: int | None
    mid: int | None
    eot: int | None
    eog: frozenset[int]  # every id that ends generation (EOT, EOS, the model's own EOG set)
    style: Style = "codellama"
    source: Mapping[str, str] = field(default_factory=dict)  # per sentinel: "metadata" | "text" | "none"

    @property
    def has_fim(self) -> bool:
        return self.pre is not None and self.suf is not None and self.mid is not None

    def describe(self) -> str:
        """One line for logs and status: each id and where it came from."""
        parts = [f"{k}={getattr(self, k)} ({self.source.get(k, 'none')})" for k in SENTINELS]
        return f"{self.style}: " + ", ".join(parts) + f"; end of generation: {sorted(self.eog)}"


def resolve_sentinels(
    texts: Sequence[str], metadata: Mapping[str, int], bos: int | None, eos: int | None, eog: Iterable[int] = ()
) -> Sentinels:
    """Sentinel ids from ``metadata`` (GGUF key -> id, only the keys the file has) else by token text.

    ``texts``: every token's text as stored in the GGUF; ``eog``: the ids the runtime already treats as
    end of generation (llama.cpp's set), to which EOS and every EOT found here are added.
    """
    by_text: dict[str, int] = {}
    for i, t in enumerate(texts):
        by_text.setdefault(t, i)
    ids: dict[str, int | None] = {}
    source: dict[str, str] = {}
    for k in SENTINELS:
        key = next((m for m in META_KEYS[k] if m in metadata and 0 <= metadata[m] < len(texts)), None)
        ids[k], source[k] = (metadata[key], "metadata") if key else (None, "none")
    # the family: the one whose PRE text the file's PRE id has, else the first whose PRE text is present
    family = next((f for f in FAMILIES if ids["pre"] is not None and texts[ids["pre"]] in f.pre), None)
    family = family or next((f for f in FAMILIES if any(t in by_text for t in f.pre)), None)
    ends = set(eog) | ({eos} if eos is not None else set())
    for fam in [family] if family else FAMILIES:
        for k in SENTINELS:
            if ids[k] is None:
                found = next((by_text[t] for t in getattr(fam, k) if t in by_text), None)
                if found is not None:
                    ids[k], source[k] = found, "text"
        ends |= {by_text[t] for t in fam.eot if t in by_text}
    if ids["eot"] is not None:
        ends.add(ids["eot"])
    style: Style = family.style if family else "codellama"
    return Sentinels(bos=bos, eos=eos, **ids, eog=frozenset(ends), style=style, source=source)


class Vocab(Protocol):
    n_vocab: int
    add_bos: bool  # whether a plain prompt starts with BOS (SentencePiece Llamas: yes)
    sentinels: Sentinels

    def encode(self, text: str) -> list[int]:
        """With the implicit leading space (SentencePiece), special parsing off, no BOS."""
        ...

    def encode_infill(self, text: str) -> list[int]:
        """Without the leading space (Meta's ``encode_infilling``)."""
        ...

    def piece(self, token: int) -> bytes:
        """The token's text bytes (b"" for control tokens)."""
        ...

    def decode(self, tokens: Sequence[int]) -> str:
        """UTF-8 text of ``tokens``, errors replaced."""
        ...


class LlamaVocab:
    """``Vocab`` over a model loaded by the llama.cpp adapter (a vocab-only load is enough)."""

    MEMO = 16  # whole-text encodings kept: the windows a request measures and then encodes again
    LINE_MEMO = 1 << 16  # encodings of single lines kept (a line is about 10 tokens: a few MiB)
    # what a vocabulary must tokenize line by line exactly as whole, before it is trusted to (indentation,
    # blank lines, a literal sentinel, multi-byte text, a line that starts with a space)
    LINES_PROBE = "def f(a, b):\n    return a  # é 😀\n\n\n\t<PRE> ▁<EOT>\n x = 1\n  \nend"

    def __init__(self, model: Model) -> None:
        self.n_vocab = model.n_vocab
        self.add_bos = model.add_bos
        self._tokenize = model.tokenize
        self.pieces = [model.piece(t) for t in range(model.n_vocab)]
        special = model.special()
        metadata = {}
        for keys in META_KEYS.values():
            for key in keys:
                value = model.meta(key)
                if value is not None and value.lstrip("-").isdigit():
                    metadata[key] = int(value)
        self.sentinels = resolve_sentinels(model.texts(), metadata, special["bos"], special["eos"], model.eog_ids())
        nl = self._tokenize("\n")
        self._nl = nl
        # SentencePiece vocabularies put a space in front of the text (Llama); byte-level BPE ones do not
        self._space_prefix = self.decode(self._tokenize("a")).startswith(" ")
        self._memo: OrderedDict[tuple[bool, str], list[int]] = OrderedDict()
        self._lock = threading.Lock()  # prompts are built on worker threads, possibly two at once
        self._lines: OrderedDict[tuple[bool, str], list[int]] = OrderedDict()
        self._by_lines = self._lines_tokenize_apart()

    def encode(self, text: str) -> list[int]:
        return self._memoized(False, text)

    def encode_infill(self, text: str) -> list[int]:
        """Encode "\\n" + text and drop the tokens of "\\n" (the space and the newline byte; no piece
        contains a newline, so nothing merges across it). Without a leading space: ``encode``."""
        return self._memoized(self._space_prefix, text)

    def piece(self, token: int) -> bytes:
        return self.pieces[token]

    def _whole(self, infill: bool, text: str) -> list[int]:
        """llama.cpp's tokenizer on the whole of ``text`` (``infill``: without the leading space)."""
        if not text:
            return []
        if infill:
            both = self._tokenize("\n" + text)
            k = len(self._nl)
            return both[k:] if both[:k] == self._nl else self._tokenize(text)
        return self._tokenize(text)

    def _lines_tokenize_apart(self) -> bool:
        """Whether a text's tokens are its lines' tokens joined by the newline's: so when the one piece that holds a
        newline is the newline itself (SentencePiece Llamas: the byte token ``<0x0A>``) - no merge can cross it - and
        the probe text says so. A vocabulary with pieces such as ``"\\n\\n"`` or ``"\\n    "`` (byte-level BPE) is
        tokenized whole."""
        holders = [t for t, p in enumerate(self.pieces) if b"\n" in p]
        if len(holders) != 1 or self.pieces[holders[0]] != b"\n" or self._nl[-1:] != holders:
            return False
        try:
            return all(
                self._encode_lines(infill, self.LINES_PROBE) == self._whole(infill, self.LINES_PROBE) for infill in (False, True)
            )
        finally:
            self._lines.clear()

    def _encode_lines(self, infill: bool, text: str) -> list[int]:
        """``text``'s tokens from its lines' (each kept in a memo): a keystroke changes one line of a prompt window of
        hundreds, and tokenizing the window whole took most of the time a request spends outside the engine.

        The first line is tokenized as the start of the text (with the leading space unless ``infill``), every other
        line as the text after a newline, without it (``encode_infill``'s rule)."""
        first, *rest = text.split("\n")
        nl = self._nl[-1]
        if first or infill or not self._space_prefix:
            ids = list(self._line(infill or not self._space_prefix, first))
        else:
            ids = self._nl[:-1]  # a text that starts with a newline: the leading space alone comes before it
        for line in rest:
            ids.append(nl)
            ids.extend(self._line(True, line))
        return ids

    def _line(self, infill: bool, line: str) -> list[int]:
        return self._cached(self._lines, self.LINE_MEMO, (infill, line), lambda: self._whole(infill, line))

    def _cached(
        self, memo: OrderedDict[tuple[bool, str], list[int]], limit: int, key: tuple[bool, str], compute: Callable[[], list[int]]
    ) -> list[int]:
        """``memo[key]``, computed (outside the lock: tokenizing takes long) and kept when missing; the least
        recently used of more than ``limit`` entries goes."""
        with self._lock:
            ids = memo.get(key)
            if ids is not None:
                memo.move_to_end(key)
                return ids
        ids = compute()
        with self._lock:
            memo[key] = ids
            if len(memo) > limit:
                memo.popitem(last=False)
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        return b"".join(self.pieces[t] for t in tokens).decode("utf-8", errors="replace")

    def _memoized(self, infill: bool, text: str) -> list[int]:
        def compute() -> list[int]:
            if self._by_lines and "\n" in text:
                return self._encode_lines(infill, text)
            return self._whole(infill, text)

        return self._cached(self._memo, self.MEMO, (infill, text), compute)
