"""A machine that is not the developer's: llama.cpp's threads, the time budget, and what the user is told.

- The threads follow the machine's load: the completion engine runs llama.cpp on the cores other processes leave
  free (one thread when every core is taken: no OpenMP barrier then waits for a descheduled thread), read back
  from llama.cpp (``llama_n_threads``) with a busy-looping process on every CPU; ``--threads`` fixes the count.
  libgomp keeps its own default wait (spinning, then sleeping: the fastest on an idle machine; a passive policy
  cost 1.5-1.8x idle), checked through libgomp's own report (``OMP_DISPLAY_ENV=VERBOSE`` prints its settings
  once, when it loads) in the processes the user starts, ``codellama-lsp complete`` and the server; the user's
  ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` reach it unchanged.
- ``codellama-lsp complete`` waits for the model however slowly it generates, unless given ``--time-budget-ms``;
  then a cut completion is told in one line. The slowness is real generation made slow on purpose:
  ``tests.fixtures.slow_engine`` runs the real command with every llama.cpp decode call delayed (the same on
  every CPU, unlike competing processes, whose effect depends on the core count).
- The status says "slow" when the time budget cuts answers, over stdio from the real (slowed) server, and the
  server's log line says which budget cut the request.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codellama_core import cpuload, llama
from lsp_server.engines import GenerationRequest
from lsp_server.engines.llama_cpp import EngineOptions, LlamaCppEngine
from lsp_server.models import resolve
from tests.fixtures.lsp_client import inline, lsp_session, open_doc, server_env

REPO = Path(__file__).resolve().parents[1]
DEMO = ["examples/demo.py", "--line", "6", "--character", "0", "--model", "demo"]
SLOW = [sys.executable, "-m", "tests.fixtures.slow_engine"]
ENGINE_LINE = re.compile(r"prompt \d+ tokens, generated (\d+), (\d+) ms, stop=(\w+)")


def env_without_wait_knobs(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in server_env().items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return {**env, **extra}


def libgomp_settings(stderr: str) -> dict[str, str]:
    """libgomp's own report of what it read (OMP_DISPLAY_ENV=VERBOSE), e.g. {"OMP_WAIT_POLICY": "PASSIVE"}."""
    assert "OPENMP DISPLAY ENVIRONMENT BEGIN" in stderr, f"expected libgomp's report on stderr, got:\n{stderr[-2000:]}"
    return dict(re.findall(r"^\s+(OMP_WAIT_POLICY|GOMP_SPINCOUNT) = '([^']*)'", stderr, re.M))


LIBGOMP_DEFAULT = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"}  # what libgomp reports when nothing is set


