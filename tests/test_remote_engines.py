"""The HTTP engines against a real llama-server on 127.0.0.1 (and fault servers), through our whole pipeline.

A real ``llama-server`` built from the vendored llama.cpp serves the micro model; the engines get exactly the
token ids the in-process engine would (context windows, SPM layout, the local vocabulary) and must give the
memorised lines back exactly: through llama-server's native ``/completion`` and through ``/v1/completions``
(with token-id prompts and with the FIM layout as text; vLLM and TGI cannot run here, and this is their API).
Then costs (the slot's KV cache reused across keystrokes), cancellation that really stops the server, superseding,
and every fault made real: a closed port, HTTP 500/401/404, malformed JSON, a server that never answers or stalls
mid-stream, a server killed mid-request, a server running another model - each a clear error, no hang, one probe
per back-off step (no storm), and recovery when a real server comes up on the port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request

import pytest

from lsp_server import pipeline
from lsp_server.cache import TypeThroughCache
from lsp_server.config import Settings
from lsp_server.engines import EngineError, GenerationRequest, Sampling
from lsp_server.engines.llama_server import LlamaServerEngine
from lsp_server.engines.openai import OpenAIEngine
from lsp_server.engines.remote import RemoteOptions, local_vocab
from lsp_server.models import resolve
from tests.fixtures.llama_server import LlamaServer, closed_port, fault_server, llama_server  # noqa: F401
from tests.fixtures.micro_model import micro_model  # noqa: F401

pytestmark = pytest.mark.slow

SETTINGS = Settings(max_tokens=48, time_budget_ms=20000)
CASES = [
    ("spaces.py", 'raise ValueError("sides must not be negative")', "    "),
    ("tabs.py", "return self.jobs.pop(0)", "\t\t"),
    ("unicode_line.py", 'label = "数据 😀"; total = add(a, b)', '    label = "数据 😀";'),
]
# (Not after the space of "; ": with the cursor inside what the model saw as one token, only token healing - an
# in-process feature, see EngineInfo.can_heal - gets this micro model back on track.)


@pytest.fixture(scope="module")
def vocab(micro_model):
    return local_vocab(micro_model.gguf)


DEMO = resolve("demo").path  # the shipped demo model: for faults, where what the model says does not matter


@pytest.fixture(scope="module")
def demo_vocab():
    return local_vocab(DEMO)


@pytest.fixture(scope="module")
def demo_server():
    with LlamaServer(DEMO, slots=2) as server:
        yield server


def blank(text: str, needle: str, keep: str) -> tuple[str, int, str]:
    """``text`` with the line holding ``needle`` cut after ``keep``: (document, cursor offset, removed text)."""
    lines = text.split("\n")
    i = next(k for k, ln in enumerate(lines) if needle in ln)
    removed = lines[i][len(keep) :]
    lines[i] = keep
    doc = "\n".join(lines)
    return doc, sum(len(ln) + 1 for ln in lines[:i]) + len(keep), removed


def make(kind: str, url: str, vocab, **options):
    if kind == "llama-server":
        return LlamaServerEngine(vocab, RemoteOptions(url=url, **options), "micro")
    return OpenAIEngine(vocab, RemoteOptions(url=url, **options), "micro")


class Health:
    """Records the engine's health messages (None = back up) and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.messages: list[str | None] = []
        self._cv = threading.Condition()

    def __call__(self, message: str | None) -> None:
        with self._cv:
            self.messages.append(message)
            self._cv.notify_all()

    def wait(self, predicate, timeout: float = 30.0) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: predicate(self.messages), timeout), self.messages


def request(vocab, prompt_text: str = "def add(a, b):\n", **kw) -> GenerationRequest:
    prompt = ([vocab.sentinels.bos] if vocab.add_bos else []) + vocab.encode(prompt_text)
    defaults = dict(prompt=prompt, max_tokens=16, time_budget_s=20.0, stop_tokens=vocab.sentinels.eog)
    defaults.update(kw)
    return GenerationRequest(**defaults)


