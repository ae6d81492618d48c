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
                return hist[start : min(n, start + n_draft)].tolist()
        return []
