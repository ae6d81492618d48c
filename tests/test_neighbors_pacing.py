"""Context beyond the cursor, pure parts: the chunk ring and its choice, privacy exclusions, prompt-lookup
drafts, the adaptive time budget and debounce, and the detection of an accepted suggestion."""

from __future__ import annotations

import random

import pytest

from lsp_server import config, neighbors
from lsp_server.cache import TypeThroughCache
from lsp_server.lookup import Lookup
from lsp_server.neighbors import CHUNK_LINES, ChunkRing, Doc, Neighbors
from lsp_server.pacing import CUT_WINDOW, MIN_CONTEXT, MIN_SAMPLES, BudgetCuts, Pacer, PromptSizer


def _module(name: str, funcs: list[str], lines: int = 100) -> str:
    body = [f"def {f}(value):\n    return {f}_helper(value) + {name}_offset\n" for f in funcs]
    filler = [f"x_{i} = {i}\n" for i in range(lines)]
    return "".join(filler[: lines // 2] + body + filler[lines // 2 :])


def _count(text: str) -> int:
    return len(text) // 3 + 1  # a stand-in tokenizer: about 3 characters a token, never zero


# ---- the ring ----------------------------------------------------------------------------------------
def test_ring_keeps_its_budget_under_1000_edits() -> None:
    rng = random.Random(0)
    docs = [
        Doc(f"file:///p/m{i}.py", f"p/m{i}.py", "python", _module(f"m{i}", [f"f{i}_{j}" for j in range(8)], 300))
        for i in range(12)
    ]
    nb = Neighbors(ChunkRing(capacity=16))
    budget = 400
    for step in range(1000):
        doc = rng.choice(docs)
        line = rng.randrange(doc.text.count("\n") + 1)
        nb.ring.edited(doc, line)
        assert len(nb.ring) <= 16
        for c in nb.ring.chunks():
            assert c.text.count("\n") < CHUNK_LINES  # whole grid blocks, never more
        if step % 50 == 0:
            cur = rng.choice(docs)
            off = rng.randrange(len(cur.text))
            got = nb.select(cur, off, (off, off), [d for d in docs if d is not cur], budget, _count)
            assert sum(_count(c.render()) for c in got) <= budget
            assert all(c.uri != cur.uri or not (c.start_line <= cur.text.count("\n", 0, off) < c.end_line) for c in got)


def test_ring_pushes_a_region_when_editing_moves_away_and_replaces_its_copy() -> None:
    a = Doc("file:///a.py", "a.py", "python", "\n".join(f"alpha_{i} = {i}" for i in range(100)))
    b = Doc("file:///b.py", "b.py", "python", "beta = 1\n")
    ring = ChunkRing(capacity=4)
    ring.edited(a, 5)
    ring.edited(a, 7)  # same region: nothing pushed yet
    assert len(ring) == 0
    ring.edited(b, 0)  # elsewhere: the region of a around line 7 goes in
    assert [(c.uri, c.start_line) for c in ring.chunks()] == [("file:///a.py", 0)]
    assert ring.chunks()[0].text.startswith("alpha_0 = 0")
    ring.edited(a, 3)  # b's region goes in
    ring.edited(b, 0)  # a's block 0 again: replaces the old copy (moved to the newest place)
    assert [(c.uri, c.start_line) for c in ring.chunks()] == [("file:///b.py", 0), ("file:///a.py", 0)]


def test_selection_ranks_by_identifiers_and_heads_chunks_with_their_path() -> None:
    lib = Doc("file:///pkg/lib.py", "pkg/lib.py", "python", _module("lib", ["parse_header", "render_footer"]))
    noise = Doc("file:///pkg/noise.py", "pkg/noise.py", "python", "\n".join(f"unrelated_{i} = {i}" for i in range(60)))
    js = Doc("file:///web/app.js", "web/app.js", "javascript", "function parse_header() { return parse_header_helper(); }")
    text = "import lib\n\ndef main(value):\n    header = lib.parse_header_helper(value) + lib_offset\n    return "
    cur = Doc("file:///pkg/main.py", "pkg/main.py", "python", text)
    got = Neighbors().select(cur, len(text), (0, len(text)), [lib, noise, js], 200, _count)
    assert got and got[-1].uri == lib.uri  # the most similar chunk comes last, nearest the cursor's part
    assert all(c.uri != js.uri for c in got)  # other languages never
    rendered = neighbors.render(got)
    assert rendered.startswith("# pkg/lib.py\n") and "def parse_header(value):" in rendered


def test_selection_is_sticky_while_typing_in_a_block() -> None:
    lib = Doc("file:///lib.py", "lib.py", "python", _module("lib", ["parse_header"]))
    nb = Neighbors()
    text = "def main(value):\n    parse_"
    first = nb.select(Doc("file:///m.py", "m.py", "python", text), len(text), (0, len(text)), [lib], 300, _count)
    for typed in "header_helper(value)":
        text += typed
        again = nb.select(Doc("file:///m.py", "m.py", "python", text), len(text), (0, len(text)), [lib], 300, _count)
        assert again is first  # the same chunks: the prompt's first part (and its KV cache) stays


def test_a_new_choice_keeps_the_old_chunks_in_place_and_appends_new_ones() -> None:
    """When the choice changes, chunks still chosen keep their order at the front of the prompt (the engine moves
    their evaluated tokens), evicted ones go, new ones are appended; a choice that barely improves is not made."""
    lib = Doc("file:///lib.py", "lib.py", "python", _module("lib", ["parse_header", "render_footer"]))
    nb = Neighbors()
    text = "def main(value):\n    parse_header_helper(value) + lib_offset\n"
    cur = Doc("file:///m.py", "m.py", "python", text)
    first = nb.select(cur, len(text), (0, len(text)), [lib], 300, _count)
    assert first
    util = Doc("file:///util.py", "util.py", "python", _module("util", ["parse_header_helper", "main"]))
    second = nb.select(cur, len(text), (0, len(text)), [lib, util], 600, _count)
    assert second[: len(first)] == first and any(c.uri == util.uri for c in second[len(first) :])
    # the ring changes with a chunk that is hardly better: the choice stays as it was
    nb.ring.edited(Doc("file:///x.py", "x.py", "python", "zzz_unrelated = 1\n"), 0)
    nb.ring.edited(Doc("file:///y.py", "y.py", "python", "other = 2\n"), 0)
    third = nb.select(cur, len(text), (0, len(text)), [lib, util], 600, _count)
    assert third == second


def test_chunk_header_uses_the_language_comment() -> None:
    c = neighbors.Chunk("file:///a.rs", "src/a.rs", "rust", 0, "fn main() {}", frozenset())
    assert c.render() == "// src/a.rs\nfn main() {}\n"


# ---- privacy -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/home/u/proj/.env", "/p/.env.local", "/p/server.pem", "/p/tls/private.key", "/home/u/.ssh/id_rsa",
     "/home/u/.ssh/id_rsa.pub", "/p/config/secrets.yaml", "C:\\p\\secrets.json", "file:///p/cert.p12"],
)  # fmt: skip
def test_default_exclusions(path: str) -> None:
    assert config.Settings().excluded(path)


