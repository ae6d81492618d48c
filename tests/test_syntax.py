"""Syntax-aware post-processing: the syntax at the cursor (tree-sitter, every shipped grammar), each rule of
``postprocess`` with its syntax input on and off, incremental parsing, and the ``rules`` setting."""

from __future__ import annotations

import random

import pytest

from lsp_server import config, pipeline, postprocess, syntax
from lsp_server.context import cursor


def at(key: str, doc: str) -> tuple[syntax.SyntaxInfo, str, int]:
    """Analyze ``doc`` at its ``|`` marker (a fresh tree cache per call)."""
    offset = doc.index("|")
    text = doc[:offset] + doc[offset + 1 :]
    info = syntax.analyze(key, text, offset, syntax.SyntaxTrees())
    assert info is not None
    return info, text, offset


def clean(key: str, doc: str, raw: str, rules: frozenset[str] = postprocess.RULES, truncated: bool = False) -> str | None:
    """``postprocess.clean`` at the ``|`` of ``doc`` as the pipeline calls it."""
    info, text, offset = at(key, doc)
    cur = cursor(text, offset)
    return postprocess.clean(raw, cur.line_prefix, cur.line_suffix, text[offset:], truncated, info, rules)


# ---- the syntax at the cursor, per language -------------------------------------------------------------
MODES = [
    # (file, document with | at the cursor, mode, why)
    ("a.py", "x = foo(a, |\n    b)\n", "line", "argument_list"),
    ("a.py", "def f(x):\n    |\n\nprint(1)\n", "block", "empty body"),
    ("a.py", "s = 'ab|c'\n", "line", "string_content"),
    ("a.py", "if x and |\n    y:\n    pass\n", "line", "condition"),
    ("a.py", "def f(x):\n    y = 1\n    |\n    return y\n", "any", "in body"),
    ("a.js", "function f(x) {\n  |\n}\n", "block", "empty body"),
    ("a.js", "const s = `a ${b} |c`;\n", "line", "string_fragment"),
    ("a.jsx", "const a = <div onClick={|}>hi</div>;\n", "line", "jsx_expression"),
    ("a.jsx", "const a = <div>\n  |\n</div>;\n", "any", ""),
    ("a.ts", "function f(x: number): number {\n  |\n}\n", "block", "empty body"),
    ("a.ts", "const y = g(x, |);\n", "line", "arguments"),
    ("a.tsx", "const a = <div>{|}</div>;\n", "line", "jsx_expression"),
    ("a.go", "package m\nfunc f() error {\n\tif err != nil {\n\t\t|\n\t}\n\treturn nil\n}\n", "block", "empty body"),
    ("a.go", 'package m\nfunc f() {\n\tfmt.Println("a", |)\n}\n', "line", "argument_list"),
    ("a.rs", "fn f() {\n    |\n}\n", "block", "empty body"),
    ("a.rs", 'fn f() {\n    let s = "ab|";\n}\n', "line", "string_literal"),
    ("a.c", "int f(int a) {\n  return g(a, |);\n}\n", "line", "argument_list"),
    ("a.c", "int f(void) {\n|\n}\n", "block", "empty body"),
    ("a.cpp", "int f(int a) {\n  if (a > |) {}\n}\n", "line", "condition_clause"),
    ("A.java", "class A {\n  void f() {\n    |\n  }\n}\n", "block", "empty body"),
    ("A.java", 'class A {\n  String s = "x|";\n}\n', "line", "string_literal"),
]


@pytest.mark.parametrize("key,doc,mode,why", MODES, ids=[f"{m[0]}:{m[3] or m[2]}" for m in MODES])
def test_mode_at_cursor(key: str, doc: str, mode: str, why: str) -> None:
    info, _, _ = at(key, doc)
    assert (info.mode, info.why) == (mode, why)


def test_languages_without_a_grammar_fall_back() -> None:
    assert syntax.language_for("file:///x/notes.txt") is None
    assert syntax.language_for("untitled:Untitled-1") is None
    assert syntax.analyze("a.lua", "x = 1", 0) is None
    assert syntax.language_for("file:///x/App.TSX") == "tsx"


