"""One thin task: run a job by id."""

from __future__ import annotations

from celery import Task
from celery.utils.log import get_task_logger
from sqlalchemy import select

from api.db import session_scope
from api.models import Job
from api.observability import job_context
from api.queue import RUN_JOB, enqueue
from api.target_jobs import advance
from worker.celery_app import app, state
from worker.progress import DB_DOWN
from worker.runner import JobBusy, run_job

log = get_task_logger(__name__)


@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job_task(self: Task, job_id: int) -> str | None:
    s = state()
    try:
        with job_context(int(job_id)):
            status = run_job(
                int(job_id),
                settings=s.settings,
                factory=s.factory,
                storage=s.storage,
                device=s.device,
            )
    except JobBusy as exc:  # a redelivered message while the lease is fresh: come back later
        raise self.retry(exc=exc, countdown=s.settings.job_lease_s) from None
    except DB_DOWN as exc:  # no database to claim the job or record its end: try again later
        log.warning("job %s: database unreachable; the message is retried", job_id)
        raise self.retry(exc=exc, countdown=s.settings.job_lease_s) from None
    if status is not None:
        _advance_search(int(job_id))
    return None if status is None else str(status)


def _advance_search(job_id: int) -> None:
    """When the job was one try of an accuracy-target search, start the search's next round (or
    end it). Runs after every end state, so a redelivered message advances it too."""
    s = state()
    with session_scope(s.factory) as session:
        parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
        if parent_id is None:
            return
        children = advance(session, parent_id)
    for child in children:  # after the commit: the workers must see the rows
        enqueue(app, child)
    if children:
        log.info("job %s: search %s goes on with jobs %s", job_id, parent_id, children)
