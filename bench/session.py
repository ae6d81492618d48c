"""Session replay: an editing session over several files, side by side with llama-server as llama.vscode drives it.

In: models (``demo``, ``random`` - the 92 M-parameter random-weight Code-Llama-shaped Q4_K_M of bench/latency.py -,
``random1b`` - a 1.06 B-parameter one built the same way -, ``random400m``, or GGUF paths), the sides to run and how
long a session. Out: one Markdown table per model on stdout (and every request with ``--json``).

The session is built from real code changes. Three standard-library files are open (``textwrap.py``, ``shlex.py``,
``heapq.py``); each holds two *places*: a function whose last lines are missing in the "older version" the session
starts from (removed with ``ast``, so what is retyped is real code). The cursor visits the places in the order
``1, 3, 2, 5, 1, 4, 6, 3, 1, 2, 5, 4`` (a switch of file on most visits, revisits of places seen before); at each
visit the user types on where the place was left (the first key of a first visit is the new line; a new line types
its indentation with it, as editors auto-indent), ``--keys`` keys per visit at a person's pace, and takes a suggestion
(Tab: the suggestion is inserted) whenever it is exactly the real code that comes next. Every key is one completion
request, sent after the previous answer came (editors debounce ~50-100 ms, a typist's keys come 60-200 ms apart:
every key gets its request); the next key waits for the answer, so every request's costs are counted, none is
cancelled. Between two visits the user moves (``--visit-pause``, 2 s); when the cursor arrives at the place, the person
looks before typing (``--rest``, 1 s): the editor client tells our server where the cursor rests (the ``cursor``
event, after the clients' 300 ms debounce, at once when the place is in another file: both clients tell a switch of
editor or buffer at once) and the server prefills that place. Both are time a server may use in the
background; the peer gets the same pauses and does in them what llama.vscode does.

Sides (``--sides``), each replaying the session alone (or, with ``--no-sequential``, asked in turn for every request,
which goes first rotating: the machine's load changes from minute to minute), on the same documents:

- ``ours``: the real ``codellama-lsp --stdio`` (``--server-root`` picks the checkout it runs from) driven by a real
  LSP client, its settings left at their defaults but ``maxTokens`` (8); the costs come from the server's log line
  per request (``prompt= reused= evaluated= generated=``); log lines of background work that say ``evaluated=N``
  (prefill) are summed apart;
- ``peer``: llama.cpp's ``llama-server`` (``--cache-reuse 256 -ub 1024 -b 1024 --spm-infill -n 8``, one slot, the
  same context size) asked the way llama.vscode asks it: ``POST /infill`` with ``input_prefix`` (the 256 lines before the
  cursor's line), ``prompt`` (the line up to the cursor), ``input_suffix`` (the rest of the line and 64 lines),
  ``input_extra`` (llama.vscode's ring: 32-line chunks - ``ring_chunk_size`` 64 / 2 - picked at random from the region
  around the cursor when a file becomes active and unmodified - its ``onDidChangeActiveTextEditor`` picks twice, for
  the "previous" editor and the new one, and both are the new one, as ``activeTextEditor`` has changed already - and
  from beyond the prefix/suffix windows when the cursor moved more than 32 lines; queued, and moved into the ring of
  at most 16 by a 1 s timer, one chunk per tick, only once 3 s have passed since the last completion started, each
  move followed by a background ``/infill`` with ``n_predict`` 0 that evaluates the new ring), ``cache_prompt``,
  ``n_predict`` 8; its costs are ``timings.prompt_n`` (evaluated) and ``cache_n``. llama.vscode does nothing when the
  cursor moves or rests (no selection handler; its chunks are picked on completions, file switches and saves);
  not modelled: its completion cache and its request for the suggestion after the one shown (both on keys, not jumps);
- ``ours:PATH``: the same from another checkout (a branch beside main, in the same run); ``ours-nocursor``: this
  checkout driven by a client that sends no ``cursor`` events (as before the clients sent them);
- ``remote`` / ``remote:N``: ``codellama-lsp --engine llama-server`` against its own llama-server (``--remote-slots``
  slots; the server picks the slot by similarity, or slot N is pinned), the costs again from our log (the server's
  own ``prompt_n``), the RSS of both processes.

While one side answers a request the other sides' processes are stopped (SIGSTOP; ``--no-isolate`` turns it off):
a user's machine runs one completion server, and two llama.cpp processes with two threads each on the same two
cores slow each other down many times over, so one side's background work (our prefill, the peer's ring update)
would be measured against the other's request. Background work of both would still overlap in the pauses, where our
prefill and the peer's ring updates halve each other's speed, so by default (``--sequential``) each side replays the
whole session alone, one after the other (the same places, keys and pauses; a suggestion is taken when that side
offered it); ``--no-sequential`` asks the sides in turn, request by request.

Per side: prompt tokens evaluated per jump (the first request of a visit; first visits and revisits apart: what the
user waits for), apart from them the tokens evaluated in the background before that request (our prefill, the peer's
ring updates), and per keystroke, p50/p95 latency of both (client-side, request to answer), the tokens generated per
key and the key p50 less the engine's generation time (greedy decoding writes all 8 tokens where the peer's infill
sampler often ends at once on a random-weight model: the raw key p50s then compare different work), suggestions
shown and taken, background tokens, and memory: the process's RSS (with its llama-server for ``remote``), and the engine's own log line about kept
prompts when it writes one. The targets of issue 21 are printed under each table: per jump at most 0.25x the peer's
evaluated tokens, per key at most 2, key p50 at most 1.0x the peer's, a revisit evaluating a few tokens.

Run: ``python bench/session.py --models demo,random`` (``--quick``: four visits, three keys each).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FILES = ("textwrap.py", "shlex.py", "heapq.py")
ORDER = (1, 3, 2, 5, 1, 4, 6, 3, 1, 2, 5, 4)
QUICK_ORDER = (1, 3, 1, 4)  # a switch of file, a revisit, another file
N_PREDICT = 8

# llama.vscode's defaults (its package.json / extra-context.ts)
N_PREFIX, N_SUFFIX = 256, 64
RING_N_CHUNKS, RING_CHUNK_SIZE, RING_SCOPE = 16, 64, 1024
MAX_LAST_PICK_LINE_DISTANCE = 32
RING_UPDATE_S, RING_UPDATE_MIN_S = 1.0, 3.0  # ring_update_ms; RING_UPDATE_MIN_TIME_LAST_COMPL
CURSOR_DEBOUNCE_S = 0.3  # our clients tell the server where the cursor rests after it rested this long
SWITCH_DEBOUNCE_S = 0.0  # ... and at once when another editor (buffer) became active
# -n: the server's n_predict, which /infill's cut of the extra chunks counts (n_ctx - n_batch - 2 n_predict); left at
# -1 the cut overflows a 4,096-token model by a few tokens and the request is refused (the context of a slot is capped
# at the model's training context), so it says what the requests ask for
PEER_FLAGS = ("--cache-reuse", "256", "-ub", "1024", "-b", "1024", "--spm-infill", "-n", str(N_PREDICT))

COSTS = re.compile(r"prompt=(\d+) reused=(\d+) evaluated=(\d+) generated=(\d+)")
REQUEST_LINE = re.compile(r" (r\d+) \S+: (\d+) item\(s\) from (\w+);.* engine (.*)$")
GENERATION_MS = re.compile(r"generation ([\d.]+)\)")
EVALUATED = re.compile(r"evaluated=(\d+)")
KEPT_MEMORY = re.compile(r"(?i)(kept|budget).*\b(MiB|MB|GiB)\b")


# ---- models -------------------------------------------------------------------------------------------
# Random-weight Code-Llama-shaped models (the 32016-token vocabulary with FIM pieces, SwiGLU, RMSNorm, rope theta
# 1e6, multi-head attention as Code Llama 7B): their text is noise, their costs are those of the shape.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # 1.06 B: 18 layers of Code Llama's 2,048-wide / 5,632 FFN shape (TinyLlama's width, Code Llama's attention)
    "random1b": ("random-1.06B Q4_K_M", dict(dim=2048, n_layers=18, n_heads=16, n_kv_heads=16, multiple_of=256)),
    # 0.4 B: the fallback when 1 B is too slow for the machine
    "random400m": ("random-0.42B Q4_K_M", dict(dim=1280, n_layers=16, n_heads=10, n_kv_heads=10, multiple_of=256)),
}


def random_gguf(tag: str, shape: dict[str, Any]) -> Path:
    """Build (once; cached under .cache/bench/) a random Code-Llama-shaped Q4_K_M GGUF, as bench/latency.py builds its
    92 M one: a seeded random Meta checkpoint (tests/fixtures/checkpoints.py) -> our converter -> our quantizer."""
    out = REPO / ".cache" / "bench" / f"random-codellama-{tag}.Q4_K_M.gguf"
    if out.is_file():
        return out
    import torch

    from model_export.convert import convert
    from model_train.model import ModelArgs
    from quantize.quantize import quantize_file
    from tests.fixtures.checkpoints import CODELLAMA_VOCAB, codellama_layout_tokenizer, random_model, write_meta_checkpoint

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tok = codellama_layout_tokenizer(Path(tmp) / "tokenizer.model")
        args = ModelArgs(vocab_size=CODELLAMA_VOCAB, norm_eps=1e-5, rope_theta=1e6, **shape)
        model = random_model(args, seed=16, dtype=torch.bfloat16)
        ckpt = write_meta_checkpoint(Path(tmp) / "ckpt", model, tok)
        del model
        convert(ckpt, Path(tmp) / "random-f16.gguf", outtype="f16", ctx=4096)
        quantize_file(Path(tmp) / "random-f16.gguf", Path(tmp) / "q.gguf", "Q4_K_M")
        (Path(tmp) / "q.gguf").rename(out)
    print(f"built {out.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def model_path(spec: str) -> tuple[str, Path]:
    if spec == "random":
        from bench.latency import random_codellama_gguf

        return "random-92M Q4_K_M", random_codellama_gguf()
    if spec in SHAPES:
        name, shape = SHAPES[spec]
        return name, random_gguf(spec.removeprefix("random"), shape)
    from lsp_server import models

    resolved = models.resolve(spec)
    return resolved.name, resolved.path


def context_length(path: Path) -> int:
    import gguf

    r = gguf.GGUFReader(path)
    f = r.fields["llama.context_length"]
    return int(f.parts[f.data[0]][0])


# ---- the session ------------------------------------------------------------------------------------------
@dataclass
class Place:
    number: int
    file: str
    offset: int  # where the cursor is in the current document (the end of what was typed here so far)
    text: str  # the real code removed from the "older version", with its leading newline: what is retyped
    typed: int = 0
    accept: str = ""  # a suggestion that is exactly the code that comes next: the next key is Tab

    @property
    def rest(self) -> str:
        return self.text[self.typed :]


@dataclass
class Session:
    docs: dict[str, str]  # file -> current text
    places: dict[int, Place]
    dirty: set[str] = field(default_factory=set)

    def insert(self, place: Place, text: str) -> None:
        """Types ``text`` at the place's cursor; the cursors of later places in that file move with the text."""
        doc = self.docs[place.file]
        self.docs[place.file] = doc[: place.offset] + text + doc[place.offset :]
        for other in self.places.values():
            if other is not place and other.file == place.file and other.offset >= place.offset:
                other.offset += len(text)
        place.offset += len(text)
        place.typed += len(text)
        self.dirty.add(place.file)

    def next_key(self, place: Place) -> str:
        """What one key types at ``place``: the next character, or a new line with the next line's indentation."""
        rest = place.rest
        if not rest:
            return "#"  # the place is complete (longer sessions than the removed code): type a comment
        if rest[0] == "\n":
            line = rest[1:].split("\n", 1)[0]
            return "\n" + line[: len(line) - len(line.lstrip())]
        return rest[0]


