"""Line starts of an open document: line -> offset and offset -> line in time that does not grow with the document.

In: a document's text (LF or CRLF line ends; a text with a lone CR is not indexed, its callers take the plain path) and the edits
made to it (offsets ``a..b`` of the old text replaced by a string). Out: the offset where a line starts
(``line_start``), the line an offset is on (``line_of``), and the index of the text after an edit (``edited``).

Finding a line by splitting the text up to it (``text.split("\\n", line)``, what the edge and the context windows
did) cost 250 ms per call at the end of a 50 MB document, and a keystroke made several such calls (issue 23, item
9). The index keeps checkpoints, (line, offset) pairs of line starts, about every ``SPACING`` characters: a lookup
bisects them and then looks at one gap only (a ``split`` or ``count`` bounded by the gap); an edit drops the
checkpoints inside the replaced range and shifts those after it (a list comprehension over about ``len / SPACING``
pairs: a fraction of a millisecond at 50 MB). A gap that typing or deleting made wider than ``4 * SPACING`` is
checkpointed again when a lookup meets it. Building the index walks the text once at C speed (``find`` and
``count`` per ``SPACING`` characters: about 20 ms for 50 MB).

``LineIndexes`` holds the index of each open document's current text by URI; it keeps no text alive that the
workspace does not (an index refers to its own text, and each change replaces it).
"""

from __future__ import annotations

import bisect
import threading
from urllib.parse import unquote

SPACING = 16_384  # characters between checkpoints


def has_lone_cr(text: str) -> bool:
    """Whether ``text`` has a CR that does not start a CRLF (a line end of its own, which the index does not know)."""
    return text.count("\r") != text.count("\r\n")


class LineIndex:
    """Checkpoints of one text (see the module docstring). Lines end at LF (or CRLF: the line starts are the same);
    ``text`` must have no lone CR."""

    __slots__ = ("_lines", "_lock", "_offsets", "text")

    def __init__(self, text: str, lines: list[int], offsets: list[int]) -> None:
        self.text = text
        self._lines = lines  # line numbers of the checkpoints, ascending, starting with line 0
        self._offsets = offsets  # their offsets (line starts), ascending, starting with 0
        self._lock = threading.Lock()  # a lookup may checkpoint a gap again (the worker threads ask too)

    @classmethod
    def of(cls, text: str) -> LineIndex:
        lines, offsets = [0], [0]
        _checkpoint(text, 0, 0, len(text), lines, offsets)
        return cls(text, lines, offsets)

    def line_start(self, line: int) -> int | None:
        """The offset where ``line`` starts, or None past the last line."""
        if line <= 0:
            return 0
        with self._lock:
            self._narrow(bisect.bisect_right(self._lines, line) - 1)
            i = bisect.bisect_right(self._lines, line) - 1
            l0, o0 = self._lines[i], self._offsets[i]
            end = self._offsets[i + 1] if i + 1 < len(self._offsets) else len(self.text)
        if l0 == line:
            return o0
        parts = self.text[o0:end].split("\n", line - l0)
        if len(parts) <= line - l0:
            return None  # past the last line (only possible in the last gap)
        return end - len(parts[-1])

    def line_of(self, offset: int) -> int:
        """The line ``offset`` is on (the number of newlines before it)."""
        offset = max(0, min(offset, len(self.text)))
        with self._lock:
            self._narrow(bisect.bisect_right(self._offsets, offset) - 1)
            i = bisect.bisect_right(self._offsets, offset) - 1
            l0, o0 = self._lines[i], self._offsets[i]
        return l0 + self.text.count("\n", o0, offset)

    def edited(self, a: int, b: int, new: str, text: str) -> LineIndex | None:
        """The index of ``text``, which is this index's text with ``[a, b)`` replaced by ``new``; None when the edit
        left a CR that is not followed by a LF (a line end the index does not know)."""
        end = a + len(new)
        cr = text.find("\r", max(0, a - 1), end + 1)
        while cr >= 0:
            if not text.startswith("\n", cr + 1):
                return None
            cr = text.find("\r", cr + 1, end + 1)
        with self._lock:
            old_lines, old_offsets = list(self._lines), list(self._offsets)
        delta = len(new) - (b - a)
        dl = new.count("\n") - self.text.count("\n", a, b)
        keep = bisect.bisect_right(old_offsets, a)  # checkpoints at or before a: their newline is before the edit
        tail = bisect.bisect_right(old_offsets, b)  # after b: shifted; between: their newline was replaced
        lines = old_lines[:keep] + [ln + dl for ln in old_lines[tail:]]
        offsets = old_offsets[:keep] + [o + delta for o in old_offsets[tail:]]
        return LineIndex(text, lines, offsets)

    def _narrow(self, i: int) -> None:
        """Checkpoint the gap after checkpoint ``i`` again if it grew wider than ``4 * SPACING``."""
        end = self._offsets[i + 1] if i + 1 < len(self._offsets) else len(self.text)
        if end - self._offsets[i] <= 4 * SPACING:
            return
        lines, offsets = [self._lines[i]], [self._offsets[i]]
        _checkpoint(self.text, self._offsets[i], self._lines[i], end, lines, offsets)
        self._lines[i : i + 1] = lines
        self._offsets[i : i + 1] = offsets


def _checkpoint(text: str, start: int, line: int, end: int, lines: list[int], offsets: list[int]) -> None:
    """Append checkpoints for the line starts of ``text[start:end]`` (``start`` is a line start on ``line``),
    one about every ``SPACING`` characters; the line start at ``end`` itself is not added."""
    pos = start
    while True:
        nl = text.find("\n", pos + SPACING, end)
        if nl < 0 or nl + 1 >= end:
            return
        line += text.count("\n", pos, nl + 1)
        pos = nl + 1
        lines.append(line)
        offsets.append(pos)


class LineIndexes:
    """The index of each open document's current text, by URI."""

    def __init__(self) -> None:
        self._by_uri: dict[str, LineIndex] = {}

    def get(self, uri: str, text: str) -> LineIndex | None:
        """The index of ``text``, the document ``uri``'s source as the editor sent it (never a copy: the index held
        for ``uri`` is replaced), built if the one held is of another text; None for a text with a lone CR (the
        callers' plain path handles it)."""
        key = unquote(uri)  # as pygls keys its documents
        got = self._by_uri.get(key)
        if got is not None and got.text is text:
            return got
        if has_lone_cr(text):
            self._by_uri.pop(key, None)
            return None
        got = LineIndex.of(text)
        self._by_uri[key] = got
        return got

    def put(self, uri: str, index: LineIndex) -> None:
        self._by_uri[unquote(uri)] = index

    def forget(self, uri: str) -> None:
        self._by_uri.pop(unquote(uri), None)

    def __len__(self) -> int:
        return len(self._by_uri)
