"""Prompts that stay evaluated: moved text reused by KV shifting, kept prompts of recent places, background prefill.

Real llama.cpp on the shipped demo model and the tests' tiny random-weight GGUF; prompts come from the real
pipeline (context windows, SPM layout, healing) over standard-library sources. Counts, never timings: the
evaluated-token counts are what the engine reports in its log line (``evaluated=``).

Moved text (``codellama_core.llama.Context.rearrange``) keeps the values computed in the old context, so it is an
approximation of a cold evaluation. Measured here (and printed with -s): deleting 20 lines in the middle of a
1,400-token prompt, the largest difference of any logit after the move is 0.38 on the demo model (logits span
about 27, the top two 6 apart) and 0.2 when the first 200 tokens are evicted; the greedy text is the same token by
token. The tests bound the drift at 1.0 and demand the same greedy tokens.
"""

from __future__ import annotations

import re
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codellama_core import llama
from lsp_server import pipeline
from lsp_server.config import Settings
from lsp_server.context import cursor
from lsp_server.engines import GenerationRequest
from lsp_server.engines.kept import MAX_COPIES, GramIndex, KeptPrompts, plan
from lsp_server.engines.llama_cpp import SPEED_MIN_CHUNK, SPEED_SAMPLES, EngineOptions, LlamaCppEngine, Speed, kept_budget
from tests.fixtures.lsp_models import lsp_random_gguf  # noqa: F401
from tests.fixtures.raw_lsp import RawServer

DEMO = Path(__file__).resolve().parents[1] / "lsp_server" / "models" / "demo" / "codellama-demo.gguf"
SOURCE = Path(textwrap.__file__).read_text()
OTHER = Path(__import__("shlex").__file__).read_text()
THIRD = Path(__import__("heapq").__file__).read_text()


# ---- the plan (pure) -------------------------------------------------------------------------------------
def test_plan_takes_the_common_prefix_then_moved_runs() -> None:
    cache = list(range(1000, 1300))
    prompt = cache[:50] + cache[120:300] + [7, 8, 9]
    p = plan(cache, prompt, len(prompt) - 1, 64)
    assert p.pieces == ((0, 50), (120, 180)) and p.covered == 230 and p.prefix == 50 and p.moved == 180
    # a run shorter than min_chunk is not moved; nothing after a token the cache lacks is reused
    assert plan(cache, cache[:50] + cache[120:160] + cache[200:300], 200, 64).covered == 50
    assert plan(cache, [5] + cache, 300, 64).covered == 0
    assert plan(cache, cache[:50] + cache[120:300], 229, 0).covered == 50  # prefix only


def test_plan_evaluates_new_tokens_between_reused_runs() -> None:
    cache = list(range(1000, 1600))
    new = [7] * 40
    prompt = cache[:100] + new + cache[100:400] + [5, 5]
    p = plan(cache, prompt, len(prompt) - 1, 64, max_gap=256)
    assert p.pieces == ((0, 100), new, (100, 300)) and p.covered == 440 and p.reused == 400 and p.inserted == 40
    assert plan(cache, prompt, len(prompt) - 1, 64).covered == 100  # without gaps: the new tokens end the reuse
    assert plan(cache, cache[:100] + new + cache[100:200], 239, 64, max_gap=256).covered == 100  # too short a run after


def test_plan_reorders_and_never_uses_a_cell_twice() -> None:
    a, b = list(range(100, 200)), list(range(500, 600))
    p = plan(a + b, b + a + a, 300, 64)
    assert p.pieces == ((100, 100), (0, 100)) and p.covered == 200  # the second copy of ``a`` has no cells left
    assert GramIndex(a + b).hits(np.asarray(b, dtype=np.int64)) >= 88


