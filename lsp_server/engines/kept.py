"""Kept prompts: which evaluated tokens a new prompt can reuse, and the evaluated prompts of recent places.

In: the tokens a KV cache holds (the live context's, or a kept copy's) and a new prompt. Out: a ``Plan`` - the
pieces of the cache that, moved next to each other, tile the longest possible start of the prompt - and a store
(``KeptPrompts``) of cache copies in host memory within a byte budget, from which the one that reuses the most is
picked.

Reuse is not only a common prefix. When the user jumps back to a place, the prompt there is (nearly) the one
evaluated there before: restoring that copy leaves a few tokens to evaluate. When text moved - the suffix window
ends a line earlier because a line was inserted above the cursor, an extra-context chunk was evicted from the front,
another was appended - the pieces of the cache that still appear in the prompt are moved to their new positions
(``codellama_core.llama.Context.rearrange``: llama-server's ``--cache-reuse``) instead of being evaluated again.

The plan is greedy, as llama-server's: from the end of the common prefix, take the longest run of the cache that
continues the prompt there (found through an index of ``GRAM``-token grams), as long as it is at least ``min_chunk``
tokens; stop at the first prompt token no such run continues. llama.cpp appends only after a sequence's last
position, so a prompt token the cache does not have ends the reuse: everything after it is evaluated.

A moved piece keeps the values computed in its old context: an approximation, the one llama-server makes. Short
pieces are where it would matter (a few tokens whose neighbours changed), hence ``min_chunk``. The drift measured on
the demo model and a random-weight GGUF (tests/test_kept_prompts.py, docs/how-it-works.md) is small next to the
logit gaps greedy decoding decides by: the greedy text after a move equals a cold evaluation's.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from codellama_core.llama import SavedState

GRAM = 8  # tokens per index key: short enough to find any run of min_chunk tokens, long enough to be rare
MAX_CANDIDATES = 16  # places per gram looked at (the most recent): repetitive code has many
RESUME_MIN = 128  # a run after new tokens is reused when it is at least this long (shorter: evaluate on)
MAX_GAPS = 4  # places in one prompt where new tokens come between reused runs


@dataclass(frozen=True)
class Plan:
    """How the cache becomes the start of a prompt: ``pieces`` in prompt order, each a range ``(start in the cache,
    length)`` kept, or a list of new tokens evaluated between kept ranges; together they are ``prompt[:covered]``."""

    pieces: tuple[tuple[int, int] | list[int], ...]
    covered: int
    prefix: int  # of which the common prefix (no move needed)

    @property
    def reused(self) -> int:
        """Prompt tokens taken from the cache."""
        return sum(p[1] for p in self.pieces if isinstance(p, tuple))

    @property
    def moved(self) -> int:
        """Reused tokens that change position."""
        return self.reused - self.prefix

    @property
    def inserted(self) -> int:
        """New tokens evaluated between kept ranges."""
        return self.covered - self.reused


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, limit: int) -> int:
    n = min(len(a), len(b), limit)
    if n <= 0:
        return 0
    # numpy: prompts are thousands of tokens and this runs on every keystroke
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


class GramIndex:
    """Where each ``GRAM``-token gram of a token sequence starts (the most recent ``MAX_CANDIDATES``)."""

    def __init__(self, tokens: Sequence[int] | np.ndarray) -> None:
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self._at: dict[bytes, list[int]] = {}
        t = self.tokens
        if len(t) >= GRAM:
            grams = np.lib.stride_tricks.sliding_window_view(t, GRAM)
            raw = np.ascontiguousarray(grams).view(f"V{GRAM * 8}").ravel()
            for i, key in enumerate(raw.tolist()):
                self._at.setdefault(key, []).append(i)

    def places(self, gram: np.ndarray) -> list[int]:
        got = self._at.get(np.ascontiguousarray(gram, dtype=np.int64).tobytes(), [])
        return got[-MAX_CANDIDATES:]

    def hits(self, prompt: np.ndarray, stride: int = GRAM) -> int:
        """How many of the prompt's grams (one every ``stride`` tokens) the sequence has: a cheap score."""
        n = 0
        for i in range(0, len(prompt) - GRAM + 1, stride):
            if prompt[i : i + GRAM].tobytes() in self._at:
                n += 1
        return n * stride


