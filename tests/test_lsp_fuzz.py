"""Property-based JSON-RPC fuzzing of the real server (real llama.cpp on the tiny random GGUF).

Hypothesis draws sequences of document edits (in range, past the end, start after end, null
versions), whole-document replacements, completion requests at any position (some cancelled right
away), requests with params that do not match the protocol, and bodies that are not JSON. They are
sent without waiting (as an editor does while the user types) to one long-lived server. Invariants:

- every request is answered exactly once, and the server is alive and never prints a traceback;
- the server's copy of the document (``codellama/documentState``, probed after every edit) equals a
  reference model of the edits written here independently of the server's code, or is gone exactly
  when an edit could not be applied;
- no stale text: a completion whose document's text was changed by an edit before its reply was sent
  (the probe sent after the edit was answered first) is empty; an edit that leaves the text as it was
  (an empty insertion, a replacement by the same text) does not make the answer stale.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.lsp_models import lsp_random_gguf  # noqa: F401
from tests.fixtures.raw_lsp import RawServer

_BREAK = re.compile(r"\r\n|\r|\n")
_uris = itertools.count()


def units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def ref_offset(text: str, line: int, character: int) -> int | None:
    """Offset of an LSP (UTF-16) position by the LSP rules; None for a line past the last."""
    starts = [0] + [m.end() for m in _BREAK.finditer(text)]
    if line >= len(starts):
        return None
    start = starts[line]
    m = _BREAK.search(text, start)
    end = m.start() if m else len(text)
    seen = 0
    for i in range(start, end):
        seen += units(text[i])
        if seen > character:
            return i
    return end


@dataclass
class Reference:
    text: str | None  # None: dropped after an edit that could not be applied
    version: int = 1
    probes: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)  # (probe id, expected)

    def expected(self) -> dict[str, Any] | None:
        if self.text is None:
            return None
        return {
            "version": self.version,
            "length": len(self.text),
            "sha256": hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest(),
        }


chars = st.sampled_from(list("ab \t(){}:=\n") + ["\r\n", "é", "😀", "中"])
texts = st.lists(chars, max_size=12).map("".join)
positions = st.tuples(st.integers(0, 6), st.integers(0, 12))
actions = st.one_of(
    st.tuples(st.just("edit"), positions, positions, texts),
    st.tuples(st.just("replace"), texts),
    st.tuples(st.just("inline"), positions, st.booleans()),
    st.tuples(st.just("null-version"), texts),
    st.tuples(st.just("bad-params"), st.sampled_from([None, [], {}, {"position": {"line": -1, "character": 0}}, "x"])),
    st.tuples(st.just("not-json"), st.binary(max_size=20)),
)


def test_fuzz_json_rpc_against_the_real_server(lsp_random_gguf: Path) -> None:
    with RawServer() as s:
        s.initialize(lsp_random_gguf, {"maxTokens": 6, "timeBudgetMs": 2000})
        assert s.statuses()[-1]["state"] == "ready"
        ids = itertools.count(1)

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(initial=texts, steps=st.lists(actions, max_size=20))
        def run(initial: str, steps: list[tuple]) -> None:
            uri = f"file:///fuzz/{next(_uris)}.py"
            ref = Reference(initial)
            s.notify(
                "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": initial}}
            )
            sent: list[int] = []  # request ids, to check each is answered once
            completions: list[tuple[int, int]] = []  # (request id, number of edits sent before it)
            edits_before_probe: dict[int, int] = {}
            edits = 0
            text_after: list[str | None] = [initial]  # the reference text after 0, 1, 2, ... edits

            def probe() -> None:
                pid = next(ids)
                s.send({"jsonrpc": "2.0", "id": pid, "method": "codellama/documentState", "params": {"uri": uri}})
                sent.append(pid)
                ref.probes.append((pid, ref.expected()))
                edits_before_probe[pid] = edits

            for step in steps:
                kind = step[0]
                if kind in ("edit", "replace", "null-version"):
                    edits += 1
                    version = ref.version + 1
                    if kind == "edit":
                        (l0, c0), (l1, c1), new = step[1], step[2], step[3]
                        change = {
                            "range": {"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}},
                            "text": new,
                        }
                        if ref.text is not None:
                            a, b = ref_offset(ref.text, l0, c0), ref_offset(ref.text, l1, c1)
                            bad = a is None or b is None or (l0, c0) > (l1, c1)
                            ref.text = None if bad else ref.text[:a] + new + ref.text[b:]
                    else:
                        change = {"text": step[1]}
                        if ref.text is not None:
                            ref.text = None if kind == "null-version" else step[1]
                    ref.version = version
                    text_after.append(ref.text)
                    s.notify("textDocument/didChange", {
                        "textDocument": {"uri": uri, "version": None if kind == "null-version" else version},
                        "contentChanges": [change],
                    })  # fmt: skip
                    probe()
                elif kind == "inline":
                    (line, character), cancel = step[1], step[2]
                    rid = next(ids)
                    s.send({"jsonrpc": "2.0", "id": rid, "method": "textDocument/inlineCompletion", "params": {
                        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                        "context": {"triggerKind": 2}}})  # fmt: skip
                    if cancel:
                        s.notify("$/cancelRequest", {"id": rid})
                    sent.append(rid)
                    completions.append((rid, edits))
                elif kind == "bad-params":
                    rid = next(ids)
                    msg = {"jsonrpc": "2.0", "id": rid, "method": "textDocument/inlineCompletion"}
                    if step[1] is not None:
                        msg["params"] = step[1]
                    s.send(msg)
                    sent.append(rid)
                else:
                    s.send(b"\x00" + step[1])  # never valid JSON
            probe()

            for rid in sent:
                s.response(rid, timeout=60)
            assert s.proc.poll() is None
            order = {
                json.dumps(f["id"]): i for i, f in enumerate(s.frames) if "id" in f and "method" not in f and f["id"] is not None
            }
            for rid in sent:
                assert len(s.responses[json.dumps(rid)]) == 1, (rid, s.responses[json.dumps(rid)])
            for pid, expected in ref.probes:
                got = s.responses[json.dumps(pid)][0]["result"]
                assert got == expected, (pid, got, expected, initial, steps)
            for rid, edits_then in completions:
                reply = s.responses[json.dumps(rid)][0]
                result = reply.get("result")
                if result and result.get("items"):
                    # probes sent after later edits: those answered before this reply saw edits the reply came
                    # after; the reply is right only if the text it was sent against is the one it was asked on
                    later = {p: n for p, n in edits_before_probe.items() if n > edits_then}
                    before = [n for p, n in later.items() if order[json.dumps(p)] < order[json.dumps(rid)]]
                    if before:
                        after = [n for p, n in later.items() if order[json.dumps(p)] > order[json.dumps(rid)]]
                        first, last = max(before), min(after, default=len(text_after) - 1)
                        sent_against = text_after[first : last + 1]  # the server's text when the reply left
                        assert text_after[edits_then] in sent_against, (rid, reply)

        run()
        assert s.bad == [] and "Traceback" not in s.stderr()
        errors = [r for rs in s.responses.values() for r in rs if "error" in r]
        assert all("data" not in r["error"] for r in errors)
        s.request("shutdown")
        s.notify("exit")
        assert s.exit_code() == 0