def result_of(job, timeout: float = 30.0):
    return job.future.result(timeout)


# ---- the memorised lines, exactly ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,options",
    [("llama-server", {}), ("openai", {"prompt_format": "tokens"}), ("openai", {"prompt_format": "text"})],
    ids=["native", "openai-token-ids", "openai-text"],
)
async def test_memorised_lines_come_back_exactly(micro_model, llama_server, vocab, kind, options) -> None:
    engine = await asyncio.to_thread(make, kind, llama_server.url, vocab, **options)
    try:
        assert engine.down is None
        assert engine.info.kind == kind and engine.info.where == llama_server.url
        assert engine.info.n_ctx == 1024 and engine.info.vocab_size == vocab.n_vocab
        for name, needle, keep in CASES:
            doc, offset, expected = blank(micro_model.files[name], needle, keep)
            got = await pipeline.complete(engine, TypeThroughCache(), name, doc, offset, SETTINGS)
            assert got.texts == [expected], (kind, name)
            assert got.result.stop in ("eot", "rule")
    finally:
        await asyncio.to_thread(engine.close)


async def test_native_reuses_the_slot_cache_across_keystrokes(micro_model, llama_server, vocab) -> None:
    # pinned to a slot (--slot): the server's own pick may hop to the other slot while ours still finishes
    engine = await asyncio.to_thread(make, "llama-server", llama_server.url, vocab, slot=0)
    try:
        doc, offset, expected = blank(micro_model.files["spaces.py"], "return 3.14159", "        ")
        results = []
        for k in range(4):  # type the first characters of the line, one per request
            typed = doc[:offset] + expected[:k] + doc[offset:]
            got = await pipeline.complete(engine, TypeThroughCache(), "s.py", typed, offset + k, SETTINGS)
            if k == 0:  # (mid-word the micro model may go astray: remote engines cannot heal tokens)
                assert got.texts == [expected]
            results.append(got.result)
        for r in results[1:]:  # SPM: only the end of the prefix is new; the slot keeps the rest
            assert r.reused_tokens >= r.prompt_tokens - 4, r
            assert r.evaluated_tokens <= 4, r
        assert results[0].generated_tokens > 0 and results[0].generate_ms > 0
    finally:
        await asyncio.to_thread(engine.close)


