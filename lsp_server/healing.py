"""Token healing at the cursor, as pure functions over the vocabulary's token texts.

The cursor often sits inside what the model saw as one token in training (after "negati" of
"negative", or after the space of " total", which SentencePiece attaches to the next word); a prompt
that ends on such a fragment is one the model never saw, and it answers badly. So:

1. ``take_back`` (the pipeline, when the prefix ends the prompt): take the prompt's last tokens off - up
   to ``MAX_HEAL``, all from the prefix, at least one prefix token kept, no newline among them - while
   some single token of the vocabulary starts with their text. Out: the shorter prompt and the text
   taken back (``heal``).
2. ``allowed`` / ``advance`` (the engine, for the first generated tokens): while part of ``heal`` is
   not yet covered, only tokens that start with all of what is left, or that spell a first part of it
   (the model may tokenize it its own way), may come next. The engine removes ``heal`` from the text.

In: token texts as bytes (``Vocab.piece``). Out: token ids (numpy int64 arrays) and bytes.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

MAX_HEAL = 3  # prompt tokens token healing may take back at the cursor


class PieceIndex:
    """Token texts sorted for prefix queries. Tokens with no text (control tokens) and ``exclude``
    (sentinels, end-of-generation tokens) never qualify."""

    def __init__(self, pieces: Sequence[bytes], exclude: Iterable[int] = ()) -> None:
        skip = set(exclude)
        order = sorted((b, t) for t, b in enumerate(pieces) if b and t not in skip)
        self._sorted = [b for b, _ in order]
        self._ids = np.asarray([t for _, t in order], dtype=np.int64)
        self._memo: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def starting_with(self, text: bytes) -> np.ndarray:
        """Ids of the tokens whose text starts with ``text`` (a contiguous run of the sorted texts)."""
        with self._lock:
            ids = self._memo.get(text)
        if ids is None:
            i = bisect.bisect_left(self._sorted, text)
            j = i
            while j < len(self._sorted) and self._sorted[j].startswith(text):
                j += 1
            ids = self._ids[i:j]
            with self._lock:
                self._memo[text] = ids
                if len(self._memo) > 64:
                    self._memo.popitem(last=False)
        return ids

    def exactly(self, text: bytes) -> np.ndarray:
        """Ids of the tokens whose text is ``text``."""
        i = bisect.bisect_left(self._sorted, text)
        j = bisect.bisect_right(self._sorted, text)
        return self._ids[i:j]


_INDEXES: weakref.WeakKeyDictionary[object, PieceIndex] = weakref.WeakKeyDictionary()
_INDEX_LOCK = threading.Lock()


def index_for(vocab: Any) -> PieceIndex:  # a vocab.Vocab: Any keeps this module import-free (test_lsp_stages)
    """The ``PieceIndex`` of a vocabulary, built once per vocabulary object."""
    with _INDEX_LOCK:
        idx = _INDEXES.get(vocab)
        if idx is None:
            s = vocab.sentinels
            exclude = {t for t in (s.pre, s.suf, s.mid, s.eot) if t is not None} | set(s.eog)
            idx = PieceIndex([vocab.piece(t) for t in range(vocab.n_vocab)], exclude)
            _INDEXES[vocab] = idx
        return idx


def take_back(
    prompt: Sequence[int], n_prefix: int, piece: Callable[[int], bytes], index: PieceIndex, max_heal: int = MAX_HEAL
) -> tuple[list[int], bytes]:
    """(prompt without its healed tail, the tail's text). ``n_prefix``: how many of the prompt's last
    tokens are the prefix's (only those may be taken back, and one of them stays)."""
    best = 0
    for k in range(1, min(max_heal, n_prefix - 1) + 1):
        text = b"".join(piece(t) for t in prompt[-k:])
        if b"\n" in text or not index.starting_with(text).size:
            break
        best = k
    if not best:
        return list(prompt), b""
    return list(prompt[:-best]), b"".join(piece(t) for t in prompt[-best:])


def allowed(pending: bytes, index: PieceIndex) -> np.ndarray:
    """Tokens that may come next while ``pending`` healed text is not yet covered."""
    parts = [index.exactly(pending[:i]) for i in range(1, len(pending))]
    parts = [p for p in parts if p.size]
    first = index.starting_with(pending)
    return np.concatenate([first, *parts]) if parts else first


def advance(pending: bytes, piece: bytes) -> bytes:
    """What is left of ``pending`` after a token with text ``piece`` (b"" once it is covered)."""
    return b"" if piece.startswith(pending) else pending[len(piece) :]
