"""Our own messages beside LSP, declared once: ``codellama/status``, ``codellama/event``, ``codellama/documentState``,
``codellama/models``.

In: the server's state (status), a client's params (event, documentState). Out: typed attrs classes, and their
wire form (camelCase keys, as lsprotocol writes LSP's own messages) through one cattrs converter. ``VERSION`` is
sent in every status (``schemaVersion``): a client that reads an older or newer schema can tell. ``schema()``
describes every message's fields for the editors' readers, whose tests check them against it
(``tests/test_messages.py``).

Changing what the status shows: add a field to ``Status`` (snake_case here, camelCase on the wire), fill it in
``server/status.py``, read it in ``vscode-client/src/status.ts`` and ``nvim-client/lua/codellama/logic.lua``; the
schema test names any reader that misses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

VERSION = 1  # bump when a field changes meaning or goes away; adding an optional field keeps it

STATUS = "codellama/status"  # server -> client notification
EVENT = "codellama/event"  # client -> server notification: shown / accepted (counted locally only), cursor (prefill)
DOCUMENT_STATE = "codellama/documentState"  # client -> server request: {uri} -> DocumentState | null
MODELS = "codellama/models"  # client -> server request: {folders?, nCtx?} -> Models (the editors' model pickers)
MEMORY = "codellama/memory"  # client -> server request: no params -> Memory (what the server holds; soak and tests)

State = Literal["starting", "loading", "ready", "busy", "error"]
STATES: tuple[str, ...] = ("starting", "loading", "ready", "busy", "error")


@attrs.define(frozen=True)
class Status:
    """``codellama/status``: what the editor's status item shows (sent on every change of state or news)."""

    state: str  # one of STATES
    model: str  # the loaded model's name, else the one being loaded
    last_latency_ms: float | None  # the model's last answer, ms (None: none yet)
    cached_tokens: int  # prompt tokens the engine holds evaluated
    last_overhead_ms: float | None  # the last request's time in this process outside the engine, ms
    shown: int  # suggestions the client reported shown / accepted (codellama/event)
    accepted: int
    prefetches: int  # completions started after an accepted one / requests they answered
    prefetch_hits: int
    recent_latency_ms: float | None  # median of recent model answers (pacing)
    typing_gap_ms: float | None  # median gap between keys (pacing)
    time_budget_ms: int  # the budget a request gets now (adaptive, at most the setting)
    debounce_ms: int  # the debounce the server advises the clients
    message: str | None = None  # words for the user (an error, a warning, what is loading)
    percentage: int | None = None  # loading progress 0-100
    cut_answers: int = 0  # of the last few model answers, how many the time budget cut (pacing.BudgetCuts)
    slow: str | None = None  # while answers are being cut: "answers cut at 2.0 s"; shown instead of "ready"
    hint: str | None = None  # with slow: what the user can do (smaller model, fewer context tokens, threads)
    schema_version: int = VERSION


@attrs.define(frozen=True)
class EventPosition:
    """Where a ``cursor`` event's cursor rests: an LSP position (line, character in the negotiated encoding)."""

    line: int
    character: int


@attrs.define(frozen=True)
class Event:
    """``codellama/event``: the client reports a suggestion shown or accepted (local statistics only), or that the
    cursor rests at a place (``cursor``, with ``uri`` and ``position``: the server prefills that place's prompt).
    LSP itself tells a server nothing about the cursor until a request comes."""

    kind: str = "unknown"  # "shown" | "accepted" | "cursor" (anything else is counted as itself)
    language_id: str = "unknown"
    uri: str | None = None  # with "accepted": the document, whose next completion is prefetched; with "cursor": where
    position: EventPosition | None = None  # with "cursor": where the cursor rests
    index: int | None = None  # the item among the candidates
    candidates: int | None = None
    chars: int | None = None  # the suggestion's size (never its text)
    lines: int | None = None
    latency_ms: float | None = None  # request to ghost text, as the editor saw it


@attrs.define(frozen=True)
class DocumentStateParams:
    uri: str


@attrs.define(frozen=True)
class DocumentState:
    """What the server holds for a document (never its text): the client compares it with its own copy."""

    version: int | None
    length: int
    sha256: str


@attrs.define(frozen=True)
class Memory:
    """``codellama/memory``: what the server holds, to tell a leak from a cache filling up (bench/soak.py, tests).

    Counts and bytes of each bounded store, the process's resident set, glibc's bytes in use (``mallinfo2``: the C
    heap, llama.cpp's included; None elsewhere) and Python's: the objects the garbage collector tracks and, when the
    server runs under ``PYTHONTRACEMALLOC``, the bytes Python allocated (None otherwise)."""

    rss_bytes: int | None
    malloc_in_use_bytes: int | None
    python_heap_bytes: int | None
    gc_objects: int
    asyncio_tasks: int
    pending_requests: int  # client requests not answered yet (and pygls' futures for them)
    documents: int
    document_chars: int  # of all open documents together
    line_indexes: int
    cache_places: int  # the completion cache's recent places
    ring_chunks: int
    kept_prompts: int  # evaluated prompts kept in host memory (llama.cpp engine)
    kept_prompt_bytes: int
    kept_prompt_budget: int


@attrs.define(frozen=True)
class ModelsParams:
    folders: list[str] = attrs.field(factory=list)  # folders (or .gguf files) to look in, besides the HF cache
    n_ctx: int | None = None  # the context to size memory for (default: the server's)


