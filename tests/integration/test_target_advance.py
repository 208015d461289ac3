"""A search never stays running when it cannot go on: a child that succeeded without a result, or
a value that no longer validates (the method's schema changed after submission), ends the search
as failed with a message, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.models import Job, JobStatus, Result
from api.target_jobs import advance
from tests.rows import user_and_model


def _search(s: Session, values: list[Any]) -> Job:
    user, model = user_and_model(s)
    target = {"goal": "smallest_within", "limit": 1.0, "param": "bits", "values": values}
    parent = Job(
        owner_id=user.id,
        model_id=model.id,
        method="uniform",
        params={"bits": 8},
        dataset="digits",
        status=JobStatus.RUNNING,
        target={**target, "parallel": 1},
    )
    s.add(parent)
    s.commit()
    return parent


def _child(s: Session, parent: Job, bits: int, result: bool) -> Job:
    kid = Job(
        owner_id=parent.owner_id,
        model_id=parent.model_id,
        method="uniform",
        params={"bits": bits},
        dataset="digits",
        status=JobStatus.SUCCEEDED,
        parent_id=parent.id,
    )
    s.add(kid)
    s.flush()
    if result:
        s.add(
            Result(
                job_id=kid.id,
                float_top1=90.0,
                float_top5=99.0,
                top1=89.5,
                top5=99.0,
                artifact_top1=89.5,
                float_bytes=1000,
                quantized_bytes=100 * bits,
                file_bytes=100 * bits,
                compression_ratio=10.0 / bits,
                average_bits=float(bits),
            )
        )
    parent.target = {**parent.target, "children": {str(kid.id): [0, [2, 4, 8].index(bits)]}}
    s.commit()
    return kid


def _ended(s: Session, parent: Job) -> Job:
    s.expire_all()
    job = s.get(Job, parent.id)
    assert job is not None
    return job


def test_a_child_that_succeeded_without_a_result_fails_the_search(session: Session) -> None:
    parent = _search(session, [2, 4, 8])
    kid = _child(session, parent, 4, result=False)
    assert advance(session, parent.id) == []
    session.commit()
    ended = _ended(session, parent)
    assert ended.status == JobStatus.FAILED
    assert ended.error_code == "child_failed"
    assert f"child job {kid.id} (bits = 4) left no result" in (ended.error_message or "")


def test_a_value_that_no_longer_validates_fails_the_search_and_spawns_nothing(
    session: Session,
) -> None:
    parent = _search(session, [2, 99])  # bits is at most 8: only a changed schema gets here
    parent.target = {**parent.target, "parallel": 2}
    session.commit()
    assert advance(session, parent.id) == []
    session.commit()
    ended = _ended(session, parent)
    assert ended.status == JobStatus.FAILED
    assert ended.error_code == "search_failed"
    message = ended.error_message or ""
    assert "uniform" in message
    assert "bits" in message
    count = select(func.count()).select_from(Job).where(Job.parent_id == parent.id)
    assert session.scalar(count) == 0


def test_a_measured_child_lets_the_search_go_on(session: Session) -> None:
    parent = _search(session, [2, 4, 8])
    _child(session, parent, 4, result=True)
    spawned = advance(session, parent.id)
    session.commit()
    assert len(spawned) == 1  # the next value of the bisection, one at a time
    assert _ended(session, parent).status == JobStatus.RUNNING
