"""The syntax at the cursor, from tree-sitter: what kind of completion fits there, and whether one parses.

In: a document key (URI or path; its extension picks the grammar), the LF document text and the cursor
offset. Out: a ``SyntaxInfo`` (or ``None`` for a language without a grammar here, where post-processing
falls back to indentation rules): whether the cursor wants one line (inside a string, a comment, an
argument or parameter list, a subscript, a condition) or a block (right after a ``:`` or ``{`` that opens
an empty body), the indentation a Python body needs, whether the document parses without errors, and
``inserted_has_error(info, text)``, which parses the document with ``text`` inserted at the cursor.

Grammars (the PyPI wheels): Python, JavaScript (with JSX), TypeScript, TSX, Go, Rust, C, C++, Java. Each
parser is built once and reused under a lock (a tree-sitter parser is not thread-safe).

Incremental parsing: ``TREES`` keeps the last tree of each document. A new request's text is compared
with the text that tree was parsed from; the changed span (common prefix and suffix, found with
memcmp-speed slice comparisons) becomes one ``Tree.edit`` and the parser reuses every unchanged subtree.
The edit is derived from the texts rather than from ``didChange`` events on purpose: the pipeline sees
the LF-normalised text, sometimes with the editor's selected completion item applied, and a diff covers
every way text reaches it (server, CLI, eval) with one code path. Everything here blocks (1-2 ms on a
5,000-line file, see bench/syntax.py): call it off the event loop.

Bounds: a document over ``MAX_BYTES`` is not parsed at all (``analyze`` returns None: the indentation rules
decide), since a first parse grows with the text (a 5 MB file took seconds and a 50 MB one gigabytes), and one
syntax thread serves every document; ``TREES`` keeps trees of at most ``TREES_MAX_BYTES`` of source in all.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import Literal

import tree_sitter as ts

# extension -> grammar; module and function of its PyPI wheel per grammar
EXTENSIONS = {
    "py": "python",
    "pyi": "python",
    "js": "javascript",
    "jsx": "javascript",
    "mjs": "javascript",
    "cjs": "javascript",
    "ts": "typescript",
    "mts": "typescript",
    "cts": "typescript",
    "tsx": "tsx",
    "go": "go",
    "rs": "rust",
    "c": "c",
    "h": "c",
    "cc": "cpp",
    "cpp": "cpp",
    "cxx": "cpp",
    "hpp": "cpp",
    "hh": "cpp",
    "hxx": "cpp",
    "java": "java",
}
# editor language id (VS Code's languageId, Neovim's filetype) -> grammar: chosen before the file's extension,
# so ``untitled:`` buffers and files whose name does not tell the language get their syntax rules too
LANGUAGE_IDS = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "go": "go",
    "rust": "rust",
    "c": "c",
    "cpp": "cpp",
    "java": "java",
}
_WHEELS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "java": ("tree_sitter_java", "language"),
}
# Node types (across these grammars) inside which a completion is one line.
_TEXTUAL = frozenset(
    {
        "string",
        "string_content",
        "string_fragment",
        "template_string",
        "interpreted_string_literal",
        "raw_string_literal",
        "string_literal",
        "char_literal",
        "character_literal",
        "rune_literal",
        "text_block",
        "comment",
        "line_comment",
        "block_comment",
        "concatenated_string",
    }
)
_BRACKETED = frozenset(
    {
        "argument_list",
        "arguments",
        "parameters",
        "formal_parameters",
        "parameter_list",
        "lambda_parameters",
        "type_arguments",
        "type_parameters",
        "subscript",
        "subscript_expression",
        "index_expression",
        "parenthesized_expression",
        "condition_clause",
        "jsx_expression",
        "jsx_opening_element",
    }
)
# Body nodes that a ':' or '{' opens.
_BODIES = frozenset(
    {
        "block",
        "statement_block",
        "compound_statement",
        "class_body",
        "declaration_list",
        "field_declaration_list",
        "enum_body",
        "interface_body",
        "constructor_body",
        "switch_body",
        "enum_variant_list",
        "object_type",
        "statement_list",
    }
)
_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})
TAB_WIDTH = 4

Mode = Literal["line", "block", "any"]


def language_for(key: str, language_id: str | None = None) -> str | None:
    """The grammar for a document: its editor language id when we know it, else the extension of its key
    (``file:///x/a.py``, ``a.go``); None without either."""
    if language_id and language_id.lower() in LANGUAGE_IDS:
        return LANGUAGE_IDS[language_id.lower()]
    name = key.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    return EXTENSIONS.get(name.rsplit(".", 1)[-1].lower())


@cache
def _parser(language: str) -> tuple[ts.Parser, threading.Lock]:
    module, attr = _WHEELS[language]
    lang = ts.Language(getattr(importlib.import_module(module), attr)())
    return ts.Parser(lang), threading.Lock()


def parse(language: str, source: bytes, old: ts.Tree | None = None) -> ts.Tree:
    """Parse ``source`` (reusing ``old``, already ``edit``-ed to match it, when given)."""
    parser, lock = _parser(language)
    with lock:
        return parser.parse(source, old) if old is not None else parser.parse(source)


@dataclass(frozen=True)
class SyntaxInfo:
    language: str
    mode: Mode  # line: one line fits here; block: a body to fill; any: indentation rules decide
    why: str  # what decided the mode (for logs and tests): "string", "arguments", "empty body", ...
    body_indent: int | None  # indentation-scoped grammars: lines indented less end the node completed
    braces: bool  # brace-scoped grammar: a closing bracket matching one opened before the cursor ends it
    error_free: bool  # the document as it is parses without errors
    source: bytes  # the document (UTF-8) the tree was parsed from
    tree: ts.Tree
    cursor: int  # byte offset of the cursor in ``source``


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix (binary search over slice comparisons: memcmp, not a Python loop)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _point(source: bytes, offset: int) -> tuple[int, int]:
    """tree-sitter point (row, byte column) of a byte offset."""
    row = source.count(b"\n", 0, offset)
    return row, offset - (source.rfind(b"\n", 0, offset) + 1)


def edited(tree: ts.Tree, old: bytes, new: bytes, start: int | None = None) -> ts.Tree:
    """A copy of ``tree`` (parsed from ``old``) with the one edit that turns ``old`` into ``new`` applied.

    ``start``: where the change begins when the caller knows (an insertion at the cursor).
    """
    if start is None:
        start = _common_prefix(old, new)
    room = min(len(old), len(new)) - start
    tail = 0
    if room > 0:
        # common suffix within what follows ``start``: the same binary search on the reversed ends
        tail = _common_prefix(old[len(old) - room :][::-1], new[len(new) - room :][::-1])
    old_end, new_end = len(old) - tail, len(new) - tail
    copy = tree.copy()
    copy.edit(
        start_byte=start,
        old_end_byte=old_end,
        new_end_byte=new_end,
        start_point=_point(old, start),
        old_end_point=_point(old, old_end),
        new_end_point=_point(new, new_end),
    )
    return copy


MAX_BYTES = 1 << 20  # documents larger than this (UTF-8) are not parsed
TREES_MAX_BYTES = 16 << 20  # source bytes whose trees TREES keeps, all documents together


class SyntaxTrees:
    """The last tree of each document (a small LRU), reparsed incrementally as the text changes."""

    def __init__(self, capacity: int = 32, max_bytes: int = TREES_MAX_BYTES) -> None:
        self._trees: OrderedDict[str, tuple[str, bytes, ts.Tree]] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity
        self.max_bytes = max_bytes

    @property
    def source_bytes(self) -> int:
        """The source bytes of the trees held (a tree's memory grows with its source)."""
        with self._lock:
            return sum(len(v[1]) for v in self._trees.values())

    def tree(self, key: str, language: str, source: bytes) -> ts.Tree:
        with self._lock:
            last = self._trees.get(key)
        if last is not None and last[0] == language:
            tree = last[2] if last[1] == source else parse(language, source, edited(last[2], last[1], source))
        else:
            tree = parse(language, source)
        with self._lock:
            self._trees[key] = (language, source, tree)
            self._trees.move_to_end(key)
            held = sum(len(v[1]) for v in self._trees.values())
            while len(self._trees) > self.capacity or (held > self.max_bytes and len(self._trees) > 1):
                _, (_, old_source, _) = self._trees.popitem(last=False)
                held -= len(old_source)
        return tree

    def forget(self, key: str) -> None:
        with self._lock:
            self._trees.pop(key, None)


TREES = SyntaxTrees()


def _indent(line: bytes) -> int:
    ws = line[: len(line) - len(line.lstrip(b" \t"))]
    return len(ws.decode().expandtabs(TAB_WIDTH))


def _line_indent(source: bytes, offset: int) -> int:
    start = source.rfind(b"\n", 0, offset) + 1
    end = source.find(b"\n", start)
    return _indent(source[start : end if end >= 0 else len(source)])


def _empty(node: ts.Node) -> bool:
    return all(c.type in _COMMENTS or (c.type in _BODIES and _empty(c)) for c in node.named_children)


def _mode(source: bytes, tree: ts.Tree, cur: int, language: str) -> tuple[Mode, str, int | None]:
    root = tree.root_node
    # 1. inside a string, a comment or brackets (strictly: a cursor right after a closing quote is outside)
    node: ts.Node | None = root.descendant_for_byte_range(cur, cur)
    while node is not None:
        if node.start_byte < cur < node.end_byte:
            if node.type in _TEXTUAL:
                return "line", node.type, None
            if node.type in _BRACKETED:
                return "line", node.type, None
            cond = node.child_by_field_name("condition")
            if cond is not None and cond.start_byte <= cur <= cond.end_byte and cond.type not in _BODIES:
                return "line", "condition", None
        node = node.parent
    # 2. right after the ':' or '{' that opens an empty body
    p = cur
    while p > 0 and source[p - 1 : p] in (b" ", b"\t", b"\n", b"\r"):
        p -= 1
    if p > 0:
        last = root.descendant_for_byte_range(p - 1, p)
        if last is not None and last.type in (":", "{"):
            parent = last.parent
            header_indent = _line_indent(source, p - 1)
            if parent is not None and last.type == "{" and parent.type in _BODIES and _empty(parent):
                return "block", "empty body", None
            if parent is not None and last.type == ":":
                body = next((c for c in parent.named_children if c.start_byte >= last.end_byte and c.type in _BODIES), None)
                if body is not None and _empty(body):
                    return "block", "empty body", header_indent + 1
    # 3. elsewhere: in an indentation-scoped body, the column of its statements bounds the completion
    if language == "python":
        node = root.descendant_for_byte_range(cur, cur)
        while node is not None and not (
            node.type == "block" and node.named_child_count and node.start_byte <= cur <= node.end_byte
        ):
            node = node.parent
        if node is not None:
            return "any", "in body", _line_indent(source, node.named_children[0].start_byte)
    return "any", "", None


def analyze(key: str, text: str, offset: int, trees: SyntaxTrees = TREES, language_id: str | None = None) -> SyntaxInfo | None:
    """The syntax at ``offset`` in ``text`` (LF document), or None without a grammar for ``key`` / ``language_id``."""
    language = language_for(key, language_id)
    if language is None or len(text) > MAX_BYTES:  # (characters: at most as many as bytes)
        return None
    source = text.encode("utf-8", errors="surrogatepass")
    if len(source) > MAX_BYTES:
        return None
    cur = len(text[:offset].encode("utf-8", errors="surrogatepass"))
    tree = trees.tree(key, language, source)
    mode, why, body_indent = _mode(source, tree, cur, language)
    return SyntaxInfo(
        language=language,
        mode=mode,
        why=why,
        body_indent=body_indent,
        braces=language != "python",
        error_free=not tree.root_node.has_error,
        source=source,
        tree=tree,
        cursor=cur,
    )


def inserted_has_error(info: SyntaxInfo, text: str) -> bool:
    """Whether the document with ``text`` inserted at the cursor has a parse error (an incremental parse)."""
    ins = text.encode("utf-8", errors="surrogatepass")
    new = info.source[: info.cursor] + ins + info.source[info.cursor :]
    tree = info.tree.copy()
    end = info.cursor + len(ins)
    start_point = _point(info.source, info.cursor)
    tree.edit(
        start_byte=info.cursor,
        old_end_byte=info.cursor,
        new_end_byte=end,
        start_point=start_point,
        old_end_point=start_point,
        new_end_point=_point(new, end),
    )
    return parse(info.language, new, tree).root_node.has_error


# One thread parses: requests of one document come one after another anyway, and a second thread would
# only contend for the same parser lock.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="syntax")


def submit(key: str, text: str, offset: int, language_id: str | None = None) -> concurrent.futures.Future[SyntaxInfo | None]:
    """``analyze`` on the syntax thread; the future resolves to its result."""
    return _EXECUTOR.submit(analyze, key, text, offset, TREES, language_id)