def test_the_editors_language_id_comes_before_the_extension() -> None:
    """Issue 24 item 15: an ``untitled:`` buffer, or a file whose name does not tell the language, gets the
    grammar of its languageId (VS Code) / filetype (Neovim)."""
    assert syntax.language_for("untitled:Untitled-1", "python") == "python"
    assert syntax.language_for("file:///x/build_script", "python") == "python"
    assert syntax.language_for("file:///x/App.jsx", "typescriptreact") == "tsx"
    assert syntax.language_for("file:///x/a.py", "plaintext") == "python", "an id we have no grammar for: the extension"
    info = syntax.analyze("untitled:Untitled-7", "x = foo(a, \n    b)\n", 11, language_id="python")
    assert info is not None and info.language == "python" and info.mode == "line"


# ---- rule: mode (one line inside arguments/conditions/strings, even at the end of a line) --------------
def test_mode_rule_keeps_one_line_inside_call_args() -> None:
    doc = "x = foo(a, |\n    b)\n"
    assert clean("a.py", doc, "c,\n    d,\n") == "c,"
    # without the syntax mode, the end of a line lets the block through
    assert clean("a.py", doc, "c,\n    d,\n", postprocess.RULES - {"mode"}) == "c,\n    d,"


ARGS_AT_LINE_END = [
    ("a.py", "x = foo(a, |\n    b)\n"),
    ("a.js", "f(a, |\n  b);\n"),
    ("a.ts", "const y = g(x, |\n  z);\n"),
    ("a.tsx", "const y = g(x, |\n  z);\n"),
    ("a.go", "package m\nfunc f() {\n\tg(a, |\n\t\tb)\n}\n"),
    ("a.rs", "fn f() {\n    g(a, |\n      b);\n}\n"),
    ("a.c", "int f(void) {\n  g(a, |\n    b);\n}\n"),
    ("a.cpp", "int f() {\n  g(a, |\n    b);\n}\n"),
    ("A.java", "class A {\n  void f() {\n    g(a, |\n      b);\n  }\n}\n"),
]


@pytest.mark.parametrize("key,doc", ARGS_AT_LINE_END, ids=[k for k, _ in ARGS_AT_LINE_END])
def test_mode_rule_in_each_language(key: str, doc: str) -> None:
    raw = "c,\n          d,"  # indented deeper than the cursor line: indentation alone would keep it
    assert clean(key, doc, raw) == "c,"
    assert clean(key, doc, raw, postprocess.RULES - {"mode"}) == raw


def test_mode_rule_one_line_in_a_string_and_a_condition() -> None:
    assert clean("a.js", "const s = `a ${b} |c`;\n", "x\ny") == "x"
    assert clean("a.py", "if x and |\n    y:\n    pass\n", "z or\n    w") == "z or"


# ---- rule: nodeEnd (the completion ends where the body it completes ends) ------------------------------
def test_node_end_after_def_with_empty_body() -> None:
    doc = "def f(x):\n|\n\nprint(1)\n"  # cursor at column 0: indentation alone cannot tell where the body ends
    raw = "    return x\nprint(2)\n"
    assert clean("a.py", doc, raw) == "    return x"
    assert clean("a.py", doc, raw, postprocess.RULES - {"nodeEnd"}) == "    return x\nprint(2)"
    # a cursor indented to the header's level may go on after the body: its indentation decides
    doc = "def g():\n    if x:\n    |\n"
    assert clean("a.py", doc, "    y()\n    return 1\nz = 2") == "    y()\n    return 1"


def test_node_end_go_if_err_not_nil() -> None:
    doc = "package m\nfunc f() error {\n\tif err != nil {\n|\n\t}\n\treturn nil\n}\n"
    raw = "\t\treturn err\n\t}\n\treturn nil\n}\n"
    assert clean("a.go", doc, raw) == "\t\treturn err"


@pytest.mark.parametrize(
    "key,doc,raw,want",
    [
        ("a.js", "function f(x) {\n|\n}\n", "  return x;\n}\n\nfunction g() {}\n", "  return x;"),
        ("a.ts", "function f(x: number): number {\n|\n}\n", "  return x * 2;\n}\n", "  return x * 2;"),
        ("a.c", "int f(void) {\n|\n}\n", "  return 1;\n}\nint g(void) { return 2; }\n", "  return 1;"),
        ("a.cpp", "int f() {\n  if (x) {\n|\n  }\n}\n", "    y();\n  }\n}\n", "    y();"),
        ("a.rs", "fn f() -> i32 {\n|\n}\n", "    1\n}\n\nfn g() {}\n", "    1"),
        ("A.java", "class A {\n  void f() {\n|\n  }\n}\n", "    g();\n  }\n}\n", "    g();"),
    ],
)
def test_node_end_before_a_closing_brace(key: str, doc: str, raw: str, want: str) -> None:
    assert clean(key, doc, raw) == want