def test_exclusions_leave_code_alone_and_take_configured_patterns() -> None:
    s = config.Settings()
    for path in ("/p/main.py", "/p/environment.py", "/p/keys.py", "/p/env/x.py", "/p/secrets_manager.py"):
        assert not s.excluded(path)
    custom, problems = config.parse({"exclude": ["*.sql", "private/*"]})
    assert not problems
    assert custom.excluded("/p/db/dump.sql") and custom.excluded("/repo/private/notes.py")
    assert custom.excluded("/p/.env")  # the defaults stay on
    _, problems = config.parse({"exclude": "*.sql"})
    assert problems  # a string is not a list of patterns: reported, default kept


# ---- prompt lookup -----------------------------------------------------------------------------------
def test_lookup_drafts_from_the_latest_longest_match() -> None:
    hist = Lookup([5, 1, 2, 3, 4, 9, 1, 2, 3, 7, 8, 1, 2], capacity=32)
    assert hist.draft(3) == [3, 7, 8]  # the latest "1 2" is followed by 3 7 8
    hist.extend([3])
    assert hist.draft(2) == [7, 8]  # "1 2 3": the latest earlier match
    assert Lookup([1, 2, 3, 4], 8).draft(4) == []  # "3 4" never occurred before
    assert Lookup([1, 2, 1], 8).draft(4) == []  # a single repeated token is not enough
    grow = Lookup([1, 2], capacity=2)
    grow.extend(list(range(10)) + [1, 2])
    assert grow.draft(3) == [3, 4, 5]  # [1 2] 0 [1 2] 3 4 5 ... 9 [1 2]: the latest match wins


