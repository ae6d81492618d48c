"""The real server over stdio (pytest-lsp client, real llama.cpp) on a tiny random GGUF from our exporter.

Protocol behaviour that does not depend on what the model says: capabilities and position encoding,
status and progress, bad inputs (unopened documents, positions past the end, bad settings, missing,
truncated and non-GGUF models, a 20 MB document), malformed JSON-RPC, and the prefix-only path.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from lsprotocol import types

from tests.fixtures.lsp_client import SERVER, completion, inline, inline_params, items_of, lsp_session, open_doc, server_env
from tests.fixtures.lsp_models import lsp_no_fim_gguf, lsp_random_gguf  # noqa: F401

URI = "file:///work/example.py"
CODE = "import os\n\n\ndef main(argv):\n    total = 0\n    for a in argv:\n        total += len(a)\n    return total\n"


async def test_initialize_capabilities_status_and_progress(lsp_random_gguf: Path) -> None:
    async with lsp_session(lsp_random_gguf) as client:
        caps = client.init_result.capabilities
        assert caps.inline_completion_provider
        assert caps.completion_provider is not None
        sync = caps.text_document_sync
        assert (sync.change if hasattr(sync, "change") else sync) == types.TextDocumentSyncKind.Incremental
        assert caps.position_encoding == types.PositionEncodingKind.Utf16
        states = [s["state"] for s in client.status.items]
        assert states[0] == "loading" and "ready" in states
        ready = next(s for s in client.status.items if s["state"] == "ready")
        assert ready["model"] == str(lsp_random_gguf)
        reports = [v for values in client.progress_reports.values() for v in values]
        assert any(isinstance(v, types.WorkDoneProgressBegin) for v in reports)
        assert any(isinstance(v, types.WorkDoneProgressEnd) for v in reports)
        # the load reports percentages (llama.cpp's own load progress), rising, in $/progress and the status
        pcts = [v.percentage for v in reports if isinstance(v, types.WorkDoneProgressReport) and v.percentage is not None]
        assert len(pcts) >= 2 and pcts == sorted(pcts) and pcts[-1] >= 90, pcts
        status_pcts = [s["percentage"] for s in client.status.items if s["state"] == "loading" and s["percentage"] is not None]
        assert status_pcts == pcts, (status_pcts, pcts)

        open_doc(client, URI, CODE)
        result = await inline(client, URI, 4, 4)
        for item in items_of(result):
            assert item.range.start == types.Position(line=4, character=4)
            assert item.insert_text.strip()
        after = await client.status.wait_for({"ready"}, after=len(client.status.items) - 1)
        assert after["lastLatencyMs"] is not None


async def test_completion_items_left_out_of_the_capabilities_when_asked(lsp_random_gguf: Path) -> None:
    """``completionItems: false`` (the Neovim plugin's default): no ``completionProvider``, so completion menus
    (nvim-cmp, blink.cmp) never ask the model on every key; a client that asks anyway is still answered."""
    async with lsp_session(lsp_random_gguf, options={"completionItems": False}) as client:
        caps = client.init_result.capabilities
        assert caps.completion_provider is None and caps.inline_completion_provider
        open_doc(client, URI, CODE)
        result = await completion(client, URI, 4, 4)
        assert isinstance(result, types.CompletionList)


async def test_utf8_position_encoding_when_offered(lsp_random_gguf: Path) -> None:
    async with lsp_session(
        lsp_random_gguf, encodings=[types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16]
    ) as client:
        assert client.init_result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        text = "s = '😀中'\nx = 1\n"
        open_doc(client, URI, text)
        # the end of line 0 in UTF-8 bytes is 13 (😀 = 4 bytes, 中 = 3); after 😀 it is 9
        for col in (13, 9):
            result = await inline(client, URI, 0, col)
            for item in items_of(result):
                assert item.range.start == types.Position(line=0, character=col)


async def test_bad_requests_keep_the_server_alive(lsp_random_gguf: Path) -> None:
    async with lsp_session(lsp_random_gguf) as client:
        # a document that was never opened
        assert items_of(await inline(client, "file:///never/opened.py", 0, 0)) == []
        assert items_of(await completion(client, "file:///never/opened.py", 0, 0)) == []
        open_doc(client, URI, CODE)
        # positions past the end of the line and of the document are clamped, not errors
        for line, character in ((1, 500), (500, 3), (7, 10_000)):
            result = await inline(client, URI, line, character)
            for item in items_of(result):
                assert item.range.start.line <= CODE.count("\n")
        # an unknown request gets MethodNotFound, and the server goes on
        with pytest.raises(Exception) as err:
            await asyncio.wait_for(client.protocol.send_request_async("codellama/noSuchMethod", {}), 30)
        assert "not found" in str(err.value).lower() or "-32601" in str(err.value)
        await inline(client, URI, 4, 4)


async def test_invalid_settings_are_reported_and_defaults_used(lsp_random_gguf: Path) -> None:
    async with lsp_session(lsp_random_gguf, options={"maxTokens": "lots", "bogus": 1, "prefixRatio": 0.5}) as client:
        texts = [m.message for m in client.messages]
        assert any("maxTokens" in t and "expected an integer, got 'lots'" in t for t in texts), texts
        assert any("bogus" in t for t in texts), texts
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"codellama": {"temperature": -3, "fimOrder": "xyz"}})
        )
        open_doc(client, URI, CODE)
        await inline(client, URI, 4, 4)  # still answers (the request is ordered after the notification)
        texts = [m.message for m in client.messages]
        assert any("temperature" in t for t in texts) and any("fimOrder" in t for t in texts), texts


@pytest.mark.parametrize("kind", ["missing", "truncated", "not-gguf"])
async def test_bad_model_file_then_recovery(lsp_random_gguf: Path, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / f"{kind}.gguf"
    if kind == "truncated":
        data = lsp_random_gguf.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "not-gguf":
        bad.write_text("this is not a model\n" * 100)
    async with lsp_session(bad, wait_ready=False) as client:
        err = await client.status.wait_for({"error", "ready"})
        assert err["state"] == "error", err
        assert "expected" in err["message"]
        assert any(m.type == types.MessageType.Error for m in client.messages)
        open_doc(client, URI, CODE)
        assert items_of(await inline(client, URI, 4, 4)) == []  # no model: empty, not an error
        mark = len(client.status.items)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"model": str(lsp_random_gguf)}))
        ok = await client.status.wait_for({"ready", "error"}, after=mark)
        assert ok["state"] == "ready", ok
        await inline(client, URI, 4, 4)


async def test_twenty_megabyte_document(lsp_random_gguf: Path) -> None:
    line = "value = compute(alpha, beta) + 12345  # filler\n"
    big = line * (20_000_000 // len(line))
    async with lsp_session(lsp_random_gguf, options={"contextTokens": 256, "maxTokens": 8}) as client:
        open_doc(client, URI, big)
        n = big.count("\n")
        t0 = time.perf_counter()
        await inline(client, URI, n // 2, 5, timeout=120)
        await inline(client, URI, n, 0, timeout=120)
        assert time.perf_counter() - t0 < 60
        result = await completion(client, URI, n - 1, 8)
        assert isinstance(result, types.CompletionList)


async def test_model_without_fim_tokens_completes_prefix_only(lsp_no_fim_gguf: Path) -> None:
    async with lsp_session(lsp_no_fim_gguf) as client:
        ready = next(s for s in client.status.items if s["state"] == "ready")
        assert "no FIM tokens" in (ready.get("message") or "")
        assert any("no FIM tokens" in m.message for m in client.messages)
        open_doc(client, URI, CODE)
        await inline(client, URI, 4, 4)


def _frame(payload: bytes) -> bytes:
    return f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload


def _read_message(stream) -> dict:
    length = None
    while True:
        header = stream.readline()
        if header in (b"\r\n", b""):
            break
        if header.lower().startswith(b"content-length:"):
            length = int(header.split(b":")[1])
    assert length is not None, "the server closed stdout"
    return json.loads(stream.read(length))


def test_malformed_json_rpc_over_raw_stdio(lsp_random_gguf: Path) -> None:
    """Bytes a client library would never send: broken JSON, a non-object, a request without a method."""
    proc = subprocess.Popen(SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=server_env())
    try:
        assert proc.stdin and proc.stdout
        for junk in (b"{not json", b"[1, 2, 3]", b'{"jsonrpc": "2.0", "id": 7}', b'"just a string"'):
            proc.stdin.write(_frame(junk))
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"processId": None, "rootUri": None, "capabilities": {},
                           "initializationOptions": {"model": str(lsp_random_gguf)}}}  # fmt: skip
        proc.stdin.write(_frame(json.dumps(init).encode()))
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = _read_message(proc.stdout)
            if msg.get("id") == 1:
                assert "capabilities" in msg["result"]
                break
        else:
            pytest.fail("no initialize reply")
        shutdown = {"jsonrpc": "2.0", "id": 2, "method": "shutdown"}
        proc.stdin.write(_frame(json.dumps(shutdown).encode()))
        proc.stdin.write(_frame(json.dumps({"jsonrpc": "2.0", "method": "exit"}).encode()))
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_cancel_request_ends_generation_early(lsp_random_gguf: Path) -> None:
    """A long generation (random weights rarely say EOT) is cut short by $/cancelRequest. The syntax rules
    are off and the cursor is at column 0, so no stop rule can end the generation before the cancel does
    (with them on, random text sometimes ended it within the 300 ms before "busy" is shown)."""
    uri = "file:///work/cancel.py"
    rules_off = dict.fromkeys(("mode", "nodeEnd", "repetition", "balance", "parseCheck"), False)
    options = {"maxTokens": 2048, "maxItems": 10, "timeBudgetMs": 60000, "rules": rules_off}
    async with lsp_session(lsp_random_gguf, options=options) as client:
        open_doc(client, uri, CODE + "\n")
        msg_id = str(uuid.uuid4())
        mark = len(client.status.items)
        # invoked: up to 10 items of 2048 tokens, seconds on the tiny random model
        params = inline_params(uri, 9, 0, invoked=True)
        fut = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
        await client.status.wait_for({"busy"}, after=mark)
        t0 = time.perf_counter()
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(fut) if not isinstance(fut, asyncio.Future) else fut, 30)
            assert items_of(result) == []  # an empty answer or a RequestCancelled error; never text
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # pygls answers a cancelled request with an error response
            assert "cancel" in str(exc).lower(), exc
        cancel_ms = (time.perf_counter() - t0) * 1e3
        assert cancel_ms < 10000, cancel_ms  # generous: a loaded machine; the uncancelled job runs for minutes
        # the worker is free again: the next request does not wait for 2000 tokens
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"maxTokens": 8}))
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=CODE)],
            )
        )
        mark = len(client.status.items)
        await inline(client, uri, 4, 4, timeout=30)
        done = await client.status.wait_for({"ready"}, after=mark)
        # 8 tokens, not the rest of 10 x 2048: bounds a loaded machine keeps (5.6 s seen at load 16 before the
        # passive OpenMP wait policy), far below what the cancelled generation would still take
        assert done["lastLatencyMs"] < 20000
        assert time.perf_counter() - t0 < 40


def test_cli_complete_one_shot(lsp_random_gguf: Path, tmp_path: Path) -> None:
    src = tmp_path / "demo.py"
    src.write_text(CODE.replace("\n", "\r\n"))
    cmd = [
        *SERVER[:3],
        "complete",
        str(src),
        "--line",
        "4",
        "--character",
        "4",
        "--model",
        str(lsp_random_gguf),
        "--max-tokens",
        "6",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=server_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    bad = subprocess.run(
        [*cmd[:-4], "--model", str(tmp_path / "nope.gguf")], capture_output=True, text=True, env=server_env(), timeout=120
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("codellama-lsp: error: ") and "expected a GGUF model file" in bad.stderr


async def test_settings_during_first_load_do_not_start_a_second_load(lsp_random_gguf: Path) -> None:
    # Neovim sends workspace/didChangeConfiguration right after `initialized`, while the model loads.
    async with lsp_session(lsp_random_gguf, wait_ready=False) as client:
        for _ in range(3):
            client.workspace_did_change_configuration(
                types.DidChangeConfigurationParams(settings={"model": str(lsp_random_gguf), "maxTokens": 8})
            )
        ready = await client.status.wait_for({"ready", "error"})
        assert ready["state"] == "ready", ready
        open_doc(client, URI, CODE)
        await inline(client, URI, 4, 4)
        loads = [s for s in client.status.items if s["state"] == "loading" and s["percentage"] is None]
        assert len(loads) == 1, client.status.items


async def test_shown_and_accepted_events_are_counted_locally(lsp_random_gguf: Path) -> None:
    async with lsp_session(lsp_random_gguf) as client:
        open_doc(client, URI, CODE)
        client.protocol.notify("codellama/event", {"kind": "shown", "languageId": "python", "chars": 5, "lines": 1})
        client.protocol.notify("codellama/event", {"kind": "shown", "languageId": "python", "chars": 3, "lines": 1})
        client.protocol.notify("codellama/event", {"kind": "accepted", "languageId": "python", "chars": 3, "lines": 1})
        mark = len(client.status.items)
        await inline(client, URI, 4, 4)  # ordered after the notifications; its status carries the totals
        status = await client.status.wait_for({"ready"}, after=mark)
        assert (status["shown"], status["accepted"]) == (2, 1), status


async def test_unexpected_load_failure_is_an_error_status_then_recovery(lsp_random_gguf: Path) -> None:
    """Not a ModelError/EngineError (here the OSError pathlib raises for a path longer than the file system
    allows): still an error status with the message, never a status stuck at "loading", and the next model
    setting recovers."""
    # longer than a file name may be (255), shorter than the model setting may be (4096: longer is a settings problem)
    async with lsp_session("x" * 3000 + ".gguf", wait_ready=False) as client:
        err = await client.status.wait_for({"error", "ready"})
        assert err["state"] == "error", err
        assert "File name too long" in err["message"], err
        mark = len(client.status.items)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"model": str(lsp_random_gguf)}))
        ok = await client.status.wait_for({"ready", "error"}, after=mark)
        assert ok["state"] == "ready", ok


async def test_switched_off_server_runs_no_model_for_any_request_kind(lsp_random_gguf: Path) -> None:
    """``enable: {"*": false}`` (VS Code's toggle, Neovim's :CodellamaToggle) answers every kind of request
    with nothing, and the engine never runs: no status with a new latency, no busy."""
    async with lsp_session(lsp_random_gguf, options={"maxTokens": 8}) as client:
        open_doc(client, URI, CODE)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"enable": {"*": False}}))
        mark = len(client.status.items)
        assert items_of(await inline(client, URI, 4, 4)) == []
        assert items_of(await completion(client, URI, 4, 4)) == []
        assert items_of(await inline(client, URI, 7, 4, invoked=True)) == []
        # a status the engine causes is sent before its answer, so any would be here by now
        assert client.status.items[mark:] == [], client.status.items[mark:]
