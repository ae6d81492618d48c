"""``codellama_core.tool``: every command's error boundary (one ``error:`` line, exit statuses, SIGTERM as an exception)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from codellama_core.errors import CoreError
from codellama_core.tool import FAILURE, USAGE, Terminated, UsageError, exit_code, run_tool, sigterm_raises


class ToolError(CoreError):
    pass


def test_the_body_status_passes_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_tool("t", lambda: None, (ToolError,)) == 0
    assert run_tool("t", lambda: FAILURE, (ToolError,)) == FAILURE
    assert capsys.readouterr().err == ""


def test_a_package_error_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise ToolError("expected a GGUF file, got a directory")

    assert run_tool("codellama-x", body, (ToolError,)) == FAILURE
    assert capsys.readouterr().err == "codellama-x: error: expected a GGUF file, got a directory\n"


def test_usage_errors_get_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise UsageError("expected --load-timeout > 0, got 0")

    assert run_tool("t", body, (ToolError,)) == USAGE
    assert capsys.readouterr().err == "t: error: expected --load-timeout > 0, got 0\n"


def test_other_exceptions_are_bugs_and_propagate() -> None:
    def body() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_tool("t", body, (ToolError,))


def test_interrupts_map_to_the_shell_status(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    def terminated() -> int:
        raise Terminated

    assert run_tool("t", interrupted, (ToolError,)) == 128 + signal.SIGINT
    assert run_tool("t", terminated, (ToolError,)) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "t: interrupted, no output written\n" * 2
    assert exit_code(KeyboardInterrupt()) == 130 and exit_code(Terminated()) == 143
    assert run_tool("t", interrupted, (ToolError,), interrupted=lambda exc: 7) == 7


def test_sigterm_runs_finally_blocks_and_restores_the_handler(tmp_path: object) -> None:
    """A real SIGTERM to a real process: the body's ``finally`` runs (a temporary file goes), status 143."""
    script = textwrap.dedent(
        """
        import os, signal, sys, tempfile
        from codellama_core.tool import run_tool
        fd, tmp = tempfile.mkstemp(); os.close(fd)
        print(tmp, flush=True)
        def body():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.pause()
            finally:
                os.unlink(tmp)
        code = run_tool("t", body, ())
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        sys.exit(code)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 143, proc.stderr
    assert not os.path.exists(proc.stdout.strip())
    assert proc.stderr == "t: interrupted, no output written\n"


def test_sigterm_raises_is_a_no_op_outside_the_main_thread() -> None:
    import threading

    seen: list[bool] = []

    def worker() -> None:
        with sigterm_raises():
            seen.append(True)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [True]