def test_complete_leaves_libgomp_its_default_wait() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "lsp_server", "complete", *DEMO],
        cwd=REPO, env=env_without_wait_knobs(OMP_DISPLAY_ENV="VERBOSE"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    # not passive (a spin count of 0: a futex wake-up at every barrier, 1.5-1.8x slower idle): libgomp's 300,000 turns
    assert libgomp_settings(p.stderr) == LIBGOMP_DEFAULT
    assert p.stdout.strip()


@pytest.mark.parametrize(
    "knob,expected",
    [
        ({"OMP_WAIT_POLICY": "active"}, {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "30000000000"}),
        ({"OMP_WAIT_POLICY": "passive"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}),
        ({"GOMP_SPINCOUNT": "1000"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}),
    ],
)
def test_the_users_own_openmp_setting_wins(knob: dict[str, str], expected: dict[str, str]) -> None:
    code = "from codellama_core import llama\nprint(llama.wait_policy())\nllama.lib()\n"
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env_without_wait_knobs(OMP_DISPLAY_ENV="VERBOSE", **knob),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert libgomp_settings(p.stderr) == expected
    assert p.stdout.strip().endswith("(the user's)")


async def test_the_server_leaves_libgomp_its_default_wait(tmp_path: Path) -> None:
    """The real server over stdio, its stderr (where libgomp reports) sent to a file, until the model is ready."""
    err = tmp_path / "stderr"
    to_file = f"import os, sys\nos.dup2(os.open({str(err)!r}, os.O_WRONLY | os.O_CREAT), 2)\n"
    server = [sys.executable, "-c", to_file + "from lsp_server.cli import main\nsys.exit(main(sys.argv[1:]))", "--stdio"]
    saved = {k: os.environ.pop(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    os.environ["OMP_DISPLAY_ENV"] = "VERBOSE"  # server_env() copies this process's environment into the server's
    try:
        async with lsp_session("demo", command=server):
            pass
    finally:
        os.environ.pop("OMP_DISPLAY_ENV")
        os.environ.update(saved)
    assert libgomp_settings(err.read_text(errors="replace")) == LIBGOMP_DEFAULT


def test_llama_cpp_gets_the_thread_count() -> None:
    """What llama.cpp's context was given: the physical cores by default, ``--threads`` when the user says."""
    path = resolve("demo").path
    lc = llama.lib()
    for threads, expected in ((None, llama.physical_cores()), (1, 1)):
        engine = LlamaCppEngine(path, "demo", EngineOptions(n_ctx=256, threads=threads))
        try:
            assert lc.llama_n_threads(engine._ctx.handle) == expected
            assert lc.llama_n_threads_batch(engine._ctx.handle) == expected
        finally:
            engine.close()


def test_other_processes_on_every_core_leave_llama_cpp_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a busy-looping process on every CPU, a request runs on one thread (what llama.cpp was given, read back),
    so no OpenMP barrier waits for a thread the kernel took off its core; ``--threads`` stays fixed. Competitors on
    every CPU make the machine full whatever else runs on it, so the outcome holds on a busy CI machine too."""
    monkeypatch.setenv("CODELLAMA_ADAPTIVE_THREADS", "1")  # conftest.py fixes the count for the other tests
    path = resolve("demo").path
    lc = llama.lib()
    adaptive = LlamaCppEngine(path, "demo", EngineOptions(n_ctx=256))
    fixed = LlamaCppEngine(path, "demo", EngineOptions(n_ctx=256, threads=llama.physical_cores()))
    spin = "import signal, sys\nsignal.alarm(60)\nwhile True:\n    pass\n"
    workers = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(len(cpuload.cpus() or [0]))]
    try:
        time.sleep(2 * cpuload.WINDOW_S)  # the sampler sees a full window of the competitors
        prompt = [1, *adaptive.vocab.encode("def add(a, b):\n    return")]
        request = GenerationRequest(prompt=prompt, max_tokens=2, time_budget_s=600.0, request_id="busy")
        r = adaptive.submit(request).future.result(timeout=600)
        assert r.threads == 1 and lc.llama_n_threads(adaptive._ctx.handle) == 1
        r = fixed.submit(request).future.result(timeout=600)
        assert r.threads == llama.physical_cores() == lc.llama_n_threads(fixed._ctx.handle)
    finally:
        for w in workers:
            w.kill()
            w.wait()
        adaptive.close()
        fixed.close()


def test_threads_beside_other_load() -> None:
    """The thread count for a request: the cores other processes leave (a core at least half free counts), at most
    the configured count, at least one."""
    assert cpuload.threads_beside(0.0, 2, 2) == 2
    assert cpuload.threads_beside(0.4, 2, 2) == 2
    assert cpuload.threads_beside(0.6, 2, 2) == 1
    assert cpuload.threads_beside(5.0, 2, 2) == 1
    assert cpuload.threads_beside(3.0, 8, 16) == 8
    assert cpuload.threads_beside(10.2, 8, 16) == 6
    assert cpuload.threads_beside(0.0, 1, 16) == 1
    # the load is read on the CPUs this process may run on (a container's cpuset), from /proc/stat's per-CPU lines
    every = set(range(os.cpu_count() or 1))
    machine, ours = cpuload._machine_busy_s(), cpuload._machine_busy_s(every)
    assert machine is not None and ours == pytest.approx(machine, rel=0.01, abs=1.0)
    one = cpuload._machine_busy_s({min(cpuload.cpus() or {0})})
    assert one is not None and one <= machine + 1.0


def slow_complete(delay_ms: int, *extra: str) -> tuple[subprocess.CompletedProcess[str], tuple[int, int, str]]:
    env = {**server_env(), "CODELLAMA_TEST_DECODE_DELAY_MS": str(delay_ms)}
    p = subprocess.run([*SLOW, "complete", *DEMO, "-v", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    m = ENGINE_LINE.search(p.stderr)
    assert m, p.stderr
    return p, (int(m.group(1)), int(m.group(2)), m.group(3))


def test_complete_without_a_budget_waits_for_a_slow_model() -> None:
    """60 ms more per decode call: the demo completion takes about 3 s in the engine, longer than an editor's
    default budget (2,000 ms), which cut it to nothing before; the command waits and prints it."""
    p, (_generated, ms, stop) = slow_complete(60)
    assert p.returncode == 0, p.stderr
    assert ms > 2000 and stop != "time", (ms, stop)
    assert p.stdout.strip(), "expected the completion on stdout"
    assert "time budget" not in p.stderr and "no completion" not in p.stderr


def test_complete_with_a_budget_says_that_it_cut() -> None:
    p, (generated, _ms, stop) = slow_complete(60, "--time-budget-ms", "300")
    assert p.returncode == 0, p.stderr
    assert stop == "time"
    said = [ln for ln in p.stderr.splitlines() if ln.startswith("codellama-lsp: ")]
    assert len(said) == 1, p.stderr
    assert f"{generated} token(s) generated in " in said[0] and "(--time-budget-ms 300)" in said[0], said
    assert "no completion here" not in p.stderr


def test_complete_refuses_a_budget_out_of_range() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "lsp_server", "complete", *DEMO, "--time-budget-ms", "5"],
        cwd=REPO, env=server_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and "expected --time-budget-ms between 10 and 600000, got 5" in p.stderr


async def test_the_status_says_when_the_budget_cuts_answers(tmp_path: Path) -> None:
    """The real server over stdio, its decodes slowed by 80 ms: with a 300 ms budget every answer is cut, and the
    status says so in words (with a hint) instead of a plain "ready"; the log line says which budget cut it."""
    log = tmp_path / "server.log"
    doc = (REPO / "examples" / "demo.py").read_text()
    env = {"CODELLAMA_TEST_DECODE_DELAY_MS": "80"}
    os.environ.update(env)  # server_env() copies this process's environment into the server's
    try:
        async with lsp_session(
            "demo", options={"timeBudgetMs": 300}, command=[*SLOW, "--stdio", "-v", "--log-file", str(log)]
        ) as client:
            open_doc(client, "file:///w/demo.py", doc)
            before = len(client.status.items)
            await inline(client, "file:///w/demo.py", 6, 0)
            status = await client.status.wait_for({"ready"}, after=before)
    finally:
        for k in env:
            os.environ.pop(k, None)
    assert status["slow"] == "answers cut at 0.3 s" and status["cutAnswers"] == 1, status
    assert "smaller model" in status["hint"] and "contextTokens" in status["hint"], status
    lines = [ln for ln in log.read_text().splitlines() if "stop=time" in ln]
    assert lines and all(ln.endswith("; cut by the time budget, timeBudgetMs 300") for ln in lines), lines
