"""An OpenAI-compatible ``/v1/completions`` server as an engine: vLLM, TGI, llama-server, Ollama's OpenAI endpoint.

In: ``GenerationRequest``s (token ids laid out by ``fim`` with the local vocabulary). Out: ``GenerationResult``s
with the server's text (these servers stream text, not token ids) and the costs from its ``usage``.

Prompt: the token ids themselves where the server accepts a list of ints as ``prompt`` (vLLM and llama-server do;
so our exact FIM layout is what runs); else the same layout as text - ordinary tokens decoded, the FIM sentinels
written as their token text (``▁<PRE>`` ...), which the server's tokenizer maps back to the sentinel ids - and
without our BOS (servers add their own to a text prompt). ``prompt_format`` "auto" sends ids and falls back to
text for good when the server rejects them with HTTP 400/422. ``max_tokens``, ``temperature``, ``top_p``,
``seed``; our stop tokens as ``stop_token_ids`` (vLLM's extension; servers that do not know it ignore it, and stop
at their EOS anyway) and, as text, in ``stop``; ``stream`` so a cancel, a newer keystroke or the time budget closes
the connection and the server stops the work. Probe: ``GET /v1/models`` (authenticated); the model name is the
``model_name`` setting or the server's first model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from . import EngineInfo, Generation, GenerationRequest, GenerationResult, Job, Stop
from .llama_server import PROBE
from .remote import Fault, RemoteEngine, RemoteOptions, RemoteVocab, RequestFault

log = logging.getLogger(__name__)

STOPS: dict[str, Stop] = {"stop": "eot", "length": "length", "eos": "eot"}


def text_prompt(vocab: RemoteVocab, prompt: list[int]) -> str:
    """The prompt as text: runs of ordinary tokens decoded, sentinels as their token text, no leading BOS.

    A SentencePiece tokenizer (llama.cpp's, Hugging Face's Llama) puts a space in front of the text that follows
    a special token, as it does at the start of a text; our prefix ids (first, after PRE in PSM, after MID in SPM) carry
    that space already, so it is taken off their text here to come back as the same ids. The suffix (after SUF)
    is encoded without it, so the server's tokenizer adds one there: text prompts are the fallback, not exact.
    """
    s = vocab.sentinels
    special = {t for t in (s.pre, s.suf, s.mid, s.eot) if t is not None}
    space_prefix = vocab.decode(vocab.encode("a")).startswith(" ")
    ids = prompt[1:] if prompt and prompt[0] == s.bos else prompt
    out: list[str] = []
    run: list[int] = []
    after: int | None = None

    def flush() -> None:
        text = vocab.decode(run)
        if space_prefix and after in (None, s.pre, s.mid) and text.startswith(" "):
            text = text[1:]
        out.append(text)
        run.clear()

    for t in ids:
        if t in special:
            flush()
            out.append(vocab.token_text(t))
            after = t
        else:
            run.append(t)
    flush()
    return "".join(out)


class OpenAIEngine(RemoteEngine):
    kind = "openai"
    wrong_server_hint = "is this an OpenAI-compatible server? (the URL is the server's root, without /v1)"

    def __init__(self, vocab: RemoteVocab, options: RemoteOptions, name: str) -> None:
        self._format = options.prompt_format
        self._model = options.model_name
        super().__init__(vocab, options, name)

    async def _connect(self) -> EngineInfo:
        models = await self.get_json("/v1/models")
        try:
            entries = list(models["data"])  # type: ignore[index]
            ids = [str(e["id"]) for e in entries]
        except (KeyError, TypeError):
            raise Fault(f"expected a model list from {self.where}/v1/models, got {str(models)[:80]!r}") from None
        if not ids:
            raise Fault(f"{self.where} serves no model")
        if self.options.model_name and self.options.model_name not in ids:
            raise Fault(f"{self.where} has no model {self.options.model_name!r} (it has: {', '.join(ids[:5])})")
        self._model = self.options.model_name or ids[0]
        entry = entries[ids.index(self._model)]
        meta = entry.get("meta") or {}  # llama-server's extra fields
        n_vocab = int(meta.get("n_vocab") or 0)
        if n_vocab and n_vocab != self.vocab.n_vocab:
            raise Fault(
                f"the model at {self.where} has {n_vocab} tokens, the local vocabulary {self.vocab.n_vocab}: "
                "set 'model' to the GGUF (or Hugging Face model) the server runs"
            )
        await self._same_tokenizer()
        n_ctx = int(meta.get("n_ctx") or entry.get("max_model_len") or self.info.n_ctx)  # llama-server | vLLM | unknown
        name = self._model.rsplit("/", 1)[-1]  # llama-server's id is its model path
        return self.with_info(name=name, n_ctx=n_ctx, n_ctx_train=int(meta.get("n_ctx_train") or n_ctx))

    async def _same_tokenizer(self) -> None:
        """The vocabulary size alone does not tell two vocabularies apart: where the server has ``/tokenize``
        (llama-server and vLLM do; the OpenAI API has none), a probe text must give the ids ours gives."""
        body = {"model": self._model, "content": PROBE, "prompt": PROBE, "add_special": False, "add_special_tokens": False}
        try:
            got = await self.post_json("/tokenize", body)
        except (Fault, RequestFault) as exc:
            log.info("%s has no usable /tokenize (%s): the vocabulary is checked by its size only", self.where, exc)
            return
        ids = got.get("tokens") if isinstance(got, dict) else None
        if ids != self.vocab.encode(PROBE):
            raise Fault(
                f"the model at {self.where} tokenizes differently from the local vocabulary: "
                "set 'model' to the GGUF (or Hugging Face model) the server runs"
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
        while True:
            try:
                await self._stream_once(req, index, temperature, gen, result, on_headers)
                return
            except RequestFault:
                if self._format != "auto" or gen.text:
                    raise
                log.warning("%s rejected a token-id prompt; sending the FIM layout as text from now on", self.where)
                self._format = "text"

    async def _stream_once(
        self,
        req: GenerationRequest,
        index: int,
        temperature: float,
        gen: Generation,
        result: GenerationResult,
        on_headers: Callable[[], None],
    ) -> None:
        s = req.sampling
        stops = sorted(req.stop_tokens | self.vocab.sentinels.eog)
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": text_prompt(self.vocab, list(req.prompt)) if self._format == "text" else list(req.prompt),
            "max_tokens": req.max_tokens,
            "temperature": temperature,
            "top_p": s.top_p,
            "seed": s.seed + index,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop_token_ids": stops,
        }
        # the sentinels' text too, for servers that do not know stop_token_ids but print special tokens
        fim = self.vocab.sentinels
        texts = [self.vocab.token_text(t) for t in (fim.eot, fim.pre, fim.suf, fim.mid) if t is not None and t in stops]
        if texts:
            body["stop"] = texts[:4]  # OpenAI allows at most 4 stop strings
        # Text servers stream one token per event; counted here, since the usage (with the true count) comes
        # only in the last event, which a stream we close early (a stop, the budget, a cancel) never gets.
        streamed = 0
        usage_seen = False
        try:
            async with contextlib.aclosing(self.events("/v1/completions", body, on_headers)) as events:
                async for ev in events:
                    usage = ev.get("usage")
                    if isinstance(usage, dict) and index == 0:
                        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
                        result.reused_tokens = cached
                        result.evaluated_tokens = max(0, int(usage.get("prompt_tokens") or 0) - cached)
                    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                        result.generated_tokens += int(usage.get("completion_tokens") or 0)
                        usage_seen = True
                    choices = ev.get("choices")
                    if not isinstance(choices, list):
                        raise Fault(f"expected 'choices' from {self.where}/v1/completions, got {str(ev)[:80]!r}")
                    for choice in choices:
                        text = str(choice.get("text") or "")
                        streamed += 1 if text else 0
                        gen.text += text
                        if (why := self.stop_now(req, gen)) is not None:
                            gen.stop = why
                            return
                        reason = choice.get("finish_reason")
                        if reason:
                            gen.stop = STOPS.get(str(reason), "eot")
                        elif streamed >= req.max_tokens:  # a server that ignores max_tokens: we stop here
                            gen.stop = "length"
                            return
        finally:
            if not usage_seen:
                result.generated_tokens += streamed