# ---- pacing ------------------------------------------------------------------------------------------
def test_pacer_budget_and_debounce() -> None:
    p = Pacer()
    assert p.budget_ms(2000) == 2000 and p.debounce_ms() == 0  # nothing known yet: the configured budget
    t = 0.0
    for i in range(MIN_SAMPLES * 2):
        t += 0.12 if i % 4 else 0.6  # 120 ms between keys, a 600 ms pause every fourth
        p.keystroke("file:///a.py", t)
        p.finished(80.0)
    assert p.debounce_ms() == 0  # 80 ms answers beat 120 ms gaps
    assert p.budget_ms(2000) == 600  # the pauses set the budget
    assert p.budget_ms(300) == 300  # the configured budget is a hard cap
    fast = Pacer()
    for i in range(MIN_SAMPLES + 1):
        fast.keystroke("file:///a.py", i * 0.001)  # an editor's burst of changes, 1 ms apart
        fast.finished(5.0)
    assert fast.budget_ms(2000) == 200  # never below MIN_BUDGET_MS
    # the server evolves its Settings with this budget, and Settings validates it: a budget below the
    # smallest valid timeBudgetMs raised ValueError inside the completion handlers (the fuzz test's trace)
    for configured in (10, 150, 2000):
        assert config.Settings(time_budget_ms=fast.budget_ms(configured)).time_budget_ms == min(configured, 200)
    for _ in range(32):
        p.finished(500.0)
    assert p.debounce_ms() == 120  # slower than the typing: wait one typical gap
    assert p.budget_ms(2000) == 750  # never below 1.5x the median latency
    p.keystroke("file:///b.py", t + 0.05)  # another document: not a typing gap
    assert p.status(2000)["typingGapMs"] == 120.0


# ---- accepted suggestions ----------------------------------------------------------------------------
def test_budget_cuts_say_slow_while_a_third_of_recent_answers_are_cut() -> None:
    cuts = BudgetCuts()
    assert (cuts.cut, cuts.slow(), cuts.hint()) == (0, None, None)
    cuts.finished("eot", 2000, 2000)
    cuts.finished("time", 2000, 2000)
    assert cuts.cut == 1 and cuts.slow() == "answers cut at 2.0 s"  # 1 of 2
    hint = cuts.hint()
    assert hint is not None and "smaller model" in hint and "contextTokens" in hint and "--threads" in hint
    for _ in range(2):
        cuts.finished("rule", 2000, 2000)
    assert cuts.slow() is None and cuts.hint() is None  # 1 of 4: answers come whole again
    # the adaptive budget (pacing lowered it below timeBudgetMs) is named as such, with its cap
    cuts.finished("time", 640, 2000)
    assert cuts.slow() == "answers cut at 0.6 s (adaptive)"
    assert "640 ms now, at most timeBudgetMs 2000" in (cuts.hint() or "")
    for _ in range(CUT_WINDOW):
        cuts.finished("length", 2000, 2000)
    assert cuts.cut == 0 and cuts.slow() is None  # only the last CUT_WINDOW answers count


def test_cache_sees_an_accepted_suggestion() -> None:
    cache = TypeThroughCache()
    text = "def f(x):\n    return \n\nprint(f(1))\n"
    off = text.index("return ") + len("return ")
    cache.put("u", text, off, ["x + 1", "x * 2"])
    accepted = text[:off] + "x * 2" + text[off:]
    assert cache.accepted("u", accepted) == off + len("x * 2")
    assert cache.accepted("u", text[:off] + "x - 3" + text[off:]) is None
    assert cache.accepted("u", text[:off] + "x + 1" + text[off:-1]) is None  # something else changed too
    assert cache.accepted("other", accepted) is None


def test_a_recent_place_is_one_language_s_answer() -> None:
    """The recent-places store answers the same text around the cursor in another document (backspacing, a copy of
    the file), but only in the same language: an answer cut by Python's syntax rules is not a plain-text buffer's."""
    cache = TypeThroughCache()
    text = "def add(a, b):\n    \n"
    off = text.index("    \n") + 4
    cache.put("file:///w/a.py", text, off, ["return a + b"], "python")
    assert cache.get("untitled:Untitled-1", text, off, "python") == ["return a + b"]
    assert cache.get("file:///w/add_report", text, off, "conf") is None
    assert cache.get("file:///w/add_report", text, off) is None


def test_draft_policy_drafts_only_what_pays() -> None:
    from lsp_server.lookup import DraftPolicy

    big = DraftPolicy(8)  # a big model: a batch position costs a tenth of a decode
    assert big.size(8) == 0  # nothing measured yet
    big.decoded(30.0, 0)
    big.decoded(36.0, 2)  # 3 ms per extra position
    for _ in range(10):
        big.verified(4, 4)  # and the drafts were right
    assert big.size(8) >= 4 and big.size(3) == 3
    tiny = DraftPolicy(8)  # a tiny model: a batch position costs as much as a decode, and drafts miss
    tiny.decoded(1.0, 0)
    for _ in range(30):
        tiny.decoded(1.0 + 0.9 * 4, 4)
        tiny.verified(4, 0)
    sizes = [tiny.size(8) for _ in range(DraftPolicy.PROBE_EVERY)]
    assert sizes[:-1] == [0] * (DraftPolicy.PROBE_EVERY - 1) and sizes[-1] == 2  # only a rare probe


