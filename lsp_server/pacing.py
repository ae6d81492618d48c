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
"""

from __future__ import annotations

import time
from collections import deque

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