@attrs.define(frozen=True)
class LocalModel:
    """A GGUF found on this machine, read from its header (``modelinfo.describe``)."""

    spec: str  # what the ``model`` setting takes: "demo", "REPO:FILE", a path
    path: str
    source: str  # "demo" | "huggingface" | "folder"
    size_bytes: int
    quantization: str | None
    parameters: int | None
    n_ctx_train: int | None
    fim: bool  # FIM tokens found (metadata or text); False: completions from the prefix only
    fim_family: str | None
    memory_bytes: int | None  # needed at the context below, weights + KV cache + buffers
    fits: bool | None  # within the memory available now (None: unknown)
    error: str | None = None  # not a usable GGUF: why


@attrs.define(frozen=True)
class KnownModel:
    """A Code Llama GGUF on the Hugging Face Hub, sized from its parameter count (``modelinfo.known_models``)."""

    spec: str
    size: str  # "7B" | "13B" | "34B"
    quantization: str
    download_bytes: int
    memory_bytes: int
    n_ctx_train: int
    fim: bool  # 34B was not trained to fill in the middle
    fits: bool | None
    cached: bool  # already in the Hugging Face cache


@attrs.define(frozen=True)
class Models:
    """``codellama/models``' answer: what a picker lists, and the numbers its warnings are computed from."""

    n_ctx: int
    kv_type: str
    memory_bytes: int | None  # available now
    local: list[LocalModel]
    known: list[KnownModel]


_OPTIONAL = {
    "message",
    "percentage",
    "uri",
    "position",
    "index",
    "candidates",
    "chars",
    "lines",
    "latency_ms",
    "error",
}  # left out when None
_OPTIONAL |= {"slow", "hint"}  # the status's words while the time budget cuts answers


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    for cls in (Status, Event, DocumentStateParams, DocumentState, Memory, ModelsParams, LocalModel, KnownModel, Models):
        names = {a.name: override(rename=_camel(a.name), omit_if_default=a.name in _OPTIONAL) for a in attrs.fields(cls)}
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **names))  # type: ignore[arg-type]
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, **names))  # type: ignore[arg-type]
    return conv


CONVERTER = _make_converter()


def to_wire(message: Status | Event | DocumentState | DocumentStateParams | Memory | Models) -> dict[str, Any]:
    wire: dict[str, Any] = CONVERTER.unstructure(message)
    return wire


def _getter(params: object) -> Callable[[str], object]:
    """Field access for params as pygls hands them over for methods it does not know: a dict, or an object."""
    if isinstance(params, dict):
        fields: dict[Any, Any] = params
        return lambda key: fields.get(key)
    return lambda key: getattr(params, key, None)


def read_event(params: object) -> Event:
    """A client's event params, whatever they are: unknown keys ignored, strings cut to 40 characters, a bad
    value read as its default (events are statistics: a bad one is counted, never an error)."""
    get = _getter(params)
    kind, language, uri = get("kind"), get("languageId"), get("uri")

    def count(key: str) -> int | None:
        v = get(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 2**31 else None

    latency = get("latencyMs")
    return Event(
        kind=str(kind or "unknown")[:40],
        language_id=str(language or "unknown")[:40],
        uri=uri if isinstance(uri, str) else None,
        position=_position(get("position")),
        index=count("index"),
        candidates=count("candidates"),
        chars=count("chars"),
        lines=count("lines"),
        latency_ms=float(latency)
        if isinstance(latency, (int, float)) and not isinstance(latency, bool) and latency >= 0
        else None,
    )


def _position(value: object) -> EventPosition | None:
    """``{line, character}`` with two integers >= 0, else None."""
    if value is None:
        return None
    get = _getter(value)
    line, character = get("line"), get("character")
    if not (isinstance(line, int) and isinstance(character, int)) or isinstance(line, bool) or isinstance(character, bool):
        return None
    return EventPosition(line, character) if 0 <= line < 2**31 and 0 <= character < 2**31 else None


def read_document_state_params(params: object) -> DocumentStateParams | None:
    """``{uri: string}`` or None (the caller answers InvalidParams)."""
    uri = _getter(params)("uri")
    return DocumentStateParams(uri) if isinstance(uri, str) else None


def read_models_params(params: object) -> ModelsParams | None:
    """``{folders?: string[], nCtx?: integer}`` or None (the caller answers InvalidParams)."""
    if params is None:
        return ModelsParams()
    get = _getter(params)
    folders, n_ctx = get("folders"), get("nCtx")
    if folders is not None and not (isinstance(folders, list) and all(isinstance(f, str) for f in folders)):
        return None
    if n_ctx is not None and not (isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and 0 < n_ctx <= 1 << 24):
        return None
    return ModelsParams(list(folders or [])[:64], n_ctx)


def schema() -> dict[str, dict[str, dict[str, Any]]]:
    """Every message's wire fields: ``{message: {wireName: {"type": ..., "optional": bool}}}``, plus the version."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, cls in ((STATUS, Status), (EVENT, Event), (DOCUMENT_STATE, DocumentState)):
        out[method] = {
            _camel(a.name): {"type": str(a.type), "optional": a.default is not attrs.NOTHING} for a in attrs.fields(cls)
        }
    return out


__all__ = [
    "DOCUMENT_STATE",
    "EVENT",
    "MEMORY",
    "MODELS",
    "STATES",
    "STATUS",
    "VERSION",
    "DocumentState",
    "DocumentStateParams",
    "Event",
    "EventPosition",
    "KnownModel",
    "LocalModel",
    "Memory",
    "Models",
    "ModelsParams",
    "Status",
    "read_document_state_params",
    "read_event",
    "read_models_params",
    "schema",
    "to_wire",
]
