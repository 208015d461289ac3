"""Accuracy-target jobs: a parent job searches one method's size knob through child jobs.

The parent (``Job.target`` set) is never sent to a worker. The API creates it with the first
round of children; each time a child ends, the worker that ran it calls :func:`advance`, which
starts the next round (``api.targets.next_values``) or, once the answer is known, records the
winner and the Pareto set in ``target["outcome"]`` and ends the parent. Children are ordinary
jobs on the queue, so a round runs in parallel across workers. No FastAPI here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import jobs as transitions
from api.models import Job, JobStatus, Result
from api.targets import Outcome, Target, answer, next_values, pareto
from quantcore.registry import parse_params


def child_params(method: str, params: dict[str, Any], knob: str, value: Any) -> dict[str, Any]:
    """The full, validated params of the child that tries ``knob = value``."""
    return dict(parse_params(method, {**params, knob: value}).model_dump(mode="json"))


def _spawn(session: Session, parent: Job, spec: dict[str, Any], indices: list[int]) -> list[Job]:
    kids = [
        Job(
            owner_id=parent.owner_id,
            model_id=parent.model_id,
            method=parent.method,
            params=child_params(parent.method, parent.params, spec["param"], spec["values"][index]),
            dataset=parent.dataset,
            dataset_id=parent.dataset_id,
            batch_size=parent.batch_size,
            seed=parent.seed,
            status=JobStatus.QUEUED,
            parent_id=parent.id,
        )
        for index in indices
    ]
    session.add_all(kids)
    session.flush()
    return kids


def advance(session: Session, parent_id: int) -> list[int]:
    """Start the parent's next round, or end it; returns the new children's ids, which the caller
    enqueues after committing. Nothing happens while a child of the round is still running."""
    parent = session.scalar(select(Job).where(Job.id == parent_id).with_for_update(of=Job))
    if parent is None or parent.target is None or parent.status != JobStatus.RUNNING:
        return []
    spec = parent.target
    values, knob = spec["values"], spec["param"]
    kids = session.scalars(select(Job).where(Job.parent_id == parent_id)).all()
    if any(not JobStatus(k.status).finished for k in kids):
        return []
    for kid in kids:
        if kid.status != JobStatus.SUCCEEDED:
            transitions.finish(
                session,
                parent_id,
                JobStatus.FAILED,
                stage="failed",
                error_code="child_failed",
                error_message=f"child job {kid.id} ({knob} = {kid.params.get(knob)!r}) "
                f"ended {kid.status}: {kid.error_message or 'no message'}",
            )
            return []
    index_of = {i: kid for kid in kids for i, v in enumerate(values) if kid.params.get(knob) == v}
    known: dict[int, Outcome] = {}
    for i, kid in index_of.items():
        result = session.get(Result, kid.id)
        if result is not None:
            known[i] = Outcome(result.top1, result.float_top1, result.quantized_bytes)
    target = Target(spec["goal"], float(spec["limit"]))
    todo = next_values(target, len(values), known, int(spec["parallel"]))
    if todo:
        new = _spawn(session, parent, spec, [i for i in todo if i not in index_of])
        transitions.heartbeat(
            session,
            parent_id,
            stage=f"searching: {len(known)} of {len(values)} values run",
            progress=len(known) / len(values),
        )
        return [kid.id for kid in new]
    best = answer(target, len(values), known)
    front = pareto((str(index_of[i].id), o) for i, o in known.items())
    outcome = {
        "winner_job_id": None if best is None else index_of[best].id,
        "winner_value": None if best is None else values[best],
        "pareto_job_ids": [int(k) for k in front],
        "runs": len(known),
        "message": "no value meets the target" if best is None else "found",
    }
    transitions.finish(
        session,
        parent_id,
        JobStatus.SUCCEEDED,
        stage="done",
        progress=1.0,
        target={**spec, "outcome": outcome},
    )
    return []
