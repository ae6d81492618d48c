"""The real ``codellama-lsp --engine llama-server|openai`` over stdio, against a real llama-server on 127.0.0.1.

The same memorised lines as tests/test_lsp_micro.py come back exactly when the model runs on a server: through
llama-server's native endpoint and through its OpenAI-compatible one (the API vLLM and TGI offer; they need a
GPU and cannot run here). A burst of keystrokes: only the newest request gets text, the others are superseded
and their HTTP streams closed. A server that is down: one ``window/showMessage``, an error status, completions
that answer at once with nothing, the LSP alive; when a server comes up on that port, the status says ready
and completions flow - without the editor doing anything.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from lsprotocol import types

from lsp_server.models import resolve
from tests.fixtures.llama_server import LlamaServer, closed_port, llama_server  # noqa: F401
from tests.fixtures.lsp_client import inline, inline_params, insert, items_of, lsp_session, open_doc
from tests.fixtures.micro_model import micro_model  # noqa: F401

pytestmark = pytest.mark.slow

SETTINGS = {"maxTokens": 48, "timeBudgetMs": 20000}


def _blank(text: str, needle: str, keep: str) -> tuple[str, int, str]:
    lines = text.split("\n")
    i = next(k for k, ln in enumerate(lines) if needle in ln)
    removed = lines[i][len(keep) :]
    lines[i] = keep
    return "\n".join(lines), i, removed


def _args(engine: str, url: str) -> tuple[str, ...]:
    return ("--engine", engine, "--url", url, "--request-timeout", "5")


@pytest.mark.parametrize("engine", ["llama-server", "openai"])
async def test_memorised_lines_over_lsp(micro_model, llama_server, engine: str) -> None:
    async with lsp_session(micro_model.gguf, options=SETTINGS, args=_args(engine, llama_server.url)) as client:
        for name, needle, keep in [
            ("spaces.py", 'raise ValueError("sides must not be negative")', "    "),
            ("tabs.py", "self.jobs.append(job)", "\t\t"),
        ]:
            doc, line, expected = _blank(micro_model.files[name], needle, keep)
            uri = f"file:///remote/{engine}/{name}"
            open_doc(client, uri, doc)
            got = items_of(await inline(client, uri, line, len(keep)))
            assert [i.insert_text for i in got] == [expected]


async def test_burst_only_newest_gets_text(micro_model, llama_server) -> None:
    source = micro_model.files["spaces.py"]
    doc, line, target = _blank(source, "raise ValueError", "")
    uri = "file:///remote/burst.py"
    async with lsp_session(micro_model.gguf, options=SETTINGS, args=_args("llama-server", llama_server.url)) as client:
        open_doc(client, uri, doc)
        futures = []
        n = target.index("raise") + len("raise")  # a word's end: mid-word only token healing (in-process) gets it right
        for k in range(n):
            insert(client, uri, line, k, target[k], version=k + 2)
            futures.append(client.text_document_inline_completion_async(inline_params(uri, line, k + 1)))
        results = await asyncio.wait_for(asyncio.gather(*futures), 120)
        assert all(items_of(r) == [] for r in results[:-1])
        assert [i.insert_text for i in items_of(results[-1])] == [target[n:]]


async def test_server_down_then_up() -> None:
    demo = resolve("demo").path  # what the model says does not matter here
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    async with lsp_session("demo", options=SETTINGS, args=_args("llama-server", url), wait_ready=False) as client:
        status = client.status  # type: ignore[attr-defined]
        err = await status.wait_for({"error"})
        assert f"cannot connect to {url}" in err["message"]
        doc = "def dedent(text):\n    \n\ndef indent(text, prefix):\n    pass\n"
        uri = "file:///remote/down.py"
        open_doc(client, uri, doc)
        t0 = time.perf_counter()
        for _ in range(10):  # keystrokes while the server is down: answered at once, with nothing
            assert items_of(await inline(client, uri, 1, 4, timeout=5)) == []
        assert time.perf_counter() - t0 < 5
        shown = [m.message for m in client.messages if m.type == types.MessageType.Error]
        assert len(shown) == 1 and f"cannot connect to {url}" in shown[0], shown  # once, not per keystroke
        mark = len(status.items)
        with LlamaServer(demo, slots=1, port=port):
            back = await status.wait_for({"ready"}, after=mark, timeout=60)
            assert back["message"] == f"connected to {url}"
            got = items_of(await inline(client, uri, 1, 4))
            assert got and got[0].insert_text.strip()  # the model answers again