def build_session(stdlib: Path, lines_removed: int = 6) -> Session:
    """The "older versions": in each file, two functions (near 30% and 70% of the file) lose their last
    ``lines_removed`` lines; place numbers go 1-2 (first file), 3-4, 5-6."""
    docs: dict[str, str] = {}
    places: dict[int, Place] = {}
    for i, name in enumerate(FILES):
        text = (stdlib / name).read_text(encoding="utf-8")
        lines = text.split("\n")
        funcs = [
            n for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno and _code_start(n) <= n.end_lineno - lines_removed
        ]  # fmt: skip
        chosen: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        for at in (0.3, 0.7):
            best = min((f for f in funcs if f not in chosen), key=lambda f: abs(f.lineno - at * len(lines)))
            chosen.append(best)
        chosen.sort(key=lambda f: f.lineno)
        cuts = []
        for f in chosen:
            end = f.end_lineno or f.lineno  # 1-based, inclusive
            first = end - lines_removed  # 0-based index of the first removed line
            cuts.append((first, end))
        kept: list[str] = []
        prev = 0
        spans = []
        for first, end in cuts:
            kept.extend(lines[prev:first])
            spans.append((len(kept) - 1, "\n" + "\n".join(lines[first:end])))  # typed after the end of kept line
            prev = end
        kept.extend(lines[prev:])
        doc = "\n".join(kept)
        docs[name] = doc
        for k, (line_idx, removed) in enumerate(spans):
            offset = sum(len(ln) + 1 for ln in kept[:line_idx]) + len(kept[line_idx])
            places[2 * i + k + 1] = Place(2 * i + k + 1, name, offset, removed)
    # offsets were computed on the final documents: no later place moved them
    return Session(docs, places)


