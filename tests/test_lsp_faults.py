"""Faults at the server's process and network edges, against the real server and real llama.cpp:
bad model files (metadata llama.cpp aborts or hangs on, truncations at every structural boundary) with
recovery, a load timeout, signals (also during a load), TCP authentication and one client at a time,
a port in use, and which models count as Hugging Face files.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from pathlib import Path

import gguf
import pytest

from lsp_server import models
from tests.fixtures.lsp_client import SERVER, server_env
from tests.fixtures.lsp_models import lsp_random_gguf  # noqa: F401
from tests.fixtures.raw_lsp import RawServer, frame

URI = "file:///work/faults.py"


def patched(src: Path, out: Path, key: str, value: float | int) -> Path:
    """A copy of ``src`` with the scalar ``key`` overwritten in place (same type, so every offset stays)."""
    r = gguf.GGUFReader(src)
    field = r.get_field(key)
    assert field is not None, key
    at = field.offset + sum(int(p.nbytes) for p in field.parts[:-1])
    raw = field.parts[-1].dtype.type(value).tobytes()
    del r, field
    data = bytearray(src.read_bytes())
    data[at : at + len(raw)] = raw
    out.write_bytes(bytes(data))
    return out


def boundaries(path: Path) -> list[int]:
    """Where one structure of the file ends and the next begins (header, each key/value, each tensor
    info, the data section, each tensor's data)."""
    r = gguf.GGUFReader(path)
    cuts = {4, 8, 16, 24, r.data_offset} | {f.offset for f in r.fields.values()} | {t.field.offset for t in r.tensors}
    cuts |= {t.data_offset for t in r.tensors} | {t.data_offset + t.n_bytes - 1 for t in r.tensors}
    return sorted(c for c in cuts if 0 < c < path.stat().st_size)


def set_model(s: RawServer, model: str | Path) -> dict:
    mark = len(s.statuses())
    s.notify("workspace/didChangeConfiguration", {"settings": {"model": str(model)}})
    return s.wait_status({"ready", "error"}, after=mark + 1, timeout=120)


def test_bad_model_files_give_an_error_status_and_the_server_recovers(lsp_random_gguf: Path, tmp_path: Path) -> None:
    arch = "llama"
    k = gguf.Keys
    bad_meta = {
        "block_count 0": (k.LLM.BLOCK_COUNT.format(arch=arch), 0),
        "block_count 1000": (k.LLM.BLOCK_COUNT.format(arch=arch), 1000),
        "epsilon NaN": (k.Attention.LAYERNORM_RMS_EPS.format(arch=arch), float("nan")),
        "context 2^32-1": (k.LLM.CONTEXT_LENGTH.format(arch=arch), 2**32 - 1),
        "rope base NaN": (k.Rope.FREQ_BASE.format(arch=arch), float("nan")),
        "0 heads": (k.Attention.HEAD_COUNT.format(arch=arch), 0),
        "0 kv heads": (k.Attention.HEAD_COUNT_KV.format(arch=arch), 0),
    }
    files = {
        name: patched(lsp_random_gguf, tmp_path / f"{i}.gguf", key, v) for i, (name, (key, v)) in enumerate(bad_meta.items())
    }
    data = lsp_random_gguf.read_bytes()
    for cut in boundaries(lsp_random_gguf):
        (tmp_path / f"cut{cut}.gguf").write_bytes(data[:cut])
        files[f"truncated at {cut}"] = tmp_path / f"cut{cut}.gguf"
    assert len(files) > 40
    with RawServer() as s:
        s.initialize(lsp_random_gguf)
        assert s.statuses()[-1]["state"] == "ready"
        for name, path in files.items():
            got = set_model(s, path)
            assert got["state"] == "error" and got["message"].startswith("expected"), (name, got)
            assert "\n" not in got["message"], got
            # alive and answering
            assert "result" in s.request("codellama/documentState", {"uri": URI}), name
        assert set_model(s, lsp_random_gguf)["state"] == "ready"
        s.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": "def f(x):\n    "}},
        )
        reply = s.request(
            "textDocument/inlineCompletion",
            {"textDocument": {"uri": URI}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 1}},
        )
        assert "result" in reply, reply
        assert "Traceback" not in s.stderr()
        s.request("shutdown")
        s.notify("exit")
        assert s.exit_code() == 0


def test_a_load_past_its_timeout_is_an_error_and_the_server_goes_on(lsp_random_gguf: Path) -> None:
    with RawServer(args=("--load-timeout", "0.001")) as s:
        s.initialize(lsp_random_gguf)
        error = s.wait_status({"error", "ready"})
        assert error["state"] == "error" and "within 0.001 s" in error["message"], error
        assert "result" in s.request("codellama/documentState", {"uri": URI})
        s.request("shutdown")
        s.notify("exit")
        assert s.exit_code() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_an_idle_stdio_server(lsp_random_gguf: Path, sig: int) -> None:
    with RawServer() as s:
        s.initialize(lsp_random_gguf)
        s.proc.send_signal(sig)
        assert s.exit_code(timeout=30) == 128 + sig
        assert "Traceback" not in s.stderr()


