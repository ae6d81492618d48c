"""Document + cursor -> the prefix and suffix windows that go into the prompt.

In: the document text, an LSP position (line, character in the negotiated encoding's code units) and a
token budget. Out: a ``FimContext`` whose prefix and suffix fit the budget, measured in the model's own
tokens.

Three things happen here:

1. Line endings. Editors send CRLF (or, rarely, lone CR) documents as they are. The model saw LF, and
   the prompt must not change when only the line-ending style differs, so the text is normalised to LF
   (``lf_text``) before anything else. LSP lines are the same in both forms, so positions carry over;
   a completion that spans lines is mapped back with ``to_document_newlines``.
2. Positions. ``character`` counts UTF-16 code units by default (UTF-8 or UTF-32 when negotiated), never
   Python string indices. A position past the end of a line means the end of that line and a line past
   the end of the document means its end (the LSP rule), so a stale position never raises.
3. Windows. The prefix gets ``budget - suffix tokens`` and the suffix at most ``(1 - prefix_ratio) *
   budget``. Both windows are cut at lines on a fixed grid (every ``GRID`` lines, counted from the top of
   the document) rather than "as many tokens as fit". While the user types on a line, the grid line where
   the prefix starts stays where it is until the budget overflows, and then jumps by ``GRID`` lines. A
   window that slid by a token at every keystroke would change the first tokens of the prefix, and the
   engine would have to re-evaluate the whole prefix each time; an anchored one keeps the evaluated
   tokens reusable (see ``engines.llama_cpp``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lsprotocol import types

from .errors import ServerError
from .fim import FimContext
from .lines import LineIndex

GRID = 16  # lines; windows start and end only on lines whose number is a multiple of this
REACH_CHARS = 32  # characters per token a window looks at, at most: no Llama piece is anywhere near as long on average
CHAR_GRID = 256  # characters; the fallback cut for a single line longer than the whole budget


class ContextError(ServerError):
    """A request whose text or position cannot be turned into a prompt."""


def lf_text(text: str) -> str:
    """The document with CRLF and lone CR turned into LF (a no-op scan for LF documents)."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def document_newline(text: str) -> str:
    """The line ending the document uses (the first one found), LF when it has none."""
    i = text.find("\r")
    if i < 0:
        return "\n"
    return "\r\n" if text.startswith("\r\n", i) else "\r"


def to_document_newlines(completion: str, newline: str) -> str:
    return completion if newline == "\n" else completion.replace("\n", newline)


def _units(ch: str, encoding: str) -> int:
    if encoding == types.PositionEncodingKind.Utf8:
        return len(ch.encode("utf-8"))
    if encoding == types.PositionEncodingKind.Utf32:
        return 1
    return 2 if ord(ch) > 0xFFFF else 1


def line_column(line_text: str, character: int, encoding: str = types.PositionEncodingKind.Utf16) -> int:
    """Code-point column of a ``character`` given in ``encoding`` code units (clamped to the line).

    A position inside a surrogate pair or a multi-byte UTF-8 sequence rounds down to the character.
    """
    if character <= 0:
        return 0
    if encoding == types.PositionEncodingKind.Utf32 or line_text.isascii():
        return min(character, len(line_text))
    seen = 0
    for i, ch in enumerate(line_text):
        seen += _units(ch, encoding)
        if seen > character:
            return i
    return len(line_text)


def units_of(text: str, encoding: str = types.PositionEncodingKind.Utf16) -> int:
    """Length of ``text`` in ``encoding`` code units (what an LSP range's character counts)."""
    if encoding == types.PositionEncodingKind.Utf32 or text.isascii():
        return len(text)
    if encoding == types.PositionEncodingKind.Utf8:
        return len(text.encode("utf-8"))
    return len(text.encode("utf-16-le")) // 2


