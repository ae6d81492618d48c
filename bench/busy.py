"""A machine that is not the developer's: completion latency while other processes keep the cores busy.

In: models (``demo``, ``random`` = the 92-94 M random-weight Code-Llama-shaped Q4_K_M GGUF that
``bench/latency.py`` builds, or GGUF paths), thread/wait settings to compare, load levels (0, 1 or every
core kept busy by ``python -c 'while True: pass'`` workers, each killed at the end of its level and bounded
by an alarm in case this script dies). Out: Markdown tables on stdout (and JSON with ``--json``):

- keystrokes: each setting in its own process (libgomp reads its environment once, when it loads), typing
  ``--chars`` characters of a standard-library file with the editor's default settings (``timeBudgetMs``
  2000, 64 tokens), one request per key with a typist's pause: p50/p95 latency of the model's requests,
  the share answered with text, the share cut by the time budget;
- ``complete`` (``--complete N``): the README's main command (``codellama-lsp complete examples/demo.py
  --line 6 --character 0 --model demo``, no time budget) N times idle and N times with every core busy,
  per setting: wall time, the engine's time, and whether it printed a completion. The issue's goal: a
  completion every time, busy median at most 3x the idle median.

Settings (``--settings``): ``passive`` (the default now: ``OMP_WAIT_POLICY=passive``, set by the adapter),
``spin`` (libgomp's default, what ran before: ``GOMP_SPINCOUNT=300000``, which also keeps the adapter from
setting a policy), ``active`` (``OMP_WAIT_POLICY=active``), ``t1`` (passive, ``--threads 1``), ``spin-t1``.
Within a load level the settings and models alternate, and ``--rounds`` repeats the whole sweep, so a
change in the machine's other load hits every setting alike; ``uptime`` is printed beside every level.

Run: ``python bench/busy.py --models demo,random --complete 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]

# name -> (environment for the child, --threads); the child's environment is the parent's minus these knobs.
# --threads None: the default (as many threads as physical cores on an idle machine, the cores left over while
# other processes keep some busy: codellama_core.cpuload); "all": every physical core, fixed (the old default)
SETTINGS: dict[str, tuple[dict[str, str], int | str | None]] = {
    "default": ({}, None),
    "adaptive-passive": ({"OMP_WAIT_POLICY": "passive"}, None),
    "adaptive-spin": ({"GOMP_SPINCOUNT": "300000"}, None),
    "passive": ({"OMP_WAIT_POLICY": "passive"}, "all"),
    "spin": ({"GOMP_SPINCOUNT": "300000"}, "all"),
    "active": ({"OMP_WAIT_POLICY": "active"}, "all"),
    "t1": ({"OMP_WAIT_POLICY": "passive"}, 1),
    "spin-t1": ({"GOMP_SPINCOUNT": "300000"}, 1),
    # libgomp's spin count between the two: how long a thread spins at a barrier before it sleeps
    "spin30k": ({"GOMP_SPINCOUNT": "30000"}, "all"),
    "adaptive-spin30k": ({"GOMP_SPINCOUNT": "30000"}, None),
    "spin1k": ({"GOMP_SPINCOUNT": "1000"}, "all"),
    "adaptive-spin1k": ({"GOMP_SPINCOUNT": "1000"}, None),
    "spin10k": ({"GOMP_SPINCOUNT": "10000"}, "all"),
}
KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
WORKER = "import signal, sys\nsignal.alarm(int(sys.argv[1]))\nwhile True:\n    pass\n"


class Competitors:
    """``n`` processes spinning on the CPU, killed on exit (and by SIGALRM after ``limit_s`` whatever happens)."""

    def __init__(self, n: int, limit_s: int) -> None:
        self.n, self.limit_s = n, limit_s
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Competitors:
        self.procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(self.limit_s)]) for _ in range(self.n)]
        time.sleep(0.5 if self.n else 0.0)  # let the scheduler see them
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def uptime() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def child_env(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(SETTINGS[setting][0])
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


# ---- one setting, one model, in its own process ------------------------------------------------------------
def _threads(spec: int | str | None) -> int | None:
    from codellama_core.llama import physical_cores

    return physical_cores() if spec == "all" else spec if isinstance(spec, int) else None


async def _type(model: str, threads: int | None, chars: int, seed: int) -> dict:
    import random

    from bench.latency import model_path
    from lsp_server import pipeline
    from lsp_server.cache import TypeThroughCache
    from lsp_server.config import Settings
    from lsp_server.engines.llama_cpp import EngineOptions, LlamaCppEngine

    name, path = model_path(model)
    engine = LlamaCppEngine(path, name, EngineOptions(n_ctx=2048 + 64 + 64, threads=threads))
    settings = Settings()  # the editor's defaults: 2,000 ms budget, 64 tokens, 2,048 context tokens
    text = (Path(sysconfig.get_paths()["stdlib"]) / "statistics.py").read_text()
    start = text.index("\n", int(len(text) * 0.66)) + 1
    rng = random.Random(seed)
    cache = TypeThroughCache()
    reqs: list[dict] = []
    try:
        for k in range(chars + 1):
            doc = text[: start + k] + text[start + chars :]
            t0 = time.perf_counter()
            out = await pipeline.complete(engine, cache, "bench", doc, start + k, settings)
            ms = (time.perf_counter() - t0) * 1e3
            r = out.result
            if out.source != "cache" and r is not None and k:  # the first request is the cold start
                reqs.append(
                    {"ms": ms, "text": bool(out.texts), "stop": r.stop, "generated": r.generated_tokens, "threads": r.threads}
                )
            await asyncio.sleep(rng.uniform(0.03, 0.08))
    finally:
        engine.close()
    return {"model": name, "requests": reqs}


def child(args: argparse.Namespace) -> None:
    threads = _threads(SETTINGS[args.child][1])
    print(json.dumps(asyncio.run(_type(args.model, threads, args.chars, args.seed))))


def run_child(setting: str, model: str, chars: int, seed: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", setting, "--model", model, "--chars", str(chars), "--seed", str(seed)]
    try:
        p = subprocess.run(cmd, env=child_env(setting), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "requests": [], "error": f"timed out after {timeout:g} s"}
    if p.returncode != 0:
        return {"model": model, "requests": [], "error": p.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


# ---- the README's main command -----------------------------------------------------------------------------
ENGINE_LINE = re.compile(r"prompt (\d+) tokens, generated (\d+), (\d+) ms, stop=(\w+)")


def run_complete(setting: str, timeout: float) -> dict:
    threads = _threads(SETTINGS[setting][1])
    cmd = [sys.executable, "-m", "lsp_server", "complete", "examples/demo.py", "--line", "6", "--character", "0",
           "--model", "demo", "-v"] + (["--threads", str(threads)] if threads else [])  # fmt: skip
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=child_env(setting), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"wall_ms": timeout * 1e3, "printed": False, "engine_ms": None, "generated": None}
    wall = (time.perf_counter() - t0) * 1e3
    m = ENGINE_LINE.search(p.stderr)
    return {
        "wall_ms": wall,
        "printed": p.returncode == 0 and bool(p.stdout.strip()),
        "engine_ms": int(m.group(3)) if m else None,
        "generated": int(m.group(2)) if m else None,
    }


# ---- tables ------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def keystroke_rows(results: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["model"], r["setting"], r["busy"]) for r in results}, key=lambda k: (k[0], k[2], k[1]))
    for model, setting, busy in keys:
        reqs = [q for r in results if (r["model"], r["setting"], r["busy"]) == (model, setting, busy) for q in r["requests"]]
        errors = [r["error"] for r in results if (r["model"], r["setting"], r["busy"]) == (model, setting, busy) and "error" in r]
        rows.append(
            {
                "model": model, "setting": setting, "busy": busy, "requests": len(reqs),
                "p50_ms": pct([q["ms"] for q in reqs], 0.5), "p95_ms": pct([q["ms"] for q in reqs], 0.95),
                "with_text": sum(q["text"] for q in reqs) / max(1, len(reqs)),
                "cut": sum(q["stop"] == "time" for q in reqs) / max(1, len(reqs)),
                "threads": sorted({q.get("threads", 0) for q in reqs}),
                "errors": errors,
            }
        )  # fmt: skip
    return rows


def keystroke_verdicts(rows: list[dict], busiest: int) -> list[str]:
    """The issue's goal per model and setting: p50 with the most cores busy at most 3x the p50 with none."""
    out = []
    for r in rows:
        if r["busy"] != busiest or not busiest:
            continue
        idle = next((x for x in rows if (x["model"], x["setting"], x["busy"]) == (r["model"], r["setting"], 0)), None)
        if idle is None:
            continue
        ratio = r["p50_ms"] / idle["p50_ms"]
        out.append(f"{r['model']} {r['setting']}: keystroke p50 busy/idle {ratio:.2f}x ({'PASS' if ratio <= 3 else 'FAIL'} <= 3)")
    return out


