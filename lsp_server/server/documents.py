"""Documents: the open files pygls keeps (incremental sync), their view for context, and where a completion goes.

In: URIs, positions in the negotiated encoding (UTF-16 unless the client offered UTF-8/32), the editor's selected
completion item. Out: the document text with LF newlines and the cursor offset (``edit_point``), the other open
files and the ring of edited regions as context (``extra_for``), and a document forgotten when a change could not
be applied (``document_lost``), so no completion comes from a copy that differs from the editor's.

Notebook cells (LSP 3.17 notebook sync, e.g. VS Code's Jupyter notebooks) are documents of their own; a cell's
completion sees the notebook's other code cells of its language as the text around it (``cells_around``): the cells
above before the cell, the cells below after it, as if the notebook were one file.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from lsprotocol import types

from .. import context, neighbors, pipeline
from .status import StatusReporting

log = logging.getLogger("lsp_server.server")
_WORD_BEFORE = re.compile(r"\w+\Z")
CELL_SEPARATOR = "\n\n"  # between two cells in a notebook's prompt: a blank line, as in a script exported from it
MAX_NEIGHBOR_CHARS = 1 << 20  # an open document larger than this is no other file's context (it is copied per request)


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
        where = uri or "a document"
        log.error("%s is out of sync: %s", where, reason)
        self.show(types.MessageType.Error, f"{where} is out of sync ({reason}); completions for it stop until it is reopened")

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


def edit_point(source: str, position: types.Position, selected: types.SelectedCompletionInfo | None, encoding: str) -> EditPoint:
    """A request's document ``source`` and ``position`` (in ``encoding`` units) -> the text to complete and the
    range to replace. With an item selected in the editor's completion widget, complete as if it were applied."""
    text = context.lf_text(source)
    offset = context.offset_at(text, position.line, position.character, encoding)
    line_start = text.rfind("\n", 0, offset) + 1
    start = types.Position(line=text.count("\n", 0, offset), character=context.units_of(text[line_start:offset], encoding))
    if selected is None:
        word = _WORD_BEFORE.search(text, line_start, offset)
        return EditPoint(text, offset, types.Range(start=start, end=start), "", word.group(0) if word else "")
    sel = selected.range
    sel_start = context.offset_at(text, sel.start.line, sel.start.character, encoding)
    sel_end = context.offset_at(text, sel.end.line, sel.end.character, encoding)
    first, last = (sel.start, sel.end) if sel_start <= sel_end else (sel.end, sel.start)
    sel_start, sel_end = min(sel_start, sel_end), max(sel_start, sel_end)  # a reversed range: the same span
    head = selected.text
    return EditPoint(
        text[:sel_start] + head + text[sel_end:], sel_start + len(head), types.Range(start=first, end=last), head, ""
    )