def offset_at(
    text: str, line: int, character: int, encoding: str = types.PositionEncodingKind.Utf16, index: LineIndex | None = None
) -> int:
    """Offset into the LF-normalised ``text`` of an LSP position (clamped, see the module docstring); ``index``:
    the line index of ``text`` (``lines``), which makes this cost the same anywhere in a document of any size."""
    if line < 0 or character < 0:
        raise ContextError(f"expected a position with line >= 0 and character >= 0, got {line}:{character}")
    if index is not None:
        found = index.line_start(line)
        if found is None:  # past the last line: the end of the document
            return len(text)
        start = found
    else:
        # split(maxsplit=line) touches only the lines up to the cursor.
        parts = text.split("\n", line)
        if len(parts) <= line:  # past the last line: the end of the document
            return len(text)
        start = len(text) - len(parts[-1])
    end = text.find("\n", start)
    line_text = text[start : end if end >= 0 else len(text)]
    return start + line_column(line_text, character, encoding)


class TokenCounter:
    """Exact token counts of whole strings plus a memo of per-line counts for choosing windows.

    ``count`` is the model's tokenizer (with the leading space), ``count_infill`` the variant without it.
    Per-line counts are only an estimate of a line's share in a longer text (the leading space and
    merges across the newline differ); the final window is always checked with an exact count.
    """

    def __init__(
        self,
        count: Callable[[str], int],
        count_infill: Callable[[str], int],
        memo: int = 65536,
        count_line: Callable[[str], int] | None = None,
    ):
        self.count = count
        self.count_infill = count_infill
        self._count_line = count_line or count  # may bypass the caller's own memo of whole windows
        self._lines: OrderedDict[str, int] = OrderedDict()
        self._memo = memo

    def line(self, text: str) -> int:
        n = self._lines.get(text)
        if n is None:
            n = self._count_line(text) if text else 0
            self._lines[text] = n
            if len(self._lines) > self._memo:
                self._lines.popitem(last=False)
        return n + 1  # the newline (a byte token in Llama's vocabulary)


def build(
    text: str, offset: int, counter: TokenCounter, budget: int, prefix_ratio: float = 0.75, cursor_line: int | None = None
) -> FimContext:
    """Cut ``text`` (LF-normalised) around ``offset`` into prefix/suffix windows within ``budget`` tokens.

    ``cursor_line``: the line ``offset`` is on, when the caller knows it (the request's position): then nothing
    here looks at text beyond the windows' reach (counting the lines up to the cursor cost 16 ms at the end of
    a 50 MB document)."""
    if not 0 <= offset <= len(text):
        raise ContextError(f"expected an offset in [0, {len(text)}], got {offset}")
    if budget < 2:
        raise ContextError(f"expected a context budget of at least 2 tokens, got {budget}")
    ratio = min(max(prefix_ratio, 0.0), 1.0)
    suffix_budget = int(budget * (1.0 - ratio))
    if cursor_line is None:
        cursor_line = text.count("\n", 0, offset)
    suffix, suffix_end = _suffix_window(text, offset, counter, suffix_budget, cursor_line)
    used = counter.count_infill(suffix) if suffix else 0
    prefix, prefix_start = _prefix_window(text, offset, counter, budget - used, cursor_line)
    return FimContext(prefix=prefix, suffix=suffix, prefix_start=prefix_start, suffix_end=suffix_end)


