"""Throttled progress: job events, heartbeats and the cancellation flag, through the database."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from api import jobs as transitions
from api.db import session_scope
from api.models import Job, JobEvent
from quantcore import Progress

log = logging.getLogger(__name__)

# The database is unreachable (restarted, connection dropped): worth waiting out, not a bug.
DB_DOWN = (OperationalError, InterfaceError)
MAX_PENDING_EVENTS = 1000  # events kept while the database is unreachable, oldest dropped first


class ProgressWriter:
    """Called with every :class:`quantcore.Progress`; writes at most ``rate`` events a second.

    A stage change and a finished stage are always written. Every write is also the job's
    heartbeat, which keeps other workers from taking the job over. While the database is
    unreachable the job keeps running: events wait in memory (at most
    :data:`MAX_PENDING_EVENTS`) and go in with the first write that succeeds (or with the job's
    end state, see :meth:`add_pending`), and the cancellation flag keeps its last known value.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: int,
        *,
        min_interval: float = 0.3,
        cancel_poll: float = 1.0,
    ) -> None:
        self.factory, self.job_id = factory, job_id
        self.min_interval, self.cancel_poll = min_interval, cancel_poll
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._last_poll = 0.0
        self._cancel = False
        self._pending: list[dict[str, Any]] = []
        self._down = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        # Stage changes, stage ends and end-of-epoch records (the training curve) always go in.
        important = p.stage != self._last_stage or p.fraction >= 1.0 or "epoch" in p.metrics
        if not important and now - self._last_write < self.min_interval:
            return
        self._last_write, self._last_stage = now, p.stage
        self._pending.append({"stage": p.stage[:64], "fraction": p.fraction, "metrics": p.metrics})
        del self._pending[:-MAX_PENDING_EVENTS]
        try:
            with session_scope(self.factory) as s:
                self.add_pending(s)
                transitions.heartbeat(s, self.job_id, stage=p.stage[:64], progress=p.fraction)
        except DB_DOWN:
            self._outage("progress not written")
            return
        self.written()
        if self._down:
            self._down = False
            log.info("job %s: database reachable again; progress written", self.job_id)

    def add_pending(self, s: Session) -> None:
        """Add the events not written yet to ``s``; call :meth:`written` once it commits."""
        s.add_all(JobEvent(job_id=self.job_id, **event) for event in self._pending)

    def written(self) -> None:
        self._pending.clear()

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._last_poll >= self.cancel_poll:
            self._last_poll = now
            try:
                with session_scope(self.factory) as s:
                    job = s.get(Job, self.job_id)
                    self._cancel = job is None or job.cancel_requested
            except DB_DOWN:
                self._outage("cancellation not checked")
        return self._cancel

    def _outage(self, what: str) -> None:
        if not self._down:  # one warning per outage, not one per event
            self._down = True
            log.warning(
                "job %s: database unreachable, %s; the job goes on",
                self.job_id,
                what,
                exc_info=True,
            )
