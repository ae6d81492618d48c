"""Prompt-lookup drafts for speculative decoding (pure): guess the next tokens by finding the tokens
just generated earlier in the prompt.

Code repeats itself: the line being completed often appears, whole or in part, somewhere in the prompt
(the suffix below the cursor, a similar block above it, a chunk of another file). When the last
``n`` tokens (prompt + generated so far) occur earlier, the tokens that followed that earlier occurrence
are a cheap draft of what comes next. The engine evaluates the draft in one batch, keeps the longest
prefix the model itself would have chosen, and so produces exactly the greedy output, several tokens
per model call when the guess is right (Saxena, "Prompt Lookup Decoding", 2023; llama.cpp's
``common/ngram-cache`` does the same from a cache of n-grams).

In: the token history (``Lookup.extend`` appends to it) and how many tokens to draft. Out: a draft (a
list of token ids, possibly empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_NGRAM = 2  # a single repeated token predicts little (and every common token repeats)
MAX_NGRAM = 4


class Lookup:
    """The tokens the model has seen and generated, searchable for n-grams (numpy, O(len) per query in C)."""

    def __init__(self, tokens: Sequence[int], capacity: int) -> None:
        self._buf = np.empty(max(capacity, len(tokens)) + 1, dtype=np.int32)
        self._n = len(tokens)
        self._buf[: self._n] = tokens

    def __len__(self) -> int:
        return self._n

    def extend(self, tokens: Sequence[int]) -> None:
        k = len(tokens)
        if self._n + k > self._buf.size:
            grown = np.empty(2 * (self._n + k), dtype=np.int32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : self._n + k] = tokens
        self._n += k

    def draft(self, n_draft: int, min_ngram: int = MIN_NGRAM, max_ngram: int = MAX_NGRAM) -> list[int]:
        """Up to ``n_draft`` tokens that followed the latest earlier occurrence of the longest n-gram
        (``max_ngram`` down to ``min_ngram`` tokens) that ends the history; [] when none occurs."""
        n = self._n
        if n_draft <= 0 or n <= min_ngram:
            return []
        hist = self._buf[:n]
        last = hist[n - 1]
        # candidate ends: earlier positions holding the last token (not the last position itself)
        ends = np.flatnonzero(hist[: n - 1] == last)
        if ends.size == 0:
            return []
        for size in range(min(max_ngram, n - 1), min_ngram - 1, -1):
            ok = ends[ends >= size - 1]
            for back in range(1, size):
                if ok.size == 0:
                    break
                ok = ok[hist[ok - back] == hist[n - 1 - back]]
            if ok.size:
                start = int(ok[-1]) + 1  # the latest occurrence: nearest the cursor, most likely alike
                return [int(t) for t in hist[start : min(n, start + n_draft)]]
        return []


class DraftPolicy:
    """How many tokens to draft: only as many as pay for themselves, from measured costs.

    A draft of ``k`` tokens is evaluated with the next token in one batch. If each drafted token is right
    with probability ``p`` (given the ones before it were), the batch yields ``p + p^2 + ... + p^k`` extra
    tokens on average, each saving one single-token decode (``c1`` ms), and costs ``k * ck`` ms more than
    a single-token decode (``ck``: the measured extra ms per batch position). On a big model decoding is
    bound by reading the weights, ``ck`` is small and drafts pay even when ``p`` is low; on a tiny model
    ``ck`` is close to ``c1`` and only long, likely drafts pay. ``p``, ``c1`` and ``ck`` are moving
    averages over the engine's recent decodes; when no draft has paid for ``PROBE_EVERY`` decodes, a
    2-token probe keeps ``p`` up to date. The output is the greedy one whatever this decides.
    """

    PROBE_EVERY = 64
    ALPHA = 0.1  # weight of a new observation in the moving averages

    def __init__(self, max_draft: int) -> None:
        self.max_draft = max_draft
        self.p = 0.5  # per-token acceptance (optimistic until measured)
        self.c1: float | None = None  # ms of a single-token decode
        self.ck: float | None = None  # extra ms per drafted position in a batch
        self._idle = 0

    def size(self, available: int) -> int:
        """Tokens to draft now, at most ``available``."""
        cap = min(self.max_draft, available)
        if cap <= 0 or self.c1 is None:
            return 0
        ck = self.ck if self.ck is not None else 0.25 * self.c1
        best, best_gain, expected = 0, 0.0, 0.0
        for k in range(1, cap + 1):
            expected += self.p**k
            gain = expected * self.c1 - k * ck
            if gain > best_gain:
                best, best_gain = k, gain
        if best:
            self._idle = 0
            return best
        self._idle += 1
        if self._idle >= self.PROBE_EVERY:
            self._idle = 0
            return min(2, cap)
        return 0

    def decoded(self, ms: float, drafted: int) -> None:
        """A decode of the next token plus ``drafted`` draft tokens took ``ms``."""
        if drafted == 0:
            self.c1 = ms if self.c1 is None else (1 - self.ALPHA) * self.c1 + self.ALPHA * ms
        elif self.c1 is not None:
            extra = max(0.0, ms - self.c1) / drafted
            self.ck = extra if self.ck is None else (1 - self.ALPHA) * self.ck + self.ALPHA * extra

    def verified(self, drafted: int, accepted: int) -> None:
        """Of ``drafted`` tokens the model agreed with the first ``accepted``."""
        tried = accepted + (1 if accepted < drafted else 0)  # positions compared until the first miss
        if tried:
            self.p = (1 - self.ALPHA) * self.p + self.ALPHA * (accepted / tried)