def test_kept_prompts_stay_within_their_budget() -> None:
    kept = KeptPrompts(budget=1000)
    for i in range(10):
        kept.add(llama.SavedState(tuple(range(i * 1000, i * 1000 + 100)), None, 300))
        assert kept.bytes <= 1000
    assert len(kept) == 3 and kept.dropped == 7
    assert kept.add(llama.SavedState((1, 2, 3), None, 1001)) is None  # alone over the budget: not kept
    # a copy that starts with most of an older one replaces it (the same place, typed on)
    kept.add(llama.SavedState(tuple(range(9000, 9100)) + (5,), None, 300))
    assert len(kept) == 3 and kept.entries()[-1][1].tokens[-1] == 5
    # many small copies: capped by count as well (each request plans against every copy)
    many = KeptPrompts(budget=1 << 30)
    for i in range(MAX_COPIES + 10):
        many.add(llama.SavedState(tuple(range(i * 1000, i * 1000 + 100)), None, 300))
    assert len(many) == MAX_COPIES and many.entries()[0][1].tokens[0] == 10_000  # the oldest ten went
    assert kept_budget(2048, 4096, ram=64 << 30) == 8 * 2048 * 4096
    assert kept_budget(512 * 1024, 4096, ram=16 << 30) == 2 << 30  # a 7B f16 cache on a 16 GiB laptop: one context


# ---- moved text against a cold evaluation -----------------------------------------------------------------
def _greedy(ctx: llama.Context, n: int) -> list[int]:
    out = []
    for _ in range(n):
        tok = int(np.argmax(ctx.logits()))
        out.append(tok)
        ctx.decode([tok])
    return out


def _forced(warm: llama.Context, cold: llama.Context, n: int, margin: float) -> tuple[int, int]:
    """The cold context's greedy tokens fed to both: (choices that agree, choices whose cold top-2 gap > margin)."""
    agreed = decided = 0
    for _ in range(n):
        a, b = warm.logits(), cold.logits()
        tok = int(np.argmax(b))
        top = np.sort(b)[-2:]
        if top[1] - top[0] > margin:
            decided += 1
            agreed += int(np.argmax(a)) == tok
        warm.decode([tok])
        cold.decode([tok])
    return agreed, decided


@pytest.mark.parametrize("which", ["demo", "random"])
def test_moved_text_gives_the_cold_greedy_text(which: str, lsp_random_gguf: Path) -> None:
    path = DEMO if which == "demo" else lsp_random_gguf
    model = llama.Model(path)
    try:
        opts = llama.ContextOptions(n_ctx=2048, flash_attn=True, scratch=True)
        warm, cold = llama.Context(model, opts), llama.Context(model, opts)
        lines = SOURCE.split("\n")
        before = [model.bos or 1] + model.tokenize("\n".join(lines[100:220]))
        cases = {
            "lines deleted in the middle": [model.bos or 1] + model.tokenize("\n".join(lines[100:130] + lines[150:220])),
            "the front evicted": [model.bos or 1] + before[200:],
            "lines inserted in the middle": [model.bos or 1]
            + model.tokenize("\n".join(lines[100:130] + ["    # a comment the user wrote", "    total = 0"] + lines[130:220])),
        }
        for name, after in cases.items():
            warm.truncate(0)
            warm.decode(before)
            p = plan(warm.tokens, after, len(after) - 1, 64, max_gap=256)
            assert p.moved > 900, (name, p)
            warm.rearrange(list(p.pieces))
            assert warm.tokens == after[: p.covered]
            warm.decode(after[p.covered :])
            cold.truncate(0)
            cold.decode(after)
            drift = float(np.abs(warm.logits() - cold.logits()).max())
            print(f"{which}, {name}: {p.moved} tokens moved, max |logit difference| {drift:.3f}")
            assert drift < 1.0, (name, drift)
            if which == "demo":
                assert _greedy(warm, 24) == _greedy(cold, 24), name
            else:
                # random weights: near-flat logits whose top two are often closer than any drift; the cold greedy
                # tokens fed to both, each choice must agree wherever the cold margin is above twice the drift
                agreed, decided = _forced(warm, cold, 24, 2 * drift)
                print(f"{which}, {name}: {agreed} of {decided} clear choices agree")
                assert agreed == decided > 0, name
        warm.close()
        cold.close()
    finally:
        model.close()