def test_prompt_size_fits_a_cold_jump_into_the_target() -> None:
    """A fast engine keeps the configured sizes; a slow one gets what it evaluates within coldJumpMs (in 128-token
    steps, four fifths to the windows); small changes in the measured speed change nothing (every change moves the
    windows, which costs an evaluation)."""
    fast = PromptSizer().choose(5000.0, 3.0, 1500, 2048, 512)
    assert (fast.context_tokens, fast.extra_context_tokens) == (2048, 512)
    sizer = PromptSizer()
    slow = sizer.choose(1000.0, 20.0, 1500, 2048, 512)  # (1500 - 16 * 20) ms at 1000 tokens/s: 1180 tokens
    assert (slow.context_tokens, slow.extra_context_tokens) == (896, 256)
    assert "1000 prompt tokens/s" in slow.why and "coldJumpMs 1500" in slow.why
    assert sizer.choose(1100.0, 20.0, 1500, 2048, 512) is slow  # 10 % faster: the same sizes
    faster = sizer.choose(1500.0, 20.0, 1500, 2048, 512)
    assert faster.context_tokens > slow.context_tokens
    crawl = PromptSizer().choose(30.0, 150.0, 1500, 2048, 512)  # a 7B on a laptop CPU: the least there is
    assert (crawl.context_tokens, crawl.extra_context_tokens) == (MIN_CONTEXT, 0)


def test_prompt_size_counts_what_deeper_tokens_cost() -> None:
    """Tokens later in a prompt take longer (attention): with the engine's measured slope a cold jump's time is
    ``n * base + slope * n * n / 2``; the 92 M test model (3,000 tokens/s at the start of a prompt, 1,000 at 2,048)
    gets a smaller prompt than its start-of-prompt speed alone would give, one whose cold jump fits the target."""
    flat = PromptSizer().choose(3000.0, 2.5, 1500, 2048, 512)
    assert (flat.context_tokens, flat.extra_context_tokens) == (2048, 512)  # 2,560 tokens "in 0.9 s"
    deep = PromptSizer().choose(3000.0, 2.5, 1500, 2048, 512, ms_per_position=0.00033)
    n = deep.context_tokens + deep.extra_context_tokens
    assert 1024 <= n < 2560 and deep.context_tokens % 128 == 0 and deep.extra_context_tokens % 128 == 0
    cold = n / 3.0 + 0.00033 * n * n / 2 + 16 * 2.5
    assert cold <= 1500 < (n + 256) / 3.0 + 0.00033 * (n + 256) ** 2 / 2 + 16 * 2.5
    assert "at token" in deep.why and "coldJumpMs 1500" in deep.why
    assert PromptSizer().choose(3000.0, 2.5, 1500, 2048, 512, ms_per_position=0.0) == flat


def test_prompt_sizes_change_only_at_a_new_place() -> None:
    """A size that changed while the user types at one place would move the windows under the keys (each key then
    evaluates the place's prompt again): the server chooses sizes again only for the prefill of a new place (or the
    first request), and a request at the same place keeps the last ones whatever the speed says now."""
    from types import SimpleNamespace

    from lsp_server.config import Settings
    from lsp_server.engines.llama_cpp import Speed
    from lsp_server.server.events import Events

    speed = Speed()
    speed.chunk(0, 128, 128 / 3.0)  # 3,000 tokens/s: the configured sizes fit
    speed.generated(1, 2.5)
    server = object.__new__(Events)  # the sizing alone: an engine with a speed, the settings, the sizer
    server.engine = SimpleNamespace(speed=speed)  # type: ignore[assignment]
    server.settings = Settings()
    server.sizer = PromptSizer()
    first = server.sized(Settings(), resize=False)  # nothing chosen yet: chosen now
    assert (first.context_tokens, first.extra_context_tokens) == (2048, 512)
    for _ in range(64):  # the machine got four times slower
        speed.chunk(0, 128, 4 * 128 / 3.0)
    same_place = server.sized(Settings(), resize=False)
    assert (same_place.context_tokens, same_place.extra_context_tokens) == (2048, 512)
    new_place = server.sized(Settings(), resize=True)
    assert new_place.context_tokens + new_place.extra_context_tokens < 2048 + 512
    user_set = server.sized(Settings(context_tokens=4000, extra_context_tokens=100), resize=True)
    assert (user_set.context_tokens, user_set.extra_context_tokens) == (4000, 100)  # the user's sizes are never changed
