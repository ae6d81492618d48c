"""Prompt tokens evaluated per jump and per key over an editing session, in-process (pipeline + engine, no LSP).

In: a GGUF (default: the demo), the checkouts to compare (``--tree``, default this one; give another checkout, e.g.
main, to compare before/after: each run is a subprocess with that tree first on ``PYTHONPATH``, alternated ``--rounds``
times so a machine whose load changes treats both alike). Out: a table per tree - evaluated prompt tokens per jump
(the first request of a visit) and per key (mean, p50, max), how many requests were answered, the completion cache's
share, jump and key latency p50 - and the machine's load.

The session is the one of issue 21: three standard-library files open (textwrap.py, shlex.py, heapq.py), six places
visited in the order 1 3 2 5 1 4 6 3 1 2 5 4; at each visit a new line (with the indentation of the line above) and
four keys, a request per key, 8 tokens generated, the default settings (2048 + 512 prompt tokens, time budget 2 s;
trees that size prompts from the measured speed, ``coldJumpMs``, do so here as the server would).
Chunks of the other open files and the ring of edited regions come in as the server gives them (``neighbors``).
With ``--prefill`` (trees that have it), each visit's first edit submits the server's background prefill and waits the
client's debounce (200 ms) before the request, as the server does (``server/prefill.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import attrs

FILES = ("textwrap", "shlex", "heapq")
# (file, line) of the six places: inside functions, at the end of a statement line
PLACES = [(0, 140), (0, 330), (1, 120), (1, 260), (2, 200), (2, 420)]
ORDER = [1, 3, 2, 5, 1, 4, 6, 3, 1, 2, 5, 4]
KEYS = "self"
DEBOUNCE_S = 0.2


def run_session(model: str, prefill: bool, budget_ms: int, cold_jump_ms: int) -> dict[str, object]:
    from lsp_server import pipeline
    from lsp_server.cache import TypeThroughCache
    from lsp_server.config import Settings
    from lsp_server.context import cursor
    from lsp_server.engines.llama_cpp import LlamaCppEngine
    from lsp_server.neighbors import Doc, Neighbors

    texts = [Path(__import__(m).__file__).read_text() for m in FILES]
    uris = [f"file:///w/{m}.py" for m in FILES]
    engine = LlamaCppEngine(Path(model), "bench")
    cache = TypeThroughCache()
    nb = Neighbors()
    settings = Settings(max_tokens=8, time_budget_ms=budget_ms)
    if hasattr(settings, "cold_jump_ms"):  # trees without it have no prompt sizing
        settings = attrs.evolve(settings, cold_jump_ms=cold_jump_ms)
    jumps: list[tuple[int, float, bool]] = []
    keys: list[tuple[int, float, bool]] = []
    prefilled: list[int] = []
    cached = 0

    try:  # the server's prompt sizes from the engine's measured speed (coldJumpMs), in trees that have them
        from lsp_server.pacing import PromptSizer

        sizer: object | None = PromptSizer()
    except ImportError:
        sizer = None

    def sized() -> Settings:
        speed = getattr(engine, "speed", None)
        if sizer is None or speed is None or speed.prompt_tps <= 0 or settings.cold_jump_ms <= 0:  # type: ignore[attr-defined]
            return settings
        got = sizer.choose(  # type: ignore[attr-defined]
            speed.prompt_tps,
            speed.gen_ms,
            settings.cold_jump_ms,
            settings.context_tokens,
            settings.extra_context_tokens,
            *([speed.ms_per_position] if hasattr(speed, "ms_per_position") else []),
        )
        sizes.append(got.context_tokens + got.extra_context_tokens)
        return attrs.evolve(settings, context_tokens=got.context_tokens, extra_context_tokens=got.extra_context_tokens)

    sizes: list[int] = []

    async def one(f: int, offset: int) -> tuple[int, float, bool, str]:
        docs = [Doc(uris[i], f"{FILES[i]}.py", "python", texts[i]) for i in range(3)]
        extra = pipeline.Extra(nb, docs[f], tuple(d for d in docs if d.uri != uris[f]))
        t = time.perf_counter()
        c = await pipeline.complete(engine, cache, uris[f], texts[f], offset, sized(), 1, "b", extra)
        ms = (time.perf_counter() - t) * 1e3
        r = c.result
        return (r.evaluated_tokens if r is not None else 0), ms, bool(c.texts), c.source

    async def session() -> None:
        nonlocal cached
        for visit in ORDER:
            f, line = PLACES[visit - 1]
            lines = texts[f].split("\n")
            line = min(line, len(lines) - 1)
            indent = lines[line][: len(lines[line]) - len(lines[line].lstrip())]
            at = sum(len(x) + 1 for x in lines[:line]) + len(lines[line])
            texts[f] = texts[f][:at] + "\n" + indent + texts[f][at:]
            offset = at + 1 + len(indent)
            nb.ring.edited(Doc(uris[f], f"{FILES[f]}.py", "python", texts[f]), line + 1)
            if prefill:
                docs = [Doc(uris[i], f"{FILES[i]}.py", "python", texts[i]) for i in range(3)]
                extra = pipeline.Extra(nb, docs[f], tuple(d for d in docs if d.uri != uris[f]))
                req, _ = pipeline.build_request(engine, texts[f], offset, sized(), 1, "p", cursor(texts[f], offset), None, extra)
                job = engine.submit(replace(req, background=True, time_budget_s=120.0))  # type: ignore[call-arg]
                await asyncio.sleep(DEBOUNCE_S)
                if job.future.done():
                    prefilled.append(job.future.result().evaluated_tokens)
            ev, ms, ok, source = await one(f, offset)
            jumps.append((ev, ms, ok))
            for k in KEYS:
                texts[f] = texts[f][:offset] + k + texts[f][offset:]
                offset += 1
                nb.ring.edited(Doc(uris[f], f"{FILES[f]}.py", "python", texts[f]), line + 1)
                ev, ms, ok, source = await one(f, offset)
                cached += source == "cache"
                keys.append((ev, ms, ok))

    try:
        asyncio.run(session())
    finally:
        kept = getattr(engine, "kept", None)
        kept_mib = kept.bytes / 2**20 if kept is not None else 0.0
        engine.close()
    return {
        "jump_eval": [j[0] for j in jumps],
        "key_eval": [k[0] for k in keys],
        "jump_ms": [j[1] for j in jumps],
        "key_ms": [k[1] for k in keys],
        "answered": sum(j[2] for j in jumps) + sum(k[2] for k in keys),
        "requests": len(jumps) + len(keys),
        "cached": cached,
        "kept_mib": kept_mib,
        "sizes": sorted(set(sizes)),
        "prefilled": prefilled,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "lsp_server/models/demo/codellama-demo.gguf"))
    p.add_argument("--tree", action="append", default=None, help="checkouts to compare (default: this one)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--prefill", action="store_true", help="emulate the server's prefill in trees that have it")
    p.add_argument("--budget-ms", type=int, default=2000, help="timeBudgetMs (a large one: counts without time cuts)")
    p.add_argument("--cold-jump-ms", type=int, default=1500, help="coldJumpMs (0: the prompt sizes as set)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(run_session(args.model, args.child == "prefill", args.budget_ms, args.cold_jump_ms)))
        return
    trees = args.tree or [str(Path(__file__).resolve().parents[1])]
    results: dict[str, list[dict[str, object]]] = {t: [] for t in trees}
    loads = []
    for _ in range(args.rounds):
        for tree in trees:
            has_prefill = (Path(tree) / "lsp_server/server/prefill.py").exists()
            env = {**os.environ, "PYTHONPATH": tree}
            loads.append(os.getloadavg()[0])
            mode = "prefill" if args.prefill and has_prefill else "plain"
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--child", mode, "--budget-ms", str(args.budget_ms)]
                + ["--cold-jump-ms", str(args.cold_jump_ms)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load average during the runs: {min(loads):.1f}-{max(loads):.1f} ({os.cpu_count()} CPUs); {vars(args)}")
    print(
        "| tree | evaluated per jump: mean (p50, max) | per key: mean (p50, max) | answered | cache hits | jump p50 | key p50 "
        "| kept MiB | prompt sizes | prefilled per jump |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tree, runs in results.items():
        for r in runs:
            je, ke = r["jump_eval"], r["key_eval"]
            assert isinstance(je, list) and isinstance(ke, list)
            print(
                f"| {tree} | {statistics.mean(je):.0f} ({statistics.median(je):.0f}, {max(je)}) "
                f"| {statistics.mean(ke):.1f} ({statistics.median(ke):.0f}, {max(ke)}) | {r['answered']}/{r['requests']} "
                f"| {r['cached']} | {statistics.median(r['jump_ms']):.0f} ms | {statistics.median(r['key_ms']):.0f} ms "  # type: ignore[arg-type]
                f"| {r['kept_mib']:.1f} | {r['sizes'] or 'as set'} "
                f"| {statistics.mean(r['prefilled']) if r['prefilled'] else 0:.0f} |"  # type: ignore[arg-type]
            )


if __name__ == "__main__":
    main()