# ---- the engine: revisits, moved text, cut prompts, budget, prefill ------------------------------------------
@pytest.fixture(scope="module")
def demo() -> LlamaCppEngine:
    e = LlamaCppEngine(DEMO, "demo")
    yield e
    e.close()


def _request(engine: LlamaCppEngine, text: str, offset: int, **kw: object) -> GenerationRequest:
    s = Settings(**{"max_tokens": 8, "time_budget_ms": 120_000, **kw})  # type: ignore[arg-type]
    return pipeline.build_request(engine, text, offset, s, 1, "-", cursor(text, offset))[0]


def _run(engine: LlamaCppEngine, text: str, offset: int, **kw: object):
    return engine.submit(_request(engine, text, offset, **kw)).future.result(timeout=300)


PLACES = [(SOURCE, 3000), (OTHER, 5000), (SOURCE, 9000), (THIRD, 4000)]


def test_a_revisit_reuses_the_kept_prompt(demo: LlamaCppEngine) -> None:
    demo.reset()
    first = [_run(demo, text, at) for text, at in PLACES]
    assert all(r.evaluated_tokens > 1000 for r in first), [r.evaluated_tokens for r in first]
    again = [_run(demo, text, at) for text, at in PLACES]
    assert [r.evaluated_tokens for r in again] == [1, 1, 1, 1]
    assert all(r.restored_tokens >= r.prompt_tokens - 1 for r in again)
    assert [a.texts for a in again] == [f.texts for f in first]
    # typing at a revisited place: a few tokens
    text, at = PLACES[0]
    typed = _run(demo, text[:at] + "x" + text[at:], at + 1)
    assert typed.evaluated_tokens <= 4, typed


def test_a_line_inserted_above_reuses_the_moved_suffix_and_prefix(demo: LlamaCppEngine) -> None:
    """The suffix window ends on a grid line, which a line inserted above the cursor moves: the prompt changes
    early (after the suffix), and the prefix after it moved. Those tokens are shifted, not evaluated again."""
    text, at = SOURCE, 9000
    _run(demo, text, at)
    line = text.rfind("\n", 0, at - 400) + 1
    moved = _run(demo, text[:line] + "# a new line\n" + text[line:], at + len("# a new line\n"))
    assert moved.moved_tokens > 200 and moved.evaluated_tokens < 200, moved
    demo.reset()
    cold = _run(demo, text[:line] + "# a new line\n" + text[line:], at + len("# a new line\n"))
    assert moved.texts == cold.texts and cold.evaluated_tokens > 1000


