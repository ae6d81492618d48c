"""Type-through cache: serve the rest of the last suggestion while the user types it.

In: the LF text of a document, the cursor offset and the last completion shown for that document. Out:
the part of that completion the user has not typed yet, or ``None`` (a miss: ask the model).

When the editor shows ``return total`` and the user types ``ret``, the new request's prefix is the old
prefix plus ``ret`` and its suffix is unchanged; the answer is ``urn total`` without running the model.
The check compares bounded windows (``WINDOW`` characters on each side of the old cursor), so a hit
costs the same on a 20 MB file as on a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 4096


@dataclass(frozen=True)
class _Entry:
    text: str
    offset: int
    completions: tuple[str, ...]


class TypeThroughCache:
    def __init__(self, max_documents: int = 64) -> None:
        self._entries: dict[str, _Entry] = {}
        self._max = max_documents
        self.hits = 0
        self.misses = 0

    def put(self, uri: str, text: str, offset: int, completions: list[str]) -> None:
        if not completions:
            self._entries.pop(uri, None)
            return
        self._entries.pop(uri, None)
        self._entries[uri] = _Entry(text, offset, tuple(completions))
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
                len(text) == len(e.text) + len(c)
                and text.startswith(c, e.offset)
                and text[lo : e.offset] == e.text[lo : e.offset]
                and text[end : end + WINDOW] == e.text[e.offset : e.offset + WINDOW]
            ):
                return end
        return None

    def forget(self, uri: str) -> None:
        self._entries.pop(uri, None)

    def get(self, uri: str, text: str, offset: int) -> list[str] | None:
        found = self._lookup(uri, text, offset)
        if found:
            self.hits += 1
        else:
            self.misses += 1
        return found

    def _lookup(self, uri: str, text: str, offset: int) -> list[str] | None:
        e = self._entries.get(uri)
        if e is None or offset < e.offset or len(text) - offset != len(e.text) - e.offset:
            return None
        typed = text[e.offset : offset]
        if "\n" in typed and not any(c.startswith(typed) for c in e.completions):
            return None
        lo = max(0, e.offset - WINDOW)
        if text[lo : e.offset] != e.text[lo : e.offset]:
            return None  # the prefix changed somewhere before the old cursor
        if text[offset : offset + WINDOW] != e.text[e.offset : e.offset + WINDOW]:
            return None  # the suffix changed
        rest = [c[len(typed) :] for c in e.completions if c.startswith(typed) and c[len(typed) :].strip()]
        return rest or None
