"""Soak: many edits and completion requests against the real ``codellama-lsp --stdio``; memory and stale replies.

In: a model (default ``demo``), how many completion requests (default 10,000), the burst size. Out: a Markdown table
on stdout: requests sent and answered (each exactly once), replies with items, stale replies, the server's RSS after
warm-up and at the end, and a second table of memory slopes: KB per keystroke after warm-up of the RSS, of glibc's
bytes in use, of the engine's kept prompts and of the RSS without them, over all samples after warm-up and over
their last half (flat there: the plateau), read from the server's own ``codellama/memory`` report after each burst.

Typing is simulated in bursts, as an editor sends them: each keystroke is a ``didChange`` (one
character inserted at the cursor, every 40th a newline), a ``codellama/documentState`` probe and an
``inlineCompletion`` request (every 10th, never the last of a burst, cancelled at once with ``$/cancelRequest``); after each burst
the client waits for all replies. A reply is stale when it has items although the document was edited
after its request and the server answered the probe sent after that edit first (so it had the edit
before it replied). The first ``--warmup`` requests are warm-up (model pages, caches, allocator pools).

The document starts longer than the prompt window (``--initial-functions``, default 400 small functions, ~13k
characters, more than ``contextTokens`` 2048 tokens): a document that starts tiny and grows one character per
key makes every prompt longer than the last until it fills the window, and llama.cpp's buffers and our token
lists grow with it - about 1.3 KB per keystroke, which an earlier soak read as a leak (issue 23, item 12).

Where the rest of the growth went (issue 23, item 12): the engine keeps the evaluated prompts of recent places in
host memory (``engines.kept``), up to a budget (64 MiB for the demo model: eight full contexts); the soak's prompts
jump every few lines typed, each jump keeps a copy, and the store takes thousands of keystrokes to fill. The RSS
without the kept prompts is flat after warm-up; with them it grows until the budget is reached, then plateaus.
``--kept-prompts-mib`` passes the server's option (0: none kept), ``--tracemalloc`` runs the server under
``PYTHONTRACEMALLOC=1`` so that its report has Python's heap too (slower).

Run: ``python bench/soak.py`` (a few minutes with the demo model on two cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.lsp_client import server_env
from tests.fixtures.raw_lsp import RawServer

URI = "file:///soak/typing.py"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--burst", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--initial-functions", type=int, default=400, help="functions in the document before typing (0: tiny)")
    p.add_argument("--kept-prompts-mib", type=int, default=None, help="the server's --kept-prompts-mib (default: its own)")
    p.add_argument("--tracemalloc", action="store_true", help="run the server under PYTHONTRACEMALLOC=1 (Python's heap)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", help="e.g. MALLOC_ARENA_MAX=2")
    args = p.parse_args()

    t0 = time.perf_counter()
    server_args = () if args.kept_prompts_mib is None else ("--kept-prompts-mib", str(args.kept_prompts_mib))
    env = {**server_env(), **({"PYTHONTRACEMALLOC": "1"} if args.tracemalloc else {})}
    env.update(kv.split("=", 1) for kv in args.server_env)
    with RawServer(args=server_args, env=env) as s:
        s.initialize(args.model, {"maxTokens": 16, "timeBudgetMs": 1000})
        assert s.statuses()[-1]["state"] == "ready", s.statuses()[-1]
        proc = psutil.Process(s.proc.pid)
        head = "".join(f"def f{k}(a, b):\n    return a * {k} + b\n\n\n" for k in range(args.initial_functions))
        text = "import os\n\n\n" + head + "def main(argv):\n    total = 0\n    "
        line, col = text.count("\n"), len(text) - text.rfind("\n") - 1
        s.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": text}})
        version, ids, edits = 1, (f"soak{i}" for i in range(10**9)), 0  # never RawServer's own numeric ids
        requests: list[tuple[str, int]] = []  # (request id, edits before it)
        probes: list[tuple[str, int]] = []  # (probe id, edits before it)
        rss_warm = rss_max = 0
        samples: list[int] = []
        reports: list[tuple[int, dict[str, Any]]] = []  # (keystrokes so far, codellama/memory)
        trimmed_warm: dict[str, Any] | None = None
        sent = 0
        while sent < args.requests:
            burst: list[str] = []
            for _ in range(min(args.burst, args.requests - sent)):
                ch = "\n" if edits % 40 == 39 else "abcdefghij"[edits % 10]
                version += 1
                edits += 1
                pos = {"line": line, "character": col}
                s.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": version},
                                                    "contentChanges": [{"range": {"start": pos, "end": pos}, "text": ch}]})  # fmt: skip
                line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
                pid = next(ids)
                s.send({"jsonrpc": "2.0", "id": pid, "method": "codellama/documentState", "params": {"uri": URI}})
                probes.append((pid, edits))
                rid = next(ids)
                s.send({"jsonrpc": "2.0", "id": rid, "method": "textDocument/inlineCompletion", "params": {
                    "textDocument": {"uri": URI}, "position": {"line": line, "character": col}, "context": {"triggerKind": 2}}})  # fmt: skip
                if sent % 10 == 4:  # not the last of a burst (that one is answered with text)
                    s.notify("$/cancelRequest", {"id": rid})
                requests.append((rid, edits))
                burst += [pid, rid]
                sent += 1
            for i in burst:
                s.response(i, timeout=120)
            rss = proc.memory_info().rss
            samples.append(rss)
            if sent > args.warmup:
                if trimmed_warm is None:  # the baseline: what is in use once the allocator gave its free memory back
                    trimmed_warm = s.request("codellama/memory", {"trim": True}, timeout=120)["result"]
                reports.append((sent, s.request("codellama/memory", timeout=120)["result"]))
            if sent <= args.warmup:
                rss_warm = rss
            rss_max = max(rss_max, rss)
        elapsed = time.perf_counter() - t0
        # the allocator's free memory given back (glibc malloc_trim): what the RSS kept that nothing used
        trimmed = s.request("codellama/memory", {"trim": True}, timeout=120)["result"]
        order = {
            json.dumps(f["id"]): i for i, f in enumerate(s.frames) if "id" in f and "method" not in f and f["id"] is not None
        }
        answered_once = sum(len(s.responses[json.dumps(r)]) == 1 for r, _ in requests)
        with_items = stale = 0
        probe_by_edit = dict((n, pid) for pid, n in probes)
        for rid, n in requests:
            result = s.responses[json.dumps(rid)][0].get("result")
            if not (result and result.get("items")):
                continue
            with_items += 1
            nxt = probe_by_edit.get(n + 1)  # the probe right after the next edit
            if nxt is not None and order[json.dumps(nxt)] < order[json.dumps(rid)]:
                stale += 1
        s.request("shutdown")
        s.notify("exit")
        code = s.exit_code()
        err = s.stderr()
        tracebacks = err.count("Traceback")
        if tracebacks:
            at = err.index("Traceback")
            print(err[max(0, at - 300) : at + 3000], file=sys.stderr)
        for r, _ in requests:
            if len(s.responses[json.dumps(r)]) != 1:
                print(f"request {r}: {s.responses[json.dumps(r)]}", file=sys.stderr)
    after = samples[len(samples) * args.warmup // max(args.requests, 1) :]
    print(
        "| model | requests | answered once | with items | stale | RSS after warm-up | RSS end | growth | RSS max | time | exit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    mb = 1024 * 1024
    print(
        f"| {args.model} | {len(requests)} | {answered_once} | {with_items} | {stale} | {rss_warm / mb:.1f} MB | "
        f"{samples[-1] / mb:.1f} MB | {(samples[-1] - rss_warm) / mb:+.1f} MB | {rss_max / mb:.1f} MB | {elapsed:.0f} s | {code} |"
    )
    if after:
        print(
            f"\nRSS after warm-up: min {min(after) / mb:.1f} MB, max {max(after) / mb:.1f} MB over {len(after)} samples; tracebacks: {tracebacks}"
        )
    if len(reports) >= 4:
        print()
        print(memory_table(reports))
        if trimmed["rssBytes"] is not None and trimmed_warm is not None:
            # the flat-memory line: RSS less the kept prompts (a cache with a budget), each time after malloc_trim (so
            # free memory the allocator holds, fragmentation, is not counted as growth)
            a = trimmed_warm["rssBytes"] - trimmed_warm["keptPromptBytes"]
            b = trimmed["rssBytes"] - trimmed["keptPromptBytes"]
            n = reports[-1][0] - reports[0][0]
            print(
                f"after malloc_trim at the end: RSS {trimmed['rssBytes'] / mb:.1f} MB "
                f"({(trimmed['rssBytes'] - samples[-1]) / mb:+.1f} MB: free memory the allocator held); "
                f"RSS less kept prompts, trimmed: {a / mb:.1f} MB after warm-up, {b / mb:.1f} MB at the end "
                f"({(b - a) / mb:+.1f} MB, {(b - a) / 1024 / max(n, 1):+.3f} KB per keystroke); kept prompts "
                f"{trimmed['keptPromptBytes'] / mb:.1f} of {trimmed['keptPromptBudget'] / mb:.0f} MiB"
            )
    return 0 if answered_once == len(requests) and stale == 0 and tracebacks == 0 else 1


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (x, y) points (bytes per keystroke)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def memory_table(reports: list[tuple[int, dict[str, Any]]]) -> str:
    """Slopes in KB per keystroke after warm-up (all samples, and their last half: the plateau) of each measure."""
    measures: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "RSS": lambda r: r["rssBytes"],
        "glibc in use": lambda r: r["mallocInUseBytes"],
        "kept prompts": lambda r: r["keptPromptBytes"],
        "RSS without kept prompts": lambda r: r["rssBytes"] - r["keptPromptBytes"] if r["rssBytes"] is not None else None,
        "Python heap": lambda r: r["pythonHeapBytes"],
        "gc objects (count)": lambda r: r["gcObjects"] * 1024,  # shown per keystroke, in objects
    }
    lines = [
        f"| measure (after {reports[0][0]:,} keystrokes) | first | last | KB per keystroke | KB per keystroke, last half |",
        "|---|---|---|---|---|",
    ]
    for name, get in measures.items():
        if get(reports[0][1]) is None:
            continue
        pts = [(k, float(get(r) or 0)) for k, r in reports]
        a, b = pts[0][1], pts[-1][1]
        unit = (lambda v: f"{v / 1024:.0f}") if name.startswith("gc") else (lambda v: f"{v / 2**20:.1f} MB")
        lines.append(f"| {name} | {unit(a)} | {unit(b)} | {slope(pts) / 1024:+.3f} | {slope(pts[len(pts) // 2 :]) / 1024:+.3f} |")
    last = reports[-1][1]
    lines.append(
        f"\nkept prompts at the end: {last['keptPrompts']} copies, {last['keptPromptBytes'] / 2**20:.1f} of "
        f"{last['keptPromptBudget'] / 2**20:.0f} MiB; pending requests {last['pendingRequests']}, asyncio tasks "
        f"{last['asyncioTasks']}, line indexes {last['lineIndexes']}, cache places {last['cachePlaces']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
