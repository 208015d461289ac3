"""One thin task: run a job by id."""

from __future__ import annotations

from api.queue import RUN_JOB
from worker.celery_app import app, state
from worker.runner import run_job


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: int) -> str | None:
    s = state()
    status = run_job(
        int(job_id), settings=s.settings, factory=s.factory, storage=s.storage, device=s.device
    )
    return None if status is None else str(status)
