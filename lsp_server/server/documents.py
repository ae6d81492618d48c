"""Documents: the open files pygls keeps (incremental sync), their view for context, and where a completion goes.

In: URIs, positions in the negotiated encoding (UTF-16 unless the client offered UTF-8/32), the editor's selected
completion item. Out: the document text with LF newlines and the cursor offset (``edit_point``), the other open
files and the ring of edited regions as context (``extra_for``), and a document forgotten when a change could not
be applied (``document_lost``), so no completion comes from a copy that differs from the editor's.

Notebook cells (LSP 3.17 notebook sync, e.g. VS Code's Jupyter notebooks) are documents of their own; a cell's
completion sees the notebook's other code cells of its language as the text around it (``cells_around``): the cells
above before the cell, the cells below after it, as if the notebook were one file. A notebook change that cannot be
applied forgets the notebook and tells the user once (``notebook_lost``), until the client opens it again. A change that
comes after the client closed a document (VS Code sends one for an ``untitled:`` buffer saved under a name) is late,
not a lost document (``was_closed``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from lsprotocol import types

from .. import context, neighbors, pipeline, rpc
from ..lines import LineIndex
from .status import StatusReporting

log = logging.getLogger("lsp_server.server")
_WORD_BEFORE = re.compile(r"\w+\Z")
CELL_SEPARATOR = "\n\n"  # between two cells in a notebook's prompt: a blank line, as in a script exported from it
MAX_NEIGHBOR_CHARS = 1 << 20  # an open document larger than this is no other file's context (it is copied per request)
VIEW_FROM = 1 << 20  # characters; a longer document goes on to a completion as the part its prompt can reach
VIEW_GRID = 1 << 16  # the view's start moves on this grid (so the cache's windows stay comparable while typing)


class Documents(StatusReporting):
    def document(self, uri: str) -> Any:
        """The open document ``uri`` or None (pygls keys documents by the unquoted URI)."""
        return self.workspace.text_documents.get(unquote(uri))

    def document_lost(self, uri: str | None, reason: str) -> None:
        """A document change could not be applied: forget the document (so no completion comes from a
        copy that differs from the editor's) and tell the user."""
        if uri is not None:
            self.workspace.remove_text_document(uri)
            self.cache.forget(uri)
            self.lines.forget(uri)
            self.protocol.text_changed(uri, closed=True)
        where = uri or "a document"
        log.error("%s is out of sync: %s", where, reason)
        self.show(types.MessageType.Error, f"{where} is out of sync ({reason}); completions for it stop until it is reopened")

    def was_closed(self, uri: str) -> bool:
        """Whether the client closed ``uri`` (and has not opened it since)."""
        return unquote(uri) in self._closed

    def notebook_lost(self, uri: str | None, reason: str) -> None:
        """A ``notebookDocument/didChange`` could not be applied (params that do not parse, a cell array change
        outside the cells, a cell without its text): the notebook and its cells are forgotten, so no completion
        comes from a copy that differs from the editor's, and the user is told once per notebook. The client's next
        ``notebookDocument/didOpen`` of it (reopening it, or a client's full resync) makes it usable again."""
        notebook = self.workspace.get_notebook_document(notebook_uri=uri) if uri is not None else None
        if uri is not None and notebook is not None:
            for cell in notebook.cells:
                self.workspace.remove_text_document(cell.document)
                self.cache.forget(cell.document)
                self.lines.forget(cell.document)
                self.protocol.text_changed(cell.document, closed=True)
            self.workspace.remove_notebook_document(
                types.DidCloseNotebookDocumentParams(
                    notebook_document=types.NotebookDocumentIdentifier(uri=uri), cell_text_documents=[]
                )
            )
        key = unquote(uri) if uri is not None else ""
        first = key not in self._notebooks_lost
        self._notebooks_lost.add(key)
        log.error("notebook %s is out of sync: %s", uri or "(no uri)", reason)
        if first:
            name = (uri or "a notebook").rsplit("/", 1)[-1]
            self.show(
                types.MessageType.Error,
                f"notebook {name} is out of sync ({reason}); completions in its cells stop until it is reopened",
            )

    def notebook_opened(self, uri: str, cells: list[str]) -> None:
        """A notebook was opened (again: a resync after it was lost); ``cells``: its cells' URIs."""
        self._notebooks_lost.discard(unquote(uri))
        self._closed.pop(unquote(uri), None)
        for cell in cells:
            self._closed.pop(unquote(cell), None)

    def document_too_big(self, uri: str, size: int) -> None:
        """A ``didOpen`` (or a whole-text change) of ``uri`` was skipped for its size (``rpc.MAX_CONTENT_LENGTH``): no
        completions for it until it is reopened smaller; the user is told once (as Copilot does for very big files)."""
        self.workspace.remove_text_document(uri)
        self.cache.forget(uri)
        self.lines.forget(uri)
        first = unquote(uri) not in self._too_big
        self._too_big[unquote(uri)] = size
        message = (
            f"{uri.rsplit('/', 1)[-1]} is {size / 1e6:.0f} MB, more than the {rpc.MAX_CONTENT_LENGTH >> 20} MiB a message "
            "may carry: no completions for it"
        )
        log.warning("%s: %s", uri, message)
        if first:
            self.show(types.MessageType.Warning, message)

    def is_too_big(self, uri: str) -> bool:
        return unquote(uri) in self._too_big

    def opened(self, uri: str) -> None:
        """An excluded file opened (perhaps a file just renamed to ``.env``): chunks of its text leave the ring."""
        doc = self.document(uri)
        if doc is not None and self.is_excluded(doc):
            self.neighbors.forget_within(context.lf_text(doc.source))

    def closed(self, uri: str) -> None:
        """``uri`` closed: its chunks stay in the ring (recently edited), unless the file is gone from the disk
        (deleted, or renamed - perhaps to an excluded name, which the editor may not tell us)."""
        self.neighbors.closed(uri)
        path = _local_path(uri)
        if path is not None and not os.path.lexists(path):
            self.neighbors.ring.forget(uri)

    def renamed(self, old_uri: str, new_uri: str) -> None:
        """``workspace/didRenameFiles``: the old name's chunks go (they now belong to a file under another name)."""
        self.neighbors.ring.forget(old_uri)
        self.neighbors.closed(old_uri)
        if self.settings.excluded(new_uri):
            self.neighbors.drop(self.settings.excluded)

    def is_excluded(self, doc: Any) -> bool:
        """The privacy rule for an open document: its path or its URI matches ``exclude`` (see ``config``)."""
        return self.settings.excluded(doc.path) or self.settings.excluded(doc.uri)

    def neighbor_view(self, doc: Any, text: str | None = None) -> neighbors.Doc:
        """The neighbors' view of an open pygls document: its path relative to the workspace root, if inside."""
        path = doc.path or doc.uri  # a Neovim buffer with no name comes as "file://": no path (relpath refuses "")
        root = self.workspace.root_path
        if doc.path and root and os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root):
            path = os.path.relpath(path, root)
        return neighbors.Doc(
            doc.uri, path.replace(os.sep, "/"), doc.language_id or "", context.lf_text(doc.source) if text is None else text
        )

    def cells_around(self, doc: Any) -> tuple[str, str]:
        """For a notebook cell: the text of the notebook's code cells above it and of those below it, each cell
        separated from the next by ``CELL_SEPARATOR``, so that ``before + cell + after`` reads as one file; cells of
        another language (markdown, a %%bash cell's shell) and excluded ones are left out. ("", "") for a document
        that is no cell of an open notebook."""
        notebook = self.workspace.get_notebook_document(cell_uri=doc.uri)
        if notebook is None:
            return "", ""
        above: list[str] = []
        below: list[str] = []
        found = False
        for cell in notebook.cells:
            if unquote(cell.document) == unquote(doc.uri):
                found = True
                continue
            other = self.document(cell.document)
            if cell.kind != types.NotebookCellKind.Code or other is None or other.language_id != doc.language_id:
                continue
            if not self.is_excluded(other):
                (below if found else above).append(context.lf_text(other.source))
        return "".join(t + CELL_SEPARATOR for t in above), "".join(CELL_SEPARATOR + t for t in below)

    def notebook_cells(self, doc: Any) -> set[str]:
        """The URIs of every cell of ``doc``'s notebook (unquoted; empty for a document that is no cell)."""
        notebook = self.workspace.get_notebook_document(cell_uri=doc.uri)
        return set() if notebook is None else {unquote(c.document) for c in notebook.cells}

    def extra_for(self, doc: Any, text: str) -> pipeline.Extra | None:
        """Where the request's context from other files comes from: the other open documents of its
        language that are not excluded, and the ring (None when ``extraContextTokens`` is 0). The cells of a
        notebook are not other files to its own cells: they are in the prompt already (``cells_around``)."""
        if self.settings.extra_context_tokens <= 0:
            return None
        siblings = self.notebook_cells(doc)
        others = tuple(
            self.neighbor_view(d) for d in self.workspace.text_documents.values()
            if d.uri != doc.uri and d.language_id == doc.language_id and len(d.source) <= MAX_NEIGHBOR_CHARS
            and not self.is_excluded(d) and unquote(d.uri) not in siblings
        )  # fmt: skip
        return pipeline.Extra(self.neighbors, self.neighbor_view(doc, text), others)


