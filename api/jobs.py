"""The job state machine: every status change is one conditional UPDATE.

queued → running → succeeded | failed | cancelled; queued → cancelled. A change whose
precondition no longer holds (a duplicate message, a job finished meanwhile, a cancel racing a
start) updates nothing and reports False, so a finished job is never run again and its result is
never overwritten. No FastAPI here: the worker uses these functions too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, update
from sqlalchemy.orm import Session

from api.models import Job, JobStatus, utcnow


def _changed(session: Session, job_id: int, *conditions: Any, **values: Any) -> bool:
    stmt = update(Job).where(Job.id == job_id, *conditions).values(**values)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount == 1


def claim(
    session: Session, job_id: int, *, lease_s: int, host: str, now: datetime | None = None
) -> bool:
    """queued → running, or take over a running job whose worker stopped sending heartbeats."""
    now = now or utcnow()
    stale = now - timedelta(seconds=lease_s)
    return _changed(
        session,
        job_id,
        Job.cancel_requested.is_(False),
        or_(
            Job.status == JobStatus.QUEUED,
            (Job.status == JobStatus.RUNNING) & (Job.heartbeat_at < stale),
        ),
        status=JobStatus.RUNNING,
        started_at=now,
        heartbeat_at=now,
        worker_host=host,
        attempts=Job.attempts + 1,
    )


def reap_cancelled(session: Session, job_id: int, *, lease_s: int) -> bool:
    """running (cancel asked, worker silent past the lease) → cancelled: its worker died."""
    stale = utcnow() - timedelta(seconds=lease_s)
    return _changed(
        session,
        job_id,
        Job.status == JobStatus.RUNNING,
        Job.cancel_requested.is_(True),
        Job.heartbeat_at < stale,
        status=JobStatus.CANCELLED,
        finished_at=utcnow(),
        stage="cancelled",
    )


def heartbeat(session: Session, job_id: int, **values: Any) -> bool:
    """Record progress of a running job; False when the job is no longer running."""
    return _changed(
        session, job_id, Job.status == JobStatus.RUNNING, heartbeat_at=utcnow(), **values
    )


def finish(session: Session, job_id: int, status: JobStatus, **values: Any) -> bool:
    """running → an end state."""
    assert status.finished
    return _changed(
        session,
        job_id,
        Job.status == JobStatus.RUNNING,
        status=status,
        finished_at=utcnow(),
        **values,
    )


def withdraw(session: Session, job_id: int) -> bool:
    """Delete a job that was never sent to the workers (its enqueue failed); False when a worker
    has claimed it meanwhile (the message went out after all), which then keeps the job."""
    stmt = delete(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.attempts == 0)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount == 1


def request_cancel(session: Session, job_id: int) -> JobStatus | None:
    """Cancel a queued job at once, or ask a running one to stop; returns the status after."""
    if _changed(
        session,
        job_id,
        Job.status == JobStatus.QUEUED,
        status=JobStatus.CANCELLED,
        cancel_requested=True,
        finished_at=utcnow(),
        stage="cancelled",
    ):
        return JobStatus.CANCELLED
    _changed(session, job_id, Job.status == JobStatus.RUNNING, cancel_requested=True)
    job = session.get(Job, job_id, populate_existing=True)
    return None if job is None else JobStatus(job.status)
