"""The JSON-RPC edge: framing, envelope and lifecycle rules that pygls 2.1 leaves open, and the transports.

In: bytes from an editor (stdin or one TCP connection). Out: structured messages handed to pygls'
``LanguageServerProtocol`` (which runs our handlers), and error responses for everything pygls would
drop, answer twice or answer with a traceback. The rules kept here, each pinned by a test:

- Framing (``FrameReader``): header names are case-insensitive and LF-only line ends are accepted (LSP
  framing is HTTP-like); ``Content-Length`` must be a plain number of at most ``MAX_CONTENT_LENGTH``.
  A broken frame (missing, negative, duplicated or oversized length, a header block that never ends, a
  body that is not JSON) is answered with a parse error and the reader resynchronises at the next
  ``Content-Length`` header, also when a truncated body swallowed the start of the next frame. It never
  allocates more than the limit, and never goes quiet while bytes keep arriving.
- Every request is answered exactly once: a malformed envelope gets -32600, params that do not match
  the protocol -32602 with a short message (pygls answers neither), a request before ``initialize``
  -32002, a request after ``shutdown`` -32600. Error replies carry a message, never a traceback.
- ``exit`` ends the server with status 0 after ``shutdown`` and 1 without it.
- A document change the server cannot apply (unknown document, a range outside it, a null version)
  is an error the user sees, and the document is dropped until it is reopened, so completions never
  come from a copy that drifted from the editor's.
- pygls keeps a Future per handled notification in its request table forever (about 2.4 KB per
  keystroke); here every entry is removed when its handler finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, cast
from urllib.parse import unquote

import attrs
import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol, default_converter
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage
from pygls.protocol.language_server import lsp_method

from .errors import ServerError
from .lines import LineIndex, LineIndexes

log = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 64 * 1024 * 1024  # the largest message body accepted (a 20-50 MB document fits)
MAX_HEADER_BYTES = 8192  # a header block longer than this is not a header block
AUTH_TIMEOUT_S = 10.0  # a TCP client must send its authenticated `initialize` within this

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32602, -32603
SERVER_NOT_INITIALIZED = -32002

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(rb"^([A-Za-z0-9!#$%&'*+.^_`|~-]+)[ \t]*:[ \t]*(.*?)[ \t]*$")
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
_DOCUMENT_SYNC = {types.TEXT_DOCUMENT_DID_OPEN, types.TEXT_DOCUMENT_DID_CHANGE, types.TEXT_DOCUMENT_DID_CLOSE}


class FrameError(Exception):
    """A frame that could not be read; the message says what was expected and what came. ``head``: the first bytes
    of a body skipped for its size (``OVERSIZED_HEAD``), so the document it carried can be named."""

    def __init__(self, message: str, head: bytes = b"", length: int = 0) -> None:
        super().__init__(message)
        self.head = head
        self.length = length


OVERSIZED_HEAD = 4096  # bytes of a skipped body read to find its method and document
_METHOD = re.compile(rb'"method"\s*:\s*"([^"\\]{1,100})"')
_URI = re.compile(rb'"uri"\s*:\s*"((?:[^"\\]|\\.){1,2000})"')


class FrameReader:
    """Splits a byte stream into message bodies (see the module docstring for the rules).

    ``read`` returns the next chunk of bytes, ``b""`` at the end of the stream. ``next`` returns a body,
    a ``FrameError`` (the stream has resynchronised past it), or ``None`` at the end of the stream.
    """

    def __init__(self, read: Callable[[], Awaitable[bytes]]) -> None:
        self._read = read
        self._buf = bytearray()
        self._resync = False

    async def _fill(self) -> bool:
        chunk = await self._read()
        self._buf += chunk
        return bool(chunk)

    async def next(self) -> bytes | FrameError | None:
        while True:
            if self._resync:
                m = _CONTENT_LENGTH.search(self._buf)
                if m is None:
                    del self._buf[: max(0, len(self._buf) - 16)]  # keep what may be the start of a header
                    if not await self._fill():
                        return None
                    continue
                del self._buf[: m.start()]
                self._resync = False
            while self._buf and self._buf[0] in b"\r\n":  # blank lines between messages
                del self._buf[:1]
            end = _HEADER_END.search(self._buf, 0, MAX_HEADER_BYTES + 4)
            if end is None:
                if len(self._buf) > MAX_HEADER_BYTES:
                    self._skip(1)
                    return FrameError(f"expected a header block of at most {MAX_HEADER_BYTES} bytes, got more without an end")
                if not await self._fill():
                    return None
                continue
            try:
                length = self._content_length(bytes(self._buf[: end.start()]))
            except FrameError as exc:
                self._skip(end.end())
                return exc
            del self._buf[: end.end()]
            if length > MAX_CONTENT_LENGTH:
                # its start names the document (a didOpen of a 70 MB file), so the server can say which: what came
                # with the header, or the next chunk when the header came alone (a writer that sent them apart);
                # never more waiting than that, the parse error is due now
                if not self._buf:
                    await self._fill()
                self._resync = True  # the body is skipped while looking for the next header
                return FrameError(
                    f"expected a Content-Length of at most {MAX_CONTENT_LENGTH}, got {length}",
                    bytes(self._buf[:OVERSIZED_HEAD]),
                    length,
                )
            while len(self._buf) < length:
                if not await self._fill():
                    return None  # the client went away mid-message
            body = bytes(self._buf[:length])
            del self._buf[:length]
            return body

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self._resync = True

    def recover(self, body: bytes) -> None:
        """``body`` was not a JSON message: if it holds the start of another frame (its own one was
        shorter than its Content-Length said), read on from there."""
        m = _CONTENT_LENGTH.search(body)
        if m is not None:
            self._buf[:0] = body[m.start() :]

    @staticmethod
    def _content_length(block: bytes) -> int:
        lengths: set[bytes] = set()
        for raw in block.replace(b"\r\n", b"\n").split(b"\n"):
            m = _HEADER_LINE.match(raw)
            if m is None:
                raise FrameError("expected header lines of the form 'Name: value', got a line that is not one")
            if m[1].lower() == b"content-length":
                lengths.add(m[2])
        if not lengths:
            raise FrameError("expected a Content-Length header, got none")
        if len(lengths) > 1:
            raise FrameError("expected one Content-Length, got several different ones")
        value = lengths.pop()
        if not value.isdigit() or len(value) > 20:
            raise FrameError(f"expected a Content-Length of decimal digits, got {value[:24].decode('ascii', 'replace')!r}")
        return int(value)


def _short(exc: BaseException) -> str:
    """A one-line description of why params did not match the protocol (cattrs' paths, no traceback)."""
    if isinstance(exc, cattrs.BaseValidationError):
        lines = cattrs.transform_error(exc, format_exception=_format_leaf)
    else:
        lines = [str(exc)]
    text = "; ".join(dict.fromkeys(lines))
    return text if len(text) <= 300 else text[:297] + "..."


def _format_leaf(exc: BaseException, kind: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError) and str(exc):
        return " ".join(str(exc).split())[:120]
    name = getattr(kind, "__name__", None) or str(kind)
    return f"invalid value, expected {name}"


def converter() -> cattrs.Converter:
    """pygls' converter, with integers and strings that are what they say: cattrs would turn a line 0.5
    into 0, ``true`` into 1 and a uri 7 into "7" (a client that sends them has a bug worth an error,
    not a guess)."""
    conv = cast(Callable[[], cattrs.Converter], default_converter)()  # pygls' function has no annotations

    def strict_int(value: Any, kind: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if not (isinstance(value, float) and value.is_integer()):
                raise ValueError(f"expected an integer, got {_json_kind(value)} {value!r}"[:120])
            value = int(value)
        return value if kind is int else cast(int, kind(value))  # an IntEnum (this hook is found for them too) checks itself

    def strict_str(value: Any, kind: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_json_kind(value)}")
        return value if kind is str else kind(value)

    def strict_bool(value: Any, _kind: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_json_kind(value)}")
        return value

    conv.register_structure_hook(int, strict_int)
    conv.register_structure_hook(bool, strict_bool)  # bool is an int: it needs its own hook
    conv.register_structure_hook(str, strict_str)
    # Methods lsprotocol does not know (ours: codellama/...) keep their params as plain JSON: pygls
    # would build a new namedtuple class per message for them (a type object each time).
    conv.register_structure_hook(
        JsonRPCRequestMessage,
        lambda o, _t: JsonRPCRequestMessage(id=o["id"], method=o["method"], jsonrpc=o["jsonrpc"], params=o.get("params")),
    )
    conv.register_structure_hook(
        JsonRPCNotification, lambda o, _t: JsonRPCNotification(method=o["method"], jsonrpc=o["jsonrpc"], params=o.get("params"))
    )
    return conv


class DocumentHost(Protocol):
    """What this protocol needs of its server (``server.CodeLlamaServer``) beyond pygls' ``LanguageServer``."""

    lines: LineIndexes  # line starts of the open documents (lines.py)

    def document(self, uri: str) -> Any: ...

    def document_lost(self, uri: str | None, reason: str) -> None: ...

    def notebook_lost(self, uri: str | None, reason: str) -> None: ...

    def was_closed(self, uri: str) -> bool: ...

    def document_too_big(self, uri: str, size: int) -> None: ...

    def is_too_big(self, uri: str) -> bool: ...


class LspProtocol(LanguageServerProtocol):
    """pygls' protocol plus the rules above. ``dispatch`` is the entry point for a message body."""

    @property
    def _host(self) -> DocumentHost:
        return cast(DocumentHost, self._server)

    def __init__(self, server: Any, converter: Any) -> None:
        super().__init__(server, converter)
        self.initialize_seen = False
        self.shutdown_seen = False
        self.exit_code: int | None = None  # set when the server should stop
        self.stopped = asyncio.Event()
        self._pending: set[Any] = set()  # ids of client requests not answered yet
        # request id -> (uri, the document's text generation) when it was dispatched, for requests on a document;
        # a number, not the text: pipelined keystrokes on a 50 MB document would keep a copy of it per request
        self._dispatched_on: dict[Any, tuple[str, int]] = {}
        # uri -> a number from _changes taken whenever its text changes (opened, edited, lost); closed: gone (0)
        self._generations: dict[str, int] = {}
        self._changes = itertools.count(1)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def stop(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self.stopped.set()

    def connection_lost(self) -> None:
        """The client's end closed: nothing can be answered any more."""
        self.stop(0 if self.shutdown_seen else 1)

    # ---- messages in ---------------------------------------------------------------------------------
    def oversized(self, error: FrameError) -> None:
        """A body skipped for its size: when it opened or replaced a document (its start names the method and the
        URI), that document is too big to follow; the server says so once and keeps quiet about it after."""
        if not error.head or not self.initialize_seen:
            return
        method, uri = _METHOD.search(error.head), _URI.search(error.head)
        if method is None or uri is None or method[1].decode() not in _DOCUMENT_SYNC:
            return
        try:
            name = json.loads(b'"' + uri[1] + b'"')
        except ValueError:
            return
        self.text_changed(name, closed=True)
        self._host.document_too_big(name, error.length)

    def dispatch(self, body: bytes, reader: FrameReader | None = None) -> None:
        try:
            obj = json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            self.reply_error(None, PARSE_ERROR, f"expected a JSON message, got {_json_problem(exc)}")
            if reader is not None:
                reader.recover(body)
            return
        if not isinstance(obj, dict):
            what = "a batch (array)" if isinstance(obj, list) else f"a JSON {type(obj).__name__}"
            self.reply_error(None, INVALID_REQUEST, f"expected a JSON-RPC object, got {what}")
            return
        method, has_id, msg_id = obj.get("method"), "id" in obj, obj.get("id")
        id_ok = isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool)
        if method is None and ("result" in obj or "error" in obj):  # a response to one of our requests
            if id_ok and obj.get("jsonrpc") == "2.0":
                self._handle_parsed(obj)
            else:
                log.warning("dropped a malformed response")  # never answer an answer
            return
        if method is None:
            self.reply_error(msg_id if id_ok else None, INVALID_REQUEST, "expected a method, a result or an error, got none")
            return
        if has_id and not id_ok:
            self.reply_error(None, INVALID_REQUEST, f"expected an integer or string id, got {_json_kind(msg_id)}")
            return
        if obj.get("jsonrpc") != "2.0":
            if has_id:
                self.reply_error(msg_id, INVALID_REQUEST, 'expected "jsonrpc": "2.0"')
            return
        if not isinstance(method, str):
            if has_id:
                self.reply_error(msg_id, INVALID_REQUEST, f"expected a string method, got {_json_kind(method)}")
            return
        if has_id:
            self._request(obj, msg_id, method)
        else:
            self._notification(obj, method)

    def _request(self, obj: dict[str, Any], msg_id: Any, method: str) -> None:
        if msg_id in self._pending:
            self.reply_error(None, INVALID_REQUEST, f"expected a new request id, got {msg_id!r} which is still in use")
            return
        if self.shutdown_seen:
            self.reply_error(msg_id, INVALID_REQUEST, f"expected only 'exit' after 'shutdown', got {method!r}")
            return
        if method == types.INITIALIZE:
            if self.initialize_seen:
                self.reply_error(msg_id, INVALID_REQUEST, "expected one 'initialize' request, got a second")
                return
        elif not self.initialize_seen:
            self.reply_error(msg_id, SERVER_NOT_INITIALIZED, f"expected 'initialize' first, got {method!r}")
            return
        if "params" in obj and not isinstance(obj["params"], (dict, list)) and obj["params"] is not None:
            self.reply_error(
                msg_id, INVALID_PARAMS, f"{method}: expected params to be an object, got {_json_kind(obj['params'])}"
            )
            return
        try:
            message = self._structure(obj, method, request=True)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
            self.reply_error(msg_id, INVALID_PARAMS, f"{method}: {_short(exc)}")
            return
        self._pending.add(msg_id)
        uri = getattr(getattr(getattr(message, "params", None), "text_document", None), "uri", None)
        if isinstance(uri, str):
            self._dispatched_on[msg_id] = (uri, self.text_generation(uri))
        if method == types.INITIALIZE:
            self.initialize_seen = True
        elif method == types.SHUTDOWN:
            self.shutdown_seen = True
        self._handle_parsed(message, structured=True)

    def _notification(self, obj: dict[str, Any], method: str) -> None:
        if method == types.EXIT:
            self.stop(0 if self.shutdown_seen else 1)
            return
        if self.shutdown_seen or not self.initialize_seen:
            log.warning("dropped notification %r %s", method, "after shutdown" if self.shutdown_seen else "before initialize")
            return
        try:
            message = self._structure(obj, method, request=False)
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
            reason = _short(exc)
            log.warning("%s: invalid params: %s", method, reason)
            if method in _DOCUMENT_SYNC or method == types.NOTEBOOK_DOCUMENT_DID_CHANGE:
                params = obj.get("params")
                notebook = method == types.NOTEBOOK_DOCUMENT_DID_CHANGE
                doc = params.get("notebookDocument" if notebook else "textDocument") if isinstance(params, dict) else None
                uri = doc.get("uri") if isinstance(doc, dict) else None
                lost = self._host.notebook_lost if notebook else self._host.document_lost
                lost(uri if isinstance(uri, str) else None, f"{method}: {reason}")
            return
        self._handle_parsed(message, structured=True)

    def _structure(self, obj: dict[str, Any], method: str, request: bool) -> Any:
        kind = self.get_message_type(method) or (JsonRPCRequestMessage if request else JsonRPCNotification)
        if "params" not in obj:
            obj = {**obj, "params": None}
        return self._converter.structure(obj, kind)

    def _handle_parsed(self, obj: Any, structured: bool = False) -> None:
        try:
            message = obj if structured else self.structure_message(obj)
            self.handle_message(message)
        except Exception:  # a bug of ours or pygls': logged with its traceback, never sent
            log.exception("failed to handle a message")
            msg_id = getattr(obj, "id", None) if structured else None
            if msg_id in self._pending:
                self.reply_error(msg_id, INTERNAL_ERROR, "internal error (see the server log)")

    # ---- messages out --------------------------------------------------------------------------------
    def reply_error(self, msg_id: Any, code: int, message: str) -> None:
        """An error response, for a request that was (or will never be) handed to pygls."""
        # A cancelled request is normal typing (each key cancels the last request): not a warning, which
        # editors show (VS Code's output channel had one "[warning] ... request cancelled" per key).
        level = logging.DEBUG if code == types.LSPErrorCodes.RequestCancelled.value else logging.WARNING
        log.log(level, "error reply %s to %r: %s", code, msg_id, message)
        self._pending.discard(msg_id)
        self._dispatched_on.pop(msg_id, None)
        if msg_id is None:  # lsprotocol's message type would leave out the null id JSON-RPC requires
            self._send_data({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}})
            return
        super()._send_response(msg_id, error=types.ResponseError(code=code, message=message))

    def _handle_response(self, msg_id: Any, result: Any | None = None, error: types.ResponseError | None = None) -> None:
        """A client's answer to one of our requests; an answer that comes after we stopped waiting (a timed-out
        ``window/workDoneProgress/create``) is dropped quietly, never an ``InvalidStateError`` traceback."""
        future = self._request_futures.get(msg_id)
        if future is not None and future.done():
            self._request_futures.pop(msg_id, None)
            log.debug("dropped a late answer to request %r (no longer awaited)", msg_id)
            return
        super()._handle_response(msg_id, result, error)

    def _send_response(self, msg_id: Any, result: Any = None, error: types.ResponseError | None = None) -> None:
        # pygls' path for handler results and its own errors: once per request, and without the
        # traceback pygls puts into an error's data
        if msg_id not in self._pending:
            log.warning("dropped a second response to request %r", msg_id)
            return
        self._pending.discard(msg_id)
        self._dispatched_on.pop(msg_id, None)
        if error is not None and error.data is not None:
            error = types.ResponseError(code=error.code, message=error.message)
        super()._send_response(msg_id, result, error)

    def text_generation(self, uri: str) -> int:
        """A number that changes whenever the text of document ``uri`` does (see ``text_changed``)."""
        return self._generations.get(unquote(uri), 0)

    def text_changed(self, uri: str, closed: bool = False) -> None:
        """The text of ``uri`` changed (opened, edited, closed or dropped): requests dispatched before are stale.
        A closed document's entry goes (0, as for a document never opened): the table holds open documents only."""
        if closed:
            self._generations.pop(unquote(uri), None)
        else:
            self._generations[unquote(uri)] = next(self._changes)

    def _stale(self, dispatched_on: tuple[str, int] | None) -> bool:
        """Whether the text of the document a request was about changed between its dispatch and now.

        The text, not the version: a didChange that leaves the text as it is does not make an answer wrong
        (it does not count as a change, see ``lsp_text_document__did_change``). Neovim 0.7 sends one with no
        changes at all when its debounce timer had already fired as a request flushed the pending changes (the
        timer's scheduled callback sends again); answering null then left the editor without a suggestion until
        the next key.
        """
        if dispatched_on is None:
            return False
        uri, generation = dispatched_on
        return self.text_generation(uri) != generation

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        # pygls' own, at debug level: a cancel that crosses the answer on the wire is normal while typing.
        future = self._request_futures.pop(msg_id, None)
        if future is None:
            log.debug("cancel for request %r, answered already", msg_id)
        elif future.cancel():
            log.debug("cancelled request %r", msg_id)

    def _send_handler_result(self, future: Any, *, msg_id: Any) -> None:
        self._request_futures.pop(msg_id, None)
        dispatched_on = self._dispatched_on.pop(msg_id, None)
        if msg_id not in self._pending:
            log.warning("dropped a second response to request %r", msg_id)
            return
        if future.cancelled():
            self.reply_error(msg_id, types.LSPErrorCodes.RequestCancelled.value, "request cancelled")
            return
        exc = future.exception()
        if exc is None:
            try:
                # A result for a document that changed after the request came is for a text the editor
                # no longer has (also when the handler only ran after the change): null instead.
                # Checked here, at the moment of sending, so no edit can slip in between.
                stale = self._stale(dispatched_on)
                if stale:
                    log.debug("request %r: the document changed before the reply; sent null", msg_id)
                self._send_response(msg_id, result=None if stale else future.result())
            except (TypeError, ValueError) as err:  # a result that does not serialise: a bug of ours
                log.exception("request %r: could not send the result", msg_id)
                self.reply_error(msg_id, INTERNAL_ERROR, f"internal error: {type(err).__name__}")
            return
        if isinstance(exc, JsonRpcException):
            self.reply_error(msg_id, exc.code, exc.message)
            return
        log.error("request %r failed", msg_id, exc_info=exc)
        self.reply_error(msg_id, INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")

    # ---- pygls' request table ------------------------------------------------------------------------
    def _execute_handler(self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None) -> None:
        # pygls files every coroutine and generator handler's Future under msg_id (a fresh uuid for a
        # notification) and removes it only for requests: drop the entry once the handler is done.
        def done(future: Any) -> None:
            if self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]
            try:
                callback(future)
            except asyncio.CancelledError:  # pygls' generator handlers re-raise a step cancelled at exit
                log.debug("handler %r cancelled while the server ends", msg_id)

        super()._execute_handler(msg_id, handler, done, args, kwargs)

    # ---- document sync -------------------------------------------------------------------------------
    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(
        self, params: types.DidChangeTextDocumentParams
    ) -> Iterator[tuple[Any, tuple[Any, ...], None]]:
        """Apply the changes, or report the document lost when one cannot be applied exactly; then yield
        the server's own didChange handler for pygls to run (its protocol handlers are generators).

        pygls' own incremental edit puts text at the wrong place for a character past the end of the
        last line and drops an edit below the last line without a word; here a position is resolved
        by the LSP rules (``apply_change``) and anything else is an error.
        """
        uri = params.text_document.uri
        doc = self._host.document(uri)
        if doc is None:
            if self._host.is_too_big(uri):  # said once when it came; each keystroke in it is no news
                log.debug("%s: change to a document too big to follow, ignored", uri)
                return
            if self._host.was_closed(uri):  # a late change of a closed document: there is no copy to be out of sync
                log.debug("%s: change after the document was closed, ignored", uri)
                return
            self._host.document_lost(uri, f"{types.TEXT_DOCUMENT_DID_CHANGE}: the document is not open")
            return
        old = text = doc.source
        encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
        # the line index makes finding the edited line cost the same at the end of a 50 MB document as at its start
        index = self._host.lines.get(doc.uri, text)
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                try:
                    a, b = change_span(text, change.range, encoding, index)
                except ValueError as exc:
                    self._host.document_lost(uri, f"{types.TEXT_DOCUMENT_DID_CHANGE}: {exc}")
                    return
                new = text[:a] + change.text + text[b:]
                index = index.edited(a, b, change.text, new) if index is not None else None
                text = new
            else:
                text, index = change.text, None
        if text is not old and text != old:  # the same text (an empty or no-op change) leaves answers valid
            self.text_changed(uri)
        if index is not None:
            self._host.lines.put(doc.uri, index)
        else:
            self._host.lines.forget(doc.uri)
        self.workspace.put_text_document(
            types.TextDocumentItem(
                uri=doc.uri, language_id=doc.language_id or "", version=params.text_document.version, text=text
            )
        )
        if (user_handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield user_handler, (params,), None

    @lsp_method(types.NOTEBOOK_DOCUMENT_DID_CHANGE)
    def lsp_notebook_document__did_change(
        self, params: types.DidChangeNotebookDocumentParams
    ) -> Iterator[tuple[Any, tuple[Any, ...], None]]:
        """A notebook changed (LSP 3.17 notebook sync): pygls applies its structure and metadata (cells added,
        removed, moved); the cells' text changes go through ``didChange`` above, one cell at a time, so that a
        cell's copy is edited as exactly as a file's and the server's didChange handler sees the typing."""
        notebook = self.workspace.get_notebook_document(notebook_uri=params.notebook_document.uri)
        if notebook is None and self._host.was_closed(params.notebook_document.uri):
            log.debug("%s: change after the notebook was closed, ignored", params.notebook_document.uri)
            return
        problem = notebook_change_problem(params, notebook)
        if problem is not None:
            # applied in part, the server's copy would differ from the editor's without anyone knowing: the notebook
            # is forgotten (no completion from a wrong copy) and the user told; the client's next didOpen resyncs it
            self._host.notebook_lost(params.notebook_document.uri, f"{types.NOTEBOOK_DOCUMENT_DID_CHANGE}: {problem}")
            return
        cells = params.change.cells
        texts = (cells.text_content if cells is not None else None) or []
        if cells is not None and texts:
            cells = attrs.evolve(cells, text_content=None)
            params = attrs.evolve(params, change=attrs.evolve(params.change, cells=cells))
        self.workspace.update_notebook_document(params)
        for change in texts:
            yield from self.lsp_text_document__did_change(
                types.DidChangeTextDocumentParams(text_document=change.document, content_changes=change.changes)
            )
        if (user_handler := self.fm.features.get(types.NOTEBOOK_DOCUMENT_DID_CHANGE)) is not None:
            yield user_handler, (params,), None


def notebook_change_problem(params: types.DidChangeNotebookDocumentParams, notebook: types.NotebookDocument | None) -> str | None:
    """Why ``params`` cannot be applied to the server's copy of ``notebook`` (None: it can). The cell array change
    must lie within the cells; afterwards every cell must have its text (open before, or opened by this change, and
    not closed by it); text changes must be for cells of the notebook."""
    if notebook is None:
        return "the notebook is not open"
    cells = params.change.cells
    if cells is None:
        return None
    order = [unquote(c.document) for c in notebook.cells]
    have = set(order)
    if (structure := cells.structure) is not None:
        array, n = structure.array, len(order)
        if not (0 <= array.start <= n and array.delete_count >= 0 and array.start + array.delete_count <= n):
            return (
                f"expected a cell array change within the notebook's {n} cells, "
                f"got start {array.start} and deleteCount {array.delete_count}"
            )
        order = [
            *order[: array.start],
            *(unquote(c.document) for c in array.cells or []),
            *order[array.start + array.delete_count :],
        ]
        opened = {unquote(d.uri) for d in structure.did_open or []}
        closed = {unquote(d.uri) for d in structure.did_close or []}
        for uri in order:
            if uri in closed or (uri not in have and uri not in opened):
                return f"expected the text of cell {uri} (didOpen), got none"
        have = set(order)
    for change in cells.text_content or []:
        if unquote(change.document.uri) not in have:
            return f"expected a text change of a cell of the notebook, got one for {change.document.uri}"
    return None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def apply_change(text: str, rng: types.Range, new_text: str, encoding: str) -> str:
    """``text`` with ``rng`` replaced by ``new_text``; ``ValueError`` when the range is not in the text.

    Lines end at LF, CRLF or CR (all three are LSP line ends). A character past the end of its line
    means the end of the line (the LSP rule); a line past the last one, or a start after the end, is
    an error: guessing there is how a server's copy drifts from the editor's.
    """
    a, b = change_span(text, rng, encoding)
    return text[:a] + new_text + text[b:]


def change_span(text: str, rng: types.Range, encoding: str, index: LineIndex | None = None) -> tuple[int, int]:
    """The offsets in ``text`` that ``rng`` spans (see ``apply_change``); ``index``: ``text``'s line index, if held."""
    start, end = rng.start, rng.end
    if (start.line, start.character) > (end.line, end.character):
        raise ValueError(
            f"expected a range whose start is not after its end, got {start.line}:{start.character}-{end.line}:{end.character}"
        )
    return _offset(text, start.line, start.character, encoding, index), _offset(text, end.line, end.character, encoding, index)


def _offset(text: str, line: int, character: int, encoding: str, index: LineIndex | None = None) -> int:
    from .context import line_column  # UTF-16/8/32 code units -> code points, clamped to the line

    if index is not None:  # a text whose lines end at LF or CRLF
        found = index.line_start(line)
        if found is None:
            raise ValueError(f"expected a range within lines 0..{index.line_of(len(text))} of the document, got line {line}")
        start = found
    elif "\r" not in text:
        parts = text.split("\n", line)  # touches only the lines up to `line`
        if len(parts) <= line:
            raise ValueError(f"expected a range within lines 0..{len(parts) - 1} of the document, got line {line}")
        start = len(text) - len(parts[-1])
    else:
        start, n = 0, 0
        for m in _LINE_BREAK.finditer(text):
            if n == line:
                break
            start, n = m.end(), n + 1
        if n < line:
            raise ValueError(f"expected a range within lines 0..{n} of the document, got line {line}")
    brk = _LINE_BREAK.search(text, start)
    stop = brk.start() if brk else len(text)
    return start + line_column(text[start:stop], character, encoding)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name}, which is not JSON")


def _json_problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return "bytes that are not UTF-8"
    return f"invalid JSON ({exc})"


def _json_kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)  # fmt: skip