def test_node_end_stops_generation_early() -> None:
    """The engine's stop rule fires as soon as the body is closed, not at EOT or the token limit."""
    doc = "package m\nfunc f() error {\n\tif err != nil {\n|\n\t}\n\treturn nil\n}\n"
    info, text, offset = at("a.go", doc)
    rule = pipeline.stop_rule(cursor(text, offset), info)
    assert not rule("\t\treturn err\n")
    assert rule("\t\treturn err\n\t}")
    off = pipeline.stop_rule(cursor(text, offset), info, postprocess.RULES - {"nodeEnd", "repetition"})
    assert not off("\t\treturn err\n\t}")


# ---- rule: repetition ------------------------------------------------------------------------------------
def test_repetition_guard_lines_and_ngrams() -> None:
    doc = "def f(x):\n    y = 0\n|\n"
    raw = "    y += 1\n    y += 1\n    y += 1\n    y += 1\n"
    assert clean("a.py", doc, raw) == "    y += 1"
    assert clean("a.py", doc, raw, postprocess.RULES - {"repetition"}) == raw.rstrip()
    assert postprocess.clean("foo(foo(foo(foo(foo(x", "", "", "") == "foo("
    # a legitimate repeated closer is not a loop
    assert postprocess.clean("}\n}\n}\n", "", "", "") == "}\n}\n}"
    # without a grammar the guard still applies (it needs no syntax)
    assert postprocess.clean("a = 1\na = 1\na = 1\n", "", "", "") == "a = 1"


def test_a_loop_mid_line_counts_as_cut_off() -> None:
    """The line a loop starts in is unfinished: dropped when whole lines precede it, never closed."""
    doc = "def f(x):\n    if x:\n        return 1\n|\n    return 2\n"
    raw = "    else:\n        return [(-1, 2, 2, 3, 3, 3, 3"
    assert clean("a.py", doc, raw) == "    else:"
    # alone on its line it is kept, and balance does not close it into a finished-looking expression
    got = clean("a.py", "x = |\n", "f(2, 2, 2, 2, 2, 2")
    assert got is not None and got.startswith("f(2") and ")" not in got


# ---- rule: balance ---------------------------------------------------------------------------------------
def test_balance_drops_a_closer_the_suffix_already_has() -> None:
    doc = "foo(\n    a,\n    |\n)\n"
    assert clean("a.py", doc, "b)") == "b"
    assert clean("a.py", doc, "b)", postprocess.RULES - {"balance"}) is None  # parseCheck drops it instead
    assert clean("a.py", doc, "b)", postprocess.RULES - {"balance", "parseCheck"}) == "b)"


SUFFIX_CLOSES = [
    ("a.js", "g(\n  a,\n  |\n);\n", "b)", "b"),
    ("a.ts", "g(\n  a,\n  |\n);\n", "b)", "b"),
    ("a.go", "package m\nfunc f() {\n\tg(\n\t\ta,\n\t\t|\n\t)\n}\n", "b,)", "b,"),
    ("a.rs", "fn f() {\n    g(\n        a,\n        |\n    );\n}\n", "b)", "b"),
    ("a.c", "int f(void) {\n  g(\n    a,\n    |\n  );\n}\n", "b)", "b"),
    ("a.cpp", "int f() {\n  g(\n    a,\n    |\n  );\n}\n", "b)", "b"),
    ("A.java", "class A {\n  void f() {\n    g(\n      a,\n      |\n    );\n  }\n}\n", "b)", "b"),
    # the document has an error until the completion fills it: the variant that removes it is taken
    ("a.rs", "fn f() {\n    let v = |;\n}\n", "g(xs", "g(xs)"),
    ("a.c", "int x = |;\n", "f(1, g(2)", "f(1, g(2))"),
    ("A.java", "class A {\n  int x = |;\n}\n", "f(1", "f(1)"),
    ("a.go", "package m\nvar s = |\n", "f(xs", "f(xs)"),
]


