"""Our own messages (``lsp_server.messages``): the wire form, lenient reading, and the editors' readers against the schema.

The readers are checked by what they read: every ``codellama/status`` field the VS Code extension
(``vscode-client/src/status.ts``) and the Neovim plugin (``nvim-client/lua/codellama/logic.lua``) read must be a field
of ``messages.Status`` (a rename on one side fails here), and every field the clients send in ``codellama/event``
must be one the server reads. Older spellings a reader still accepts from older servers are listed here, by name.
"""

from __future__ import annotations

import re
from pathlib import Path

from lsp_server import messages

ROOT = Path(__file__).resolve().parents[1]
# what a reader may still accept from servers before the schema (snake_case, the 0..1 "progress")
OLDER_SPELLINGS = {"last_latency_ms", "cached_tokens", "progress"}
# fields the Neovim plugin keeps in its own copy of the status table (never sent by the server)
CLIENT_SIDE = {"missing"}


def test_status_wire_form_is_camel_case_with_optional_fields_left_out() -> None:
    s = messages.Status(
        state="ready", model="demo", last_latency_ms=12.5, cached_tokens=300, last_overhead_ms=0.4, shown=2, accepted=1,
        prefetches=0, prefetch_hits=0, recent_latency_ms=None, typing_gap_ms=None, time_budget_ms=2000, debounce_ms=0,
    )  # fmt: skip
    wire = messages.to_wire(s)
    assert wire["lastLatencyMs"] == 12.5 and wire["prefetchHits"] == 0 and wire["schemaVersion"] == messages.VERSION
    assert wire["recentLatencyMs"] is None  # always present (null: not known yet)
    assert "message" not in wire and "percentage" not in wire and "slow" not in wire and "hint" not in wire
    assert wire["cutAnswers"] == 0
    slow = {"cut_answers": 3, "slow": "answers cut at 2.0 s", "hint": "try a smaller model"}
    wire = messages.to_wire(messages.Status(**{**vars_of(s), "message": "loading demo", "percentage": 0, **slow}))
    assert wire["message"] == "loading demo" and wire["percentage"] == 0
    assert (wire["cutAnswers"], wire["slow"], wire["hint"]) == (3, "answers cut at 2.0 s", "try a smaller model")
    assert set(wire) == set(messages.schema()[messages.STATUS])


def vars_of(s: messages.Status) -> dict[str, object]:
    import attrs

    return attrs.asdict(s)


def test_events_are_read_leniently() -> None:
    e = messages.read_event({"kind": "accepted", "languageId": "python", "uri": "file:///a.py", "chars": 12, "latencyMs": 80})
    assert e == messages.Event(kind="accepted", language_id="python", uri="file:///a.py", chars=12, latency_ms=80.0)
    assert messages.read_event(None) == messages.Event()
    assert messages.read_event([1, 2]) == messages.Event()
    bad = messages.read_event({"kind": "x" * 100, "uri": 5, "chars": -1, "lines": True, "latencyMs": "7"})
    assert bad.kind == "x" * 40 and bad.uri is None and bad.chars is None and bad.lines is None and bad.latency_ms is None


def test_document_state_params() -> None:
    assert messages.read_document_state_params({"uri": "file:///a"}) == messages.DocumentStateParams("file:///a")
    assert messages.read_document_state_params({"uri": 1}) is None
    assert messages.read_document_state_params("x") is None
    assert messages.to_wire(messages.DocumentState(version=3, length=10, sha256="ab")) == {
        "version": 3,
        "length": 10,
        "sha256": "ab",
    }


def read_fields(source: str, variable: str) -> set[str]:
    return set(re.findall(rf"\b{variable}\.([A-Za-z_]\w*)", source))


def test_the_vscode_status_reader_reads_only_schema_fields() -> None:
    source = (ROOT / "vscode-client/src/status.ts").read_text(encoding="utf-8")
    body = source[source.index("export function parseStatus") :]
    body = body[: body.index("\n}\n")]
    read = read_fields(body, "p")
    schema = set(messages.schema()[messages.STATUS])
    assert read - OLDER_SPELLINGS <= schema, read - OLDER_SPELLINGS - schema
    assert {"state", "model", "message", "lastLatencyMs", "percentage", "debounceMs", "slow", "hint"} <= read


def test_the_neovim_status_reader_reads_only_schema_fields() -> None:
    read: set[str] = set()
    for name in ("logic.lua", "init.lua"):
        read |= read_fields((ROOT / "nvim-client/lua/codellama" / name).read_text(encoding="utf-8"), "status")
    schema = set(messages.schema()[messages.STATUS])
    assert read - CLIENT_SIDE <= schema, read - CLIENT_SIDE - schema
    assert {"state", "model", "message", "lastLatencyMs", "debounceMs", "slow", "hint"} <= read


def test_the_clients_send_only_event_fields_the_server_reads() -> None:
    schema = set(messages.schema()[messages.EVENT])
    ts = (ROOT / "vscode-client/src/events.ts").read_text(encoding="utf-8")
    sent_ts: dict[str, set[str]] = {}
    for name in ("CompletionEvent", "CursorEvent"):  # shown/accepted, and where the cursor rests
        interface = ts[ts.index(f"export interface {name}") :]
        interface = interface[: interface.index("\n}")]
        sent_ts[name] = set(re.findall(r"^  (\w+)\??:", interface, re.M))
        assert sent_ts[name] and sent_ts[name] <= schema, (name, sent_ts[name] - schema)
    assert {"kind", "uri", "position"} <= sent_ts["CursorEvent"]
    lua = (ROOT / "nvim-client/lua/codellama/init.lua").read_text(encoding="utf-8")
    calls = lua.split("'codellama/event', {")[1:]
    assert len(calls) == 2, "expected the Neovim plugin's two events (shown/accepted, cursor)"
    for call in calls:
        call = call[: call.index("})")]
        sent_lua = set(re.findall(r"^\s*(\w+) =", call, re.M))
        assert sent_lua and sent_lua <= schema, sent_lua - schema
    assert "position" in sent_lua  # the second: cursor


def test_a_cursor_event_is_read_with_its_position() -> None:
    e = messages.read_event(
        {"kind": "cursor", "languageId": "python", "uri": "file:///a.py", "position": {"line": 3, "character": 4}}
    )
    assert e == messages.Event(kind="cursor", language_id="python", uri="file:///a.py", position=messages.EventPosition(3, 4))
    assert messages.to_wire(e)["position"] == {"line": 3, "character": 4}
    for bad in ({"line": -1, "character": 0}, {"line": 1}, {"line": True, "character": 0}, "3:4", [3, 4]):
        assert messages.read_event({"kind": "cursor", "position": bad}).position is None, bad
    assert "position" not in messages.to_wire(messages.Event(kind="shown"))
