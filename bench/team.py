"""Team load: K editors typing at once against one llama-server, through K codellama-lsp processes.

In: a model (``demo`` by default, or ``micro`` / a GGUF path), the K values, keystrokes per editor. Out: a Markdown
table on stdout (``--json FILE`` also writes the rows).

For each K a fresh ``llama-server`` runs the model with K slots (``--parallel K``, continuous batching, the same
context per slot), and K simulated editors type at once, each in its own ``codellama-lsp --engine llama-server``
process driven over stdio by a real LSP client. An editor types real standard-library code: its file is open with
the lines it is about to write removed, and it types them character by character with a typist's pauses (a
seeded 60-200 ms per key, longer after a word or a line) after one request when the cursor lands (its time is
the "first request" column, not in the percentiles); every keystroke sends ``didChange`` and an automatic
``inlineCompletion``, and a keystroke that comes before the previous answer cancels it (``$/cancelRequest``), as
VS Code does. Rows:

- ``own files``: each editor its own file; llama-server picks each request's slot by prompt similarity;
- ``own files, slot i``: editor i pinned to slot i (``--slot i``; needs someone to hand out the numbers);
- ``shared file``: all editors in one file, each at its own place a few lines apart (prompts that share most
  text), the server picks the slots;
- ``/infill direct``: no codellama-lsp; each editor calls llama-server's ``/infill`` itself with llama.vscode's
  request shape (text prefix/suffix, ``cache_prompt``, ``t_max_prompt_ms``/``t_max_predict_ms``), on the same
  keystrokes and the same files as ``own files``.

Columns: keystrokes answered (not cancelled by the next one), p50/p95 latency from the request to its answer,
tokens per second generated for answered requests (all editors) and, from llama-server's ``/metrics``, all the
tokens it generated and evaluated per second (cancelled requests included), and per-editor KV reuse of the
answered requests (prompt tokens served from the slot's cache / prompt tokens; min-max over editors), from each
process's log or /infill's ``timings``.

Run: ``python bench/team.py --model demo --k 1,2,4,8 --keys 40``. On the 2-core CI machine the editors' own
processes compete with the server for the CPU; docs/deployment.md says how to read the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import statistics
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsprotocol import types
from pygls.exceptions import JsonRpcException

from tests.fixtures.llama_server import LlamaServer
from tests.fixtures.lsp_client import inline_params, insert, lsp_session, open_doc

REPO = Path(__file__).resolve().parents[1]
FILES = ["textwrap.py", "shlex.py", "fnmatch.py", "heapq.py", "bisect.py", "calendar.py", "glob.py", "colorsys.py"]
SETTINGS = {"maxTokens": 48, "timeBudgetMs": 5000, "contextTokens": 1024}
# llama.vscode sends 256 lines before and 64 after the cursor by default; that overflows a slot here, so the
# windows are cut to about our prompt budget (contextTokens 1024, 3/4 for the prefix: ~10 tokens a line)
LINES = (64, 16)
COSTS = re.compile(r"prompt=(\d+) reused=(\d+) evaluated=(\d+) generated=(\d+)")


@dataclass
class Editor:
    name: str
    text: str  # the whole real file
    start: int  # where typing starts (offset)
    typed: str  # what this editor types
    latencies: list[float] = field(default_factory=list)
    cold_ms: float = 0.0  # the first request, right after opening the file (the whole prompt is new)
    cancelled: int = 0
    prompt: int = 0
    reused: int = 0
    generated: int = 0


def model_path(spec: str) -> Path:
    if spec == "micro":
        found = sorted((REPO / ".cache").rglob("micro*.gguf"))
        if not found:
            raise SystemExit("micro: expected a micro model GGUF under .cache/ (run the tests once), got none")
        return found[0]
    from lsp_server import models

    return models.resolve(spec).path


def editors(k: int, keys: int, shared: bool) -> list[Editor]:
    """K editors; each types ``keys`` characters of real code starting at a line 40% into its file."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for i in range(k):
        name = FILES[0] if shared else FILES[i % len(FILES)]
        text = (stdlib / name).read_text(encoding="utf-8")
        lines = text.split("\n")
        first = int(len(lines) * 0.4) + (6 * i if shared else 0)
        while not lines[first].strip():  # start on a line with code
            first += 1
        start = sum(len(ln) + 1 for ln in lines[:first]) + len(lines[first]) - len(lines[first].lstrip())
        out.append(Editor(f"{name}#{i}", text, start, text[start : start + keys]))
    return out


def pause(rng: random.Random, ch: str) -> float:
    return rng.uniform(0.06, 0.2) + (0.25 if ch == " " else 0.0) + (0.6 if ch == "\n" else 0.0)