def _local_path(uri: str) -> str | None:
    if not uri.startswith("file:"):
        return None
    return unquote(urlsplit(uri).path) or None


@dataclass(frozen=True)
class EditPoint:
    """Where a completion goes (see ``edit_point``)."""

    text: str  # the document with LF newlines, with the selected completion item applied if there is one
    offset: int  # the cursor in ``text``
    range: types.Range  # what the completion replaces in the editor's document
    head: str  # the selected item's text, put in front of every completion ("" without one)
    word: str  # identifier characters just before the cursor, for textDocument/completion items ("" with a selection)
    line: int = 0  # the line ``offset`` is on in ``text``


def edit_point(
    source: str,
    position: types.Position,
    selected: types.SelectedCompletionInfo | None,
    encoding: str,
    index: LineIndex | None = None,
    reach_tokens: int | None = None,
) -> EditPoint:
    """A request's document ``source`` and ``position`` (in ``encoding`` units) -> the text to complete and the
    range to replace. With an item selected in the editor's completion widget, complete as if it were applied.

    ``index``: the line index of ``source`` (``lines``): finding the position then costs the same anywhere in a
    document of any size. ``reach_tokens``: the context windows' budget; with it and the index, the text of a
    document over ``VIEW_FROM`` characters is only the part those windows can reach (``view_around``), so nothing
    after this walks, copies or holds the whole document (CRLF included: only that part is normalised)."""
    if index is not None and index.text is not source:
        index = None
    base = 0  # the document's line where ``text`` starts
    if index is not None and reach_tokens is not None and len(source) > VIEW_FROM:
        source, base = view_around(source, index, position.line, position.character, reach_tokens)
        index = None  # a few hundred KB: the plain path
    text = context.lf_text(source)
    if index is not None and index.text is not text:
        index = None  # a CRLF document normalised whole (no reach given): the plain path
    offset = context.offset_at(text, max(0, position.line - base), position.character, encoding, index)
    line_start = text.rfind("\n", 0, offset) + 1
    line = base + (index.line_of(offset) if index is not None else text.count("\n", 0, offset))
    start = types.Position(line=line, character=context.units_of(text[line_start:offset], encoding))
    if selected is None:
        word = _WORD_BEFORE.search(text, line_start, offset)
        return EditPoint(text, offset, types.Range(start=start, end=start), "", word.group(0) if word else "", line)
    sel = selected.range
    sel_start = context.offset_at(text, max(0, sel.start.line - base), sel.start.character, encoding, index)
    sel_end = context.offset_at(text, max(0, sel.end.line - base), sel.end.character, encoding, index)
    first, last = (sel.start, sel.end) if sel_start <= sel_end else (sel.end, sel.start)
    sel_start, sel_end = min(sel_start, sel_end), max(sel_start, sel_end)  # a reversed range: the same span
    head = selected.text
    line = base + (index.line_of(sel_start) if index is not None else text.count("\n", 0, sel_start)) + head.count("\n")
    return EditPoint(
        text[:sel_start] + head + text[sel_end:], sel_start + len(head), types.Range(start=first, end=last), head, "", line
    )


