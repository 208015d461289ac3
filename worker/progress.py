"""Throttled progress: job events, heartbeats and the cancellation flag, through the database."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from api import jobs as transitions
from api.db import session_scope
from api.models import Job, JobEvent
from quantcore import Progress


class ProgressWriter:
    """Called with every :class:`quantcore.Progress`; writes at most ``rate`` events a second.

    A stage change and a finished stage are always written. Every write is also the job's
    heartbeat, which keeps other workers from taking the job over.
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

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        # Stage changes, stage ends and end-of-epoch records (the training curve) always go in.
        important = p.stage != self._last_stage or p.fraction >= 1.0 or "epoch" in p.metrics
        if not important and now - self._last_write < self.min_interval:
            return
        self._last_write, self._last_stage = now, p.stage
        with session_scope(self.factory) as s:
            s.add(
                JobEvent(
                    job_id=self.job_id, stage=p.stage[:64], fraction=p.fraction, metrics=p.metrics
                )
            )
            transitions.heartbeat(s, self.job_id, stage=p.stage[:64], progress=p.fraction)

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._last_poll >= self.cancel_poll:
            self._last_poll = now
            with session_scope(self.factory) as s:
                job = s.get(Job, self.job_id)
                self._cancel = job is None or job.cancel_requested
        return self._cancel
