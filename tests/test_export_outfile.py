"""The converter's output file under signals, kills and umasks (``codellama_core.outfile``, also used by quantize).

In: fixture checkpoints converted by the real CLI, in a child process that signals itself at a fixed point
(right after the GGUF header is in the temporary file) - SIGINT, SIGTERM, SIGKILL - and by ``main`` in
this process. Out: pass/fail on the exit status (130 / 143), one stderr line, no file left behind; on a
killed run's leftover being removed by the next run (and a live process' file being left alone); and on
the permissions of the output (``0o666`` minus the umask).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from codellama_core.outfile import sweep_stale
from model_export.convert import main

REPO = Path(__file__).resolve().parents[1]

# The patch only adds the signal; everything else is the real converter.
_SIGNAL_WHILE_WRITING = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also when the test runner was started in the background (SIGINT ignored)
import gguf
from model_export.convert import main
real = gguf.GGUFWriter.write_ti_data_to_file
def write_then_signal(self):
    real(self)
    os.kill(os.getpid(), signal.{sig})  # the temporary file holds the header; no tensor data yet
gguf.GGUFWriter.write_ti_data_to_file = write_then_signal
sys.exit(main(sys.argv[1:]))
"""


def convert_with_signal(ckpt: Path, out: Path, sig: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_WRITING.format(sig=sig), str(ckpt), "-o", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_while_writing_cleans_up(checkpoint_factory, tmp_path, sig, code):
    ckpt, _ = checkpoint_factory("meta", shards=2)
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    proc = convert_with_signal(ckpt, out, sig)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip() == "codellama-convert: interrupted, no output written"
    assert list(out.parent.iterdir()) == []


def test_killed_run_leftover_is_removed_by_the_next_run(checkpoint_factory, tmp_path, caplog):
    ckpt, _ = checkpoint_factory("meta")
    out = tmp_path / "model.gguf"
    proc = convert_with_signal(ckpt, out, "SIGKILL")
    assert proc.returncode == -9
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".model.gguf.codellama-") and left.name.endswith(".part")
    assert left.stat().st_size > 0
    # a temporary file of a process that still runs (our parent) is someone's conversion in progress
    live = tmp_path / f".other.gguf.codellama-{os.getppid()}-abcd1234.part"
    live.write_bytes(b"in progress")

    assert main([str(ckpt), "-o", str(out)]) == 0
    err = caplog.text  # the CLI logs to stderr; under pytest the log goes to caplog
    assert f"removed {left}" in err and "left by an interrupted run" in err
    assert f"leaving {live} alone" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "model.gguf"])


def test_sweep_touches_only_our_names(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited
    ours = tmp_path / f".m.gguf.codellama-{pid}-x1y2z3_a.part"
    others = [tmp_path / n for n in (f".m.gguf.{pid}.part", "m.gguf.part", f".m.gguf.codellama-{pid}-x.tmp", "notes.txt")]
    for p in [ours, *others]:
        p.write_text("x")
    assert sweep_stale(tmp_path) == [ours]
    assert sorted(tmp_path.iterdir()) == sorted(others)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_permissions_follow_the_umask(checkpoint_factory, tmp_path, capsys, umask):
    ckpt, _ = checkpoint_factory("hf", n_files=1)
    out = tmp_path / "model.gguf"
    old = os.umask(umask)
    try:
        assert main([str(ckpt), "-o", str(out)]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