# ---- transports ------------------------------------------------------------------------------------------
class _StdoutWriter:
    """Writes frames to a file descriptor; a closed pipe stops the server instead of raising."""

    def __init__(self, fd: int, on_lost: Callable[[], None]) -> None:
        self._fd, self._on_lost, self.lost = fd, on_lost, False

    def write(self, data: bytes) -> None:
        if self.lost:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:  # EPIPE, ECONNRESET, EBADF: the client is gone
            self.lost = True
            self._on_lost()

    def close(self) -> None:
        pass


class _StreamWriter:
    """Writes frames to one TCP connection."""

    def __init__(self, writer: asyncio.StreamWriter, on_lost: Callable[[], None]) -> None:
        self._w, self._on_lost, self.lost = writer, on_lost, False

    def write(self, data: bytes) -> None:
        if self.lost or self._w.is_closing():
            return
        try:
            self._w.write(data)
        except (OSError, RuntimeError):
            self.lost = True
            self._on_lost()

    def close(self) -> None:
        self._w.close()


async def _pump(protocol: LspProtocol, reader: FrameReader) -> None:
    while not protocol.stopped.is_set():
        frame = await reader.next()
        if frame is None:
            log.info("the client closed the connection")
            protocol.connection_lost()
            return
        if isinstance(frame, FrameError):
            protocol.reply_error(None, PARSE_ERROR, str(frame))
            protocol.oversized(frame)
            continue
        try:
            protocol.dispatch(frame, reader)
        except Exception:  # a bug of ours: logged, and the server keeps reading (never alive but deaf)
            log.exception("failed to dispatch a message")