def _code_start(f: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The 0-based line of the function's first statement after its docstring (what may be removed: code)."""
    body = f.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[1].lineno - 1
    return body[0].lineno - 1 if len(body) > 1 else 10**9


def position(doc: str, offset: int) -> tuple[int, int]:
    """LSP position (UTF-16 code units) of ``offset``."""
    line = doc.count("\n", 0, offset)
    col = offset - (doc.rfind("\n", 0, offset) + 1)
    return line, len(doc[offset - col : offset].encode("utf-16-le")) // 2


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class stopped:
    """The processes ``pids`` stopped (SIGSTOP) for the ``with`` block, continued after it.

    While one side answers a request the other sides' processes are stopped: one user's machine runs one completion
    server, and two llama.cpp processes of two threads each on the same cores slow each other down many times over
    (OpenMP threads spin at barriers). Without it, a side's background work (our prefill, the peer's ring update) ran
    into the other side's request and both were measured against the other's load. Background work of both sides
    still overlaps in the pauses between keys and visits, as it would not on a user's machine."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Request:
    kind: str  # "jump" | "key"
    place: int
    revisit: bool
    ms: float
    evaluated: int
    reused: int
    prompt: int
    shown: str  # the text the suggestion adds after the cursor ("" when none)
    source: str = "model"
    background: int = 0  # prompt tokens evaluated in the background since the request before (prefill, ring updates)
    generated: int = 0  # tokens the engine generated for this answer
    generate_ms: float = 0.0  # the engine's time generating them (the rest of ``ms``: prompt, pipeline, transport)


@dataclass
class SideStats:
    requests: list[Request] = field(default_factory=list)
    background: int = 0  # prompt tokens evaluated outside requests (prefill; llama.vscode's ring updates)
    rss: list[float] = field(default_factory=list)
    accepted: int = 0
    memory_line: str = ""


# ---- our server over LSP ------------------------------------------------------------------------------
class LspSide:
    """``codellama-lsp --stdio`` (from ``root``) driven by pytest-lsp's client; costs from its log file."""

    def __init__(self, name: str, root: Path, model: Path, args: tuple[str, ...], log: Path, options: dict[str, Any]) -> None:
        self.name, self.root, self.model, self.args, self.log, self.options = name, root, model, args, log, options
        self.stats = SideStats()
        self._read = 0
        self._versions: dict[str, int] = {}
        self.extra_pids: list[int] = []
        self.cursor_events = True

    async def start(self) -> None:
        from lsprotocol import types
        from pytest_lsp.client import make_test_lsp_client

        from tests.fixtures.lsp_client import StatusLog, capabilities

        self.client = make_test_lsp_client()
        self.status = StatusLog()

        @self.client.feature("codellama/status")
        def _on_status(params: Any) -> None:
            self.status.add({"state": params.get("state") if isinstance(params, dict) else getattr(params, "state", None)})

        env = dict(os.environ, PYTHONPATH=str(self.root), HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-m", "lsp_server", "--stdio", "-v", "--log-file", str(self.log), *self.args]
        await self.client.start_io(*cmd, env=env, cwd=str(self.root))
        await self.client.initialize_session(
            types.InitializeParams(capabilities=capabilities(), initialization_options={**self.options, "model": str(self.model)})
        )
        got = await self.status.wait_for({"ready", "error"}, timeout=600)
        if got["state"] != "ready":
            raise SystemExit(f"{self.name}: expected the server to get ready, got {got}")
        server = getattr(self.client, "_server", None)
        self.pid = getattr(server, "pid", None)
        self._costs()  # skip the start-up lines

    def open(self, uri: str, text: str) -> None:
        from tests.fixtures.lsp_client import open_doc

        self._versions[uri] = 1
        open_doc(self.client, uri, text)

    def insert(self, uri: str, line: int, col: int, text: str) -> None:
        from tests.fixtures.lsp_client import insert

        self._versions[uri] += 1
        insert(self.client, uri, line, col, text, self._versions[uri])

    def cursor(self, uri: str, doc: str, offset: int) -> None:
        """The editor client's ``cursor`` event: the cursor rests at ``offset`` (the server prefills that place)."""
        line, col = position(doc, offset)
        self.client.protocol.notify(
            "codellama/event", {"kind": "cursor", "uri": uri, "position": {"line": line, "character": col}}
        )

    async def ask(self, uri: str, doc: str, offset: int) -> tuple[float, str, dict[str, Any]]:
        from tests.fixtures.lsp_client import inline

        line, col = position(doc, offset)
        t0 = time.perf_counter()
        got = await inline(self.client, uri, line, col, timeout=900)
        ms = (time.perf_counter() - t0) * 1e3
        shown = ""
        items = [] if got is None else (got if isinstance(got, list) else list(got.items))
        if items:
            item = items[0]
            text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
            start = offset
            if item.range is not None:  # the item replaces from the range's start (the word before the cursor)
                r = item.range.start
                line_start = sum(len(ln) + 1 for ln in doc.split("\n")[: r.line])
                start = line_start + len(
                    doc[line_start:].split("\n", 1)[0].encode("utf-16-le")[: 2 * r.character].decode("utf-16-le")
                )
            typed = doc[start:offset]
            shown = text[len(typed) :] if text.startswith(typed) else ""
        return ms, shown, self._costs()

    def _costs(self) -> dict[str, Any]:
        """The request's costs from the new lines of the log (and background work logged since)."""
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                f.seek(self._read)
                new = f.read()
                self._read = f.tell()
        except OSError:
            return {}
        costs: dict[str, Any] = {}
        for line in new.splitlines():
            m = REQUEST_LINE.search(line)
            if m:
                c = COSTS.search(m.group(4))
                costs = {"source": m.group(3), "prompt": 0, "reused": 0, "evaluated": 0}
                if c:
                    costs.update(prompt=int(c.group(1)), reused=int(c.group(2)), evaluated=int(c.group(3)))
                    costs.update(generated=int(c.group(4)))
                if g := GENERATION_MS.search(m.group(4)):
                    costs.update(generate_ms=float(g.group(1)))
                continue
            e = EVALUATED.search(line)
            if e:
                self.stats.background += int(e.group(1))
            if KEPT_MEMORY.search(line):
                self.stats.memory_line = line.split(": ", 1)[-1].strip()
        return costs

    def rss(self) -> float:
        return rss_mib(self.pid) + sum(rss_mib(p) for p in self.extra_pids)

    def pids(self) -> list[int]:
        return [p for p in (self.pid, *self.extra_pids) if p is not None]

    async def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.shutdown_session(), 30)
        await self.client.stop()


# ---- llama-server as llama.vscode drives it ---------------------------------------------------------------
class InfillSide:
    """``/infill`` requests with llama.vscode's windows and ring of extra chunks (see the module docstring)."""

    name = "peer"

    def __init__(self, url: str, pid: int, seed: int, greedy: bool = False) -> None:
        import httpx

        self.url, self.pid, self.greedy = url, pid, greedy
        self.http = httpx.AsyncClient(timeout=900)
        self.rng = random.Random(seed)
        self.stats = SideStats()
        self.chunks: list[dict[str, Any]] = []  # the ring, oldest first
        self.chunk_lines: list[list[str]] = []
        self.queued: list[tuple[dict[str, Any], list[str]]] = []
        self.last_line_pick = -9999
        self.last_start = time.perf_counter()  # when the last completion started (ring updates wait 3 s after it)
        self.timer_origin = time.perf_counter() + self.rng.random()  # the 1 s ring timer (setInterval) fires from here
        self.last_tick = -1
        self.ticks: list[asyncio.Task[None]] = []

    def pick_chunk(self, lines: list[str], filename: str, evict: bool) -> None:
        if len(lines) < 3:
            return
        if len(lines) + 1 < RING_CHUNK_SIZE:
            new = lines
        else:
            start = self.rng.randrange(max(1, len(lines) - RING_CHUNK_SIZE // 2 + 1))
            new = lines[start : start + RING_CHUNK_SIZE // 2]
        text = "\n".join(new) + "\n"
        if evict and (any(c["text"] == text for c in self.chunks) or any(c["text"] == text for c, _ in self.queued)):
            return
        if evict:  # chunks very similar to the new one go
            keep = [i for i, ls in enumerate(self.chunk_lines) if _line_jaccard(ls, new) <= 0.9]
            self.chunks = [self.chunks[i] for i in keep]
            self.chunk_lines = [self.chunk_lines[i] for i in keep]
            self.queued = [(c, ls) for c, ls in self.queued if _line_jaccard(ls, new) <= 0.9]
        if len(self.queued) >= 16:
            self.queued.pop(0)
        self.queued.append(({"text": text, "time": int(time.time() * 1000), "filename": filename}, new))

    def activated(self, doc: str, filename: str, line: int, dirty: bool) -> None:
        """The file became the active editor: llama.vscode picks a chunk around the cursor (unmodified files only),
        twice (for the "previous" editor, which is the new one by then, and for the new one)."""
        if dirty:
            return
        lines = doc.split("\n")
        for _ in range(2):
            self.pick_chunk(
                lines[max(0, line - RING_CHUNK_SIZE // 2) : min(line + RING_CHUNK_SIZE // 2, len(lines) - 1) + 1], filename, True
            )

    async def idle(self, seconds: float) -> None:
        """The user is idle for ``seconds``: llama.vscode's 1 s ring timer fires, and moves a queued chunk into the
        ring (with its background request) on each tick 3 s or more after the last completion started."""
        end = time.perf_counter() + seconds
        while True:
            now = time.perf_counter()
            due = max(now, self.last_start + RING_UPDATE_MIN_S)
            k = max(self.last_tick + 1, math.ceil((due - self.timer_origin) / RING_UPDATE_S))
            tick = self.timer_origin + k * RING_UPDATE_S
            if tick >= end:
                await asyncio.sleep(max(0.0, end - now))
                return
            await asyncio.sleep(max(0.0, tick - now))
            self.last_tick = k
            if self.queued:  # its request runs in the background, as llama.vscode's does (the server has one slot)
                self.ticks.append(asyncio.get_running_loop().create_task(self.idle_tick()))

    async def idle_tick(self) -> None:
        """One ring update while the user is idle: one queued chunk into the ring, and a request that evaluates it."""
        if not self.queued:
            return
        chunk, lines = self.queued.pop(0)
        self.chunks.append(chunk)
        self.chunk_lines.append(lines)
        while len(self.chunks) > RING_N_CHUNKS:
            self.chunks.pop(0)
            self.chunk_lines.pop(0)
        body = {
            "input_prefix": "",
            "input_suffix": "",
            "input_extra": self.chunks,
            "prompt": "",
            "n_predict": 0,
            "samplers": [],
            "stream": False,
            "cache_prompt": True,
            "id_slot": 0,
            "t_max_prompt_ms": 500,
            "t_max_predict_ms": 1,
        }  # fmt: skip  (llama.vscode's createRequestPayload)
        r = await self.http.post(self.url + "/infill", json=body)
        r.raise_for_status()
        self.stats.background += int((r.json().get("timings") or {}).get("prompt_n") or 0)

    async def ask(self, uri: str, doc: str, offset: int) -> tuple[float, str, dict[str, Any]]:
        lines = doc.split("\n")
        line, _ = position(doc, offset)
        col = offset - (doc.rfind("\n", 0, offset) + 1)
        filename = uri.rsplit("/", 1)[-1]
        if abs(line - self.last_line_pick) > MAX_LAST_PICK_LINE_DISTANCE:  # the cursor moved: context from further out
            self.pick_chunk(lines[max(0, line - RING_SCOPE) : max(0, line - N_PREFIX) + 1], filename, False)
            last = len(lines) - 1
            self.pick_chunk(lines[min(last, line + N_SUFFIX) : min(last, line + N_SUFFIX + RING_CHUNK_SIZE) + 1], filename, False)
            self.last_line_pick = line
        cur = lines[line]
        body = {
            "input_prefix": "\n".join(lines[max(0, line - N_PREFIX) : line]) + ("\n" if line else ""),
            "input_suffix": cur[col:] + "\n" + "\n".join(lines[line + 1 : line + 1 + N_SUFFIX]) + "\n",
            "input_extra": self.chunks,
            "prompt": cur[:col],
            "n_predict": N_PREDICT,
            "top_k": 1 if self.greedy else 40,
            "top_p": 0.99,
            "stream": False,
            # --peer-greedy: the top token, as our side decodes (llama.vscode's infill sampler ends early on weights
            # that are unsure of everything, so the two sides' keys generate different numbers of tokens)
            "samplers": ["top_k"] if self.greedy else ["top_k", "top_p", "infill"],
            "cache_prompt": True,
            "t_max_prompt_ms": 500,
            "t_max_predict_ms": 1000,
        }
        t0 = self.last_start = time.perf_counter()
        r = await self.http.post(self.url + "/infill", json=body)
        ms = (time.perf_counter() - t0) * 1e3
        if r.status_code != 200:
            raise SystemExit(f"/infill: expected HTTP 200, got {r.status_code}: {r.text[:200]}")
        got = r.json()
        t = got.get("timings") or {}
        n, cached = int(t.get("prompt_n") or 0), int(t.get("cache_n") or 0)
        generated, generate_ms = int(t.get("predicted_n") or 0), float(t.get("predicted_ms") or 0.0)
        costs = {"source": "model", "prompt": n + cached, "reused": cached, "evaluated": n}
        return ms, str(got.get("content") or ""), {**costs, "generated": generated, "generate_ms": generate_ms}

    def rss(self) -> float:
        return rss_mib(self.pid)

    def pids(self) -> list[int]:
        return [self.pid]

    async def close(self) -> None:
        for t in self.ticks:
            await t
        await self.http.aclose()


def _line_jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


# ---- one run --------------------------------------------------------------------------------------------
async def replay(model_name: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tests.fixtures.llama_server import LlamaServer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    session = build_session(stdlib)
    order = QUICK_ORDER if args.quick else tuple(int(x) for x in args.order.split(","))
    keys = args.keys if args.keys else (3 if args.quick else 5)
    n_ctx = min(context_length(model), 4096)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="session-", dir=args.keep_logs))
    sides: list[Any] = []
    servers: list[LlamaServer] = []
    options = {"maxTokens": N_PREDICT, **json.loads(args.options)}
    wanted = [s.strip() for s in args.sides.split(",") if s.strip()]
    try:
        for s in wanted:
            if s in ("ours", "ours-nocursor") or s.startswith("ours:"):  # ours:PATH runs codellama-lsp from another checkout
                root = Path(s[5:]).resolve() if s.startswith("ours:") else args.server_root
                label = f"ours@{root.name}" if s.startswith("ours:") else s
                log = tmp / f"{label.replace('@', '-')}.log"
                threads = () if args.our_threads == "auto" else ("--threads", str(args.our_threads or args.threads))
                side = LspSide(label, root, model, threads, log, options)
                side.cursor_events = s != "ours-nocursor"  # ours-nocursor: as a client that sends no cursor events
                sides.append(side)
            elif s == "peer":
                srv = LlamaServer(
                    model, slots=1, ctx_per_slot=n_ctx, threads=args.threads, extra=PEER_FLAGS, log=tmp / "peer-server.log"
                )
                servers.append(srv)
                sides.append(InfillSide(srv.url, srv.proc.pid, args.seed, args.peer_greedy))
            elif s == "remote" or s.startswith("remote:"):  # remote:N pins slot N (--slot), remote lets the server pick
                slot = s[7:] if s.startswith("remote:") else args.remote_slot
                srv = LlamaServer(
                    model,
                    slots=args.remote_slots,
                    ctx_per_slot=n_ctx,
                    threads=args.threads,
                    log=tmp / f"server-{len(servers)}.log",
                )
                servers.append(srv)
                extra = ["--engine", "llama-server", "--url", srv.url]
                if slot != "auto":
                    extra += ["--slot", slot]
                label = "remote" if slot == "auto" else f"remote:{slot}"
                side = LspSide(label, args.server_root, model, tuple(extra), tmp / f"{label.replace(':', '-')}.log", options)
                side.extra_pids.append(srv.proc.pid)
                sides.append(side)
            else:
                raise SystemExit(f"--sides: expected ours, ours:PATH, peer, remote or remote:N, got {s!r}")
        for side in sides:
            if isinstance(side, LspSide):
                await side.start()
                for name in FILES:  # every file is open from the start
                    side.open(f"file:///session/{name}", session.docs[name])
        seen: set[int] = set()
        event = 0
        active = ""
        peers = [side for side in sides if isinstance(side, InfillSide)]
        idle = peers[0].idle if peers else asyncio.sleep  # the user idle: llama.vscode's ring timer may fire
        bg_seen = {side.name: side.stats.background for side in sides}
        t_start = time.perf_counter()
        for v, number in enumerate(order):
            place = session.places[number]
            uri = f"file:///session/{place.file}"
            revisit = number in seen
            seen.add(number)
            if v:
                await idle(args.visit_pause)  # the user moves to the next place
            doc = session.docs[place.file]
            for peer in peers:  # the cursor arrives; in another file, that editor becomes the active one
                if place.file != active:
                    peer.activated(doc, place.file, position(doc, place.offset)[0], place.file in session.dirty)
            # the person looks before typing (--rest); our client tells the server where the cursor rests: at once
            # when another editor became active (--switch-debounce), after CURSOR_DEBOUNCE_S within one
            debounce = min(args.switch_debounce if place.file != active else CURSOR_DEBOUNCE_S, args.rest)
            active = place.file
            await idle(debounce)
            if args.cursor_events:
                for side in sides:
                    if isinstance(side, LspSide) and side.cursor_events:
                        side.cursor(uri, doc, place.offset)
            await idle(max(0.0, args.rest - debounce))
            for k in range(keys):
                # the key (or Tab on a suggestion that is exactly the code that comes next)
                pending, place.accept = place.accept, ""
                text = pending or session.next_key(place)
                doc_before = session.docs[place.file]
                line, col = position(doc_before, place.offset)
                session.insert(place, text)
                doc = session.docs[place.file]
                for side in sides:
                    if pending:
                        side.stats.accepted += 1
                turn = sides[event % len(sides) :] + sides[: event % len(sides)]
                event += 1
                offers = []
                for side in turn:
                    # the key reaches a side right before its request, as in an editor (the key, the debounce, the
                    # request): sent to all sides at once, a side asked last had the others' request times to itself
                    if isinstance(side, LspSide):
                        side.insert(uri, line, col, text)
                    frozen = [pid for other in sides if other is not side for pid in other.pids()] if args.isolate else []
                    with stopped(frozen):
                        ms, shown, costs = await side.ask(uri, doc, place.offset)
                    background, bg_seen[side.name] = side.stats.background - bg_seen[side.name], side.stats.background
                    side.stats.requests.append(
                        Request(
                            "jump" if k == 0 else "key", number, revisit, ms, int(costs.get("evaluated", 0)),
                            int(costs.get("reused", 0)), int(costs.get("prompt", 0)), shown, str(costs.get("source", "?")),
                            background, int(costs.get("generated", 0)), float(costs.get("generate_ms", 0.0)),
                        )
                    )  # fmt: skip
                    side.stats.rss.append(side.rss())
                    if shown.strip() and place.rest.startswith(shown):
                        offers.append(shown)
                if offers:
                    place.accept = max(offers, key=len)
                await idle(rng.uniform(0.06, 0.2) * args.pace)
        wall = time.perf_counter() - t_start
        await asyncio.sleep(0.5)
        for side in sides:
            if isinstance(side, LspSide):
                side._costs()
    finally:
        for side in sides:
            try:
                await side.close()
            except Exception as exc:  # one side failing to close must not hide the others' results
                print(f"{side.name}: close failed: {exc}", file=sys.stderr)
        for srv in servers:
            srv.stop()
        if args.keep_logs is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)
    return {
        "model": model_name,
        "n_ctx": n_ctx,
        "visits": list(order),
        "keys_per_visit": keys,
        "wall_s": wall,
        "load": os.getloadavg(),
        "peer_sampling": "greedy" if args.peer_greedy else "llama.vscode's",
        "sides": {side.name: summarize(side.stats) for side in sides},
        "requests": {side.name: [r.__dict__ for r in side.stats.requests] for side in sides},
    }


def summarize(st: SideStats) -> dict[str, Any]:
    jumps = [r for r in st.requests if r.kind == "jump"]
    keys = [r for r in st.requests if r.kind == "key"]
    first = [r for r in jumps if not r.revisit]
    again = [r for r in jumps if r.revisit]

    def mean(rs: list[Request]) -> float:
        return statistics.mean(r.evaluated for r in rs) if rs else float("nan")

    return {
        "jumps": len(jumps),
        "keys": len(keys),
        "eval_per_jump": mean(jumps),
        "eval_per_first_visit": mean(first),
        "eval_per_revisit": mean(again),
        "eval_per_key": mean(keys),
        "eval_per_key_p50": pct([float(r.evaluated) for r in keys], 0.5),
        "prompt_per_jump": statistics.mean(r.prompt for r in jumps if r.prompt) if any(r.prompt for r in jumps) else float("nan"),
        "jump_p50_ms": pct([r.ms for r in jumps], 0.5),
        "jump_p95_ms": pct([r.ms for r in jumps], 0.95),
        "key_p50_ms": pct([r.ms for r in keys], 0.5),
        "key_p95_ms": pct([r.ms for r in keys], 0.95),
        "generated_per_key": statistics.mean(r.generated for r in keys) if keys else float("nan"),
        # what a key costs apart from the tokens the model chose to generate (the peer's infill sampler often ends at
        # once where greedy decoding writes all 8 tokens: its key p50 and ours then measure different work)
        "key_p50_less_generation_ms": pct([r.ms - r.generate_ms for r in keys], 0.5),
        "shown": sum(1 for r in st.requests if r.shown),
        "accepted": st.accepted,
        "background": st.background,
        "background_per_jump": statistics.mean(r.background for r in jumps) if jumps else float("nan"),
        "rss_max_mib": max((x for x in st.rss if x == x), default=float("nan")),
        "rss_end_mib": st.rss[-1] if st.rss else float("nan"),
        "memory_line": st.memory_line,
        "cache_answers": sum(1 for r in st.requests if r.source == "cache"),
    }


LABELS = {
    "ours": "codellama-lsp (in-process)",
    "ours-nocursor": "codellama-lsp (in-process), no cursor events",
    "peer": "llama-server /infill (llama.vscode's shape)",
    "remote": "codellama-lsp -> llama-server",
}


def _label(name: str) -> str:
    if name.startswith("ours@"):
        return f"codellama-lsp (in-process, {name[5:]})"
    if name.startswith("remote:"):
        return f"codellama-lsp -> llama-server, slot {name[7:]} pinned"
    return LABELS.get(name, name)


def table(run: dict[str, Any]) -> str:
    out = [
        f"**{run['model']}** (n_ctx {run['n_ctx']}; {len(run['visits'])} visits x {run['keys_per_visit']} keys; "
        f"load {run['load'][0]:.2f}; {run['wall_s']:.0f} s; the peer's sampling: {run.get('peer_sampling', '?')}"
        + ("; sides one after the other" if run.get("sequential") else "; sides in turn")
        + ")",
        "",
        "| side | prompt tokens per jump | evaluated per jump (first visits / revisits) | per key (p50) | jump p50 / p95 | "
        "key p50 / p95 | shown / taken | background per jump / all | RSS max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in run["sides"].items():
        out.append(
            f"| {_label(name)} | {s['prompt_per_jump']:.0f} | {s['eval_per_jump']:.0f} ({s['eval_per_first_visit']:.0f} / {s['eval_per_revisit']:.0f}) | "
            f"{s['eval_per_key']:.1f} ({s['eval_per_key_p50']:.0f}) | {s['jump_p50_ms'] / 1e3:.2f} / {s['jump_p95_ms'] / 1e3:.2f} s | "
            f"{s['key_p50_ms'] / 1e3:.3f} / {s['key_p95_ms'] / 1e3:.3f} s | {s['shown']} / {s['accepted']} | {s['background_per_jump']:.0f} / {s['background']} | "
            f"{s['rss_max_mib']:.0f} MiB |"
        )
    peer = run["sides"].get("peer")
    for name, s in run["sides"].items():
        if peer is None or name == "peer":
            continue
        jump_ratio = s["eval_per_jump"] / max(1e-9, peer["eval_per_jump"])
        key_ratio = s["key_p50_ms"] / max(1e-9, peer["key_p50_ms"])
        less_gen = s["key_p50_less_generation_ms"] / max(1e-9, peer["key_p50_less_generation_ms"])
        out.append("")
        out.append(
            f"{_label(name)} against the peer: per jump {jump_ratio:.2f}x (target <= 0.25: "
            f"{'met' if jump_ratio <= 0.25 else 'not met'}); per key {s['eval_per_key']:.1f} (target <= 2: "
            f"{'met' if s['eval_per_key'] <= 2 else 'not met'}); key p50 {key_ratio:.2f}x (target <= 1.0: "
            f"{'met' if key_ratio <= 1.0 else 'not met'}; generated per key {s['generated_per_key']:.1f} vs "
            f"{peer['generated_per_key']:.1f}; less the generation {s['key_p50_less_generation_ms']:.1f} vs "
            f"{peer['key_p50_less_generation_ms']:.1f} ms = {less_gen:.2f}x); per key p50 {s['eval_per_key_p50']:.0f} vs "
            f"{peer['eval_per_key_p50']:.0f}, mean {s['eval_per_key']:.1f} vs {peer['eval_per_key']:.1f}; "
            f"a revisit evaluates {s['eval_per_revisit']:.0f} tokens"
            + (f"; engine: {s['memory_line']}" if s["memory_line"] else "")
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="demo,random", help="demo, random (92 M), random400m, random1b, or GGUF paths")
    p.add_argument(
        "--sides",
        default="ours,peer",
        help="ours, ours-nocursor (no cursor events), ours:PATH (another checkout), peer, remote, remote:N (comma-separated)",
    )
    p.add_argument("--quick", action="store_true", help="a short session: 4 visits (one revisit), 3 keys each")
    p.add_argument("--order", default=",".join(map(str, ORDER)), help="the places visited, in turn (1-6)")
    p.add_argument("--keys", type=int, default=0, help="keys per visit (default 5; 3 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each side's llama.cpp")
    p.add_argument(
        "--our-threads",
        default="",
        help="our server's --threads if not --threads; auto: none given (its default: the cores other processes leave free)",
    )
    p.add_argument("--visit-pause", type=float, default=2.0, help="seconds the user takes to move to the next place")
    p.add_argument("--rest", type=float, default=1.0, help="seconds the cursor rests at a place before the first key")
    p.add_argument(
        "--cursor-events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="our clients' cursor event where the cursor rests (--no-cursor-events: as before the clients sent it)",
    )
    p.add_argument(
        "--switch-debounce",
        type=float,
        default=SWITCH_DEBOUNCE_S,
        help="seconds after another editor becomes active before our client's cursor event (0.3: as before 2026-12-07 noon)",
    )
    p.add_argument(
        "--peer-greedy",
        action="store_true",
        help="the peer decodes greedily (top token) instead of llama.vscode's top-k/top-p/infill samplers",
    )
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop the other sides' processes while one side answers (--no-isolate: all run at once)",
    )
    p.add_argument(
        "--sequential",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each side replays the session alone, one after the other (no side's idle-time work shares the cores "
        "with the other's; a suggestion is taken when that side offered it); --no-sequential: sides in turn, "
        "request by request, as before 2026-12-07 13:30",
    )
    p.add_argument("--pace", type=float, default=1.0, help="scale of the 60-200 ms pause between keys")
    p.add_argument("--options", default="{}", help="extra initializationOptions for our server, as JSON")
    p.add_argument("--remote-slots", type=int, default=1, help="remote: the llama-server's slots")
    p.add_argument("--remote-slot", default="auto", help="remote: auto (the server picks) or N (pinned; also remote:N)")
    p.add_argument("--server-root", type=Path, default=REPO, help="the checkout codellama-lsp runs from (PYTHONPATH)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep-logs", type=Path, default=None, help="keep the servers' logs in a folder under this one")
    args = p.parse_args()
    args.server_root = args.server_root.resolve()
    runs = []
    for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
        name, path = model_path(spec)
        if args.sequential:  # each side replays the session alone on the machine, one after the other
            parts = [asyncio.run(replay(name, path, argparse.Namespace(**{**vars(args), "sides": side})))
                     for side in args.sides.split(",") if side.strip()]  # fmt: skip
            run = {**parts[-1], "wall_s": sum(r["wall_s"] for r in parts), "sequential": True}
            run["sides"] = {k: v for r in parts for k, v in r["sides"].items()}
            run["requests"] = {k: v for r in parts for k, v in r["requests"].items()}
        else:
            run = asyncio.run(replay(name, path, args))
        runs.append(run)
        print(table(run), flush=True)
        print(flush=True)
        if args.json:  # after every model: a long run that fails late keeps what it measured
            args.json.write_text(json.dumps({"server_root": str(args.server_root), "runs": runs}, indent=2, default=float))


if __name__ == "__main__":
    main()
