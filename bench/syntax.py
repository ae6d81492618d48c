"""Cost of the syntax rules per completion request on a 5,000-line file (goal: <= 2 ms p50 extra).

In: nothing (the files are built from the standard library: ``argparse.py`` + ``typing.py`` for Python,
and a generated 5,000-line JavaScript file). Out: a Markdown table on stdout (``--json`` for the numbers).

What a request pays, replayed keystroke by keystroke (each keystroke inserts one character of
``value = compute(alpha, beta) + 1`` and a new line at a cursor that moves through a function body), once
with brackets auto-closed as editors do by default (typing ``(`` inserts ``()``, typing ``)`` steps over it)
and once typed as they are (the document has an unclosed ``(`` for half of the keystrokes, and
tree-sitter's error recovery then re-parses much more of the file):

- ``analyze``: ``syntax.analyze`` on the new text - the text diff against the last tree's text, the
  ``Tree.edit``, the incremental reparse, the mode at the cursor (what the pipeline runs before submitting);
- ``check``: ``syntax.inserted_has_error`` for one 30-character candidate (what ``postprocess`` runs after);
- ``extra``: both, i.e. the time a request spends on syntax;
- ``full parse``: a from-scratch parse of the same text, for comparison (what no request pays).

Run: ``python bench/syntax.py``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsp_server import syntax

LINES = 5000


def python_file() -> str:
    import argparse as ap

    lines = (inspect.getsource(ap) + "\n" + inspect.getsource(typing)).split("\n")
    # cut at a top-level line so the file still parses
    n = LINES
    while lines[n].startswith((" ", "\t", ")", "]", "}")) or not lines[n].strip():
        n += 1
    return "\n".join(lines[:n]) + "\n"


def js_file() -> str:
    out = []
    i = 0
    while len(out) < LINES:
        out += [
            f"function f{i}(a, b) {{",
            f"  const x = [a, b, {i}].map((v) => v * 2);",
            "  if (x.length > 2) {",
            f"    return x.reduce((s, v) => s + v, {i});",
            "  }",
            "  return `n=${a}`;",
            "}",
            "",
        ]
        i += 1
    return "\n".join(out[:LINES]) + "\n"


def replay(key: str, text: str, anchor: str, keystrokes: int, autoclose: bool) -> dict[str, float]:
    trees = syntax.SyntaxTrees()
    cur = text.index(anchor) + len(anchor)
    syntax.analyze(key, text, cur, trees)  # the first request parses the whole file
    typed = "value = compute(alpha, beta) + 1\n        "
    analyze, check, full = [], [], []
    for k in range(keystrokes):
        ch = typed[k % len(typed)]
        if autoclose and ch == ")" and text[cur] == ")":
            pass  # typing over the closer the editor inserted
        else:
            # an editor that auto-closes brackets inserts "()" for "(" (VS Code's default)
            text = text[:cur] + (ch + ")" if autoclose and ch == "(" else ch) + text[cur:]
        cur += 1
        t0 = time.perf_counter()
        info = syntax.analyze(key, text, cur, trees)
        t1 = time.perf_counter()
        syntax.inserted_has_error(info, "result = helper(value, 3)  # ok")
        t2 = time.perf_counter()
        analyze.append((t1 - t0) * 1e3)
        check.append((t2 - t1) * 1e3)
        if k % 10 == 0:
            t3 = time.perf_counter()
            syntax.parse(info.language, info.source)
            full.append((time.perf_counter() - t3) * 1e3)
    extra = [a + c for a, c in zip(analyze, check, strict=True)]

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    return {
        "lines": text.count("\n"),
        "keystrokes": keystrokes,
        "analyze_p50_ms": statistics.median(analyze),
        "check_p50_ms": statistics.median(check),
        "extra_p50_ms": statistics.median(extra),
        "extra_p95_ms": q(extra, 0.95),
        "full_parse_p50_ms": statistics.median(full),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keystrokes", type=int, default=300)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    runs = {}
    for auto in (True, False):
        how = "brackets auto-closed" if auto else "brackets typed"
        runs[f"Python (argparse.py + typing.py), {how}"] = replay(
            "bench.py", python_file(), "def _get_values(self, action, arg_strings):\n", args.keystrokes, auto
        )
        runs[f"JavaScript (generated), {how}"] = replay("bench.js", js_file(), "function f300(a, b) {\n", args.keystrokes, auto)
    print("| file, typing | lines | analyze p50 ms | check p50 ms | extra p50 ms | extra p95 ms | full parse p50 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in runs.items():
        print(
            f"| {name} | {r['lines']} | {r['analyze_p50_ms']:.2f} | {r['check_p50_ms']:.2f} | {r['extra_p50_ms']:.2f} | "
            f"{r['extra_p95_ms']:.2f} | {r['full_parse_p50_ms']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
