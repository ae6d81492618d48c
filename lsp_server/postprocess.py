"""Raw model text -> the text the editor shows at the cursor, or nothing.

In: the decoded middle the model generated (the engine already stopped at EOT, the token limit or the
time budget) and the cursor's surroundings: the text of the cursor line before and after the cursor,
and the suffix window. Out: a string to insert at the cursor, or ``None`` when nothing useful is left.

Rules, in order:

1. Cut at a literal end marker the model may spell out instead of emitting EOT (``<EOT>``).
2. Mid-line (non-blank text after the cursor on its line): keep only the first line; the user is
   completing inside an expression, and a newline would split their line.
3. Otherwise keep whole lines while they stay inside the cursor's block: stop at the first non-blank
   line indented less than the cursor line (tabs count as 4 columns, like the editor default).
4. A multi-line completion whose generation was cut off (token limit or time budget) ends in a partial
   line (``return os.path.``): drop that line when complete lines come before it, as ghost text that
   stops mid-expression is worse than one line less.
5. Drop what duplicates the suffix: a completion line equal to the first non-blank line after the
   cursor line (the model re-typing existing code), and characters at the end that repeat the start of
   the text after the cursor (a closing bracket that is already there).
6. Never return whitespace-only text.
"""

from __future__ import annotations

EOT_TEXT = "<EOT>"
TAB_WIDTH = 4


def indent(line: str) -> int:
    ws = line[: len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(TAB_WIDTH))


def _overlap(text: str, following: str) -> int:
    """Length of the longest end of ``text`` that equals the start of ``following``."""
    for k in range(min(len(text), len(following)), 0, -1):
        if text.endswith(following[:k]):
            return k
    return 0


def clean(raw: str, line_prefix: str, line_suffix: str, suffix: str, truncated: bool = False) -> str | None:
    """Apply the module's rules to ``raw``; ``suffix`` starts at the cursor (so it begins with line_suffix).

    ``truncated``: generation stopped at the token limit or the time budget, not at EOT or a rule.
    """
    text = raw
    cut = text.find(EOT_TEXT)
    if cut >= 0:
        text = text[:cut]
    if line_suffix.strip():
        text = text.split("\n", 1)[0]
        text = text[: len(text) - _overlap(text, line_suffix)]
        return text if text.strip() else None

    lines = text.split("\n")
    base = indent(line_prefix)
    after_cursor_line = suffix[len(line_suffix) :].lstrip("\n")
    next_code = next((ln for ln in after_cursor_line.split("\n") if ln.strip()), "")
    kept = [lines[0]]
    cut_short = truncated  # does the last kept line end where generation was cut off?
    for ln in lines[1:]:
        if ln.strip():
            if indent(ln) < base or (next_code and ln.rstrip() == next_code.rstrip()):
                cut_short = False
                break
        kept.append(ln)
    if cut_short and len(kept) > 1 and kept[-1].strip():
        kept.pop()
    text = "\n".join(kept).rstrip()
    if not text.strip():
        return None
    return text
