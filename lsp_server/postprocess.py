"""Raw model text -> the text the editor shows at the cursor, or nothing.

In: the decoded middle the model generated (the engine already stopped at EOT, the token limit, the time
budget or ``end``), the cursor's surroundings (the text of the cursor line before and after the cursor,
and the suffix window), and, for languages with a tree-sitter grammar, the ``syntax.SyntaxInfo`` at the
cursor. Out: a string to insert at the cursor, or ``None`` when nothing useful is left.

Rules, in order (the syntax rules are named; each can be switched off with the ``rules`` setting, and
``python -m lsp_server.eval --ablate`` measures each one on and off):

1. Cut at a literal end marker the model may spell out instead of emitting EOT (``<EOT>``).
2. One line or a block. Mid-line (non-blank text after the cursor on its line) the completion is one
   line. ``mode``: so it is where the syntax says the cursor is inside a string, a comment, an argument
   or parameter list, a subscript or a condition, even at the end of a line.
3. Where the completion ends (``end``, also the engine's early stop, so generation stops as soon as the
   rest would be cut): at the first line after the first that is indented less than the cursor line
   (tabs count as 4 columns). ``nodeEnd``: with the cursor at column 0, the syntax supplies the
   indentation of the Python body it is in (or that it opens: the header's indentation + 1), and in
   brace languages a line starting
   with a bracket that closes one opened before the cursor ends the body. ``repetition``: a run of 1-4
   lines repeated three times in a row, or a 3+ character piece of a line repeated four times, is cut
   after its first copy (a small model stuck in a loop).
4. A multi-line completion whose generation was cut off (token limit or time budget, or a loop cut by
   ``repetition`` mid-line) ends in a partial line (``return os.path.``): drop that line when complete
   lines come before it, as ghost text that stops mid-expression is worse than one line less.
5. Drop what duplicates the suffix: a completion line equal to the first non-blank line after the
   cursor line (the model re-typing existing code), and characters at the end that repeat the start of
   the text after the cursor (a closing bracket that is already there).
6. ``balance``: when the document with the completion inserted does not parse but would with the
   completion's surplus closing brackets/quotes removed, or with its unclosed brackets/quotes closed
   (the suffix does not close them; not for a line cut off by the token limit or a loop), take that variant.
7. ``parseCheck``: drop a completion that turns a document without parse errors into one with errors.
8. Never return whitespace-only text.
"""

from __future__ import annotations

import re

from . import syntax as syntax_mod
from .syntax import SyntaxInfo

EOT_TEXT = "<EOT>"
TAB_WIDTH = 4
RULES = frozenset({"mode", "nodeEnd", "repetition", "balance", "parseCheck"})
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_REPEAT_IN_LINE = re.compile(r"(.{3,}?)\1{3,}")
MAX_SCAN = 400


def indent(line: str) -> int:
    ws = line[: len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(TAB_WIDTH))


def _overlap(text: str, following: str) -> int:
    """Length of the longest end of ``text`` that equals the start of ``following``."""
    for k in range(min(len(text), len(following)), 0, -1):
        if text.endswith(following[:k]):
            return k
    return 0


def scan(text: str, language: str | None) -> tuple[list[tuple[int, str]], list[int], str | None]:
    """Brackets of ``text`` outside strings and comments, read left to right.

    Out: the openers left unclosed (position, char), the positions of closers that close something opened
    before ``text`` (underflow), and the quote of a string left open at the end (or None). Lexical and
    approximate (no escapes across lines, no nested template strings); the parse check has the last word.
    """
    quotes = "\"'`" if language not in ("rust", "python") else ("\"'" if language == "python" else '"')
    comment = "#" if language == "python" else "//"
    stack: list[tuple[int, str]] = []
    under: list[int] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 1
            elif ch == quote or (ch == "\n" and quote != "`"):
                quote = None
        elif text.startswith(comment, i):
            j = text.find("\n", i)
            i = len(text) if j < 0 else j
            continue
        elif ch in quotes:
            quote = ch
        elif ch in _OPEN:
            stack.append((i, ch))
        elif ch in _CLOSE:
            if stack and stack[-1][1] == _CLOSE[ch]:
                stack.pop()
            elif not stack:
                under.append(i)
        i += 1
    return stack, under, quote


def single_line(line_suffix: str, info: SyntaxInfo | None, rules: frozenset[str] = RULES) -> bool:
    return bool(line_suffix.strip()) or ("mode" in rules and info is not None and info.mode == "line")


def end(
    raw: str,
    line_prefix: str,
    line_suffix: str,
    info: SyntaxInfo | None = None,
    rules: frozenset[str] = RULES,
    thorough: bool = False,
) -> int | None:
    """Where in ``raw`` the completion ends for a structural reason (rules 2-3), or None: not (yet).

    The engine's early stop is ``end(raw_so_far) is not None`` (called per token: cheap checks);
    ``clean`` cuts ``raw`` there, with ``thorough`` (a repetition anywhere in a line, not only at its end).
    """
    cuts: list[int] = []
    if single_line(line_suffix, info, rules):
        i = raw.find("\n")
        if i >= 0:
            cuts.append(i)
    else:
        base = indent(line_prefix)
        syntactic = info is not None and "nodeEnd" in rules
        if syntactic and info is not None and info.body_indent is not None and not line_prefix:
            # a cursor at column 0 says nothing about the block; an indented one is where the user wants
            # to be (at a header's own indentation the completion may well go on after the body)
            base = info.body_indent
        pos = raw.find("\n") + 1
        while pos > 0:
            nxt = raw.find("\n", pos)
            line = raw[pos : nxt if nxt >= 0 else len(raw)]
            if line.strip() and indent(line) < base:
                cuts.append(pos - 1)
                break
            pos = nxt + 1
        if syntactic and info is not None and info.braces:
            _, under, _ = scan(raw, info.language)
            if under:
                at = under[0]
                line_start = raw.rfind("\n", 0, at) + 1
                cuts.append(line_start - 1 if line_start > 0 and not raw[line_start:at].strip() else at)
    if "repetition" in rules:
        cut = _repetition(raw, thorough)
        if cut is not None:
            cuts.append(cut)
    return min(cuts) if cuts else None