def test_a_cut_prompt_is_continued_not_redone(demo: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt evaluation cut short (time budget, a newer key) is kept, also across a jump elsewhere; coming back
    evaluates only the rest."""
    demo.reset()
    text, at = SOURCE, 6000
    job_box: list = []
    calls = [0]
    real = llama.Context.decode

    def decode(self: llama.Context, tokens: list[int], **kw: object) -> None:
        calls[0] += 1
        if calls[0] == 4 and job_box:
            job_box[0].cancel("cancelled")  # as the time budget would, between two chunks
        return real(self, tokens, **kw)

    monkeypatch.setattr(llama.Context, "decode", decode)
    job = demo.submit(_request(demo, text, at))
    job_box.append(job)
    cut = job.future.result(timeout=300)
    monkeypatch.setattr(llama.Context, "decode", real)
    assert cut.stop == "cancelled" and 0 < cut.evaluated_tokens < cut.prompt_tokens
    _run(demo, OTHER, 2000)  # elsewhere
    back = _run(demo, text, at)
    assert back.reused_tokens >= cut.evaluated_tokens
    assert back.evaluated_tokens == cut.prompt_tokens - cut.evaluated_tokens


def test_a_prompt_cut_by_the_time_budget_goes_on_in_the_background(demo: LlamaCppEngine) -> None:
    """A request whose prompt the time budget cut answers nothing at once; the evaluation goes on in the background
    (small chunks, stopped by any request), so the next key there evaluates a token or two, not the rest."""
    demo.reset()
    text, at = THIRD, 5000
    samples = demo.speed.samples
    cut = demo.submit(_request(demo, text, at, time_budget_ms=10)).future.result(timeout=300)
    assert cut.stop == "time" and cut.candidates == [] and cut.reused_tokens + cut.evaluated_tokens < cut.prompt_tokens
    # the cut evaluation measured the engine's speed too (measuring only finished ones overstates a busy machine's)
    assert (demo.speed.samples > samples) == (cut.evaluated_tokens >= SPEED_MIN_CHUNK)
    deadline = time.monotonic() + 300
    while demo.cached_tokens < cut.prompt_tokens:  # the continuation at work (the engine says how far it got)
        assert time.monotonic() < deadline, (demo.cached_tokens, cut)
        time.sleep(0.01)
    after = _run(demo, text, at)
    assert after.evaluated_tokens <= 2 and after.candidates, after
    # a key while it goes on: the request supersedes it between two small chunks and reuses what it evaluated
    demo.reset()
    cut = demo.submit(_request(demo, OTHER, 4000, time_budget_ms=10)).future.result(timeout=300)
    key = _run(demo, OTHER[:4000] + "x" + OTHER[4000:], 4001)
    assert key.stop not in ("superseded", "cancelled") and key.reused_tokens >= cut.reused_tokens + cut.evaluated_tokens


def test_coming_back_when_the_budget_holds_one_prompt() -> None:
    """A budget of one prompt: going back to A keeps B (the live context) and restores A, whose copy the save of B
    pushes out of the store; A is put back all the same (once a KeyError: the completion failed)."""
    e = LlamaCppEngine(DEMO, "demo", EngineOptions(kept_prompts_mib=5))
    try:
        a, b = (SOURCE, 5000), (OTHER, 3000)
        _run(e, *a)
        _run(e, *b)
        back = _run(e, *a)
        assert back.stop != "error" and back.evaluated_tokens <= 8, back
        assert e.kept.bytes <= 5 << 20 and len(e.kept) == 1
        assert _run(e, *b).evaluated_tokens <= 8  # and B, kept when A came back
    finally:
        e.close()


def test_the_memory_budget_is_respected() -> None:
    e = LlamaCppEngine(DEMO, "demo", EngineOptions(kept_prompts_mib=8))
    try:
        assert e.kept.budget == 8 << 20
        places = [(SOURCE, 2000 + 3000 * i) for i in range(5)] + [(OTHER, 3000)]
        for text, at in places:
            _run(e, text, at)
            assert e.kept.bytes <= 8 << 20
        # each prompt is ~1,500-2,000 tokens of 2 KiB: two fit; the oldest places were dropped
        assert 1 <= len(e.kept) <= 2 and e.kept.dropped >= 3
        assert _run(e, *places[-2]).evaluated_tokens == 1  # the most recent kept place
        assert _run(e, *places[0]).evaluated_tokens > 1000  # dropped for the budget: evaluated again
    finally:
        e.close()
    off = LlamaCppEngine(DEMO, "demo", EngineOptions(kept_prompts_mib=0))
    try:
        for text, at in PLACES:
            _run(off, text, at)
        assert len(off.kept) == 0
    finally:
        off.close()


@pytest.mark.parametrize("case", ["elsewhere", "same-place", "no-abort"])
def test_prefill_is_superseded_by_a_real_request_and_never_delays_it(
    demo: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A real request arriving during a background prefill's decode stops the prefill. Where llama.cpp honours the
    abort callback (every CPU build: this one) the prefill decodes big chunks, and a request elsewhere aborts the
    decode under way at once (that chunk's work is thrown away, the cache keeps the chunks before it), while a key at
    the place being prefilled lets the chunk finish (it would evaluate the same tokens again at once) and reuses it.
    Without the callback the prefill decodes small chunks and the request waits for the one under way. A prefill
    submitted while a real request waits is dropped."""
    assert demo._abortable  # the CPU build under test honours the abort callback
    monkeypatch.setattr(demo, "_abortable", case != "no-abort")
    demo.reset()
    text, at = OTHER, 7000
    background = _request(demo, text, at)
    background = replace(background, background=True)
    key = _request(demo, THIRD, 3000) if case == "elsewhere" else _request(demo, text[:at] + "x" + text[at:], at + 1)
    events: list[tuple[str, int]] = []
    aborted: list[int] = []
    real_job: list = []
    real = llama.Context.decode

    def decode(self: llama.Context, tokens: list[int], **kw: object) -> None:
        events.append(("decode", len(tokens)))
        if len(events) == 3:  # the prefill is under way: a key (the decode below starts after it)
            events.append(("key", 0))
            real_job.append(demo.submit(key))
        try:
            return real(self, tokens, **kw)
        except llama.Aborted:
            aborted.append(len(tokens))
            raise

    monkeypatch.setattr(llama.Context, "decode", decode)
    pre = demo.submit(background).future.result(timeout=300)
    result = real_job[0].future.result(timeout=300)
    monkeypatch.setattr(llama.Context, "decode", real)
    assert pre.stop == "superseded" and pre.candidates == [] and 0 < pre.evaluated_tokens < pre.prompt_tokens
    chunks = [n for what, n in events[:3] if what == "decode"]
    if case == "elsewhere":
        assert aborted == [chunks[2]]  # the chunk under way when the key came: stopped, not finished
        assert pre.evaluated_tokens == chunks[0] + chunks[1]
    else:
        assert aborted == []
        assert pre.evaluated_tokens == sum(chunks)  # the chunk under way finished, and then the prefill stopped
        assert result.reused_tokens >= pre.evaluated_tokens  # the prefill's work is used
    assert max(chunks) > 128 if case != "no-abort" else max(chunks) <= 128  # big chunks only where they can be stopped
    # after the key: the real request's own decodes
    assert result.stop not in ("superseded", "cancelled") and result.candidates
    assert len(events) > events.index(("key", 0)) + 1
    # a real request waiting: a prefill is dropped at once
    slow = demo.submit(_request(demo, THIRD, 3000))
    dropped = demo.submit(background)
    assert dropped.future.result(timeout=5).stop == "superseded"
    slow.future.result(timeout=300)


def test_prefill_evaluates_the_prompt_for_the_next_request(demo: LlamaCppEngine) -> None:
    demo.reset()
    text, at = THIRD, 6000
    req = _request(demo, text, at)
    pre = demo.submit(replace(req, background=True)).future.result(timeout=300)
    assert pre.stop == "length" and pre.evaluated_tokens == pre.prompt_tokens
    assert pre.candidates == [] and pre.generated_tokens == 0
    r = _run(demo, text, at)
    assert r.evaluated_tokens <= 1 and r.candidates


def test_speed_is_measured(demo: LlamaCppEngine) -> None:
    assert demo.speed.prompt_tps > 0 and demo.speed.gen_ms > 0
    assert demo.bytes_per_token > 0
    # the demo fills a context fast: the warm-up measured a deeper position too (a slope, or one the noise made 0)
    assert demo.speed.samples >= 2 and demo.speed.ms_per_position >= 0


def _chunks(speed: Speed, base: float, slope: float, upto: int = 2304, step: int = 128, jitter: float = 0.0) -> None:
    rng = np.random.default_rng(0)
    for start in range(0, upto, step):
        ms = sum(base + slope * p for p in range(start, start + step)) * (1 + jitter * rng.standard_normal())
        speed.chunk(start, step, ms)


def test_speed_follows_the_position_of_the_tokens() -> None:
    """A prompt token costs more the later it comes (attention reads every position before it): the speed is fitted
    as a base plus a slope per position, and predicts a whole prompt's time from chunks at any positions - where a
    speed measured at the start of a prompt alone (the 92 M model: 3,000 tokens/s there, 1,000 at 2,048) promised a
    2,300-token prompt in half the time it took."""
    truth = Speed()
    base, slope = 0.33, 0.0004  # ms; the 92 M model on the 2-core VM
    _chunks(truth, base, slope, jitter=0.03)
    want = sum(base + slope * p for p in range(2300))
    assert truth.prompt_ms(2300) == pytest.approx(want, rel=0.05)
    assert truth.prompt_tps == pytest.approx(1e3 / base, rel=0.1)
    assert truth.ms_per_position == pytest.approx(slope, rel=0.1)
    assert 2300 / truth.prompt_tps * 1e3 < 0.6 * want  # what the speed at the start alone would have said
    n = truth.tokens_within(want)
    assert abs(n - 2300) <= 50
    assert truth.tokens_within(want - 500, start=0) < 2300 - 400  # time is not linear in tokens
    # a machine that gets twice as slow shows within a couple of prompts (recent chunks weigh more)
    _chunks(truth, 2 * base, 2 * slope)
    _chunks(truth, 2 * base, 2 * slope)
    assert truth.prompt_ms(2300) == pytest.approx(2 * want, rel=0.1)
    # chunks all at one place say nothing about the slope: the last one holds
    at_one = Speed()
    _chunks(at_one, base, slope)
    for _ in range(SPEED_SAMPLES):
        at_one.chunk(512, 128, 128 * (base + slope * 575))
    assert at_one.ms_per_position == pytest.approx(slope, rel=0.2)
    # tokens that got cheaper further in (noise) never make time negative or the slope below 0
    odd = Speed()
    odd.chunk(0, 128, 128.0)
    odd.chunk(2048, 128, 20.0)
    assert odd.ms_per_position == 0.0 and odd.prompt_ms(2300) > 0
    assert Speed().tokens_within(100.0) == 0  # nothing measured yet
    few = Speed()
    few.chunk(0, 4, 1.0)  # a handful of tokens measures the call overhead: left out
    assert few.samples == 0 and few.prompt_tps == 0.0


# ---- over LSP: the real server over stdio ------------------------------------------------------------------
def _log_costs(stderr: str, rid_file: str) -> list[tuple[str, int]]:
    """(source, evaluated) of each completion log line for ``rid_file``."""
    out = []
    for m in re.finditer(rf"r\d+ {re.escape(rid_file)}: \d item\(s\) from (\w+);[^\n]*?(?:evaluated=(\d+)|engine -)", stderr):
        out.append((m.group(1), int(m.group(2)) if m.group(2) else 0))
    return out


def _wait_log(s: RawServer, text: str, timeout: float = 300.0) -> None:
    """Until the server's log (stderr, which the raw peer's event-driven waits do not watch) has ``text``."""
    deadline = time.monotonic() + timeout
    while text not in s.stderr():
        assert time.monotonic() < deadline, f"no {text!r} in the server log: {s.stderr()[-3000:]}"
        time.sleep(0.05)


def test_over_lsp_prefill_kept_prompts_and_the_completion_cache() -> None:
    """didOpen prefills; a revisit of an unchanged place is answered by the completion cache, a revisit after an edit
    there by the kept prompt (a few tokens evaluated); an edit at a new place prefills it before its request."""
    a, b = "file:///w/a.py", "file:///w/b.py"

    def inline(s: RawServer, uri: str, line: int, character: int) -> dict:
        params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 2}}
        return s.request("textDocument/inlineCompletion", params, timeout=300)

    def opened(s: RawServer, uri: str, text: str) -> None:
        s.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})

    with RawServer() as s:
        s.initialize(DEMO, {"maxTokens": 8, "timeBudgetMs": 120000, "coldJumpMs": 0})
        opened(s, a, SOURCE)
        _wait_log(s, "prefill a.py (opened): stop=")
        opened(s, b, OTHER)
        # the end of a docstring line, where the demo model has something to say
        line_a, line_b = 60, OTHER[:5000].count("\n")
        col = len(SOURCE.split("\n")[line_a])
        for uri, line, at in ((a, line_a, col), (b, line_b, 0), (a, line_a, col)):
            assert "result" in inline(s, uri, line, at)
        costs = _log_costs(s.stderr(), "a.py")
        assert costs[0][0] == "model" and costs[-1][0] == "cache", costs  # the revisit: the completion cache
        # an edit at the revisited place, then a request there: the kept prompt, a few tokens evaluated
        s.notify(
            "textDocument/didChange",
            {
                "textDocument": {"uri": a, "version": 2},
                "contentChanges": [
                    {"range": {"start": {"line": line_a, "character": 0}, "end": {"line": line_a, "character": 0}}, "text": "x"}
                ],
            },
        )
        assert "result" in inline(s, a, line_a, col + 1)
        source, evaluated = _log_costs(s.stderr(), "a.py")[-1]
        # the edited line from the "x" to the cursor (8-9 demo tokens, as the prefill before it was or was not superseded
        # mid-chunk): a few tokens, never the 1,600-token prompt
        assert source in ("model", "none") and evaluated <= 24, s.stderr()[-3000:]
        # an edit far away: a new place, prefilled, then its request reuses what the prefill evaluated
        far = line_a + 200
        before = s.stderr().count("(edited at a new place): stop=")
        s.notify(
            "textDocument/didChange",
            {
                "textDocument": {"uri": a, "version": 3},
                "contentChanges": [
                    {"range": {"start": {"line": far, "character": 0}, "end": {"line": far, "character": 0}}, "text": "\n"}
                ],
            },
        )
        deadline = time.monotonic() + 300
        while s.stderr().count("(edited at a new place): stop=") == before:  # this edit's prefill, done
            assert time.monotonic() < deadline, s.stderr()[-3000:]
            time.sleep(0.05)
        assert "result" in inline(s, a, far + 1, 0)
        source, evaluated = _log_costs(s.stderr(), "a.py")[-1]
        assert evaluated <= 8, s.stderr()[-3000:]


