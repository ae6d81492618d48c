"""Adaptive time budget, debounce and prompt size: fit the completion into the user's typing rhythm and the machine.

In: when the user types (``keystroke``, from ``didChange``) and how long model requests take
(``finished``, the engine's total ms). Out: the time budget for the next request (``budget_ms``) and the
debounce a client should use (``debounce_ms``), both reported in ``codellama/status``.

The policy (docs/how-it-works.md, "Speed beyond the KV cache"):

- the typing gap is the time between two changes of the same document, counting only gaps under
  ``BURST_MS`` (longer ones are the user reading or thinking, not typing); the model latency is the
  total time of a model request (not a type-through cache hit). Both are kept for the last ``WINDOW``.
- time budget: a completion is worth something only if it arrives before the user goes on typing.
  Pauses are the long typing gaps, so the budget is the 90th percentile of the gaps, but never less
  than 1.5 times the median latency (so an ordinary request still finishes) or ``MIN_BUDGET_MS``, and
  never more than the configured ``timeBudgetMs`` (a hard cap). Until ``MIN_SAMPLES`` gaps and latencies are known, the
  configured budget applies unchanged.
- debounce: when the median latency is below the median gap, every keystroke's request finishes
  before the next key and nothing is gained by waiting: 0. Otherwise most requests during a burst are
  superseded by the next keystroke before they finish; waiting one median gap (at most ``MAX_DEBOUNCE_MS``)
  sends a request only once the user slows down.
- prompt size (``PromptSizer``): unless the user set ``contextTokens``/``extraContextTokens``, they are chosen from
  the engine's measured prompt speed so that a jump to a place with nothing evaluated answers within ``coldJumpMs``.

Cut answers (``BudgetCuts``): of the last ``CUT_WINDOW`` model answers, how many the time budget cut
(``stop=time``). When at least a third were cut, answers are being cut: the status says so in words
(``slow: answers cut at 2.0 s``) with a hint, instead of a plain "ready", so the user learns why little or
nothing comes (a completion cut mid-line keeps only its complete lines).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

from .engines import tokens_within

WINDOW = 32
BURST_MS = 1500.0
MIN_SAMPLES = 8
MAX_DEBOUNCE_MS = 300.0
MIN_BUDGET_MS = 200  # below this a budget cuts ordinary completions short (and editors fire bursts of changes)


def _quantile(values: deque[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


class Pacer:
    def __init__(self) -> None:
        self.gaps: deque[float] = deque(maxlen=WINDOW)
        self.latencies: deque[float] = deque(maxlen=WINDOW)
        self._last: tuple[str, float] | None = None

    def keystroke(self, uri: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._last is not None and self._last[0] == uri:
            gap = (now - self._last[1]) * 1e3
            if 0.0 < gap < BURST_MS:
                self.gaps.append(gap)
        self._last = (uri, now)

    def finished(self, latency_ms: float) -> None:
        self.latencies.append(latency_ms)

    def _known(self) -> bool:
        return len(self.gaps) >= MIN_SAMPLES and len(self.latencies) >= MIN_SAMPLES

    def budget_ms(self, configured: int) -> int:
        if not self._known():
            return configured
        want = max(_quantile(self.gaps, 0.9), 1.5 * _quantile(self.latencies, 0.5), MIN_BUDGET_MS)
        return int(min(configured, want))

    def debounce_ms(self) -> int:
        if not self._known():
            return 0
        gap = _quantile(self.gaps, 0.5)
        if _quantile(self.latencies, 0.5) <= gap:
            return 0
        return int(min(gap, MAX_DEBOUNCE_MS))

    def status(self, configured: int) -> dict[str, float | int | None]:
        """What ``codellama/status`` reports (camelCase keys)."""
        return {
            "recentLatencyMs": round(_quantile(self.latencies, 0.5), 1) if self.latencies else None,
            "typingGapMs": round(_quantile(self.gaps, 0.5), 1) if self.gaps else None,
            "timeBudgetMs": self.budget_ms(configured),
            "debounceMs": self.debounce_ms(),
        }


# ---- prompt size from measured speed --------------------------------------------------------------------------
SIZE_STEP = 128  # prompt sizes are multiples of this: a size that moved by a few tokens would move the windows
MIN_CONTEXT = 256  # the windows around the cursor never get less (below that a completion has too little to go on)
RESIZE_BY = 0.25  # the measured room must move by this share before the sizes change (each change costs a jump)
EXPECTED_TOKENS = 16  # generated tokens a cold jump is sized for (an ordinary one-line completion)


@dataclass(frozen=True)
class PromptSizes:
    context_tokens: int
    extra_context_tokens: int
    why: str


class PromptSizer:
    """``contextTokens``/``extraContextTokens`` from the engine's measured speed, so that a cold jump (a place whose
    prompt nothing evaluated yet) answers within ``coldJumpMs``.

    In: prompt tokens per second and ms per generated token (the engine's ``speed``), the target, the configured
    sizes (the most it gives). Out: sizes, cut in ``SIZE_STEP`` steps (windows and chunks cut on a grid stay put),
    four fifths to the windows and one fifth to other files' chunks as the defaults (2048 + 512) are, never less
    than ``MIN_CONTEXT`` for the windows. A size changes only when the room measured moves by ``RESIZE_BY``: every
    change moves the windows, which the engine then evaluates again.
    """

    def __init__(self) -> None:
        self._room: float | None = None
        self.sizes: PromptSizes | None = None

    def choose(
        self,
        prompt_tps: float,
        gen_ms: float,
        target_ms: int,
        context_tokens: int,
        extra_tokens: int,
        ms_per_position: float = 0.0,
    ) -> PromptSizes:
        """``prompt_tps``: prompt tokens per second at the start of a prompt; ``ms_per_position``: what a prompt token
        costs more per token before it (attention; the engine's ``Speed``), so a prompt of ``n`` tokens takes
        ``n / prompt_tps + ms_per_position * n * n / 2`` ms."""
        gen = EXPECTED_TOKENS * gen_ms
        base = 1e3 / prompt_tps if prompt_tps > 0 else 0.0
        slope = max(0.0, ms_per_position)
        room = tokens_within(max(0.0, target_ms - gen), base, slope)
        if self.sizes is not None and self._room is not None and abs(room - self._room) <= RESIZE_BY * self._room:
            return self.sizes
        self._room = room
        if room >= context_tokens + extra_tokens:
            ctx, extra = context_tokens, extra_tokens
        else:
            ctx = max(MIN_CONTEXT, min(context_tokens, int(room * 0.8) // SIZE_STEP * SIZE_STEP))
            extra = min(extra_tokens, max(0, int(room - ctx) // SIZE_STEP * SIZE_STEP))
        n = ctx + extra
        cold = n * base + slope * n * n / 2 + gen
        deeper = f", {1e3 / (base + slope * n):.0f} at token {n}" if slope > 0 and base > 0 else ""
        why = (
            f"{prompt_tps:.0f} prompt tokens/s at the start of a prompt{deeper} and {gen_ms:.1f} ms per generated token "
            f"measured here: a cold jump ({n} prompt tokens + {EXPECTED_TOKENS} generated) takes about {cold:.0f} ms, "
            f"coldJumpMs {target_ms}"
        )
        self.sizes = PromptSizes(ctx, extra, why)
        return self.sizes


CUT_WINDOW = 6  # model answers looked at for "answers are being cut"


@dataclass(frozen=True)
class Cut:
    cut: bool  # the time budget stopped it (stop=time)
    budget_ms: int  # the budget it had
    configured_ms: int  # timeBudgetMs then (the cap of the adaptive budget)


class BudgetCuts:
    """The recent model answers and which of them the time budget cut."""

    def __init__(self) -> None:
        self.recent: deque[Cut] = deque(maxlen=CUT_WINDOW)

    def finished(self, stop: str, budget_ms: int, configured_ms: int) -> None:
        self.recent.append(Cut(stop == "time", budget_ms, configured_ms))

    @property
    def cut(self) -> int:
        return sum(c.cut for c in self.recent)

    def slow(self) -> str | None:
        """``"answers cut at 2.0 s"`` while at least a third of the recent answers were cut, else None."""
        cuts = [c for c in self.recent if c.cut]
        if not cuts or 3 * len(cuts) < len(self.recent):
            return None
        last = cuts[-1]
        adaptive = " (adaptive)" if last.budget_ms < last.configured_ms else ""
        return f"answers cut at {last.budget_ms / 1000:.1f} s{adaptive}"

    def hint(self) -> str | None:
        """What the user can do about it (None while answers are not being cut)."""
        if self.slow() is None:
            return None
        last = [c for c in self.recent if c.cut][-1]
        parts = []
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        cores = os.cpu_count() or 1
        if load > cores:
            parts.append(f"the CPU is busy with other work (load {load:.1f} on {cores} cores)")
        parts.append("try a smaller model, fewer contextTokens, --threads, or a larger timeBudgetMs")
        if last.budget_ms < last.configured_ms:
            parts.append(
                f"the budget follows your typing pauses ({last.budget_ms} ms now, at most timeBudgetMs {last.configured_ms})"
            )
        return "; ".join(parts)