def _stdin_chunks(loop: asyncio.AbstractEventLoop, fd: int) -> Callable[[], Awaitable[bytes]]:
    """Chunks of ``fd`` read by a daemon thread (a blocked read must never keep the process alive)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)

    def reader() -> None:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                chunk = b""
            try:  # waits while the queue is full: a client cannot make the server buffer without bound
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except Exception:  # the event loop has closed: the server is ending anyway
                return
            if not chunk:
                return

    threading.Thread(target=reader, name="stdin-reader", daemon=True).start()
    return queue.get


def _install_signals(loop: asyncio.AbstractEventLoop, protocol: LspProtocol) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, protocol, sig)


def _on_signal(protocol: LspProtocol, sig: int) -> None:
    log.warning("%s: stopping", signal.Signals(sig).name)
    protocol.stop(128 + sig)


async def serve_stdio(server: Any, on_stop: Callable[[], Awaitable[None]]) -> int:
    """Serve one client on stdin/stdout until ``exit``, end of input or a signal; the exit status."""
    protocol: LspProtocol = server.protocol
    loop = asyncio.get_running_loop()
    out_fd = os.dup(sys.stdout.fileno())
    # stdout belongs to JSON-RPC: anything printed by mistake goes to stderr instead of corrupting frames
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    protocol.set_writer(_StdoutWriter(out_fd, protocol.connection_lost))
    _install_signals(loop, protocol)
    reader = FrameReader(_stdin_chunks(loop, sys.stdin.fileno()))
    pump = asyncio.create_task(_pump(protocol, reader))
    await protocol.stopped.wait()
    pump.cancel()
    await on_stop()
    return protocol.exit_code or 0


async def serve_tcp(
    server: Any, host: str, port: int, token: str, on_stop: Callable[[], Awaitable[None]], on_listening: Callable[[str], None]
) -> int:
    """Serve one authenticated client at a time over TCP; the exit status.

    A connection must open with ``initialize`` carrying ``initializationOptions.token``; anything else,
    a wrong token or a second client while one is connected gets an error and is closed. The server
    ends when its client disconnects (as a stdio server ends with its pipe). A port that cannot be opened
    raises ``ServerError``.
    """
    protocol: LspProtocol = server.protocol
    loop = asyncio.get_running_loop()
    _install_signals(loop, protocol)
    active: list[asyncio.StreamWriter] = []

    async def connection(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async def chunk() -> bytes:
            try:
                return await r.read(1 << 16)
            except (ConnectionError, OSError):
                return b""

        reader = FrameReader(chunk)
        try:
            first = await asyncio.wait_for(reader.next(), AUTH_TIMEOUT_S)
        except TimeoutError:
            first = None
        problem, body = _authenticate(first, token)
        if active:
            problem = "expected one client at a time, got a second connection"
        if problem is not None:
            log.warning("refused a TCP connection: %s", problem)
            msg = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": problem}}).encode()
            with contextlib.suppress(ConnectionError, OSError):
                w.write(b"Content-Length: %d\r\n\r\n" % len(msg) + msg)
                await w.drain()
            w.close()
            return
        active.append(w)
        protocol.set_writer(_StreamWriter(w, protocol.connection_lost))
        protocol.dispatch(body, reader)
        await _pump(protocol, reader)
        w.close()

    try:
        listener = await asyncio.start_server(connection, host, port)
    except OSError as exc:
        raise ServerError(f"expected to listen on {host}:{port}, got: {exc.strerror or exc}") from None
    addr = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in listener.sockets)
    on_listening(addr)
    async with listener:
        await protocol.stopped.wait()
    await on_stop()
    return protocol.exit_code or 0


def _authenticate(first: bytes | FrameError | None, token: str) -> tuple[str | None, bytes]:
    """(why the first message of a TCP connection is refused or None, the message without its token)."""
    what = "expected an 'initialize' request with initializationOptions.token first"
    if not isinstance(first, bytes):
        return f"{what}, got no message", b""
    try:
        obj = json.loads(first, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return f"{what}, got invalid JSON", b""
    if not isinstance(obj, dict) or obj.get("method") != types.INITIALIZE:
        return f"{what}, got another message", b""
    params = obj.get("params")
    options = params.get("initializationOptions") if isinstance(params, dict) else None
    given = options.pop("token", None) if isinstance(options, dict) else None  # not a setting: keep it from them
    if not isinstance(given, str):
        return f"{what}, got no token", b""
    # surrogatepass: a JSON "\ud800" is a lone surrogate, which plain UTF-8 cannot encode (it is simply wrong)
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")):
        return f"{what}, got a wrong token", b""
    return None, json.dumps(obj).encode()
