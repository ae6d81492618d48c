"""The status item: ``codellama/status`` notifications (typed in ``messages.Status``) and popups.

In: the server's state. Out: a status on every change of state or news; "busy" only once a request has waited
``BUSY_AFTER_S`` for the engine, and "ready" again when the last running request ends, so a status bar does not
flicker on every key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from lsprotocol import types

from codellama_core import redact

from .. import messages
from .state import ServerState

BUSY_AFTER_S = 0.3  # a request running longer than this shows "busy"; shorter ones leave "ready" alone


@dataclass
class JobStatus:
    answered: bool = False  # news for the status: a new latency, or a prefetch hit


class StatusReporting(ServerState):
    def status_message(self, state: str, message: str | None = None, percentage: int | None = None) -> messages.Status:
        """The status as it stands, in state ``state``."""
        pacing = self.pacer.status(self.settings.time_budget_ms)
        return messages.Status(
            state=state,
            # while a new model loads, its name (the statusline said the old one's until it was ready)
            model=redact.message(self.settings.model if state == "loading" else (self._loaded_model or self.settings.model), 200),
            last_latency_ms=None if self.last_latency_ms is None else round(self.last_latency_ms, 1),
            cached_tokens=self.engine.cached_tokens if self.engine else 0,
            last_overhead_ms=None if self.overhead_ms is None else round(self.overhead_ms, 3),
            shown=sum(n for (kind, _), n in self.events.items() if kind == "shown"),
            accepted=sum(n for (kind, _), n in self.events.items() if kind == "accepted"),
            prefetches=self.prefetcher.started,
            prefetch_hits=self.prefetcher.hits,
            recent_latency_ms=pacing["recentLatencyMs"],
            typing_gap_ms=pacing["typingGapMs"],
            time_budget_ms=int(pacing["timeBudgetMs"] or 0),
            debounce_ms=int(pacing["debounceMs"] or 0),
            message=redact.message(message) if message else None,
            percentage=percentage,
            cut_answers=self.cuts.cut,
            slow=self.cuts.slow(),
            hint=self.cuts.hint(),
        )

    def send_status(self, state: str, message: str | None = None, percentage: int | None = None) -> None:
        self.state = state
        self.protocol.notify(messages.STATUS, messages.to_wire(self.status_message(state, message, percentage)))

    def show(self, kind: types.MessageType, message: str) -> None:
        # secrets out, one line, capped: messages quote settings, servers and libraries (httpx quotes header values)
        text = redact.message(message, 1000)
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"codellama-lsp: {text}"))

    @contextlib.contextmanager
    def running(self) -> Iterator[JobStatus]:
        """The status item around one completion: "busy" once it has run ``BUSY_AFTER_S``; when the last running
        one ends (answered, failed or cancelled), "ready" again if "busy" was shown or ``answered`` was set."""
        self._job_started()
        job = JobStatus()
        try:
            yield job
        finally:
            self._job_ended(job.answered)

    def _job_started(self) -> None:
        self._inflight += 1
        if self._inflight == 1 and self._busy_timer is None:
            self._busy_timer = asyncio.get_running_loop().call_later(BUSY_AFTER_S, self._show_busy)

    def _show_busy(self) -> None:
        self._busy_timer = None
        if self._inflight and self.state == "ready":
            self._busy_shown = True
            self.send_status("busy")

    def _job_ended(self, model_ran: bool) -> None:
        """Back to "ready" once nothing runs: sent when "busy" was shown or a new latency is to be shown."""
        self._inflight -= 1
        if self._inflight:
            return
        if self._busy_timer is not None:
            self._busy_timer.cancel()
            self._busy_timer = None
        if self._busy_shown or (model_ran and self.state in ("ready", "busy")):
            self._busy_shown = False
            self.send_status("ready")