def view_around(source: str, index: LineIndex, line: int, character: int, reach_tokens: int) -> tuple[str, int]:
    """The part of a big document's ``source`` that a prompt at ``line:character`` with windows of up to
    ``reach_tokens`` tokens can reach (``context.REACH_CHARS`` a token, plus ``VIEW_GRID`` characters), and the line
    it starts on.

    A completion request on a 20 MB document held the whole text while it waited for the engine, and pipelined
    keystrokes each held their own (60 of them: 1.2 GB); the view is a few hundred KB and everything after it (the
    cache, the windows, the prompt) costs what it costs on a small document. The windows cut from the view are the
    ones cut from the whole text: the view starts at a line start before the prefix window's reach, on a grid (so
    the grid lines and the cache's windows stay put while the user types), and ends after the suffix window's
    reach, at the same distance from the cursor while the user types before it (so the type-through cache still
    matches)."""
    line = min(line, index.line_of(len(source)))
    line_start = index.line_start(line) or 0
    line_end = source.find("\n", line_start)
    cursor = min(line_start + character, len(source) if line_end < 0 else line_end)  # code units >= code points
    reach = reach_tokens * context.REACH_CHARS + VIEW_GRID
    lo = max(0, (cursor - reach) // VIEW_GRID * VIEW_GRID)
    if lo > 0:
        lo = source.rfind("\n", 0, lo) + 1
    hi = min(len(source), cursor + reach)
    if hi < len(source) and source[hi - 1] == "\r":
        hi -= 1  # never half a CRLF
    return source[lo:hi], index.line_of(lo)