def _repetition(raw: str, thorough: bool = False) -> int | None:
    """Where a loop starts repeating (after its first copy), or None: the earliest of a run of 1-4 complete
    lines repeated three times in a row and a 3+ character piece of a line (with a letter or digit in it)
    repeated four times in a row."""
    lines = raw.split("\n")[:-1]  # complete lines only: the last one may still grow
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln) + 1)
    for i in range(len(lines)):
        for k in range(1, 5):
            block = lines[i : i + k]
            if i + 3 * k > len(lines) or not any(len(ln.strip()) > 1 for ln in block):
                continue
            if lines[i + k : i + 2 * k] == block and lines[i + 2 * k : i + 3 * k] == block:
                return starts[i + k] - 1
    # within a line. While generating (per token) only the end of the raw text is checked: a run is seen
    # as soon as it ends a copy, and that costs microseconds; ``clean`` (once per candidate) also searches
    # each line (the lazy pattern is quadratic in the length searched: at most MAX_SCAN characters).
    start = 0
    for line in raw.split("\n"):
        if thorough:
            m = _REPEAT_IN_LINE.search(line, 0, MAX_SCAN)
            at = m.start() + len(m.group(1)) if m and any(c.isalnum() for c in m.group(1)) else None
        else:
            at = _run_at_end(line)
        if at is not None:
            return start + at
        start += len(line) + 1
    return None


def _run_at_end(line: str) -> int | None:
    """Where the second copy starts of a 3+ character unit (with a letter or digit) that ``line`` ends
    with four or more times in a row, or None."""
    n = len(line)
    for u in range(3, n // 4 + 1):
        unit = line[n - u :]
        if line.endswith(unit * 4) and any(c.isalnum() for c in unit):
            k = 4
            while line.endswith(unit * (k + 1)):
                k += 1
            return n - (k - 1) * u
    return None


def clean(
    raw: str,
    line_prefix: str,
    line_suffix: str,
    suffix: str,
    truncated: bool = False,
    info: SyntaxInfo | None = None,
    rules: frozenset[str] = RULES,
) -> str | None:
    """Apply the module's rules to ``raw``; ``suffix`` starts at the cursor (so it begins with line_suffix).

    ``truncated``: generation stopped at the token limit or the time budget, not at EOT or a rule.
    ``info``: the syntax at the cursor (None: indentation rules only).
    """
    text = raw
    cut = text.find(EOT_TEXT)
    if cut >= 0:
        text = text[:cut]
    stop = end(text, line_prefix, line_suffix, info, rules, thorough=True)
    if stop is not None:
        # what comes after the end does not matter, unless the end is a loop starting mid-line: then the
        # line it starts in is as unfinished as one cut off by the token limit (rule 4)
        truncated = "repetition" in rules and _repetition(text, True) == stop and not text.startswith("\n", stop)
        text = text[:stop]
    if single_line(line_suffix, info, rules):
        text = text.split("\n", 1)[0]
        text = text[: len(text) - _overlap(text, line_suffix)]
    else:
        lines = text.split("\n")
        after_cursor_line = suffix[len(line_suffix) :].lstrip("\n")
        next_code = next((ln for ln in after_cursor_line.split("\n") if ln.strip()), "")
        kept = [lines[0]]
        for ln in lines[1:]:
            if ln.strip() and next_code and ln.rstrip() == next_code.rstrip():
                truncated = False
                break
            kept.append(ln)
        if truncated and len(kept) > 1 and kept[-1].strip():
            kept.pop()
            truncated = False  # the lines left are whole
        text = "\n".join(kept).rstrip()
    if not text.strip():
        return None
    if info is not None and ("balance" in rules or "parseCheck" in rules):
        return _checked(text, info, rules, truncated)
    return text


def _checked(text: str, info: SyntaxInfo, rules: frozenset[str], truncated: bool) -> str | None:
    """Rules 6 and 7: a completion whose insertion parses (balanced if need be), or None. In a document
    with errors already (mid-typing) a variant that removes them all is taken, and nothing is dropped.
    ``truncated``: the text ends where generation was cut off (or a loop began), so its open brackets are
    not closed for it: that would make an unfinished expression look finished."""
    if not syntax_mod.inserted_has_error(info, text):
        return text
    if "balance" in rules:
        for variant in _balanced(text, info.language, close=not truncated):
            if variant.strip() and not syntax_mod.inserted_has_error(info, variant):
                return variant
    return None if "parseCheck" in rules and info.error_free else text


def _balanced(text: str, language: str, close: bool = True) -> list[str]:
    """Variants of ``text``: its surplus closing brackets/quotes taken off the end, or (``close``) its open
    ones closed."""
    variants = []
    trimmed = text
    for _ in range(3):
        trimmed = trimmed.rstrip()
        if not trimmed or trimmed[-1] not in ")]}\"'`":
            break
        trimmed = trimmed[:-1]
        variants.append(trimmed)
    stack, _, quote = scan(text, language)
    if close and (stack or quote) and "\n" not in text:
        variants.append(text + (quote or "") + "".join(_OPEN[ch] for _, ch in reversed(stack)))
    return variants