@pytest.mark.parametrize("key,doc,raw,want", SUFFIX_CLOSES, ids=[f"{c[0]}:{c[2]}" for c in SUFFIX_CLOSES])
def test_balance_in_each_language(key: str, doc: str, raw: str, want: str) -> None:
    assert clean(key, doc, raw) == want


def test_balance_closes_what_the_suffix_does_not() -> None:
    assert clean("a.py", "x = |\nprint(x)\n", "len(xs") == "len(xs)"
    assert clean("a.js", "const s = |\n", '"abc') == '"abc"'


# ---- rule: parseCheck ------------------------------------------------------------------------------------
def test_parse_check_drops_a_completion_that_breaks_the_document() -> None:
    doc = "def f(x):\n    |\n"
    assert clean("a.py", doc, "return x +") is None
    assert clean("a.py", doc, "return x +", postprocess.RULES - {"parseCheck"}) == "return x +"
    assert clean("a.py", doc, "return x + 1") == "return x + 1"


BROKEN_BODY = [
    ("a.js", "function f(x) {\n  |\n}\n", "return x +", "return x;"),
    ("a.ts", "function f(x: number): number {\n  |\n}\n", "return x +", "return x;"),
    ("a.go", "package m\nfunc f(x int) int {\n\t|\n}\n", "return x +", "return x"),
    ("a.rs", "fn f(x: i32) -> i32 {\n    |\n}\n", "x +", "x"),
    ("a.c", "int f(int x) {\n  |\n}\n", "return x +", "return x;"),
    ("a.cpp", "int f(int x) {\n  |\n}\n", "return x +", "return x;"),
    ("A.java", "class A {\n  int f(int x) {\n    |\n  }\n}\n", "return x +", "return x;"),
]


@pytest.mark.parametrize("key,doc,bad,good", BROKEN_BODY, ids=[c[0] for c in BROKEN_BODY])
def test_parse_check_in_each_language(key: str, doc: str, bad: str, good: str) -> None:
    assert clean(key, doc, bad) is None
    assert clean(key, doc, bad, postprocess.RULES - {"parseCheck"}) == bad
    assert clean(key, doc, good) == good


def test_parse_check_jsx_unclosed_tag() -> None:
    doc = "const a = <div>\n  |\n</div>;\n"
    assert clean("a.jsx", doc, "<span>hi</span>\n</div>;") == "<span>hi</span>"
    assert clean("a.jsx", doc, "<span>hi") is None


def test_parse_check_leaves_a_broken_document_alone() -> None:
    """A document that already has errors (mid-typing) cannot judge a completion: it is kept."""
    doc = "def f(x:\n    |\n"
    info, _, _ = at("a.py", doc)
    assert not info.error_free
    assert clean("a.py", doc, "return x +") == "return x +"


# ---- incremental parsing ---------------------------------------------------------------------------------
def test_incremental_parse_matches_a_full_parse() -> None:
    rng = random.Random(0)
    text = "def f(x):\n    return [x, (x + 1)]\n\nclass A:\n    s = 'q'\n" * 20
    trees = syntax.SyntaxTrees()
    trees.tree("a.py", "python", text.encode())
    pieces = ["(", ")", "x", "\n", "    ", "'", ":", "def g():", ""]
    for _ in range(200):
        a = rng.randrange(len(text) + 1)
        b = min(len(text), a + rng.randrange(4))
        text = text[:a] + rng.choice(pieces) + text[b:]
        got = trees.tree("a.py", "python", text.encode())
        assert str(got.root_node) == str(syntax.parse("python", text.encode()).root_node)


def test_incremental_parse_handles_multibyte_text() -> None:
    trees = syntax.SyntaxTrees()
    text = "s = 'héllo 😀'\nt = 1\n"
    trees.tree("a.py", "python", text.encode())
    text = text.replace("😀", "😀中(")
    got = trees.tree("a.py", "python", text.encode())
    assert str(got.root_node) == str(syntax.parse("python", text.encode()).root_node)
    info = syntax.analyze("a.py", text, text.index("中") + 1, trees)
    assert info is not None and info.mode == "line"  # still inside the string


# ---- the rules setting -----------------------------------------------------------------------------------
def test_rules_setting() -> None:
    s, problems = config.parse({"rules": {"balance": False}})
    assert not problems and s.rule_set == postprocess.RULES - {"balance"}
    s, problems = config.parse({"rules": {"bogus": True}})
    assert s.rule_set == postprocess.RULES and "bogus" in problems[0]