def plan(
    cache: Sequence[int] | np.ndarray,
    prompt: Sequence[int],
    limit: int,
    min_chunk: int,
    index: GramIndex | None = None,
    max_gap: int = 0,
) -> Plan:
    """The pieces of ``cache`` that build the longest start of ``prompt`` (at most ``limit`` tokens); runs other than
    the common prefix must be ``min_chunk`` tokens or longer (0: the common prefix only). With ``max_gap``, up to that
    many new tokens may come between two runs when the run after them is ``RESUME_MIN`` tokens or longer (a chunk of
    another file inserted before the FIM part, a line inserted above the cursor): they are evaluated there and the
    run after them is moved, not evaluated."""
    c = np.asarray(cache, dtype=np.int64)
    p = np.asarray(prompt, dtype=np.int64)
    limit = min(limit, len(p))
    k = common_prefix(c, p, limit)
    pieces: list[tuple[int, int] | list[int]] = [(0, k)] if k else []
    shortest = max(min_chunk, GRAM)
    if min_chunk <= 0 or limit - k < shortest or len(c) - k < shortest:
        return Plan(tuple(pieces), k, k)
    if index is None:
        index = GramIndex(c)
    used = np.zeros(len(c) + 1, dtype=bool)
    used[:k] = True

    def run_at(at: int, i: int, at_least: int) -> int:
        """Tokens from cache ``at`` and prompt ``i`` on that agree (unused cells only); 0 when fewer than ``at_least``
        (checked first on the last of them, then in growing steps: the cost follows the run, not the prompt)."""
        n = min(len(c) - at, limit - i)
        if n < at_least or (at_least and (c[at + at_least - 1] != p[i + at_least - 1] or used[at + at_least - 1])):
            return 0
        done, step = 0, 64
        while done < n:
            m = min(n, done + step)
            stop = np.flatnonzero((c[at + done : at + m] != p[i + done : i + m]) | used[at + done : at + m])
            if stop.size:
                done += int(stop[0])
                break
            done, step = m, step * 2
        return done if done >= at_least else 0

    def longest(i: int, at_least: int = 0) -> tuple[int, int]:
        best, best_at = 0, -1
        for at in index.places(p[i : i + GRAM]):
            if used[at]:
                continue
            run = run_at(at, i, max(at_least, best + 1))
            if run > best:
                best, best_at = run, at
        return best, best_at

    i = covered = k
    gaps = 0
    while limit - i >= shortest:
        run, at = longest(i)
        gap_end = i
        if run < shortest and max_gap > 0 and gaps < MAX_GAPS:  # new tokens here: does the cache go on after a few of them?
            for j in range(i + 1, min(i + max_gap, limit - RESUME_MIN) + 1):
                run, at = longest(j, RESUME_MIN)
                if run >= RESUME_MIN:
                    gap_end = j
                    break
            else:
                run = 0
        if run < shortest:
            break
        if gap_end > i:
            pieces.append([int(t) for t in p[i:gap_end]])
            gaps += 1
        pieces.append((at, run))
        used[at : at + run] = True
        i = covered = gap_end + run
    return Plan(tuple(pieces), covered, k)


@dataclass
class Kept:
    """One evaluated prompt in host memory."""

    state: SavedState
    index: GramIndex
    used: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.state.tokens

    @property
    def size(self) -> int:
        return self.state.size


MAX_COPIES = 32  # every request plans against each copy: a small model's many small copies are capped by count too


class KeptPrompts:
    """Copies of evaluated prompts, the least recently used dropped first once their bytes pass ``budget`` or their
    number passes ``MAX_COPIES`` (a 64 MiB budget held 377 copies of a small model's prompts in a soak)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[int, Kept] = OrderedDict()
        self._ids = 0
        self.saved = 0  # copies made
        self.restored = 0  # copies put back into the context
        self.dropped = 0  # copies forgotten for the budget

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def entries(self) -> list[tuple[int, Kept]]:
        return list(self._entries.items())

    def add(self, state: SavedState) -> int | None:
        """Keep ``state`` (dropping copies it makes redundant: those it starts with for most of their length, and the
        least recently used beyond the budget); None when it alone is over the budget."""
        if state.size > self.budget:
            return None
        for key, e in list(self._entries.items()):
            if common_prefix(e.tokens, state.tokens, len(e.tokens)) >= 0.8 * len(e.tokens):
                del self._entries[key]
        self._ids += 1
        self._entries[self._ids] = Kept(state, GramIndex(state.tokens))
        self.saved += 1
        while self.bytes > self.budget or len(self._entries) > MAX_COPIES:
            self._entries.popitem(last=False)
            self.dropped += 1
        return self._ids

    def take(self, key: int) -> Kept:
        """The copy ``key``, now the most recently used."""
        e = self._entries[key]
        e.used = time.monotonic()
        self._entries.move_to_end(key)
        self.restored += 1
        return e

    def clear(self) -> None:
        self._entries.clear()
