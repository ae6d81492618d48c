"""llama.cpp's HTTP server (``llama-server``) as an engine: our exact prompt token ids to its native ``/completion``.

In: ``GenerationRequest``s (token ids laid out by ``fim`` with the local vocabulary). Out: ``GenerationResult``s
whose tokens are the server's, decoded with the same vocabulary, plus the server's own costs (``timings.cache_n``
prompt tokens reused from the slot's KV cache, ``prompt_n`` evaluated, ``predicted_n`` generated).

Request: ``prompt`` as token ids (llama-server adds nothing to an id list, so BOS and the FIM sentinels are ours),
``cache_prompt`` (the slot keeps the KV cache of its last prompt and generated tokens; the next request evaluates
only what differs - with SPM and anchored windows a keystroke re-evaluates a few tokens), ``n_predict``, greedy
(``temperature`` 0) unless the request samples, ``return_tokens`` and ``stream``: we see each token as it is made,
stop on our stop tokens and the caller's text rule on our side, and close the connection to stop (cancel, a newer
keystroke, the time budget) - llama-server then stops the slot.

Moved text (``cache_reuse``, ``n_cache_reuse`` per request): with ``cache_prompt`` the slot reuses the longest common
prefix of its cached prompt and ours; with ``n_cache_reuse`` N it also walks the rest and shifts every run of at least
N cached tokens that reappears further on (``llama_memory_seq_rm``/``seq_add``, what ``--cache-reuse`` does for the
whole server) instead of evaluating it again: extra-context chunks that moved because one before them was dropped, the
prefix window after the suffix window's end moved (a line inserted above the cursor). Sent with every request, so it
works on a server started without ``--cache-reuse``; a server that cannot shift (sliding-window or recurrent models)
ignores it with a warning. The extra-context chunks keep a stable order for this (``neighbors``).
RoPE shifting rotates the cached keys: the same tokens at the new positions, to float rounding (llama-server does
the same for ``--cache-reuse``).

Slot choice (``slot``): by default llama-server picks the idle slot whose cached prompt is most similar to ours
(``id_slot`` -1, ``--slot-prompt-similarity``), which keeps an editor on "its" slot while the server has room;
``slot`` N pins slot N (``id_slot``). bench/team.py measures both: with 4 editors on 2 cores the server's pick
lets requests hop to other slots while "their" slot still finishes the request a keystroke cancelled, and the
p95 reaches the time budget; pinned editors keep their cache (docs/deployment.md). An automatic pin (stick to
the slot the server gave first) was tried and dropped: editors not yet pinned land on pinned editors' idle slots.

Probe (``_connect``): ``GET /v1/models`` (authenticated; its ``meta`` has ``n_vocab``, ``n_ctx`` per slot and
``n_ctx_train``) and ``POST /tokenize`` of a probe text, which must give the ids our vocabulary gives - so a server
running another model fails loudly instead of completing garbage.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from . import EngineInfo, Generation, GenerationResult, Job
from .remote import Fault, RemoteEngine

log = logging.getLogger(__name__)

# Text whose tokenization tells vocabularies apart (identifiers, indentation, punctuation, digits, non-ASCII).
PROBE = "def total(items):\n    return sum(x.price for x in items)  # 数据 42"

STOPS = {"eos": "eot", "limit": "length", "word": "rule"}


class LlamaServerEngine(RemoteEngine):
    kind = "llama-server"
    wrong_server_hint = "is this a llama.cpp llama-server? (for vLLM, TGI or Ollama use the engine 'openai')"

    async def _connect(self) -> EngineInfo:

        models = await self.get_json("/v1/models")
        try:
            entry = models["data"][0]  # type: ignore[index]
            meta = entry.get("meta") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Fault(f"expected a model list from {self.where}/v1/models, got {str(models)[:80]!r}") from None
        n_vocab = int(meta.get("n_vocab") or 0)
        if n_vocab and n_vocab != self.vocab.n_vocab:
            raise Fault(
                f"the model at {self.where} has {n_vocab} tokens, the local vocabulary {self.vocab.n_vocab}: "
                "set 'model' to the GGUF the server runs (its vocabulary is what we tokenize with)"
            )
        got = await self.post_json("/tokenize", {"content": PROBE, "add_special": False, "parse_special": False})
        ids = got.get("tokens") if isinstance(got, dict) else None
        if ids != self.vocab.encode(PROBE):
            raise Fault(
                f"the model at {self.where} tokenizes differently from the local vocabulary: "
                "set 'model' to the GGUF the server runs"
            )
        name = str(entry.get("id") or self.info.name).rsplit("/", 1)[-1]
        return self.with_info(
            name=self.options.model_name or name,
            n_ctx=int(meta.get("n_ctx") or self.info.n_ctx),
            n_ctx_train=int(meta.get("n_ctx_train") or 0),
        )

    async def _stream(
        self,
        job: Job,
        index: int,
        temperature: float,
        gen: Generation,
        result: GenerationResult,
        on_headers: Callable[[], None],
    ) -> None:
        req = job.request
        s = req.sampling
        body = {
            "prompt": list(req.prompt),
            "n_predict": req.max_tokens,
            "cache_prompt": True,
            "stream": True,
            "return_tokens": True,
            "timings_per_token": True,  # costs in every event: we often close the stream before the last one
            "temperature": temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "seed": s.seed + index,
            "id_slot": -1 if self.options.slot is None else self.options.slot,
        }
        if self.options.cache_reuse > 0:  # absent: the server's --cache-reuse (off unless its admin set it)
            body["n_cache_reuse"] = self.options.cache_reuse
        gen_ms = 0.0  # this candidate's generation time so far (the server's clock)
        try:
            async with contextlib.aclosing(self.events("/completion", body, on_headers)) as events:
                async for ev in events:
                    tokens = ev.get("tokens")
                    if not isinstance(tokens, list):
                        raise Fault(f"expected token ids from {self.where}/completion (return_tokens), got {str(ev)[:80]!r}")
                    gen.tokens.extend(int(t) for t in tokens)
                    t = ev.get("timings")  # first: the event that ends the answer carries the costs too
                    if isinstance(t, dict):
                        if index == 0:  # the first candidate's prompt costs; later ones reuse the whole prompt
                            result.reused_tokens = int(t.get("cache_n") or 0)
                            result.evaluated_tokens = int(t.get("prompt_n") or 0)
                            result.prompt_ms = float(t.get("prompt_ms") or 0.0)
                        gen_ms = float(t.get("predicted_ms") or 0.0)
                    if len(gen.tokens) >= req.max_tokens and not ev.get("stop"):  # a server that ignores n_predict
                        del gen.tokens[req.max_tokens :]
                        if self.stop_now(req, gen) is None:
                            gen.stop = "length"
                            return
                    if (why := self.stop_now(req, gen)) is not None:
                        gen.stop = why  # leaving the loop closes the connection: the slot stops generating
                        return
                    if ev.get("stop"):
                        truncated = bool(ev.get("truncated"))
                        gen.stop = "context" if truncated else STOPS.get(str(ev.get("stop_type")), "eot")  # type: ignore[assignment]
                        return
        finally:
            result.generate_ms += gen_ms
