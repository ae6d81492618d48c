"""What the HTTP engines share: one event-loop thread, streaming requests, cancellation, health and back-off.

In: ``GenerationRequest``s (prompt token ids, limits, stop conditions) from any thread; ``submit`` never blocks.
Out: ``GenerationResult``s on the jobs' futures, or an ``EngineError`` whose message is for the user.

Each engine owns an asyncio loop on a daemon thread and one ``httpx.AsyncClient`` (keep-alive, TLS verified unless
the settings say otherwise, ``Authorization: Bearer`` from an environment variable read per request and never
logged). A request is one streamed HTTP call per candidate; its task is cancelled when the job is cancelled or
superseded, or when the time budget ends: cancelling the task closes the connection, and llama-server and vLLM
stop generating for a client that went away. The tokens streamed before that are kept (stop "time" etc.).

Health: a failure that makes the server unusable (connection refused or reset, HTTP 401/403/404/5xx, a body that
is not the JSON expected, a model whose vocabulary differs from ours, no answer to a probe within ``timeout_s``)
marks the engine *down*: the listener hears the message once, requests fail at once with it (no request reaches the network), and
one probe task retries with exponential back-off (0.5 s doubling to 30 s) until the server answers properly;
then the listener hears ``None`` and requests flow again. A dead server therefore sees one probe per back-off
step, however fast the user types. A request that gets no answer within its time budget ends with stop "time"
and no text, and starts one probe: a server that is only busy answers it and stays up; a hung one is marked down. Subclasses say how to probe (``_connect``) and how to ask (``_stream``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import httpx

from codellama_core import llama, redact

from ..vocab import LlamaVocab
from . import EngineError, EngineInfo, Generation, GenerationRequest, GenerationResult, Job, Stop

T = TypeVar("T")
log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines would log every keystroke's URL
logging.getLogger("httpcore").setLevel(logging.WARNING)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
DEFAULT_N_CTX = 4096  # until the server has told us its context per slot


@dataclass(frozen=True)
class RemoteOptions:
    url: str  # http(s)://host:port of the server (a path prefix such as /v1 is kept for OpenAI servers)
    api_key_env: str = "CODELLAMA_API_KEY"  # the *name* of the environment variable holding the key
    timeout_s: float = 10.0  # connect / first byte / probe limit; generation is limited by the time budget
    verify_tls: bool = True
    model_name: str | None = None  # OpenAI servers: the "model" field (None: the server's first model)
    slot: int | None = None  # llama-server: pin to this slot (id_slot); None: the server picks by prompt similarity
    # llama-server: a run of at least this many tokens of the slot's cached prompt that moved to another place in the
    # new prompt is shifted there, not evaluated again (``n_cache_reuse`` per request; 0: off, the server's own value)
    cache_reuse: int = 64
    prompt_format: Literal["auto", "tokens", "text"] = "auto"  # OpenAI servers: token ids, text, or ids then text


class Fault(Exception):
    """The server cannot be used (message for the user); marks the engine down."""


class RequestFault(Exception):
    """This one request was refused (HTTP 400/422); the server itself is fine."""


class RemoteVocab(LlamaVocab):
    """The vocabulary of a local GGUF, loaded vocab-only (no weights are read), for engines on a server.

    Adds ``token_text``: a token's text as stored (``▁<PRE>``), which a server's tokenizer maps back to the
    token when it parses special tokens in a text prompt.
    """

    def __init__(self, model: llama.Model) -> None:
        super().__init__(model)
        self._model = model  # the tokenizer calls into it for as long as the vocabulary lives
        self._texts = model.texts()

    def token_text(self, token: int) -> str:
        return self._texts[token]


def local_vocab(path: str | os.PathLike[str]) -> RemoteVocab:
    """The vocabulary of the GGUF at ``path`` (blocking; a few ms for Code Llama's 32k tokens)."""
    try:
        return RemoteVocab(llama.Model(path, llama.LoadOptions(vocab_only=True)))
    except llama.LlamaError as exc:
        raise EngineError(f"expected a GGUF with the server model's vocabulary at {path}: {exc}") from None


public_url = redact.public_url  # ``url`` without user:password (what status messages and logs may show)

MAX_BODY = 4 << 20  # bytes of one JSON answer (/v1/models, /tokenize): a model list is a few KB
MAX_EVENT = 1 << 20  # bytes of one server-sent event line: a token's event is a few hundred bytes


class _HttpJob(Job):
    """A job whose cancel also cancels its HTTP task (which closes the connection)."""

    def __init__(self, request: GenerationRequest, engine: RemoteEngine) -> None:
        super().__init__(request)
        self._engine = engine
        self._task: asyncio.Task[None] | None = None

    def cancel(self, reason: Stop = "cancelled") -> None:
        super().cancel(reason)
        self._engine._loop.call_soon_threadsafe(self._cancel_task)

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()


class RemoteEngine:
    """Base class; subclasses set ``kind`` and implement ``_connect`` and ``_stream``."""

    kind = "remote"

    def __init__(self, vocab: RemoteVocab, options: RemoteOptions, name: str) -> None:
        """Starts the loop thread and probes the server (blocking up to ``timeout_s``: call off the event loop).
        A server that is down now is not an error here: the engine starts down and keeps probing."""
        self.vocab = vocab
        self.options = options
        self.where = public_url(options.url)
        self.info = EngineInfo(
            name=options.model_name or name,
            where=self.where,
            n_ctx=DEFAULT_N_CTX,
            n_ctx_train=0,
            vocab_size=vocab.n_vocab,
            can_heal=False,
            kind=self.kind,
        )
        self._listener: Callable[[str | None], None] | None = None
        self._down: str | None = None
        self._probe: asyncio.Task[None] | None = None
        self._running: _HttpJob | None = None
        self._cached = 0  # tokens the server's slot holds for us after the last request (prompt + generated)
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{self.kind}-http", daemon=True)
        self._thread.start()
        self._client = self._call(self._make_client())
        try:
            self.info = self._call(self._connect(), timeout=options.timeout_s * 4 + 5)
        except Exception as exc:  # whatever went wrong, the engine starts down and keeps probing
            self._call(self._mark_down(self._probe_failure(exc)))

    # ---- public API ---------------------------------------------------------------------------------
    @property
    def down(self) -> str | None:
        """Why the server cannot be used now (None when it can)."""
        return self._down

    @property
    def cached_tokens(self) -> int:
        return self._cached

    def set_listener(self, listener: Callable[[str | None], None] | None) -> None:
        """``listener(message)`` on every health change (called on the engine's thread): a message when the
        server goes down, None when it is back. Called at once if the engine is down already."""
        self._listener = listener
        if listener is not None and self._down is not None:
            listener(self._down)

    def submit(self, request: GenerationRequest) -> Job:
        job = _HttpJob(request, self)
        with self._lock:
            if self._closed:
                job.future.set_exception(EngineError("expected a running engine, got one that was closed"))
                return job
            previous, self._running = self._running, job
        if previous is not None:
            previous.cancel("superseded")
        if self._down is not None:  # fail fast: the probe task alone talks to a server that is down
            job.future.set_exception(EngineError(self._down))
            return job
        self._loop.call_soon_threadsafe(self._start, job)
        return job

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if running is not None:
            running.cancel("cancelled")
        try:
            self._call(self._shutdown(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # ---- loop-thread plumbing -------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _make_client(self) -> httpx.AsyncClient:
        t = self.options.timeout_s
        return httpx.AsyncClient(
            timeout=httpx.Timeout(connect=t, read=t, write=t, pool=t),
            verify=self.options.verify_tls,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )

    async def _shutdown(self) -> None:
        for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            task.cancel()
        await self._client.aclose()

    def headers(self) -> dict[str, str]:
        """Request headers; the API key is read from the environment now (so a changed variable counts). A key
        that cannot be a header value (CR/LF, control or non-ASCII characters) is refused without showing it."""
        key = os.environ.get(self.options.api_key_env, "") if self.options.api_key_env else ""
        key = key.strip()
        if key and not all(33 <= ord(c) < 127 for c in key):
            raise Fault(
                f"expected the API key in ${self.options.api_key_env} to be one line of printable ASCII, "
                f"got {len(key)} characters with a line break, space or control character in them (not shown)"
            )
        return {"Authorization": f"Bearer {key}"} if key else {}

    def url(self, path: str) -> str:
        return self.options.url.rstrip("/") + path

    # ---- health ---------------------------------------------------------------------------------------------
    async def _mark_down(self, message: str) -> None:
        if self._down is not None or self._closed:
            self._down = self._down or message
            return
        self._down = message
        log.warning("%s engine down: %s", self.kind, message)
        self._notify(message)
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._closed:
            await asyncio.sleep(delay)  # the back-off timer: one probe per step, never a storm
            try:
                info = await asyncio.wait_for(self._connect(), self.options.timeout_s * 4 + 5)
            except Exception as exc:  # the probe must outlive any failure, or the engine stays down for good
                log.info(
                    "%s still down (%s); next probe in %.1f s",
                    self.where,
                    self._probe_failure(exc),
                    min(delay * 2, BACKOFF_MAX_S),
                )
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.info, self._down = info, None
            log.warning("%s engine back: %s", self.kind, self.where)
            self._notify(None)
            return

    def _check_alive(self) -> None:
        """A request got no answer within its time budget: probe once (at most one probe at a time). A server
        that is only busy answers the probe and stays up; one that hangs does not and is marked down."""
        if self._probe is not None and not self._probe.done():
            return

        async def probe() -> None:
            try:
                await asyncio.wait_for(self._connect(), self.options.timeout_s)
            except Exception as exc:
                await self._mark_down(self._probe_failure(exc))

        self._probe = self._loop.create_task(probe())

    def _probe_failure(self, exc: BaseException) -> str:
        if isinstance(exc, Fault):
            return str(exc)
        if isinstance(exc, TimeoutError):
            return f"no answer from {self.where} within {self.options.timeout_s:g} s"
        log.warning("probing %s failed unexpectedly: %s", self.where, redact.message(f"{type(exc).__name__}: {exc}"))
        return redact.message(f"unexpected answer from {self.where}: {type(exc).__name__}: {exc}")

    def _notify(self, message: str | None) -> None:
        if self._listener is not None:
            try:
                self._listener(message)
            except Exception:  # a listener bug must not stop the engine's loop
                log.exception("health listener failed")

    # ---- one request ------------------------------------------------------------------------------------------
    def _start(self, job: _HttpJob) -> None:
        if job.cancelled:  # cancelled or superseded before it started: no request at all
            self._finish(
                job, GenerationResult(candidates=[], stop=job.reason, prompt_tokens=len(job.request.prompt)), job.submitted
            )
            return
        job._task = self._loop.create_task(self._run(job))
        # a task cancelled before its first step never enters _run's handlers: resolve the job here then
        job._task.add_done_callback(lambda _t: self._finish(job, GenerationResult(candidates=[], stop=job.reason), job.submitted))

    async def _run(self, job: _HttpJob) -> None:
        req = job.request
        started = job.submitted
        # the deadline on the loop's clock: the budget counts from submit
        deadline = self._loop.time() + (job.deadline - time.perf_counter())
        result = GenerationResult(candidates=[], stop="eot", prompt_tokens=len(req.prompt))
        gen: Generation | None = None
        try:
            for i in range(max(1, req.n)):
                gen = Generation(text="", tokens=[], stop="length")
                result.candidates.append(gen)
                temperature = req.sampling.temperature if i == 0 else req.sampling.alt_temperature
                got_headers = False

                def headers_arrived() -> None:
                    nonlocal got_headers
                    got_headers = True

                try:
                    async with asyncio.timeout_at(deadline):
                        await self._stream(job, i, temperature, gen, result, headers_arrived)
                except TimeoutError:
                    gen.stop = "time"
                    if not got_headers:  # busy, or hung? the probe tells (a hung server does not answer it either)
                        self._check_alive()
                gen.text = self._text(gen.tokens, gen.text)
                if gen.stop in ("time", "rule"):
                    break
        except asyncio.CancelledError:
            if gen is not None:
                gen.stop = job.reason
                gen.text = self._text(gen.tokens, gen.text)
            result.stop = job.reason
            self._finish(job, result, started)
            return
        except Fault as exc:
            await self._mark_down(str(exc))
            self._fail(job, EngineError(str(exc)))
            return
        except RequestFault as exc:
            self._fail(job, EngineError(str(exc)))
            return
        except (httpx.HTTPError, OSError) as exc:
            message = self._describe(exc)
            await self._mark_down(message)
            self._fail(job, EngineError(message))
            return
        self._finish(job, result, started)

    def _text(self, tokens: list[int], streamed: str) -> str:
        """The candidate's text: decoded with our vocabulary when the server sent token ids (exactly what
        the in-process engine would return), else the server's own text."""
        return self.vocab.decode(tokens) if tokens else streamed

    @staticmethod
    def _fail(job: Job, exc: EngineError) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    def _finish(self, job: Job, result: GenerationResult, started: float) -> None:
        if result.candidates:
            result.stop = result.candidates[0].stop if result.stop not in ("cancelled", "superseded") else result.stop
        # the server sends token ids (llama-server) or a count (OpenAI usage); a stream we closed early has neither
        result.generated_tokens = max(result.generated_tokens, sum(len(c.tokens) for c in result.candidates))
        result.total_ms = (time.perf_counter() - started) * 1e3
        if job.future.done():
            return
        self._cached = result.prompt_tokens + (len(result.candidates[-1].tokens) if result.candidates else 0)
        job.future.set_result(result)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {self.where} ({_reason(exc)})"
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer from {self.where} within {self.options.timeout_s:g} s"
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return f"{self.where} closed the connection mid-answer ({_reason(exc)})"
        return f"request to {self.where} failed: {_reason(exc)}"  # _reason redacts: httpx quotes header values

    # ---- HTTP helpers for subclasses ----------------------------------------------------------------------
    async def get_json(self, path: str) -> object:
        return await self._json("GET", path, None)

    async def post_json(self, path: str, body: dict[str, Any]) -> object:
        return await self._json("POST", path, body)

    async def _json(self, method: str, path: str, body: dict[str, Any] | None) -> object:
        """One JSON answer, read as a stream and refused past ``MAX_BODY`` bytes (a server that sends a
        gigabyte costs us a few megabytes, not the gigabyte)."""
        try:
            async with self._client.stream(method, self.url(path), json=body, headers=self.headers()) as r:
                text = await self.read_capped(r, path)
        except httpx.HTTPError as exc:
            raise Fault(self._describe(exc)) from None
        self.check_status(r.status_code, text, path)
        return self.parse_json(text, path)

    async def read_capped(self, r: httpx.Response, path: str, limit: int = MAX_BODY) -> str:
        declared = r.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Fault(f"expected an answer of at most {limit >> 20} MiB from {self.where}{path}, got {int(declared)} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise Fault(f"expected an answer of at most {limit >> 20} MiB from {self.where}{path}, got more")
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def check_status(self, status: int, body: str, path: str) -> None:
        if status < 400:
            return
        detail = _error_message(body)
        if status in (401, 403):
            raise Fault(
                f"{self.where} refused the request (HTTP {status}{': ' + detail if detail else ''}); "
                f"set the API key in the environment variable {self.options.api_key_env}"
            )
        if status == 404:
            raise Fault(f"{self.where} has no {path} (HTTP 404): {self.wrong_server_hint}")
        if status in (400, 422):
            raise RequestFault(f"{self.where} rejected the request (HTTP {status}{': ' + detail if detail else ''})")
        raise Fault(f"{self.where} answered HTTP {status}{': ' + detail if detail else ''}")

    wrong_server_hint = "is the engine kind right for this server?"

    def parse_json(self, text: str, path: str) -> object:
        try:
            return json.loads(text)
        except ValueError:
            raise Fault(f"expected JSON from {self.where}{path}, got {text[:60]!r}") from None

    async def events(
        self, path: str, body: dict[str, Any], on_headers: Callable[[], None]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST ``body`` with ``stream: true`` and yield each server-sent event's JSON object until
        ``[DONE]`` or the end of the stream. Leaving the iteration early closes the connection."""
        async with self._client.stream("POST", self.url(path), json=body, headers=self.headers()) as r:
            on_headers()
            if r.status_code >= 400:
                self.check_status(r.status_code, await self.read_capped(r, path), path)
            if not r.headers.get("content-type", "").startswith("text/event-stream"):
                # a server that ignores "stream" (or a proxy in the way): one JSON answer
                data = self.parse_json(await self.read_capped(r, path), path)
                if not isinstance(data, dict):
                    raise Fault(f"expected a JSON object from {self.where}{path}, got {type(data).__name__}")
                yield data
                return
            async for line in _lines(r, MAX_EVENT):
                if line is None:
                    raise Fault(f"expected server-sent events of at most {MAX_EVENT >> 20} MiB from {self.where}{path}")
                if not line.startswith("data:"):
                    continue  # blank separators, ":" keep-alive pings, "event:" names
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                data = self.parse_json(payload, path)
                if not isinstance(data, dict):
                    raise Fault(f"expected a JSON object per event from {self.where}{path}, got {payload[:60]!r}")
                if "error" in data:
                    raise Fault(f"{self.where} reported an error: {_error_message(json.dumps(data))}")
                yield data

    # ---- subclass interface ---------------------------------------------------------------------------------
    async def _connect(self) -> EngineInfo:
        """Probe the server (authenticated, so a bad key shows here), check that it runs a model with our
        vocabulary, and return the engine's info. Raises ``Fault``."""
        raise NotImplementedError

    async def _stream(
        self,
        job: Job,
        index: int,
        temperature: float,
        gen: Generation,
        result: GenerationResult,
        on_headers: Callable[[], None],
    ) -> None:
        """Run candidate ``index``: append its tokens to ``gen.tokens`` (or its text to ``gen.text``) as they
        stream in, set ``gen.stop``, add the costs to ``result``. Raises ``Fault``/``RequestFault``."""
        raise NotImplementedError

    def stop_now(self, req: GenerationRequest, gen: Generation) -> Stop | None:
        """A stop decided on our side: a stop token (cut there) or the caller's text rule."""
        for k, t in enumerate(gen.tokens):
            if t in req.stop_tokens or t in self.vocab.sentinels.eog:
                del gen.tokens[k:]
                return "eot"
        if req.stop_text is not None and req.stop_text(self._text(gen.tokens, gen.text)):
            return "rule"
        return None

    def with_info(self, **changes: Any) -> EngineInfo:
        return replace(self.info, **changes)


async def _lines(r: httpx.Response, limit: int) -> AsyncGenerator[str | None, None]:
    """The response's lines (LF or CRLF), each at most ``limit`` bytes; None (then the end) for a longer one
    (httpx's ``aiter_lines`` would hold a line without end in memory whole)."""
    buf = b""
    async for chunk in r.aiter_bytes():
        buf += chunk
        while (nl := buf.find(b"\n")) >= 0:
            line, buf = buf[:nl], buf[nl + 1 :]
            yield line.rstrip(b"\r").decode("utf-8", "replace")
        if len(buf) > limit:
            yield None
            return
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", "replace")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact.message(text.split("] ", 1)[-1], 120)


def _error_message(body: str) -> str:
    """The server's own error message from an OpenAI/llama-server style error body (or its first words)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:120]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)[:200]
    if isinstance(err, str):
        return err[:200]
    if isinstance(data, dict) and isinstance(data.get("detail"), str):  # FastAPI-style (vLLM validation)
        return str(data["detail"])[:200]
    return body.strip()[:120]
