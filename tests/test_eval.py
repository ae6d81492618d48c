"""The HumanEval infilling harness: how tasks are cut, the sandbox, and the command end to end on the demo model."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from lsp_server import eval as ev


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return ev.load_problems()


@pytest.mark.parametrize(
    "kind,count", [("single-line", 1033), ("multi-line", 5815), ("random-span", 1640), ("random-span-light", 164)]
)
def test_task_counts_match_the_paper(problems: list[dict], kind: str, count: int) -> None:
    tasks = ev.build_tasks(kind, problems)
    assert len(tasks) == count
    by_id = {p["task_id"]: p for p in problems}
    for t in tasks:
        p = by_id[t.problem]
        # the middle put back gives the prompt + canonical solution, character for character
        assert t.prefix + t.middle + t.suffix == p["prompt"] + p["canonical_solution"]
        if kind in ("single-line", "multi-line"):
            assert t.middle.strip() and "\n" not in t.middle[-1:] and t.prefix.endswith("\n")
            assert "\n" not in t.middle or kind == "multi-line"


def test_random_spans_and_subsets_are_seeded(problems: list[dict]) -> None:
    a = ev.build_tasks("random-span", problems, seed=3)
    assert a == ev.build_tasks("random-span", problems, seed=3)
    assert a != ev.build_tasks("random-span", problems, seed=4)
    sub = ev.subset(a, 20, seed=1)
    assert sub == ev.subset(a, 20, seed=1) and len(sub) == 20 and sub != ev.subset(a, 20, seed=2)


def test_canonical_middle_passes_and_a_wrong_one_fails(problems: list[dict]) -> None:
    by_id = {p["task_id"]: p for p in problems}
    task = ev.build_tasks("single-line", problems[:1])[-1]  # HumanEval/0's "return False"
    assert task.middle.strip() == "return False"
    assert ev.run_sandboxed(ev.program(by_id[task.problem], task, task.middle)) == "passed"
    assert ev.run_sandboxed(ev.program(by_id[task.problem], task, "    return True")) == "failed"
    # leaving with status 0 before check() returned is no pass (the hostile programs: tests/test_sandbox.py)
    assert ev.run_sandboxed(ev.program(by_id[task.problem], task, "    import sys; sys.exit(0)")) == "failed"


def test_sandbox_timeout_kills_everything_it_started() -> None:
    prog = "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'eval-test-sleeper'])\nwhile True: pass\n"
    t0 = time.monotonic()
    assert ev.run_sandboxed(prog, timeout_s=2) == "timeout"
    assert time.monotonic() - t0 < 10
    assert not any(b"eval-test-sleeper" in _cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit())


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_sandbox_memory_limit_own_directory_and_no_network() -> None:
    assert ev.run_sandboxed("x = bytearray(3 << 30)\n", memory_mb=512) == "failed"
    prog = "import os, tempfile\nassert os.getcwd() == os.environ['HOME'] == tempfile.gettempdir()\nassert 'VIRTUAL_ENV' not in os.environ\n"
    assert ev.run_sandboxed(prog) == "passed"
    prog = "import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo']\n"
    assert ev.run_sandboxed(prog) == "passed"
    connect = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\nexcept OSError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    assert ev.run_sandboxed(connect) == "passed"


@pytest.mark.slow
def test_eval_end_to_end_on_the_demo_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A seeded subset through the real pipeline and llama.cpp on the shipped demo model; no quality bar."""
    out = tmp_path / "eval.json"
    args = ["--model", "demo", "--limit", "8", "--seed", "1", "--ablate", "--json", str(out)]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert ev.main(args) == 0
    finally:  # main() points the root logger at this test's captured stderr, which closes when the test ends
        root.handlers[:] = handlers
        root.setLevel(level)
    report = json.loads(out.read_text())
    assert report["tasks_in_set"] == 1033 and report["tasks"] == 8
    assert report["sandbox"]["confined"] is True and report["sandbox"]["tool"] == "bubblewrap"
    assert set(report["runs"]) == {"all", "none"} | {f"all but {r}" for r in ev.postprocess.RULES}
    ids = [r["task_id"] for r in report["runs"]["all"]["results"]]
    assert ids == [t.task_id for t in ev.subset(ev.build_tasks("single-line", ev.load_problems()), 8, 1)]
    for run in report["runs"].values():
        s = run["summary"]
        assert s["tasks"] == 8 and 0 <= s["pass@1"] <= 1 and 0 <= s["baseline_pass@1"] <= 1
        assert s["latency_p50_ms"] <= s["latency_p95_ms"] and s["tokens_per_task"] > 0
        for r in run["results"]:
            assert r["result"] in ("passed", "failed", "timeout") and r["passed"] == (r["result"] == "passed")
            assert r["completion"] is None or r["completion"].strip()
    printed = capsys.readouterr().out
    assert "| all |" in printed and "pass@1" in printed
