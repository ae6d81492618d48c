"""Context beyond the current file: chunks of other open files and of recently edited regions.

In: the documents the editor has open (path, language, text), the edits the user makes, the text around
the cursor and a token budget. Out: a few ``Chunk``s (a path and some lines of text) for the prompt,
placed before the FIM part (``fim.prompt_tokens``), each headed by its path as a comment.

As llama.vscode does, the server keeps a ring of chunks. Two kinds of chunk are candidates:

- recently edited regions: while the user edits, the region around the edits is remembered; when the
  editing moves elsewhere (another document, or more than ``CHUNK_LINES`` lines away) the region, as it
  reads then, is pushed into the ring. The ring holds at most ``capacity`` chunks (the oldest go first)
  and a chunk pushed again (same place or same text) replaces its older copy;
- the other open documents of the same language, cut into blocks of ``CHUNK_LINES`` lines on a fixed grid.

Candidates are ranked by the Jaccard similarity of their identifiers with the identifiers of the lines
around the cursor, and the best are taken while their text fits the token budget. The choice is sticky:
it is looked at again only when the cursor enters another block of lines, or the ring or the set of open
documents changed. While the user types within a block the chunks (the first part of the prompt) stay
exactly the same, so their KV cache is reused and only the tokens near the cursor are evaluated again.
When it is looked at again, it changes only when that pays (the old chunks score less than ``KEEP_SCORE`` of
the best choice), and then in a stable order: chunks still chosen keep their place, the others are dropped
and new ones appended, so the engine moves the evaluated tokens of the chunks that stayed (KV shifting)
instead of evaluating the whole prompt again, as llama.vscode's ring of chunks does for llama-server.

Privacy: documents matching ``config.Settings.exclude`` never get here (the server filters them before
they are recorded or offered as candidates).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from .lines import LineIndex

CHUNK_LINES = 32  # lines per chunk (and the grid that blocks start on)
QUERY_LINES = 32  # lines above and below the cursor whose identifiers make the query
MIN_SCORE = 0.02  # a chunk sharing almost no identifier with the cursor's region is noise, not context
KEEP_SCORE = 0.8  # the old choice of chunks stays while its similarity is at least this share of the best choice's
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")  # identifiers of 3+ characters (i, x, df say little)

# Line comment per LSP language id, for the path header of each chunk; "#" for the rest.
_COMMENT = {
    **dict.fromkeys(
        ("c", "cpp", "csharp", "go", "java", "javascript", "javascriptreact", "typescript", "typescriptreact",
         "rust", "swift", "kotlin", "scala", "dart", "php", "objective-c", "objective-cpp", "zig", "groovy"),
        "//",
    ),
    **dict.fromkeys(("lua", "sql", "haskell", "elm", "ada"), "--"),
    **dict.fromkeys(("lisp", "clojure", "scheme", "racket"), ";;"),
    "erlang": "%", "latex": "%", "tex": "%", "matlab": "%", "vim": '"',
}  # fmt: skip


def identifiers(text: str) -> frozenset[str]:
    """The set of identifiers (3+ characters) in ``text``."""
    return frozenset(_IDENT.findall(text))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def comment_prefix(language_id: str) -> str:
    return _COMMENT.get(language_id, "#")


@dataclass(frozen=True)
class Doc:
    """An open document as a candidate source of chunks."""

    uri: str
    path: str  # shown in the chunk's header: workspace-relative where possible
    language: str
    text: str  # LF-normalised


@dataclass(frozen=True)
class Chunk:
    uri: str
    path: str
    language: str
    start_line: int  # first line of the chunk in its document (when it was taken)
    text: str  # whole lines, LF, no trailing newline
    ids: frozenset[str]

    @property
    def end_line(self) -> int:
        return self.start_line + self.text.count("\n") + 1

    def render(self) -> str:
        """The chunk as it goes into the prompt: a path comment, its lines, a newline."""
        return f"{comment_prefix(self.language)} {self.path}\n{self.text}\n"


def render(chunks: Sequence[Chunk]) -> str:
    return "".join(c.render() for c in chunks)


def block(text: str, line: int, n_lines: int = CHUNK_LINES, index: LineIndex | None = None) -> tuple[int, str]:
    """The grid block of ``n_lines`` lines that holds ``line``: (its first line, its text). ``index``: the line
    index of ``text``, which spares splitting the whole text (250 ms on 50 MB)."""
    if index is not None:
        last = index.line_of(len(text))
        first = max(0, min(line, last)) // n_lines * n_lines
        start = index.line_start(first) or 0
        end = index.line_start(first + n_lines)
        return first, text[start : len(text) if end is None else end - 1]
    lines = text.split("\n")
    start = max(0, min(line, len(lines) - 1)) // n_lines * n_lines
    return start, "\n".join(lines[start : start + n_lines])


def _make(doc: Doc, start: int, text: str) -> Chunk | None:
    if not text.strip():
        return None
    return Chunk(doc.uri, doc.path, doc.language, start, text, identifiers(text))


class ChunkRing:
    """Recently edited regions, at most ``capacity`` chunks, newest last. Thread-safe."""

    def __init__(self, capacity: int = 32, chunk_lines: int = CHUNK_LINES) -> None:
        self.capacity = capacity
        self.chunk_lines = chunk_lines
        self._chunks: deque[Chunk] = deque()
        # the document being edited (its text: the block around the edit as last edited), the line, the block's first line
        self._editing: tuple[Doc, int, int] | None = None
        self._lock = threading.Lock()
        self.generation = 0  # bumped whenever the ring's content changes

    def __len__(self) -> int:
        return len(self._chunks)

    def chunks(self) -> list[Chunk]:
        with self._lock:
            return list(self._chunks)

    def _push(self, chunk: Chunk) -> None:
        same = [c for c in self._chunks if (c.uri, c.start_line) == (chunk.uri, chunk.start_line) or c.text == chunk.text]
        if same == [chunk] and self._chunks[-1] == chunk:
            return  # already the newest: nothing changed (keeps the generation, so selections stay)
        for c in same:
            self._chunks.remove(c)
        self._chunks.append(chunk)
        while len(self._chunks) > self.capacity:
            self._chunks.popleft()
        self.generation += 1

    def edited(self, doc: Doc, line: int, index: LineIndex | None = None) -> None:
        """The user changed ``doc`` (its text after the change) at ``line`` (``index``: its text's line index).

        Edits close to the previous one extend the region being edited; an edit elsewhere pushes that
        region into the ring, cut from the text as it was after its last edit. Only that block is kept (cut at
        each edit, a few lines' work with the index), not the whole text: a 50 MB document stays one copy.
        """
        start, text = block(doc.text, line, self.chunk_lines, index)
        if "\r" in text:  # the document as sent (CRLF): chunks are LF, as prompts are
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        with self._lock:
            prev = self._editing
            self._editing = (replace(doc, text=text), line, start)
            if prev is None:
                return
            pdoc, pline, pstart = prev
            if pdoc.uri == doc.uri and abs(pline - line) <= self.chunk_lines:
                return
            chunk = _make(pdoc, pstart, pdoc.text)
            if chunk is not None:
                self._push(chunk)

    def forget_within(self, text: str) -> None:
        """Drop every chunk whose text is part of ``text``, and the region being edited if its block is: an
        excluded file opened under a new name (a file renamed to ``.env``) takes its old chunks with it."""
        with self._lock:
            kept = [c for c in self._chunks if c.text not in text]
            if len(kept) != len(self._chunks):
                self._chunks = deque(kept)
                self.generation += 1
            if self._editing is not None:
                block_text = self._editing[0].text
                if block_text.strip() and block_text in text:
                    self._editing = None

    def forget(self, uri: str) -> None:
        """Drop every chunk of ``uri`` (a document that became excluded)."""
        with self._lock:
            kept = [c for c in self._chunks if c.uri != uri]
            if len(kept) != len(self._chunks):
                self._chunks = deque(kept)
                self.generation += 1
            if self._editing is not None and self._editing[0].uri == uri:
                self._editing = None


class Neighbors:
    """The ring plus the sticky choice of chunks per document (see the module docstring)."""

    def __init__(self, ring: ChunkRing | None = None, chunk_lines: int = CHUNK_LINES) -> None:
        self.ring = ring if ring is not None else ChunkRing(chunk_lines=chunk_lines)
        self.chunk_lines = chunk_lines
        self._blocks: OrderedDict[tuple[str, int], list[Chunk]] = OrderedDict()  # (uri, hash(text)) -> blocks
        self._chosen: dict[str, tuple[tuple[object, ...], list[Chunk]]] = {}  # uri -> (why it was chosen, the chunks)
        self._last: list[Chunk] = []  # the latest choice for any document: a new document's choice starts from it
        self._lock = threading.Lock()

    def _doc_blocks(self, doc: Doc) -> list[Chunk]:
        key = (doc.uri, hash(doc.text))
        got = self._blocks.get(key)
        if got is None:
            lines = doc.text.split("\n")
            got = []
            for s in range(0, len(lines), self.chunk_lines):
                c = _make(doc, s, "\n".join(lines[s : s + self.chunk_lines]))
                if c is not None:
                    got.append(c)
            self._blocks[key] = got
            if len(self._blocks) > 64:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(key)
        return got

    def select(
        self,
        doc: Doc,
        offset: int,
        window: tuple[int, int],
        others: Iterable[Doc],
        budget: int,
        count: Callable[[str], int],
        line: int | None = None,
    ) -> list[Chunk]:
        """Chunks for a request in ``doc`` at ``offset`` whose FIM windows span ``window`` (character
        offsets): at most ``budget`` tokens of rendered text (``count`` counts tokens), most similar last.
        ``line``: the line ``offset`` is on, if known (then only the text near the cursor is looked at).

        ``others`` are the other open documents (already filtered for language and privacy). Chunks of
        ``doc`` itself that overlap its FIM windows are left out (the model sees those lines anyway).
        """
        if budget <= 0:
            return []
        others = [o for o in others if o.uri != doc.uri and o.language == doc.language]
        if line is None:
            line = doc.text.count("\n", 0, offset)
        first = line - doc.text.count("\n", window[0], offset)
        last = line + doc.text.count("\n", offset, window[1])
        why = (line // self.chunk_lines, first, self.ring.generation, budget, tuple((o.uri, hash(o.text)) for o in others))
        with self._lock:
            old = self._chosen.get(doc.uri)
            if old is not None and old[0] == why:
                return old[1]
            query = identifiers(_around(doc.text, line, offset))
            candidates = [
                c for c in self.ring.chunks()
                if c.language == doc.language and not (c.uri == doc.uri and c.start_line < last + 1 and c.end_line > first)
            ]  # fmt: skip
            for o in others:
                candidates.extend(self._doc_blocks(o))
            scores = {c: jaccard(query, c.ids) for c in candidates}
            scored = sorted(((scores[c], -i, c) for i, c in enumerate(candidates)), key=lambda t: (t[0], t[1]), reverse=True)
            best: list[Chunk] = []
            seen: set[str] = set()
            used = 0
            for score, _, c in scored:
                if score < MIN_SCORE:
                    break
                if c.text in seen:
                    continue
                n = count(c.render())
                if used + n > budget:
                    continue
                best.append(c)
                seen.add(c.text)
                used += n
            best.reverse()  # the most similar nearest the cursor's part of the prompt
            chosen = self._stable(old[1] if old is not None else self._last, best, scores, budget, count)
            self._chosen[doc.uri] = (why, chosen)
            self._last = chosen
            return chosen

    @staticmethod
    def _stable(
        old: list[Chunk], best: list[Chunk], scores: dict[Chunk, float], budget: int, count: Callable[[str], int]
    ) -> list[Chunk]:
        """The new choice laid out so that the prompt's start stays what the engine evaluated before.

        The old choice stays as it is while it is still on offer, fits the budget and scores at least ``KEEP_SCORE``
        of the best choice's similarity (re-choosing costs a prompt evaluation: it must pay). Otherwise the chunks of
        both stay in their old order, the old ones no longer chosen are dropped and the new ones appended (most
        similar last): the engine moves the kept chunks' evaluated tokens (KV shifting) instead of evaluating them.
        """
        if not old:
            return best
        total = sum(scores.get(c, 0.0) for c in best)
        if (
            all(c in scores and scores[c] >= MIN_SCORE for c in old)
            and sum(scores[c] for c in old) >= KEEP_SCORE * total
            and sum(count(c.render()) for c in old) <= budget
        ):
            return list(old)
        kept = [c for c in old if c in best]
        return kept + [c for c in best if c not in kept]

    def closed(self, uri: str) -> None:
        """``uri`` was closed: forget the choice made for it (its ring chunks stay: recently edited)."""
        with self._lock:
            self._chosen.pop(uri, None)

    def drop(self, excluded: Callable[[str], bool]) -> None:
        """Forget every chunk, and every choice holding one, of a path that ``excluded`` now matches
        (after the exclusion patterns changed)."""
        # the URI too: a chunk's path is workspace-relative, and an absolute pattern matches only the full path
        for c in self.ring.chunks():
            if excluded(c.path) or excluded(c.uri):
                self.ring.forget(c.uri)
        editing = self.ring._editing
        if editing is not None and (excluded(editing[0].path) or excluded(editing[0].uri)):
            self.ring.forget(editing[0].uri)
        with self._lock:
            for uri, (_, chunks) in list(self._chosen.items()):
                if excluded(uri) or any(excluded(c.path) or excluded(c.uri) for c in chunks):
                    del self._chosen[uri]

    def forget_within(self, text: str) -> None:
        """Forget chunks (in the ring and in choices) whose text is part of ``text`` (see ``ChunkRing.forget_within``)."""
        self.ring.forget_within(text)
        with self._lock:
            for uri, (_, chunks) in list(self._chosen.items()):
                if any(c.text in text for c in chunks):
                    del self._chosen[uri]


def _around(text: str, line: int, offset: int) -> str:
    """The ``QUERY_LINES`` lines on either side of ``line`` (the line ``offset`` is on), anchored to the chunk grid
    so the query (and so the choice) does not change with every keystroke. Walks from the cursor: the cost does
    not depend on where in a big document it is."""
    centre = line // CHUNK_LINES * CHUNK_LINES + CHUNK_LINES // 2
    first, end = max(0, centre - QUERY_LINES), centre + QUERY_LINES  # lines [first, end)
    start = text.rfind("\n", 0, offset) + 1  # the start of `line`
    for _ in range(line - first):
        start = text.rfind("\n", 0, start - 1) + 1
    stop = start
    for _ in range(end - first):
        nl = text.find("\n", stop)
        if nl < 0:
            return text[start:]
        stop = nl + 1
    return text[start : stop - 1]