def _prefix_window(text: str, offset: int, counter: TokenCounter, budget: int, cursor_line: int) -> tuple[str, int]:
    if budget <= 0 or offset == 0:
        return "", offset
    # Only text within reach of the budget is looked at (no Llama piece is anywhere near 32 chars per
    # token on average), so a 20 MB document costs no more than a small one.
    reach = max(0, offset - budget * REACH_CHARS)
    if reach == 0:
        region_start = 0
    else:
        nl = text.find("\n", reach, offset)
        region_start = reach if nl < 0 else nl + 1  # no newline in reach: one giant line
    lines = text[region_start:offset].split("\n")
    first_line = cursor_line - (len(lines) - 1)
    # Line starts (absolute offsets) and the estimated tokens from each line to the cursor.
    starts: list[int] = []
    pos = region_start
    for ln in lines:
        starts.append(pos)
        pos += len(ln) + 1
    suffix_sum = 0
    estimate = [0] * len(lines)
    for i in range(len(lines) - 1, -1, -1):
        suffix_sum += counter.line(lines[i])
        estimate[i] = suffix_sum
    # Grid lines between the region start and the cursor line; the cursor line itself is the last resort.
    grid = [i for i in range(len(lines)) if (first_line + i) % GRID == 0 and first_line + i < cursor_line]
    candidates = [i for i in grid if estimate[i] <= budget] + [len(lines) - 1]
    for i in candidates:
        start = starts[i]
        if counter.count(text[start:offset]) <= budget:
            return text[start:offset], start
    # The cursor line alone is too long: cut it on a character grid anchored at the line's real start
    # (so the window's start stays put while typing on it), taking the longest window that fits.
    line_start = text.rfind("\n", 0, offset) + 1
    first = max(0, -(-(region_start - line_start) // CHAR_GRID))  # the first grid point within reach
    last = (offset - line_start - 1) // CHAR_GRID  # the last grid point before the cursor
    if last < first:
        return "", offset
    j = _longest_fit(last - first, lambda j: counter.count(text[line_start + (last - j) * CHAR_GRID : offset]) <= budget)
    if j is None:
        return "", offset
    start = line_start + (last - j) * CHAR_GRID
    return text[start:offset], start


def _suffix_window(text: str, offset: int, counter: TokenCounter, budget: int, cursor_line: int) -> tuple[str, int]:
    if budget <= 0 or offset == len(text):
        return "", offset
    reach = min(len(text), offset + budget * REACH_CHARS)
    region = text[offset:reach]
    lines = region.split("\n")
    # Ends are line starts on the grid after the cursor line, plus the end of the cursor line itself.
    ends: list[tuple[int, int]] = []  # (absolute end offset, estimated tokens)
    pos = offset
    est = 0
    for i, ln in enumerate(lines):
        est += counter.line(ln)
        pos += len(ln) + (1 if i < len(lines) - 1 else 0)
        line_no = cursor_line + i + 1  # the line that starts at pos
        at_end = pos >= len(text)
        if at_end or i == 0 or line_no % GRID == 0:
            ends.append((pos, est))
        if est > budget * 2:
            break
    for end, est in reversed(ends):
        if est > budget and end != ends[0][0]:
            continue
        if counter.count_infill(text[offset:end]) <= budget:
            return text[offset:end], end
    # Even the rest of the cursor line does not fit: cut it on a character grid counted from the cursor
    # (typing before it leaves the window's text unchanged), taking the longest window that fits.
    steps = (ends[0][0] - offset - 1) // CHAR_GRID
    j = (
        _longest_fit(steps - 1, lambda j: counter.count_infill(text[offset : offset + (j + 1) * CHAR_GRID]) <= budget)
        if steps > 0
        else None
    )
    if j is None:
        return "", offset
    end = offset + (j + 1) * CHAR_GRID
    return text[offset:end], end


def _longest_fit(n: int, fits: Callable[[int], bool]) -> int | None:
    """The largest ``j`` in [0, n] with ``fits(j)``, for a ``fits`` that holds up to some ``j`` and not
    after (None when ``fits(0)`` does not hold). Galloping, then bisection: about 2 log2(j) calls, the
    longest of them on about twice the answer's size, so the cost of a keystroke on a 1M-character line
    depends on the token budget, not on the line."""
    if n < 0 or not fits(0):
        return None
    good, step = 0, 1
    while True:
        j = min(n, good + step)
        if j == good:
            return good
        if not fits(j):
            bad = j
            break
        good, step = j, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


@dataclass(frozen=True)
class Cursor:
    """Where a request points, in both the LF text and the original document's terms."""

    offset: int  # into lf_text(document)
    line_prefix: str  # text of the cursor line before the cursor
    line_suffix: str  # text of the cursor line after the cursor
    line: int | None = None  # the cursor's line, when the caller knew it (else counted where needed)


def cursor(text: str, offset: int, line: int | None = None) -> Cursor:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    suffix = text[offset : end if end >= 0 else len(text)]
    return Cursor(offset=offset, line_prefix=text[start:offset], line_suffix=suffix, line=line)
