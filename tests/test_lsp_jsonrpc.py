"""JSON-RPC conformance of the real server over raw stdio (``lsp_server.rpc``): every request answered
exactly once, lifecycle errors, exit codes, framing and resynchronisation, document sync errors.

Most tests run the server with a model path that does not exist (the error status comes at once and
no llama.cpp model is needed): what is tested here is the protocol edge, not completions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lsp_server.rpc import MAX_CONTENT_LENGTH
from tests.fixtures.lsp_models import lsp_random_gguf  # noqa: F401
from tests.fixtures.raw_lsp import RawServer, frame

NO_MODEL = "/nonexistent/model.gguf"
URI = "file:///work/sync.py"
INLINE = "textDocument/inlineCompletion"


def inline_params(line: Any = 0, character: Any = 0, uri: str = URI, trigger: Any = 1) -> dict[str, Any]:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": trigger}}


def assert_answered_once(s: RawServer) -> None:
    assert s.bad == [], s.bad
    twice = {k: v for k, v in s.responses.items() if len(v) > 1 and k != "null"}  # null: errors without an id
    assert not twice, twice
    for responses in s.responses.values():
        for r in responses:
            assert "data" not in r.get("error", {}), r  # pygls puts tracebacks there
    assert "Traceback" not in s.stderr()


def test_lifecycle_errors_and_exit_codes() -> None:
    with RawServer() as s:
        before = s.request(INLINE, inline_params())
        assert before["error"]["code"] == -32002, before
        s.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": "x"}})
        s.initialize(NO_MODEL)
        # the didOpen before initialize was dropped (LSP: notifications before initialize are ignored)
        assert s.request("codellama/documentState", {"uri": URI})["result"] is None
        second = s.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        assert second["error"]["code"] == -32600
        assert s.request("shutdown")["result"] is None
        after = s.request(INLINE, inline_params())
        assert after["error"]["code"] == -32600 and "after 'shutdown'" in after["error"]["message"]
        s.notify("exit")
        assert s.exit_code() == 0
        assert_answered_once(s)


def test_exit_without_shutdown_is_status_1() -> None:
    with RawServer() as s:
        s.initialize(NO_MODEL)
        s.notify("exit")
        assert s.exit_code() == 1


INVALID_PARAMS = [
    (None, "params"),
    ([], "$.params"),
    ({}, "required field missing"),
    ({"textDocument": "file:///x", "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}}, "text_document"),
    (inline_params(None, None), "position"),
    ({"textDocument": {"uri": URI}, "context": {"triggerKind": 1}}, "position"),
    (inline_params(-1, 0), "should be in range"),
    (inline_params(2**31, 0), "should be in range"),
    (inline_params(0, 10**30), "should be in range"),
    (inline_params(1e30, 0), "line"),
    (inline_params(0.5, 0), "line"),
    (inline_params(trigger=99), "99 is not a valid InlineCompletionTriggerKind"),
    (inline_params(uri=7), "uri"),
    ("a string", "expected params to be an object"),
]


def test_invalid_params_get_one_short_32602() -> None:
    with RawServer() as s:
        s.initialize(NO_MODEL)
        for i, (params, says) in enumerate(INVALID_PARAMS):
            msg = {"jsonrpc": "2.0", "id": i, "method": INLINE}
            if params is not None:
                msg["params"] = params
            s.send(msg)
            reply = s.response(i)
            assert reply.get("error", {}).get("code") == -32602, (params, reply)
            assert says in reply["error"]["message"] and len(reply["error"]["message"]) < 400, reply
            # still alive and in step: the next request is answered
            assert "result" in s.request("codellama/documentState", {"uri": URI})
        assert_answered_once(s)


def test_envelope_errors() -> None:
    with RawServer() as s:
        s.initialize(NO_MODEL)
        s.send(b'{"jsonrpc": "2.0", "id": NaN, "method": "shutdown"}')
        s.send(b"[1, 2]")
        s.send(b'{"jsonrpc": "2.0", "id": 8}')
        s.send(b'{"jsonrpc": "2.0", "id": [1], "method": "shutdown"}')
        s.send(b'{"jsonrpc": "1.0", "id": 9, "method": "shutdown"}')
        s.send(b'{"jsonrpc": "2.0", "id": 10, "method": 12}')
        s.send(b'{"jsonrpc": "2.0", "id": 11, "method": "codellama/noSuchMethod"}')
        s.send(b"[" * 100_000)
        s.send(b"\xff\xfe not utf-8")
        s.send({"jsonrpc": "2.0", "id": 12, "method": "codellama/documentState", "params": {"uri": URI}})
        assert s.response(12)["result"] is None
        codes = {json.loads(k): v[0]["error"]["code"] for k, v in s.responses.items() if "error" in v[0]}
        assert codes[8] == codes[9] == codes[10] == -32600 and codes[11] == -32601, codes
        nulls = [r["error"]["code"] for r in s.responses["null"]]
        assert nulls.count(-32700) == 3 and nulls.count(-32600) == 2, nulls  # NaN, deep nesting, bad bytes; batch, id [1]
        assert_answered_once(s)


GOOD = {"jsonrpc": "2.0", "id": "probe", "method": "codellama/documentState", "params": {"uri": URI}}


TOLERATED = [
    b"content-length: %d\r\n\r\n",
    b"CONTENT-LENGTH:%d\r\n\r\n",
    b"Content-Length: %d\n\n",
    b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nContent-Length: %d\r\n\r\n",
    b"\r\n\r\nContent-Length: %d\r\n\r\n",
    b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n",  # the same length twice is harmless
]


def probe(i: int) -> dict[str, Any]:
    return {**GOOD, "id": f"probe{i}"}


def test_tolerated_framing() -> None:
    with RawServer() as s:
        s.initialize(NO_MODEL)
        for i, head in enumerate(TOLERATED):
            body = json.dumps(probe(i)).encode()
            s.send_bytes(head.replace(b"%d", str(len(body)).encode()) + body)
            assert s.response(f"probe{i}")["result"] is None
        assert "null" not in s.responses
        assert_answered_once(s)


BROKEN = [
    b"Content-Type: text/plain\r\n\r\n{}",  # no length
    b"Content-Length: -5\r\n\r\n{}",
    b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"Content-Length: ten\r\n\r\n{}",
    b"Content-Length: 1000000000000\r\n\r\n{}",  # over the limit: never allocated
    b"Content-Length: %d\r\n\r\n{}" % (MAX_CONTENT_LENGTH + 1),
    b'Content-Length: 50\r\n\r\n{"jsonrpc": "2.0"',  # truncated: swallows the start of the next frame
    b"garbage line\r\n\r\n",
    b"x" * 20_000,  # a header block that never ends
    b"Content-Length: 10\r\n\r\n{not json}",
]


def test_broken_frames_get_a_parse_error_and_the_stream_resynchronises() -> None:
    with RawServer() as s:
        s.initialize(NO_MODEL)
        for i, broken in enumerate(BROKEN):
            before = len(s.responses.get("null", []))
            s.send_bytes(broken + frame(probe(i)))
            assert s.response(f"probe{i}", timeout=30)["result"] is None, broken[:40]
            errors = [r["error"] for r in s.responses.get("null", [])[before:]]
            assert len(errors) == 1 and errors[0]["code"] == -32700, (broken[:40], errors)
        assert_answered_once(s)
        assert "MemoryError" not in s.stderr()


def text_of(s: RawServer, uri: str = URI) -> dict[str, Any] | None:
    return s.request("codellama/documentState", {"uri": uri})["result"]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def change(version: Any, changes: list[dict[str, Any]], uri: str = URI) -> dict[str, Any]:
    return {"textDocument": {"uri": uri, "version": version}, "contentChanges": changes}


def edit(l0: int, c0: int, l1: int, c1: int, text: str) -> dict[str, Any]:
    return {"range": {"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}}, "text": text}


BAD_CHANGES = [
    (change(None, [edit(0, 0, 0, 0, "y")]), "version"),
    (change(2, [edit(5, 0, 5, 0, "y")]), "within lines 0..1 of the document, got line 5"),
    (change(2, [edit(0, 3, 0, 1, "y")]), "start is not after its end"),
    (change(2, [edit(0, 0, 0, 0, "y")], uri="file:///never/opened.py"), "not open"),
    (change(2, [{"range": "everything", "text": "y"}]), "content_changes"),
]


def test_a_change_that_cannot_be_applied_is_an_error_the_client_sees() -> None:
    with RawServer() as s:
        s.initialize(NO_MODEL)
        for bad, says in BAD_CHANGES:
            s.notify(
                "textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": "abc\ndef"}}
            )
            s.notify(
                "textDocument/didChange", change(2, [edit(0, 3, 0, 3, "!"), edit(1, 99, 1, 99, "?")])
            )  # past the end: clamped
            assert text_of(s) == {"version": 2, "length": 9, "sha256": digest("abc!\ndef?")}
            seen = len(s.notifications("window/showMessage"))
            s.notify("textDocument/didChange", bad)
            shown = s.wait(
                lambda seen=seen: [
                    m for m in s.notifications("window/showMessage")[seen:] if "out of sync" in m["params"]["message"]
                ]
            )
            assert shown[0]["params"]["type"] == 1 and says in shown[0]["params"]["message"], shown
            assert text_of(s, bad["textDocument"]["uri"]) is None  # dropped: no completion from a copy that drifted
            s.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 7, "text": "new"}})
            assert text_of(s) == {"version": 7, "length": 3, "sha256": digest("new")}
        assert_answered_once(s)


def test_client_pipe_closed_mid_request_exits_without_traceback(lsp_random_gguf: Path) -> None:
    with RawServer() as s:
        # a generation that runs for seconds on the tiny random model: invoked (up to 10 items of 2048 tokens),
        # the syntax rules off and the cursor at column 0, so no stop rule ends it before "busy" (300 ms)
        rules_off = dict.fromkeys(("mode", "nodeEnd", "repetition", "balance", "parseCheck"), False)
        s.initialize(lsp_random_gguf, {"maxTokens": 2048, "maxItems": 10, "timeBudgetMs": 60000, "rules": rules_off})
        s.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": "def f(x):\n    return x\n"}},
        )
        s.send({"jsonrpc": "2.0", "id": 1, "method": INLINE, "params": inline_params(2, 0, trigger=1)})
        s.wait_status({"busy"})
        s.close_stdin()
        s.proc.stdout.close()
        assert s.exit_code(timeout=30) == 1
        assert "Traceback" not in s.stderr() and "BrokenPipe" not in s.stderr()


async def test_no_growth_per_request_or_notification() -> None:
    """The real protocol object, in-process (so its tables can be counted): pygls 2.1 keeps a Future per
    handled notification in its request table; ours keeps none, and traced memory stays flat."""
    import asyncio
    import gc
    import tracemalloc

    from lsp_server.server import ServerOptions, create_server

    server = create_server(ServerOptions(model=NO_MODEL))
    proto = server.protocol
    sent = [0]

    class Sink:
        def write(self, data: bytes) -> None:
            sent[0] += 1

        def close(self) -> None:
            pass

    proto.set_writer(Sink())

    def send(msg: dict[str, Any]) -> None:
        proto.dispatch(json.dumps({"jsonrpc": "2.0", **msg}).encode())

    send({"id": 0, "method": "initialize", "params": {"processId": None, "rootUri": None, "capabilities": {}}})
    send(
        {
            "method": "textDocument/didOpen",
            "params": {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": "x = 1\n"}},
        }
    )
    version = 1

    async def burst(n: int) -> None:
        nonlocal version
        for i in range(n):
            version += 1
            send({"method": "textDocument/didChange", "params": change(version, [edit(0, 5, 0, 5, "1")])})
            send({"method": "codellama/event", "params": {"kind": "shown", "languageId": "python"}})
            send({"id": f"s{version}", "method": "codellama/documentState", "params": {"uri": URI}})
            send({"id": f"c{version}", "method": INLINE, "params": inline_params(0, 5)})
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the coroutine handlers finish (no timing involved)
        while proto._pending or proto._request_futures:  # every request answered, every handler done
            await asyncio.sleep(0)

    for _ in range(2):  # warm-up: caches, lazily built cattrs hooks, hash tables at their working size
        await burst(1000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await burst(2000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert proto._request_futures == {} and proto._pending == set() and proto._dispatched_on == {}
    # 8,000 messages: pygls' table alone would keep ~5 MB; allocator and hash-table noise stays far
    # below 15 bytes a message (the document itself grows by 2,000 characters)
    assert grown < 120_000, grown
    assert sent[0] >= 2 * 4000  # every request was answered


def test_a_change_that_leaves_the_text_keeps_the_answer(lsp_random_gguf: Path) -> None:
    """A didChange that does not change the text (Neovim 0.7 sends one with no changes when its debounce
    timer fires as a request flushes the pending changes; an empty insertion) arriving while a completion
    runs: the answer still goes out. A change of the text makes it null (the editor's text is another).
    Each request is at another position, so that none is a type-through cache hit answered at once."""
    with RawServer() as s:
        rules_off = dict.fromkeys(("mode", "nodeEnd", "repetition", "balance", "parseCheck"), False)
        s.initialize(lsp_random_gguf, {"maxTokens": 64, "maxItems": 1, "timeBudgetMs": 60000, "rules": rules_off})
        text = "def f(x):\n    return x\n"
        s.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": text}})
        empty_insertion = {"range": {"start": {"line": 0, "character": 3}, "end": {"line": 0, "character": 3}}, "text": ""}
        cases = [((2, 0), [], True), ((1, 0), [empty_insertion], True), ((1, 4), [{**empty_insertion, "text": "g"}], False)]
        for version, ((line, character), changes, answered) in enumerate(cases, start=2):
            s.send({"jsonrpc": "2.0", "id": version, "method": INLINE, "params": inline_params(line, character, trigger=1)})
            s.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": version}, "contentChanges": changes})
            reply = s.response(version)
            assert bool(reply["result"] and reply["result"]["items"]) is answered, (changes, reply)