def test_text_prompts_tokenize_back_to_our_ids(demo_vocab) -> None:
    """The OpenAI engine's text fallback, as the server's own tokenizer (special tokens parsed) reads it: our ids,
    but for the space SentencePiece puts after every special token, which our suffix ids do not have."""
    from lsp_server import fim
    from lsp_server.engines.openai import text_prompt

    ctx = fim.FimContext(prefix="def add(a, b):\n    ret", suffix="\n\nprint(add(1, 2))\n")
    with LlamaServer(DEMO, slots=1) as server:
        for order in (fim.FimOrder.SPM, fim.FimOrder.PSM):
            ids = fim.prompt_tokens(ctx, demo_vocab, order)
            text = text_prompt(demo_vocab, ids)
            body = json.dumps({"content": text, "add_special": True, "parse_special": True}).encode()
            req = urllib.request.Request(server.url + "/tokenize", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                got = json.loads(r.read())["tokens"]
            s = demo_vocab.sentinels
            at = ids.index(s.suf) + 1
            assert demo_vocab.piece(got[at]) == b" "  # the lone "▁" the server's tokenizer adds after SUF
            assert got == ids[:at] + [got[at]] + ids[at:], order


def _completion(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/completion", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("cache_reuse", [64, 0], ids=["n_cache_reuse-64", "off"])
async def test_moved_text_is_shifted_not_evaluated_again(demo_server, demo_vocab, cache_reuse) -> None:
    """An extra chunk dropped from the front of the prompt moves the rest up: with ``n_cache_reuse`` the slot shifts
    the cached run to its new place (a few tokens evaluated), and greedy text after the shift is a cold run's text."""
    import sysconfig
    from pathlib import Path

    vocab = demo_vocab
    code = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text().split("\n")
    dropped = vocab.encode("\n".join(code[40:52]) + "\n")  # a chunk the new prompt no longer holds
    kept = vocab.encode("\n".join(code[200:240]) + "\n")  # the run that moves (chunks, the prefix window ...)
    joined = vocab.encode("\n".join(code[300:304]) + "\n")  # new text after it
    assert len(kept) > 200 and len(dropped) > 80
    # a head of its own per case: the server's host-memory prompt cache must not hand back another case's prompt
    bos = ([vocab.sentinels.bos] if vocab.add_bos else []) + vocab.encode(f"# case {cache_reuse}\n")
    engine = await asyncio.to_thread(make, "llama-server", demo_server.url, vocab, slot=0, cache_reuse=cache_reuse)
    try:
        first = result_of(engine.submit(request(vocab, prompt=bos + dropped + kept, max_tokens=1)))
        assert first.evaluated_tokens > len(kept)
        moved = bos + kept + joined
        second = result_of(engine.submit(request(vocab, prompt=moved, max_tokens=8)))
    finally:
        await asyncio.to_thread(engine.close)
    if cache_reuse:
        assert second.reused_tokens >= len(kept) - 1, second  # shifted, not evaluated again
        assert second.evaluated_tokens <= len(joined) + 2, second
    else:  # only the common prefix (BOS and the head) is reused: the moved run is evaluated again
        assert second.evaluated_tokens >= len(kept) + len(joined) - 1, second
    # the same greedy tokens as a cold evaluation of the same prompt (another slot, no cache)
    cold = _completion(
        demo_server.url,
        {"prompt": moved, "n_predict": 8, "cache_prompt": False, "temperature": 0, "id_slot": 1, "return_tokens": True},
    )
    assert second.candidates[0].tokens == cold["tokens"][: len(second.candidates[0].tokens)]
    assert len(second.candidates[0].tokens) > 0


def _slot(url: str, slot_id: int) -> dict:
    with urllib.request.urlopen(f"{url}/slots", timeout=10) as r:
        return next(s for s in json.loads(r.read()) if s["id"] == slot_id)


@pytest.mark.parametrize("kind", ["llama-server", "openai"])
async def test_cancel_closes_the_stream_and_the_server_stops(demo_server, demo_vocab, kind) -> None:
    llama_server, vocab = demo_server, demo_vocab
    engine = await asyncio.to_thread(make, kind, llama_server.url, vocab)
    try:
        holder: dict = {}
        flowing = threading.Event()

        def rule(text: str) -> bool:  # tokens are arriving: cancel from the engine's own thread, mid-stream
            if len(text) > 8 and not flowing.is_set():
                flowing.set()
                holder["job"].cancel()
            return False

        # sampling at a high temperature: the model rambles instead of ending at EOT
        req = request(vocab, max_tokens=800, sampling=Sampling(temperature=1.5, seed=3), stop_text=rule)
        holder["job"] = job = engine.submit(req)
        t0 = time.perf_counter()
        result = result_of(job)
        assert time.perf_counter() - t0 < 10
        assert result.stop == "cancelled" and flowing.is_set()
        # the server saw the connection close and stopped that slot long before 800 tokens
        deadline = time.monotonic() + 20
        while any(_slot(llama_server.url, i)["is_processing"] for i in (0, 1)):
            assert time.monotonic() < deadline, "llama-server kept generating after the client went away"
            await asyncio.sleep(0.05)
        used = [_slot(llama_server.url, i) for i in (0, 1)]
        decoded = [s["next_token"][0]["n_decoded"] for s in used if "next_token" in s]  # slots that ran a task
        assert decoded and max(decoded) < 400, decoded
    finally:
        await asyncio.to_thread(engine.close)


async def test_newer_request_supersedes(micro_model, llama_server, vocab) -> None:
    engine = await asyncio.to_thread(make, "llama-server", llama_server.url, vocab)
    try:
        old = engine.submit(request(vocab, max_tokens=800, sampling=Sampling(temperature=1.5, seed=1)))
        doc, offset, expected = blank(micro_model.files["tabs.py"], "self.jobs.append(job)", "\t\t")
        got = await pipeline.complete(engine, TypeThroughCache(), "t.py", doc, offset, SETTINGS)
        assert result_of(old).stop == "superseded"
        assert got.texts == [expected]
    finally:
        await asyncio.to_thread(engine.close)


# ---- faults ----------------------------------------------------------------------------------------------------
def test_closed_port_is_a_clear_error_without_a_hang(demo_vocab) -> None:
    port = closed_port()
    health = Health()
    t0 = time.perf_counter()
    engine = make("llama-server", f"http://127.0.0.1:{port}", demo_vocab, timeout_s=2)
    try:
        engine.set_listener(health)
        assert health.messages and f"cannot connect to http://127.0.0.1:{port}" in health.messages[0]
        for _ in range(20):  # every keystroke fails at once with the same message; no request is sent
            with pytest.raises(EngineError, match="cannot connect"):
                result_of(engine.submit(request(demo_vocab)), timeout=1)
        assert time.perf_counter() - t0 < 5
        assert len(health.messages) == 1  # shown once
    finally:
        engine.close()


@pytest.mark.parametrize(
    "fault,message",
    [
        (500, "answered HTTP 500: fault server"),
        (401, "refused the request .HTTP 401.*CODELLAMA_API_KEY"),
        (404, "has no /v1/models .HTTP 404.*llama-server"),
        ("malformed", "expected JSON from"),
    ],
)
def test_bad_answers_are_clear_errors_and_never_a_storm(demo_vocab, fault, message) -> None:
    with fault_server(fault) as server:
        health = Health()
        t0 = time.monotonic()
        engine = make("llama-server", server.url, demo_vocab, timeout_s=2)
        try:
            engine.set_listener(health)
            assert engine.down is not None
            for _ in range(30):  # keystrokes: each fails at once with the message, none reaches the server
                with pytest.raises(EngineError, match=message):
                    result_of(engine.submit(request(demo_vocab)), timeout=1)
            # the probe retries with back-off: 0.5 s, then 1 s - the third request comes >= 1.5 s after the first
            server.wait_requests(3)
            assert time.monotonic() - t0 >= 1.4
            assert all(r == "GET /v1/models" for r in server.requests), server.requests  # no completion was sent
            assert len(health.messages) == 1  # one message for the whole outage
        finally:
            engine.close()


def test_a_server_that_stops_answering_then_answers_again(demo_vocab) -> None:
    with LlamaServer(DEMO, slots=1) as server:
        health = Health()
        engine = make("llama-server", server.url, demo_vocab, timeout_s=2)
        engine.set_listener(health)
        try:
            server.pause()  # connections are accepted, nothing answers
            t0 = time.perf_counter()
            result = result_of(engine.submit(request(demo_vocab, time_budget_s=0.5)))
            assert result.stop == "time" and result.texts == [""]
            assert time.perf_counter() - t0 < 2  # the editor never waits much longer than the budget
            # that request started a probe, which gets no answer within the request timeout either: down
            health.wait(lambda m: len(m) == 1)
            assert f"no answer from {server.url} within 2 s" in health.messages[0]
            with pytest.raises(EngineError, match="no answer"):
                result_of(engine.submit(request(demo_vocab)), timeout=1)
            server.resume()
            health.wait(lambda m: m[-1] is None)
            assert result_of(engine.submit(request(demo_vocab))).candidates[0].tokens
        finally:
            server.resume()
            engine.close()


def test_a_stream_that_stalls_ends_at_the_time_budget(demo_vocab) -> None:
    with LlamaServer(DEMO, slots=1) as server:
        engine = make("llama-server", server.url, demo_vocab)
        try:
            flowing = threading.Event()

            def rule(text: str) -> bool:
                if text:
                    flowing.set()
                return False

            req = request(demo_vocab, max_tokens=800, time_budget_s=2.0, sampling=Sampling(temperature=1.5), stop_text=rule)
            job = engine.submit(req)
            assert flowing.wait(20)
            server.pause()  # the stream stalls mid-answer
            result = result_of(job)
            assert result.stop == "time" and result.candidates[0].tokens  # what came before the stall is kept
            assert time.perf_counter() - job.submitted < 4
            assert engine.down is None  # a slow answer is not a dead server
        finally:
            server.resume()
            engine.close()


def test_api_key_from_the_environment_never_logged(demo_vocab, monkeypatch, caplog) -> None:
    secret = "sk-team-4711-do-not-log"
    caplog.set_level(logging.DEBUG)
    with LlamaServer(DEMO, slots=1, extra=("--api-key", secret)) as server:
        monkeypatch.delenv("TEAM_KEY", raising=False)
        health = Health()
        engine = make("llama-server", server.url, demo_vocab, api_key_env="TEAM_KEY", timeout_s=5)
        try:
            engine.set_listener(health)
            assert "HTTP 401" in engine.down and "TEAM_KEY" in engine.down
            monkeypatch.setenv("TEAM_KEY", secret)  # read per request: the next probe authenticates
            health.wait(lambda m: m[-1] is None)
            result = result_of(engine.submit(request(demo_vocab)))
            assert result.stop in ("eot", "length") and result.candidates[0].tokens
        finally:
            engine.close()
    assert secret not in caplog.text
    assert all(secret not in (m or "") for m in health.messages)
    assert secret not in repr(engine.info)


def test_a_server_running_another_model_is_refused(vocab) -> None:
    with LlamaServer(DEMO, slots=1) as server:  # the demo model, while we tokenize with the micro model's vocabulary
        engine = make("llama-server", server.url, vocab, timeout_s=5)
        try:
            assert engine.down is not None and "set 'model' to the GGUF the server runs" in engine.down
            with pytest.raises(EngineError, match="the GGUF the server runs"):
                result_of(engine.submit(request(vocab)))
        finally:
            engine.close()


def test_server_killed_mid_request_then_recovery(demo_vocab) -> None:
    server = LlamaServer(DEMO, slots=1)
    port = server.port
    health = Health()
    engine = make("llama-server", server.url, demo_vocab, timeout_s=2)
    engine.set_listener(health)
    try:
        flowing = threading.Event()

        def rule(text: str) -> bool:
            if len(text) > 4:
                flowing.set()
            return False

        job = engine.submit(request(demo_vocab, max_tokens=800, sampling=Sampling(temperature=1.5), stop_text=rule))
        assert flowing.wait(20)
        server.kill()  # the server dies while it streams
        with pytest.raises(EngineError, match=r"closed the connection|cannot connect"):
            result_of(job)
        health.wait(lambda m: len(m) == 1)
        assert engine.down is not None
        with pytest.raises(EngineError):
            result_of(engine.submit(request(demo_vocab)), timeout=1)
        # a server comes back on the same port: the probe finds it, completions flow again
        server = LlamaServer(DEMO, slots=1, port=port)
        health.wait(lambda m: m[-1] is None, timeout=60)
        result = result_of(engine.submit(request(demo_vocab)))
        assert result.candidates[0].tokens
        assert health.messages[0] and health.messages[-1] is None and len(health.messages) == 2
    finally:
        engine.close()
        server.stop()


def test_close_cancels_what_runs(demo_server, demo_vocab) -> None:
    llama_server, vocab = demo_server, demo_vocab
    engine = make("openai", llama_server.url, vocab)
    job = engine.submit(request(vocab, max_tokens=800, sampling=Sampling(temperature=1.5, seed=5)))
    engine.close()
    assert result_of(job, 10).stop == "cancelled"
    with pytest.raises(EngineError, match="closed"):
        result_of(engine.submit(request(vocab)), 1)