def test_over_lsp_a_resting_cursor_prefills_its_place_and_a_key_stops_it() -> None:
    """A ``cursor`` event (the clients send one where the cursor rests) at a new place prefills that place before
    any key: the request there then evaluates a token or two. A key stops a prefill under way (what it evaluated
    stays: the request continues from there instead of waiting for the prefill to finish); the same place told
    again, or a place in an excluded file, is not prefilled."""
    a, secret = "file:///w/a.py", "file:///w/secrets.py"
    big = SOURCE + OTHER + THIRD  # places far apart: prompts that share little
    rests = "(cursor rests at a new place)"

    def cursor(s: RawServer, uri: str, line: int, character: int) -> None:
        s.notify("codellama/event", {"kind": "cursor", "uri": uri, "position": {"line": line, "character": character}})

    def inline(s: RawServer, uri: str, line: int, character: int) -> dict:
        params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 2}}
        return s.request("textDocument/inlineCompletion", params, timeout=300)

    def request_costs(stderr: str) -> tuple[int, int, int]:
        """(prompt, reused, evaluated) of the last completion the model answered for a.py."""
        found = re.findall(r"r\d+ a\.py: \d item\(s\) from \w+;.*prompt=(\d+) reused=(\d+) evaluated=(\d+)", stderr)
        assert found, stderr[-3000:]
        prompt, reused, evaluated = map(int, found[-1])
        return prompt, reused, evaluated

    def prefill_result(s: RawServer, rid: str) -> tuple[str, int, int, int]:
        """(stop, prompt, reused, evaluated) of prefill ``rid`` once the engine is done with it."""
        _wait_log(s, f"{rid} prefill a.py {rests}: stop=", timeout=60)
        m = re.search(rf"{rid} prefill a\.py [^:]*: stop=(\w+) prompt=(\d+) reused=(\d+) evaluated=(\d+)", s.stderr())
        assert m, s.stderr()[-3000:]
        return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))

    with RawServer() as s:
        s.initialize(DEMO, {"maxTokens": 8, "timeBudgetMs": 120000, "coldJumpMs": 0})
        s.notify("textDocument/didOpen", {"textDocument": {"uri": a, "languageId": "python", "version": 1, "text": big}})
        _wait_log(s, "prefill a.py (opened): stop=")
        # the cursor rests at a new place: prefilled before any key; the request there evaluates a token or two
        line = 400
        cursor(s, a, line, 0)
        _wait_log(s, f"prefill a.py {rests}: stop=length")
        cursor(s, a, line + 5, 0)  # the same place (within 32 lines): nothing new
        assert "result" in inline(s, a, line, 0)
        _prompt, _reused, evaluated = request_costs(s.stderr())
        assert evaluated <= 4, s.stderr()[-3000:]
        assert s.stderr().count(f"prefill a.py {rests}: stop=") == 1
        # an excluded file: never prefilled (its text never reaches a prompt)
        s.notify("textDocument/didOpen", {"textDocument": {"uri": secret, "languageId": "python", "version": 1, "text": OTHER}})
        cursor(s, secret, 200, 0)
        # a key while a prefill is under way: it stops, and the request reuses what it evaluated
        version, stopped = 1, None
        for line in (900, 1400, 1900, 2400, 2900):  # a prefill may finish before the key on a fast machine: try again
            submitted = len(re.findall(rf"prefill a\.py {re.escape(rests)}: \d+ prompt tokens submitted", s.stderr()))
            cursor(s, a, line, 0)
            deadline = time.monotonic() + 300
            while (
                len(re.findall(rf"(f\d+) prefill a\.py {re.escape(rests)}: \d+ prompt tokens submitted", s.stderr())) == submitted
            ):
                assert time.monotonic() < deadline, s.stderr()[-3000:]
                time.sleep(0.002)
            rid = re.findall(rf"(f\d+) prefill a\.py {re.escape(rests)}: \d+ prompt tokens submitted", s.stderr())[-1]
            time.sleep(0.05)  # (not a timed assertion: the prefill gets some chunks done before the key, or none)
            version += 1
            key = {"range": {"start": {"line": line, "character": 0}, "end": {"line": line, "character": 0}}, "text": "x"}
            s.notify("textDocument/didChange", {"textDocument": {"uri": a, "version": version}, "contentChanges": [key]})
            assert "result" in inline(s, a, line, 1)
            stop, pre_prompt, pre_reused, pre_evaluated = prefill_result(s, rid)
            if stop == "superseded":
                stopped = (pre_prompt, pre_reused, pre_evaluated, *request_costs(s.stderr()))
                break
        assert stopped is not None, "every prefill finished before the key came"
        pre_prompt, pre_reused, pre_evaluated, _prompt, reused, _evaluated = stopped
        # the request did not wait for the rest of the prefill (it stopped short of its prompt), and reused what it
        # evaluated (the key changed the prompt's last tokens only: the prefix ends at the cursor)
        assert pre_reused + pre_evaluated < pre_prompt, stopped
        assert reused >= pre_reused + pre_evaluated - 16, (stopped, s.stderr()[-3000:])
        assert "prefill secrets.py" not in s.stderr()


def test_an_abort_hook_that_cannot_be_set_leaves_the_engine_working(monkeypatch: pytest.MonkeyPatch) -> None:
    """A llama.cpp build whose abort callback cannot be set (here: setting it raises) is no failed start: background
    work decodes small chunks, as before, and requests complete."""

    def broken(self: llama.Context) -> bool:
        raise OSError("no such symbol: llama_set_abort_callback")

    monkeypatch.setattr(llama.Context, "enable_abort", broken)
    e = LlamaCppEngine(DEMO, "demo")
    try:
        r = _run(e, THIRD, 3000)
        assert r.candidates and not e._abortable
        assert e._prefill_chunk() <= 128
    finally:
        e.close()
