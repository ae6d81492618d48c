"""Adaptive time budget and debounce: fit the completion into the user's typing rhythm.

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