def position(doc: str, offset: int) -> tuple[int, int]:
    line = doc.count("\n", 0, offset)
    col = offset - (doc.rfind("\n", 0, offset) + 1)
    return line, len(doc[offset - col : offset].encode("utf-16-le")) // 2


async def type_over_lsp(ed: Editor, vocab: Path, url: str, slot: int | None, seed: int, log: Path) -> None:
    rng = random.Random(seed)
    doc = ed.text[: ed.start] + ed.text[ed.start + len(ed.typed) :]  # the lines being written are not there yet
    uri = f"file:///team/{ed.name.replace('#', '_')}"
    args = ["--engine", "llama-server", "--url", url, "--log-file", str(log)]
    if slot is not None:
        args += ["--slot", str(slot)]
    async with lsp_session(vocab, options=SETTINGS, args=tuple(args)) as client:
        open_doc(client, uri, doc)
        t0 = time.perf_counter()  # the editor asks once when the cursor lands, before the typing starts
        await client.text_document_inline_completion_async(inline_params(uri, *position(doc, ed.start)))
        ed.cold_ms = (time.perf_counter() - t0) * 1e3
        pending: tuple[str, asyncio.Task] | None = None
        offset = ed.start
        for version, ch in enumerate(ed.typed, start=2):
            line, col = position(doc, offset)
            insert(client, uri, line, col, ch, version)
            doc = doc[:offset] + ch + doc[offset:]
            offset += 1
            if pending is not None and not pending[1].done():
                # VS Code cancels the previous inline request when the next keystroke comes
                client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=pending[0]))
                ed.cancelled += 1
            line, col = position(doc, offset)
            mid = str(uuid.uuid4())
            pending = (mid, asyncio.create_task(_timed(client, uri, line, col, ed, mid)))
            await asyncio.sleep(pause(rng, ch))  # the typist's rhythm
        if pending is not None:
            await pending[1]


async def _timed(client, uri: str, line: int, col: int, ed: Editor, mid: str) -> None:
    t0 = time.perf_counter()
    try:
        await client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, line, col), msg_id=mid)
    except JsonRpcException:  # RequestCancelled: the next keystroke came first
        return
    ed.latencies.append((time.perf_counter() - t0) * 1e3)


def read_costs(ed: Editor, log: Path) -> None:
    """Sums the costs the process logged for its answered requests, after the first (the cold one at open)."""
    for m in list(COSTS.finditer(log.read_text(errors="replace")))[1:]:
        ed.prompt += int(m.group(1))
        ed.reused += int(m.group(2))
        ed.generated += int(m.group(4))


async def type_over_infill(ed: Editor, url: str, seed: int) -> None:
    """llama.vscode's way: the editor itself asks /infill with text, one request per keystroke."""
    import httpx

    rng = random.Random(seed)
    doc = ed.text[: ed.start] + ed.text[ed.start + len(ed.typed) :]
    offset = ed.start
    pending: asyncio.Task | None = None
    async with httpx.AsyncClient(timeout=60) as http:

        async def ask(prefix_lines: str, line_prefix: str, suffix: str, measure: bool = True) -> None:
            body = {  # llama.vscode's request shape (its line windows cut to about our token budget, see LINES)
                "input_prefix": prefix_lines,
                "prompt": line_prefix,
                "input_suffix": suffix,
                "input_extra": [],
                "n_predict": SETTINGS["maxTokens"],
                "top_k": 40,
                "top_p": 0.99,
                "samplers": ["top_k", "top_p", "infill"],
                "stream": False,
                "cache_prompt": True,
                "t_max_prompt_ms": 500,
                "t_max_predict_ms": 1000,
            }
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/infill", json=body)
            except httpx.TimeoutException:  # like an editor giving up on it: not answered
                return
            if r.status_code != 200:
                raise SystemExit(f"/infill: expected HTTP 200, got {r.status_code}: {r.text[:200]}")
            if not measure:
                ed.cold_ms = (time.perf_counter() - t0) * 1e3
                return
            ed.latencies.append((time.perf_counter() - t0) * 1e3)
            t = r.json().get("timings") or {}
            ed.prompt += int(t.get("cache_n") or 0) + int(t.get("prompt_n") or 0)
            ed.reused += int(t.get("cache_n") or 0)
            ed.generated += int(t.get("predicted_n") or 0)

        def windows(doc: str, offset: int) -> tuple[str, str, str]:
            line_start = doc.rfind("\n", 0, offset) + 1
            before = doc[:line_start].split("\n")[-(LINES[0] + 1) :]
            after_end = doc.find("\n", offset)
            after_end = len(doc) if after_end < 0 else after_end
            suffix = doc[offset:after_end] + "\n" + "\n".join(doc[after_end + 1 :].split("\n")[: LINES[1]])
            return "\n".join(before), doc[line_start:offset], suffix

        await ask(*windows(doc, offset), measure=False)  # when the cursor lands, before the typing starts
        for ch in ed.typed:
            doc = doc[:offset] + ch + doc[offset:]
            offset += 1
            if pending is not None and not pending.done():
                pending.cancel()  # closes the connection; llama-server stops the slot
                ed.cancelled += 1
            pending = asyncio.create_task(ask(*windows(doc, offset)))
            await asyncio.sleep(pause(rng, ch))
        if pending is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending


async def run(mode: str, k: int, keys: int, model: Path, seed: int, ctx_per_slot: int, keep_logs: Path | None) -> dict:
    eds = editors(k, keys, shared=mode == "shared file")
    with (
        tempfile.TemporaryDirectory() as tmp,
        LlamaServer(model, slots=k, ctx_per_slot=ctx_per_slot, extra=("--metrics",)) as server,
    ):
        logs = [Path(keep_logs or tmp) / f"lsp-k{k}-{mode.replace(' ', '_').replace('/', '')}-{i}.log" for i in range(k)]
        t0 = time.perf_counter()
        if mode == "/infill direct":
            await asyncio.gather(*(type_over_infill(ed, server.url, seed + i) for i, ed in enumerate(eds)))
        else:
            slots = list(range(k)) if mode == "own files, slot i" else [None] * k
            await asyncio.gather(*(type_over_lsp(ed, model, server.url, slots[i], seed + i, logs[i]) for i, ed in enumerate(eds)))
            for ed, log in zip(eds, logs, strict=True):
                read_costs(ed, log)
        wall = time.perf_counter() - t0
        metrics = server_metrics(server.url)
    lat = [x for ed in eds for x in ed.latencies]
    reuse = [ed.reused / ed.prompt for ed in eds if ed.prompt]
    return {
        "mode": mode,
        "k": k,
        "keystrokes": sum(len(ed.typed) for ed in eds),
        "answered": len(lat),
        "cancelled": sum(ed.cancelled for ed in eds),
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p95_ms": sorted(lat)[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] if lat else float("nan"),
        "tokens_per_s": sum(ed.generated for ed in eds) / wall,
        "server_gen_per_s": metrics.get("llamacpp:tokens_predicted_total", 0.0) / wall,
        "server_prompt_per_s": metrics.get("llamacpp:prompt_tokens_total", 0.0) / wall,
        "kv_reuse_min": min(reuse) if reuse else 0.0,
        "kv_reuse_max": max(reuse) if reuse else 0.0,
        "prompt_per_req": sum(ed.prompt for ed in eds) / max(1, len(lat)),
        "cold_ms": statistics.median(ed.cold_ms for ed in eds),
    }


def server_metrics(url: str) -> dict[str, float]:
    """llama-server's Prometheus counters (``--metrics``): all the work it did, cancelled requests included."""
    import httpx

    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def table(rows: list[dict]) -> str:
    out = [
        "| K | mode | keystrokes | answered | p50 ms | p95 ms | tokens/s answered | server gen tok/s | server prompt tok/s "
        "| KV reuse per editor | prompt tokens/answer | first request ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['k']} | {r['mode']} | {r['keystrokes']} | {r['answered']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
            f"{r['tokens_per_s']:.0f} | {r['server_gen_per_s']:.0f} | {r['server_prompt_per_s']:.0f} | "
            f"{100 * r['kv_reuse_min']:.1f}-{100 * r['kv_reuse_max']:.1f}% | {r['prompt_per_req']:.0f} | {r['cold_ms']:.0f} |"
        )
    return "\n".join(out)


MODES = ["own files", "own files, slot i", "shared file", "/infill direct"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="demo | micro | a GGUF path")
    p.add_argument("--k", default="1,2,4,8", help="comma-separated numbers of editors")
    p.add_argument("--keys", type=int, default=40, help="keystrokes per editor")
    p.add_argument("--modes", default=";".join(MODES), help="';'-separated, from: " + "; ".join(MODES))
    p.add_argument("--ctx-per-slot", type=int, default=1536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep-logs", type=Path, default=None, help="keep each codellama-lsp's log in this folder")
    args = p.parse_args()
    model = model_path(args.model)
    rows = []
    for k in (int(x) for x in args.k.split(",")):
        for mode in [m.strip() for m in args.modes.split(";")]:
            if mode not in MODES:
                raise SystemExit(f"expected a mode from {MODES}, got {mode!r}")
            row = asyncio.run(run(mode, k, args.keys, model, args.seed, args.ctx_per_slot, args.keep_logs))
            print(
                f"K={k} {mode}: {row['answered']} answered, p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
                f"reuse {100 * row['kv_reuse_min']:.1f}-{100 * row['kv_reuse_max']:.1f}%",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
            if args.json:  # after every row: a long run that fails late keeps what it measured
                args.json.write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
