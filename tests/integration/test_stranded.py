"""A job committed but never sent to the broker (its API process stopped in between) runs when a
worker starts: the worker sends the queued jobs no one has claimed again, and an extra message
for a job already taken is dropped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import make_engine, make_sessionmaker
from api.models import Job, JobStatus, Model, utcnow
from api.queue import STRANDED_AFTER_S, enqueue, make_celery, republish_stranded
from api.settings import Settings
from tests.integration.conftest import Service, start_production
from tests.rows import user_and_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Service]:
    service = start_production(tmp_path_factory, postgres_url)
    service.stop_worker()  # each test starts it when its rows are in place
    yield service
    service.stop_worker()


def _queued_row(service: Service, model_id: int, age_s: float) -> int:
    """What the API commits before it sends the message, as if it had stopped right there."""
    factory = make_sessionmaker(make_engine(service.settings))
    with factory() as s:
        model = s.get(Model, model_id)
        assert model is not None
        job = Job(
            owner_id=model.owner_id,
            model_id=model_id,
            method="uniform",
            params={"bits": 4},
            dataset="digits",
            batch_size=64,
            created_at=utcnow() - timedelta(seconds=age_s),
        )
        s.add(job)
        s.commit()
        return job.id


def test_a_stranded_job_runs_once_a_worker_starts(service: Service, lenet_weights: Path) -> None:
    model_id = service.upload_lenet(lenet_weights)
    stranded = _queued_row(service, model_id, STRANDED_AFTER_S + 30)
    service.start_worker()
    done = service.wait_for(stranded, {"succeeded", "failed"}, timeout=240)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 1


def test_only_old_unclaimed_queued_jobs_are_sent_again_and_a_duplicate_runs_nothing_twice(
    service: Service, lenet_weights: Path
) -> None:
    service.stop_worker()
    model_id = service.upload_lenet(lenet_weights)
    old = _queued_row(service, model_id, STRANDED_AFTER_S + 30)
    fresh = _queued_row(service, model_id, 0)  # its message may still be on its way
    app = service.client.app.state.celery  # type: ignore[attr-defined]
    enqueue(app, fresh)
    factory = make_sessionmaker(make_engine(service.settings))
    with factory() as s:
        assert old in republish_stranded(s, app)
        assert fresh not in republish_stranded(s, app)
    service.start_worker()  # two messages for `old` now, one of its own at start-up: one run
    for job_id in (old, fresh):
        done = service.wait_for(job_id, {"succeeded", "failed"}, timeout=240)
        assert done["status"] == "succeeded", done["error_message"]
        assert done["attempts"] == 1
    with factory() as s:
        finished = s.scalars(select(Job.status).where(Job.id.in_([old, fresh]))).all()
    assert set(finished) == {JobStatus.SUCCEEDED}


def test_with_the_broker_down_nothing_is_sent_and_nothing_raises(
    session: Session, tmp_path: Path
) -> None:
    """A process starting while the broker is down still starts; the next start sends them."""
    user, model = user_and_model(session)
    job = Job(
        owner_id=user.id,
        model_id=model.id,
        method="uniform",
        dataset="digits",
        created_at=utcnow() - timedelta(seconds=STRANDED_AFTER_S + 30),
    )
    session.add(job)
    session.commit()
    down = make_celery(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0"))
    assert republish_stranded(session, down) == []
    session.refresh(job)
    assert job.status == JobStatus.QUEUED
