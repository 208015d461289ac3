"""The job state machine (api/jobs.py): every transition is conditional, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from api import jobs
from api.models import Job, JobStatus, utcnow
from tests.rows import user_and_model

LEASE = 60


def _job(s: Session) -> int:
    user, model = user_and_model(s)
    job = Job(owner_id=user.id, model_id=model.id, method="uniform", dataset="digits")
    s.add(job)
    s.commit()
    return job.id


def _status(s: Session, job_id: int) -> JobStatus:
    return JobStatus(s.get(Job, job_id, populate_existing=True).status)


def _age_heartbeat(s: Session, job_id: int, seconds: int) -> None:
    s.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
    )
    s.commit()


def test_only_one_worker_claims_a_queued_job(session: Session) -> None:
    job_id = _job(session)
    assert jobs.claim(session, job_id, lease_s=LEASE, host="a")
    assert not jobs.claim(session, job_id, lease_s=LEASE, host="b")
    session.commit()
    assert _status(session, job_id) is JobStatus.RUNNING
    assert session.get(Job, job_id).worker_host == "a"


def test_a_job_with_a_stale_heartbeat_is_taken_over(session: Session) -> None:
    job_id = _job(session)
    assert jobs.claim(session, job_id, lease_s=LEASE, host="a")
    session.commit()
    _age_heartbeat(session, job_id, LEASE + 5)
    assert jobs.claim(session, job_id, lease_s=LEASE, host="b")
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    assert (job.worker_host, job.attempts) == ("b", 2)


def test_a_finished_job_never_changes_again(session: Session) -> None:
    job_id = _job(session)
    assert not jobs.finish(session, job_id, JobStatus.SUCCEEDED)  # never ran
    assert jobs.claim(session, job_id, lease_s=LEASE, host="a")
    assert jobs.finish(session, job_id, JobStatus.SUCCEEDED)
    assert not jobs.finish(session, job_id, JobStatus.FAILED)
    assert not jobs.claim(session, job_id, lease_s=0, host="b")
    assert jobs.request_cancel(session, job_id) is JobStatus.SUCCEEDED
    session.commit()
    assert _status(session, job_id) is JobStatus.SUCCEEDED


def test_cancelling_a_queued_job_ends_it_and_a_running_one_asks_it(session: Session) -> None:
    queued, running = _job(session), _job(session)
    assert jobs.request_cancel(session, queued) is JobStatus.CANCELLED
    assert not jobs.claim(session, queued, lease_s=LEASE, host="a")
    assert jobs.claim(session, running, lease_s=LEASE, host="a")
    assert jobs.request_cancel(session, running) is JobStatus.RUNNING
    session.commit()
    assert session.get(Job, running).cancel_requested
    assert jobs.heartbeat(session, running)
    assert not jobs.heartbeat(session, queued)


def test_a_cancelled_job_whose_worker_died_is_reaped_after_the_lease(session: Session) -> None:
    job_id = _job(session)
    assert jobs.claim(session, job_id, lease_s=LEASE, host="a")
    jobs.request_cancel(session, job_id)
    session.commit()
    assert not jobs.reap_cancelled(session, job_id, lease_s=LEASE)  # its worker may be alive
    assert not jobs.claim(session, job_id, lease_s=LEASE, host="b")
    _age_heartbeat(session, job_id, LEASE + 5)
    assert not jobs.claim(session, job_id, lease_s=LEASE, host="b")  # never restarted
    assert jobs.reap_cancelled(session, job_id, lease_s=LEASE)
    session.commit()
    assert _status(session, job_id) is JobStatus.CANCELLED