def keystroke_table(rows: list[dict]) -> str:
    out = [
        "| model | setting | busy cores | model requests | p50 ms | p95 ms | answered with text | cut by the budget | threads |"
    ]
    out.append("|" + "---|" * 9)
    for r in rows:
        err = f" ({len(r['errors'])} run(s) failed: {r['errors'][0]})" if r["errors"] else ""
        out.append(
            f"| {r['model']} | {r['setting']} | {r['busy']} | {r['requests']}{err} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{100 * r['with_text']:.0f}% | {100 * r['cut']:.0f}% | {'/'.join(map(str, r['threads']))} |"
        )
    return "\n".join(out)


def complete_table(runs: dict[tuple[str, int], list[dict]]) -> tuple[str, list[str]]:
    out = ["| setting | busy cores | runs | printed a completion | wall median ms | engine median ms | busy/idle (wall) |"]
    out.append("|" + "---|" * 7)
    verdicts = []
    for setting in dict.fromkeys(s for s, _ in runs):
        idle = statistics.median(r["wall_ms"] for r in runs[(setting, 0)]) if (setting, 0) in runs else float("nan")
        for (s, busy), rs in runs.items():
            if s != setting:
                continue
            wall = statistics.median(r["wall_ms"] for r in rs)
            engine = [r["engine_ms"] for r in rs if r["engine_ms"] is not None]
            printed = sum(r["printed"] for r in rs)
            ratio = wall / idle
            out.append(
                f"| {setting} | {busy} | {len(rs)} | {printed}/{len(rs)} | {wall:.0f} | "
                f"{statistics.median(engine) if engine else float('nan'):.0f} | {ratio:.2f}x |"
            )
            if busy:
                ok = printed == len(rs) and ratio <= 3.0
                verdicts.append(
                    f"{setting}: {'PASS' if ok else 'FAIL'} (printed {printed}/{len(rs)}, busy/idle {ratio:.2f}x <= 3)"
                )
    return "\n".join(out), verdicts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="demo,random")
    p.add_argument("--settings", default="passive,spin,t1", help=f"any of {', '.join(SETTINGS)}")
    p.add_argument("--loads", default="0,1,all", help="busy cores: numbers or 'all'")
    p.add_argument("--chars", type=int, default=30, help="characters typed per run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--complete", type=int, default=0, metavar="N", help="also run `complete` on the demo N times idle and busy")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one child may take")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"expected settings among {', '.join(SETTINGS)}, got {', '.join(unknown)}")
    cores = os.cpu_count() or 1
    loads = sorted({cores if x == "all" else int(x) for x in args.loads.split(",") if x})
    models = [m for m in args.models.split(",") if m]
    if "random" in models:
        from bench.latency import random_codellama_gguf

        random_codellama_gguf()  # build it (once) before anything is timed
    limit = int(args.timeout * (len(settings) * len(models) + 1) + 60)
    results: list[dict] = []
    notes: list[str] = []
    print(f"CPU: {cpu_name()}, {cores} cores", file=sys.stderr)
    for rnd in range(args.rounds):
        for busy in loads:
            with Competitors(busy, limit):
                notes.append(f"round {rnd + 1}, {busy} busy core(s): start {uptime()}")
                for model in models:
                    for setting in settings:
                        got = run_child(setting, model, args.chars, rnd, args.timeout)
                        results.append({**got, "model": got.get("model", model), "setting": setting, "busy": busy})
                        print(f"  {setting:8s} {model}: {len(got['requests'])} requests {got.get('error', '')}", file=sys.stderr)
                notes.append(f"round {rnd + 1}, {busy} busy core(s): end {uptime()}")
            print(notes[-2] + "; " + notes[-1].split(": ", 1)[1], file=sys.stderr)
    rows = keystroke_rows(results)
    print(keystroke_table(rows))
    print()
    print("\n".join(keystroke_verdicts(rows, max(loads))))
    out: dict = {"cpu": cpu_name(), "cores": cores, "notes": notes, "keystrokes": rows}
    if args.complete:
        runs: dict[tuple[str, int], list[dict]] = {}
        for busy in (0, cores):
            with Competitors(busy, int(args.timeout * args.complete * len(settings) + 60)):
                notes.append(f"complete, {busy} busy core(s): start {uptime()}")
                for _ in range(args.complete):
                    for setting in settings:
                        runs.setdefault((setting, busy), []).append(run_complete(setting, args.timeout))
                notes.append(f"complete, {busy} busy core(s): end {uptime()}")
        table, verdicts = complete_table(runs)
        print()
        print(table)
        print()
        print("\n".join(verdicts))
        out["complete"] = {f"{s}/{b}": rs for (s, b), rs in runs.items()}
        out["verdicts"] = verdicts
    print()
    print("\n".join(f"- {n}" for n in notes))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
