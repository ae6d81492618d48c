"""Completion cache: the rest of the last suggestion while the user types it, and the suggestions of recent places.

In: the LF text of a document, the cursor offset and the completions shown. Out: the part of a completion the user
has not typed yet, or ``None`` (a miss: ask the model).

Two stores, looked up in this order:

- type-through, per document: when the editor shows ``return total`` and the user types ``ret``, the new
  request's prefix is the old prefix plus ``ret`` and its suffix is unchanged; the answer is ``urn total`` without
  running the model. The check compares bounded windows (``WINDOW`` characters on each side of the old cursor), so
  a hit costs the same on a 20 MB file as on a small one; ``accepted`` tells the prefetch that a suggestion was
  taken.
- recent places (``RECENT`` entries, least recently used dropped first, as llama.vscode's 250): keyed by the text
  around the cursor (``KEY_BEFORE`` characters before it, ``KEY_AFTER`` after), so backspacing, undo and coming back
  to a place show the earlier suggestion without the model. A key typed past (up to ``TYPED_BACK`` characters on
  the cursor's line) is found too, and the rest of its completion returned, as type-through does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

WINDOW = 4096
RECENT = 250  # entries of the recent-places store
KEY_BEFORE = 2048  # characters before the cursor in a recent place's key
KEY_AFTER = 512  # characters after it
TYPED_BACK = 64  # characters typed since a recent place that still find it


@dataclass(frozen=True)
class _Entry:
    """The last answered request of a document: its windows around the cursor, not its text (a 50 MB document
    would be kept twice)."""

    length: int  # of the text
    offset: int
    before: str  # text[offset - WINDOW : offset]
    after: str  # text[offset : offset + WINDOW]
    completions: tuple[str, ...]


class TypeThroughCache:
    def __init__(self, max_documents: int = 64, recent: int = RECENT) -> None:
        self._entries: dict[str, _Entry] = {}
        self._max = max_documents
        # (language, text before, text after): one language's answer (its syntax rules cut it) is not another's
        self._recent: OrderedDict[tuple[str, str, str], tuple[str, ...]] = OrderedDict()
        self._recent_max = recent
        self.hits = 0
        self.misses = 0
        self.recent_hits = 0  # of the hits, those the recent-places store answered

    def __len__(self) -> int:
        """Entries of the recent-places store."""
        return len(self._recent)

    def put(self, uri: str, text: str, offset: int, completions: list[str], language: str = "") -> None:
        if not completions:
            self._entries.pop(uri, None)
            return
        if self._recent_max > 0:
            key = _key(text, offset, language)
            self._recent.pop(key, None)
            self._recent[key] = tuple(completions)
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)
        self._entries.pop(uri, None)
        self._entries[uri] = _Entry(
            len(text), offset, text[max(0, offset - WINDOW) : offset], text[offset : offset + WINDOW], tuple(completions)
        )
        while len(self._entries) > self._max:
            self._entries.pop(next(iter(self._entries)))

    def accepted(self, uri: str, text: str) -> int | None:
        """Where the cursor is after the user accepted the last suggestion for ``uri``: when ``text`` is
        the text of that request with one of its completions inserted at its cursor (typed through or
        taken at once), the offset just after the inserted completion; otherwise None."""
        e = self._entries.get(uri)
        if e is None:
            return None
        lo = max(0, e.offset - WINDOW)
        for c in e.completions:
            end = e.offset + len(c)
            if (
                len(text) == e.length + len(c)
                and text.startswith(c, e.offset)
                and text[lo : e.offset] == e.before
                and text[end : end + WINDOW] == e.after
            ):
                return end
        return None

    def forget(self, uri: str) -> None:
        self._entries.pop(uri, None)

    def get(self, uri: str, text: str, offset: int, language: str = "") -> list[str] | None:
        found = self._lookup(uri, text, offset)
        if not found:
            found = self._recent_lookup(text, offset, language)
            if found:
                self.recent_hits += 1
        if found:
            self.hits += 1
        else:
            self.misses += 1
        return found

    def _recent_lookup(self, text: str, offset: int, language: str = "") -> list[str] | None:
        """The completions of a recent place with this text around the cursor, or typed past by a few characters
        of the cursor's line (their rest)."""
        if not self._recent:
            return None
        line_start = text.rfind("\n", 0, offset) + 1
        for back in range(0, min(TYPED_BACK, offset - line_start) + 1):
            key = (language, text[max(0, offset - back - KEY_BEFORE) : offset - back], text[offset : offset + KEY_AFTER])
            got = self._recent.get(key)
            if got is None:
                continue
            typed = text[offset - back : offset]
            rest = [c[len(typed) :] for c in got if c.startswith(typed) and c[len(typed) :].strip()]
            if rest:
                self._recent.move_to_end(key)
                return rest
        return None

    def _lookup(self, uri: str, text: str, offset: int) -> list[str] | None:
        e = self._entries.get(uri)
        if e is None or offset < e.offset or len(text) - offset != e.length - e.offset:
            return None
        typed = text[e.offset : offset]
        if "\n" in typed and not any(c.startswith(typed) for c in e.completions):
            return None
        lo = max(0, e.offset - WINDOW)
        if text[lo : e.offset] != e.before:
            return None  # the prefix changed somewhere before the old cursor
        if text[offset : offset + WINDOW] != e.after:
            return None  # the suffix changed
        rest = [c[len(typed) :] for c in e.completions if c.startswith(typed) and c[len(typed) :].strip()]
        return rest or None


def _key(text: str, offset: int, language: str = "") -> tuple[str, str, str]:
    return language, text[max(0, offset - KEY_BEFORE) : offset], text[offset : offset + KEY_AFTER]
