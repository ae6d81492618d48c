"""Big documents over stdio: what opening, asking and typing in a 5-50 MB file cost, and whether others wait.

In: document sizes in MB (default 5, 20, 50), the kinds (``py``: a language with a grammar; ``txt``: plain text; ``crlf``),
a model (default ``demo``), keystrokes to time. Out: a Markdown table on stdout, one row per size and kind, from a
fresh ``codellama-lsp --stdio`` each:

- open: ``didOpen`` of the big document until the server answers a ``codellama/documentState`` probe of a small
  document sent right after it (so the open was handled);
- first: the first ``inlineCompletion`` at the end of the big document (the cursor on its last line, the worst
  place for anything that walks the text up to the cursor);
- key p50/max: a keystroke = an incremental ``didChange`` (one character at the cursor) + an ``inlineCompletion``
  there, until its reply (median and worst of ``--keys``);
- other: a keystroke in the big document, then at once a request for a small open document: until the small one's
  reply (it must not wait behind the big one);
- refused: whether every request on the big document was answered with no completion;
- RSS: the server's resident set at the end, and its peak (``VmHWM``).

The text is Python (``def fN(a, b): return a * N + b`` repeated, then a function being typed), the same for every
kind; only the URI and language id differ, and ``crlf`` is the ``.txt`` with CRLF line ends (as Windows editors send). Each figure includes the demo model's own time for the request (a few
ms); the server's log line per request separates handler, pipeline and engine.

Run: ``python bench/bigdoc.py [--sizes 5 20 50] [--kinds txt py crlf] [--keys 5] [--settings '{"contextTokens": 4096}']``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.raw_lsp import RawServer

SMALL = "file:///bench/small.py"


def big_text(mb: float) -> str:
    """About ``mb`` MB of Python, ending in a function whose body is being typed."""
    unit = [f"def f{k}(a, b):\n    return a * {k} + b\n\n\n" for k in range(1000)]
    block = "".join(unit)
    n = max(1, int(mb * 1e6) // len(block))
    return "import os\n\n\n" + block * n + "def main(argv):\n    total = 0\n    "


def end_of(text: str) -> tuple[int, int]:
    return text.count("\n"), len(text) - text.rfind("\n") - 1


def timed(s: RawServer, msg: dict[str, Any], timeout: float) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    s.send(msg)
    reply = s.response(msg["id"], timeout=timeout)
    return time.perf_counter() - t0, reply


def inline(uri: str, line: int, col: int, rid: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "textDocument/inlineCompletion", "params": {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": col}, "context": {"triggerKind": 1}}}  # fmt: skip


def one(mb: float, kind: str, keys: int, model: str, settings: dict[str, Any], timeout: float) -> dict[str, Any]:
    uri = "file:///bench/big-crlf.txt" if kind == "crlf" else f"file:///bench/big.{kind}"
    text = big_text(mb).replace("\n", "\r\n") if kind == "crlf" else big_text(mb)
    line, col = end_of(text)
    ids = iter(range(10**9))
    row: dict[str, Any] = {"size": f"{len(text) / 1e6:.1f} MB", "kind": ".txt, CRLF" if kind == "crlf" else f".{kind}"}
    with RawServer() as s:
        s.initialize(model, {"maxTokens": 8, "timeBudgetMs": 5000, **settings})
        proc = psutil.Process(s.proc.pid)
        s.notify("textDocument/didOpen", {"textDocument": {"uri": SMALL, "languageId": "python", "version": 1,
                                                           "text": "def add(a, b):\n    \n"}})  # fmt: skip
        timed(s, inline(SMALL, 1, 4, "warm"), timeout)  # the model's first request is not the big document's cost
        t0 = time.perf_counter()
        language = "python" if kind == "py" else "plaintext"
        s.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}})
        probe = {"jsonrpc": "2.0", "id": "open", "method": "codellama/documentState", "params": {"uri": SMALL}}
        s.send(probe)
        s.response("open", timeout=timeout)
        row["open"] = time.perf_counter() - t0
        row["first"], reply = timed(s, inline(uri, line, col, "first"), timeout)
        refused = not (reply.get("result") or {}).get("items")
        version, times = 1, []
        for k in range(keys + 1):
            version += 1
            pos = {"line": line, "character": col}
            t0 = time.perf_counter()
            s.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                "contentChanges": [{"range": {"start": pos, "end": pos}, "text": "x"}]})  # fmt: skip
            col += 1
            rid = f"k{next(ids)}"
            s.send(inline(uri, line, col, rid))
            if k < keys:
                reply = s.response(rid, timeout=timeout)
                times.append(time.perf_counter() - t0)
                refused = refused and not (reply.get("result") or {}).get("items")
            else:  # the last keystroke: a small document asks right behind it
                row["other"], _ = timed(s, inline(SMALL, 1, 4, "other"), timeout)
                s.response(rid, timeout=timeout)
        row["key p50"] = statistics.median(times) if times else float("nan")
        row["key max"] = max(times) if times else float("nan")
        row["refused"] = "yes" if refused else "no"
        row["RSS"] = proc.memory_info().rss / 2**20
        with open(f"/proc/{s.proc.pid}/status") as f:
            hwm = next((ln for ln in f if ln.startswith("VmHWM:")), "VmHWM: 0 kB")
        row["RSS peak"] = int(hwm.split()[1]) / 1024
        err = s.stderr()
        row["tracebacks"] = err.count("Traceback")
        s.request("shutdown", timeout=timeout)
        s.notify("exit")
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[5, 20, 50])
    p.add_argument("--kinds", nargs="+", default=["txt", "py", "crlf"], choices=["txt", "py", "crlf"])
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--model", default="demo")
    p.add_argument("--settings", default="{}", help="more initializationOptions (JSON)")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    settings = json.loads(args.settings)
    print(f"load: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f} (1/5/15 min), settings {settings}\n")
    print("| size | kind | open | first | key p50 | key max | other doc | refused | RSS | RSS peak | tracebacks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for mb in args.sizes:
        for kind in args.kinds:
            r = one(mb, kind, args.keys, args.model, settings, args.timeout)
            bad += r["tracebacks"]
            print(
                f"| {r['size']} | {r['kind']} | {r['open']:.2f} s | {r['first']:.2f} s | {r['key p50']:.2f} s | "
                f"{r['key max']:.2f} s | {r['other']:.2f} s | {r['refused']} | {r['RSS']:.0f} MB | {r['RSS peak']:.0f} MB | "
                f"{r['tracebacks']} |",
                flush=True,
            )
    print(f"\nload after: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
