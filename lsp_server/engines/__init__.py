"""Engines: leaves that turn prompt token ids into generated tokens. They know nothing of FIM or LSP.

In: a ``GenerationRequest`` - the prompt exactly as the model sees it (BOS and sentinels included),
limits (max tokens, a time budget from submit), stop conditions (token ids, an optional rule on the
decoded text), sampling settings, how many candidates, and the token-healing text to cover first.
Out: a ``GenerationResult`` on the job's future - the candidates' text and tokens, why generation
stopped, and what it cost (prompt tokens reused from the KV cache and evaluated, tokens generated, ms).

``submit`` never blocks. The newest request supersedes older ones, which resolve early with
``stop == "superseded"`` and no candidates; ``job.cancel()`` stops a running one at its next token.
The in-process engine is ``engines.llama_cpp.LlamaCppEngine``; the tokenizer view each engine carries
is a ``vocab.Vocab``.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..errors import ServerError
from ..vocab import Vocab

Stop = Literal["eot", "length", "time", "cancelled", "superseded", "rule", "context", "error"]


class EngineError(ServerError):
    """The model could not be loaded or run; the message is for the user."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 40
    top_p: float = 1.0
    seed: int = 0
    alt_temperature: float = 0.7  # for candidates 2..n


@dataclass(frozen=True)
class GenerationRequest:
    prompt: Sequence[int]  # token ids exactly as the model sees them (BOS and sentinels included)
    max_tokens: int
    time_budget_s: float  # from submit to the end of generation
    stop_tokens: frozenset[int] = frozenset()  # end generation on these (plus the engine's own EOG knowledge)
    sampling: Sampling = Sampling()
    n: int = 1  # candidates: the first with sampling.temperature (greedy by default), the rest alt_temperature
    # token healing: the first generated tokens are constrained until their bytes cover ``heal``; the
    # returned text has ``heal`` removed. Only used where ``info.can_heal``.
    heal: bytes = b""
    stop_text: Callable[[str], bool] | None = None  # early stop on the decoded text so far (without heal): "rule"
    request_id: str = "-"
    # a prefill: evaluate the prompt only (no generation), at the lowest priority - dropped while a real request waits
    # or runs, superseded by any real request (the evaluated tokens stay for it to reuse)
    background: bool = False


@dataclass
class Generation:
    text: str
    tokens: list[int]
    stop: Stop


@dataclass
class GenerationResult:
    candidates: list[Generation]
    stop: Stop  # the first candidate's (or why none ran)
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV cache entries were kept from earlier requests
    evaluated_tokens: int = 0  # prompt tokens actually run through the model
    generated_tokens: int = 0
    moved_tokens: int = 0  # of the reused tokens, those moved to other positions (KV shifting)
    restored_tokens: int = 0  # tokens of a kept prompt put back into the context from host memory (0: none)
    prompt_ms: float = 0.0
    generate_ms: float = 0.0
    total_ms: float = 0.0  # from submit to done (includes waiting for the worker)
    threads: int = 0  # llama.cpp threads the request ran on (0: a remote engine)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.candidates]


@dataclass
class Job:
    request: GenerationRequest
    future: concurrent.futures.Future[GenerationResult] = field(default_factory=concurrent.futures.Future)
    submitted: float = field(default_factory=time.perf_counter)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    reason: Stop = "cancelled"

    def cancel(self, reason: Stop = "cancelled") -> None:
        self.reason = reason
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def deadline(self) -> float:
        return self.submitted + self.request.time_budget_s


@dataclass(frozen=True)
class EngineInfo:
    name: str
    where: str  # path or URL, never with credentials
    n_ctx: int
    n_ctx_train: int
    vocab_size: int
    can_heal: bool  # the engine can constrain the first tokens (in-process: yes)
    kind: str  # "llama.cpp" | "llama-server" | "openai"


class Engine(Protocol):
    """What the server and the CLI use of an engine (read-only members: an engine may narrow their types)."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def vocab(self) -> Vocab: ...

    @property
    def cached_tokens(self) -> int:
        """Tokens of the last prompt the engine holds in its KV cache (for the status item)."""
        ...

    def submit(self, request: GenerationRequest) -> Job: ...

    def close(self) -> None: ...


def tokens_within(ms: float, base: float, slope: float) -> float:
    """The most prompt tokens evaluated in ``ms`` when the first takes ``base`` ms and each later one ``slope`` ms more
    per token before it (the engine's ``Speed``: from any position, ``base`` is the cost there)."""
    if slope <= 0:
        return ms / base if base > 0 else 0.0
    return (-base + math.sqrt(base * base + 2 * slope * ms)) / slope
