"""Unit tests of the pure stages of the language server: positions, windows, post-processing, cache, settings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from lsprotocol import types

from lsp_server import config, context, postprocess
from lsp_server.cache import TypeThroughCache
from lsp_server.fim import FimOrder

U16, U8, U32 = types.PositionEncodingKind.Utf16, types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf32


# ---- positions -------------------------------------------------------------------------------------
def test_offset_at_utf16_with_emoji_and_cjk() -> None:
    text = "a\ns = '😀中' + x\n"
    # 😀 is 2 UTF-16 units, 中 is 1: the x sits at code point 12, UTF-16 unit 13, UTF-8 byte 18
    assert context.offset_at(text, 1, 13, U16) == 2 + 12
    assert context.offset_at(text, 1, 12, U32) == 2 + 12
    assert context.offset_at(text, 1, 18, U8) == 2 + 12


def test_offset_at_clamps_past_line_and_document_end() -> None:
    text = "ab\ncd"
    assert context.offset_at(text, 0, 99) == 2
    assert context.offset_at(text, 5, 0) == len(text)
    assert context.offset_at(text, 1, 1) == 4


@given(st.text(alphabet=st.sampled_from("ab \t\n😀中é"), max_size=40), st.data())
def test_offset_round_trip_all_encodings(text: str, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(text)))
    line = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    for enc in (U16, U8, U32):
        character = context.units_of(text[line_start:offset], enc)
        assert context.offset_at(text, line, character, enc) == offset


def test_crlf_and_lone_cr_normalised() -> None:
    assert context.lf_text("a\r\nb\rc\n") == "a\nb\nc\n"
    assert context.document_newline("x\r\ny") == "\r\n"
    assert context.document_newline("x\ny") == "\n"
    assert context.to_document_newlines("a\nb", "\r\n") == "a\r\nb"


# ---- windows ---------------------------------------------------------------------------------------
def _char_counter() -> context.TokenCounter:
    # one token per character: easy to reason about and exact
    return context.TokenCounter(len, len)


def test_build_fits_budget_and_keeps_cursor() -> None:
    text = "".join(f"line {i:03d}\n" for i in range(400))
    offset = text.index("line 200") + 4
    ctx = context.build(text, offset, _char_counter(), budget=400, prefix_ratio=0.75)
    assert len(ctx.prefix) + len(ctx.suffix) <= 400
    assert text[ctx.prefix_start : offset] == ctx.prefix
    assert text[offset : ctx.suffix_end] == ctx.suffix
    assert ctx.prefix.endswith("line")
    assert ctx.suffix.startswith(" 200\n")


def test_prefix_window_is_anchored_while_typing() -> None:
    """Typing at the cursor leaves the prefix start in place until the budget overflows, then jumps a grid step."""
    base = "".join(f"value_{i} = {i}\n" for i in range(300))
    starts = []
    text = base
    for ch in "result = compute(alpha, beta)":
        text += ch
        ctx = context.build(text, len(text), _char_counter(), budget=1000, prefix_ratio=1.0)
        starts.append(ctx.prefix_start)
        assert len(ctx.prefix) <= 1000
    assert len(set(starts)) <= 2  # at most one jump over 29 keystrokes
    # every start is a line start on the grid
    for s in set(starts):
        assert text.count("\n", 0, s) % context.GRID == 0 and text[s - 1] == "\n"


def test_suffix_window_respects_ratio() -> None:
    text = "x = 1\n" * 1000
    ctx = context.build(text, 3000, _char_counter(), budget=1000, prefix_ratio=0.75)
    assert len(ctx.suffix) <= 250
    assert len(ctx.prefix) + len(ctx.suffix) <= 1000


def test_very_long_single_line_is_cut() -> None:
    text = "a" * 50_000
    ctx = context.build(text, 40_000, _char_counter(), budget=500)
    assert 0 < len(ctx.prefix) + len(ctx.suffix) <= 500


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab (\n\t"), max_size=600), st.integers(0, 600), st.integers(4, 300), st.floats(0, 1))
def test_build_never_exceeds_budget(text: str, offset: int, budget: int, ratio: float) -> None:
    offset = min(offset, len(text))
    ctx = context.build(text, offset, _char_counter(), budget=budget, prefix_ratio=ratio)
    assert len(ctx.prefix) + len(ctx.suffix) <= budget
    assert text[:offset].endswith(ctx.prefix) and text[offset:].startswith(ctx.suffix)


# ---- post-processing -------------------------------------------------------------------------------
def test_mid_line_keeps_one_line_and_drops_suffix_overlap() -> None:
    assert postprocess.clean('"hello")\nprint(2)', "print(", ")", ")\n") == '"hello"'


def test_block_end_by_indentation() -> None:
    raw = "total = 0\n    for x in xs:\n        total += x\nprint(total)\n"
    assert postprocess.clean(raw, "    ", "", "\n") == "total = 0\n    for x in xs:\n        total += x"


def test_tabs_count_as_indentation() -> None:
    raw = "return a\n\tb = 2\nc = 3"
    assert postprocess.clean(raw, "\t", "", "") == "return a\n\tb = 2"


def test_drops_line_that_repeats_the_suffix() -> None:
    raw = "    x = 1\n    return x\n"
    assert postprocess.clean(raw, "", "", "\n    return x\n") == "    x = 1"


def test_cut_off_generation_drops_the_partial_last_line() -> None:
    raw = "if os.path.isfile(path):\n        return os.path.join(root, os.path."
    assert postprocess.clean(raw, "    ", "", "\n", truncated=True) == "if os.path.isfile(path):"
    # Not cut off (EOT or a rule): the last line is whole and stays.
    assert postprocess.clean(raw, "    ", "", "\n") == raw
    # A single line is all there is: keep it rather than nothing.
    assert postprocess.clean("return os.path.", "    ", "", "\n", truncated=True) == "return os.path."
    # The block ended before the cut: the kept lines are whole.
    raw = "x = 1\nprint(x)\ny = os.pa"
    assert postprocess.clean(raw, "    ", "", "\n", truncated=True) == "x = 1"
    # Trailing newline: the line before it is complete.
    assert postprocess.clean("a = 1\nb = 2\n", "", "", "\n", truncated=True) == "a = 1\nb = 2"


def test_eot_text_and_whitespace_only() -> None:
    assert postprocess.clean("foo()<EOT>bar", "", "", "") == "foo()"
    assert postprocess.clean("   \n  ", "", "", "") is None
    assert postprocess.clean(")", "f(", ")", ")") is None


@given(st.text(max_size=80), st.text(max_size=20), st.text(max_size=20))
def test_clean_never_returns_blank(raw: str, pre: str, suf: str) -> None:
    pre, suf = pre.replace("\n", ""), suf.replace("\n", "")
    out = postprocess.clean(raw, pre, suf, suf + "\n")
    assert out is None or out.strip()


# ---- type-through cache ----------------------------------------------------------------------------
def test_type_through_serves_the_rest() -> None:
    c = TypeThroughCache()
    text = "def f(x):\n    \n"
    off = text.index("    \n") + 4
    c.put("u", text, off, ["return x + 1"])
    typed = text[:off] + "ret" + text[off:]
    assert c.get("u", typed, off + 3) == ["urn x + 1"]
    assert c.get("u", text[:off] + "rex" + text[off:], off + 3) is None  # diverged
    assert c.get("u", typed.replace("def f", "def g"), off + 3) is None  # prefix changed
    assert c.get("u", typed + "y = 2\n", off + 3) is None  # suffix changed
    full = text[:off] + "return x + 1" + text[off:]
    assert c.get("u", full, off + len("return x + 1")) is None  # nothing left
    assert c.hits == 1


def test_recent_places_answer_backspace_undo_and_revisits() -> None:
    c = TypeThroughCache(recent=3)
    a = "def f(x):\n    \n\ndef g(y):\n    \n"
    at_f, at_g = a.index("    \n") + 4, a.rindex("    \n") + 4
    c.put("u", a, at_f, ["return x + 1"])
    c.put("u", a, at_g, ["return y * 2"])  # the type-through entry of "u" is now g's
    assert c.get("u", a, at_f) == ["return x + 1"]  # back at f: the recent places
    typed = a[:at_f] + "re" + a[at_f:]
    assert c.get("u", typed, at_f + 2) == ["turn x + 1"]  # typed past a recent place
    assert c.get("v", a, at_g) == ["return y * 2"]  # the same text in another document
    assert c.get("u", a[:at_f] + "# changed\n" + a[at_f:], at_f + 10) is None
    assert c.recent_hits == 3
    for i in range(3):  # three more places: the first ones are dropped
        c.put("u", a + "#" * (i + 1), len(a) + i + 1, ["x"])
    assert len(c) == 3 and c.get("w", a, at_f) is None


# ---- settings --------------------------------------------------------------------------------------
def test_settings_camel_case_and_bad_values_fall_back() -> None:
    s, problems = config.parse({"maxTokens": 12, "fimOrder": "PSM", "temperature": "hot", "prefixRatio": 3, "nope": 1})
    assert s.max_tokens == 12 and s.fim_order is FimOrder.PSM
    assert s.temperature == 0.0 and s.prefix_ratio == 0.75
    assert len(problems) == 3
    assert any("expected a number, got 'hot'" in p for p in problems)
    assert any("unknown setting 'nope'" in p for p in problems)
    assert config.to_wire(s)["maxTokens"] == 12


def test_settings_nested_and_not_an_object() -> None:
    s, problems = config.parse({"codellama": {"contextTokens": 512}})
    assert s.context_tokens == 512 and not problems
    s, problems = config.parse([1, 2])
    assert s == config.Settings() and problems


def test_enable_per_language() -> None:
    s, _ = config.parse({"enable": {"*": False, "python": True}})
    assert s.enabled_for("python") and not s.enabled_for("markdown")


# ---- model specs -----------------------------------------------------------------------------------
def test_model_spec_errors_say_what_was_expected(tmp_path) -> None:
    import subprocess
    import sys

    import pytest as _pytest

    from lsp_server import models

    with _pytest.raises(models.ModelError, match="expected a GGUF model file"):
        models.resolve(str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf")
    with _pytest.raises(models.ModelError, match=r"starting with 'GGUF'.*got a file that does not") as err:
        models.resolve(str(junk))
    assert "PK" not in str(err.value)  # never the file's bytes (a TCP client could read files that way)
    with _pytest.raises(models.ModelError, match="got an empty string"):
        models.resolve("  ")
    # REPO:FILE offline with an empty cache: a clear message, no network (own process: the offline flag
    # is read when huggingface_hub is imported)
    from tests.fixtures.lsp_client import server_env

    env = {**server_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from lsp_server import models\n"
        "try:\n    models.resolve('someorg/somerepo:model.Q4_K_M.gguf')\n"
        "except models.ModelError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path.parent)
    )
    assert "expected someorg/somerepo:model.Q4_K_M.gguf in the Hugging Face cache" in out.stdout, out.stderr
    assert "HF_HUB_OFFLINE is set" in out.stdout


def test_a_keystroke_on_a_huge_line_costs_what_the_window_needs_and_keeps_its_anchor() -> None:
    """Typing at the end (and at the start) of a 100k- and a 1M-character line: the characters run
    through the tokenizer per keystroke depend on the budget, not on the line, and the prefix window
    keeps its start while typing (so the engine reuses its KV cache)."""
    tokenized = [0]

    def count(text: str) -> int:  # ~4 characters a token, like code in a real vocabulary
        tokenized[0] += len(text)
        return (len(text) + 3) // 4

    counter = context.TokenCounter(count, count)
    budget = 2000
    work = {}
    for n in (100_000, 1_000_000):
        line = "x = [" + "1, " * (n // 3)
        tokenized[0] = 0
        first = context.build(line, len(line), counter, budget)
        typed = context.build(line + "2", len(line) + 1, counter, budget)
        assert typed.prefix_start == first.prefix_start and typed.prefix == first.prefix + "2"
        assert len(first.prefix) > 4 * budget * 0.8  # most of the budget is used
        head = context.build(line, 0, counter, budget, prefix_ratio=0.0)  # the cursor at the start: a long suffix
        assert len(head.suffix) > 4 * budget * 0.8 and head.suffix_end - head.prefix_start <= 4 * budget + 4
        work[n] = tokenized[0]
    # before: 7.8M characters a keystroke (a linear walk over the 64K-character reach, re-tokenized per step)
    assert work[1_000_000] <= 1.2 * work[100_000] and work[1_000_000] < 60 * 4 * budget, work


def test_edit_point_position_range_and_selected_item() -> None:
    from lsp_server.server import edit_point

    src = "x = 1\r\nprint(fo"  # CRLF document: offsets count LF text, ranges stay in the editor's lines/units
    at = edit_point(src, types.Position(line=1, character=8), None, types.PositionEncodingKind.Utf16)
    assert (at.text, at.offset, at.head, at.word) == ("x = 1\nprint(fo", 14, "", "fo")
    assert at.range == types.Range(start=types.Position(line=1, character=8), end=types.Position(line=1, character=8))
    # an item "foo" selected over "fo": complete after it, replace from the selection's start
    sel_range = types.Range(start=types.Position(line=1, character=6), end=types.Position(line=1, character=8))
    sel = types.SelectedCompletionInfo(range=sel_range, text="foo")
    at = edit_point(src, types.Position(line=1, character=8), sel, types.PositionEncodingKind.Utf16)
    assert (at.text, at.offset, at.head, at.word) == ("x = 1\nprint(foo", 15, "foo", "")
    assert at.range == sel_range
    # UTF-16 units: an astral character before the cursor counts twice
    at = edit_point("s = '𝄞'", types.Position(line=0, character=7), None, types.PositionEncodingKind.Utf16)
    assert at.offset == 6 and at.range.start.character == 7