def test_sigterm_during_a_load_exits_at_once(lsp_random_gguf: Path) -> None:
    with RawServer() as s:
        s.initialize(lsp_random_gguf, wait_status=False)
        s.wait_status({"loading"})
        s.proc.send_signal(signal.SIGTERM)
        assert s.exit_code(timeout=30) == 128 + signal.SIGTERM  # reaped: no zombie left behind
        assert "Traceback" not in s.stderr()


# ---- TCP ----------------------------------------------------------------------------------------------
class TcpServer:
    def __init__(self, *args: str, token: str | None = "s3cret") -> None:
        env = server_env()
        env.pop("CODELLAMA_LSP_TOKEN", None)
        if token is not None:
            env["CODELLAMA_LSP_TOKEN"] = token
        self.proc = subprocess.Popen(
            [*SERVER[:3], "--tcp", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if m := re.search(r"listening on ([\d.]+):(\d+)(; token: (\S+))?", line):
                self.port, self.token = int(m[2]), m[4] or token
                break
        else:
            raise AssertionError("the server did not say where it listens")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


_BUFFERS: dict[int, bytes] = {}


def read_frame(sock: socket.socket) -> dict | None:
    """The next frame on ``sock`` (None once it is closed); bytes past it wait for the next call."""
    buf = _BUFFERS.pop(sock.fileno(), b"")
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])
            if len(rest) >= length:
                _BUFFERS[sock.fileno()] = rest[length:]
                return json.loads(rest[:length])
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk


def initialize(token: str | None, model: str = "/nonexistent.gguf") -> bytes:
    options: dict = {"model": model}
    if token is not None:
        options["token"] = token
    return frame({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": options}})  # fmt: skip


def test_tcp_needs_the_token_and_serves_one_client_at_a_time(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("password=hunter2\n")
    server = TcpServer()
    try:
        for token in (None, "wrong"):
            with server.connect() as sock:
                sock.sendall(initialize(token))
                refused = read_frame(sock)
                assert refused["error"]["code"] == -32600 and "token" in refused["error"]["message"], refused
                assert read_frame(sock) is None  # closed
        with server.connect() as sock:
            sock.sendall(initialize("s3cret", model=str(secret_file)))
            reply = read_frame(sock)
            assert "capabilities" in reply["result"], reply
            sock.sendall(frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
            while (msg := read_frame(sock)) is not None:
                if msg.get("method") == "codellama/status" and msg["params"]["state"] == "error":
                    break
            # the error names the file but never shows its content
            assert "hunter2" not in json.dumps(msg) and "password" not in json.dumps(msg), msg
            with server.connect() as second:
                second.sendall(initialize("s3cret"))
                busy = read_frame(second)
                assert "one client at a time" in busy["error"]["message"], busy
            sock.sendall(frame({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
            while (msg := read_frame(sock)) is not None and msg.get("id") != 2:
                pass
            sock.sendall(frame({"jsonrpc": "2.0", "method": "exit"}))
        assert server.proc.wait(timeout=30) == 0
    finally:
        err = server.stop()
    assert "Traceback" not in err


def test_tcp_token_generated_and_printed_when_none_is_given() -> None:
    server = TcpServer(token=None)
    try:
        assert server.token and len(server.token) >= 24
        with server.connect() as sock:
            sock.sendall(initialize(server.token))
            assert "capabilities" in read_frame(sock)["result"]
    finally:
        server.stop()


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**server_env(), "CODELLAMA_LSP_TOKEN": "x"}
        done = subprocess.run([*SERVER[:3], "--tcp", "--port", str(port)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1  # a failure, not bad usage (docs/cli.md)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in done.stderr, done.stderr


# ---- model specs ----------------------------------------------------------------------------------------
def test_hub_ids_only_when_not_path_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert models.hub_spec("TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf") == (
        "TheBloke/CodeLlama-7B-GGUF",
        "codellama-7b.Q4_K_M.gguf",
    )
    assert models.hub_spec("hf:models/my-project:weights.gguf") == ("models/my-project", "weights.gguf")
    for local in ("models/my-project:weights.gguf", "./org/repo:w.gguf", "/abs/org/repo:w.gguf", "a/b/c:w.gguf", "~/x/y:w.gguf"):
        assert models.hub_spec(local) is None, local
    with pytest.raises(models.ModelError, match=r"no such file.*hf:REPO:FILE"):
        models.resolve("models/my-project:weights.gguf")
    with pytest.raises(models.ModelError, match=r"expected hf:OWNER/REPO:FILE\.gguf"):
        models.resolve("hf:not a repo")


def test_the_source_of_a_model_is_said(lsp_random_gguf: Path) -> None:
    assert models.resolve(str(lsp_random_gguf)).source.startswith("a local file")
    assert models.resolve("demo").source == "the shipped demo model"
