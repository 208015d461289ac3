"""Accuracy-target jobs: a parent job searches size knobs through child jobs.

The parent (``Job.target`` set) is never sent to a worker. The API creates it with the first
round of children; each time a child ends, the worker that ran it calls :func:`advance`, which
starts the next round (``api.targets.next_round``) or, once the answer is known, records the
winner and the Pareto set in ``target["outcome"]`` and ends the parent. Children are ordinary
jobs on the queue, so a round runs in parallel across workers. No FastAPI here.

A search has one or more arms (:func:`arms`): the parent's own method and knob, then
``target["other_methods"]``. Which arm and value each child tries is kept in the parent's
``target["children"]`` (``{child id: [arm, index]}``), written in the same transaction, under the
parent's row lock, as the children themselves. Matching a child by its params instead would be
ambiguous when two arms share a method, and would break if a method's defaults changed while the
search ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import jobs as transitions
from api.admission import device_type, job_estimate, largest_device
from api.models import Job, JobStatus, Result
from api.targets import Outcome, Pick, Target, next_round, pareto, winner
from quantcore.errors import InvalidParams
from quantcore.registry import parse_params


@dataclass(frozen=True)
class Arm:
    """One method searched over one knob: ``values`` ordered from the smallest model up."""

    method: str
    params: dict[str, Any]
    param: str
    values: list[Any]


def child_params(method: str, params: dict[str, Any], knob: str, value: Any) -> dict[str, Any]:
    """The full, validated params of the child that tries ``knob = value``."""
    return dict(parse_params(method, {**params, knob: value}).model_dump(mode="json"))


def arms(method: str, params: dict[str, Any], spec: dict[str, Any]) -> list[Arm]:
    """The arms of a search whose parent runs ``method`` with ``params``: its own, then the
    others in ``spec["other_methods"]``, in order (a child's arm is an index into this list)."""
    own = Arm(method, params, spec["param"], spec["values"])
    return [own] + [
        Arm(a["method"], a.get("params") or {}, a["param"], a["values"])
        for a in spec.get("other_methods") or []
    ]


def _spawn(session: Session, parent: Job, arm: Arm, indices: list[int]) -> list[Job]:
    kids = []
    kind = device_type(largest_device(session))  # the kind admission estimated the search for
    for index in indices:
        params = child_params(arm.method, arm.params, arm.param, arm.values[index])
        kids.append(
            Job(
                owner_id=parent.owner_id,
                model_id=parent.model_id,
                method=arm.method,
                params=params,
                dataset=parent.dataset,
                dataset_id=parent.dataset_id,
                batch_size=parent.batch_size,
                seed=parent.seed,
                deterministic=parent.deterministic,
                status=JobStatus.QUEUED,
                parent_id=parent.id,
                # admitted with the parent (every value was checked then); recorded per child
                memory_estimate_bytes=job_estimate(
                    parent.model, arm.method, params, parent.batch_size, kind
                ).total,
            )
        )
    session.add_all(kids)
    session.flush()
    return kids


def _placed(spec: dict[str, Any], own: Arm, kids: list[Job]) -> dict[Pick, int]:
    """The child that tried each (arm, index). A search started before ``target["children"]``
    was kept has one arm: its children are found by their knob's value, as they were then."""
    if "children" in spec:
        return {(int(a), int(i)): int(k) for k, (a, i) in spec["children"].items()}
    return {
        (0, i): kid.id
        for kid in kids
        for i, v in enumerate(own.values)
        if kid.params.get(own.param) == v
    }


def _fail(session: Session, parent_id: int, message: str, code: str = "child_failed") -> list[int]:
    """End the search as failed (``child_failed``: a child did not give a result;
    ``search_failed``: the search itself cannot go on)."""
    transitions.finish(
        session,
        parent_id,
        JobStatus.FAILED,
        stage="failed",
        error_code=code,
        error_message=message,
    )
    return []


def advance(session: Session, parent_id: int) -> list[int]:
    """Start the parent's next round, or end it; returns the new children's ids, which the caller
    enqueues after committing. Nothing happens while a child of the round is still running."""
    parent = session.scalar(select(Job).where(Job.id == parent_id).with_for_update(of=Job))
    if parent is None or parent.target is None or parent.status != JobStatus.RUNNING:
        return []
    spec = parent.target
    searched = arms(parent.method, parent.params, spec)
    kids = list(session.scalars(select(Job).where(Job.parent_id == parent_id).order_by(Job.id)))
    if any(not JobStatus(k.status).finished for k in kids):
        return []
    job_at = _placed(spec, searched[0], kids)
    arm_of = {kid_id: a for (a, _), kid_id in job_at.items()}
    for kid in kids:
        arm = searched[arm_of.get(kid.id, 0)]
        tried = f"{arm.param} = {kid.params.get(arm.param)!r}"
        if len(searched) > 1:
            tried = f"{kid.method}, {tried}"
        if kid.status != JobStatus.SUCCEEDED:
            return _fail(
                session,
                parent_id,
                f"child job {kid.id} ({tried}) ended {kid.status}: "
                f"{kid.error_message or 'no message'}",
            )
        if session.get(Result, kid.id) is None:  # a search can only compare measured children
            return _fail(session, parent_id, f"child job {kid.id} ({tried}) left no result")
    known: list[dict[int, Outcome]] = [{} for _ in searched]
    for (a, i), kid_id in sorted(job_at.items()):
        result = session.get(Result, kid_id)
        if result is not None:
            known[a][i] = Outcome(result.top1, result.float_top1, result.quantized_bytes)
    target = Target(spec["goal"], float(spec["limit"]))
    sizes = [len(arm.values) for arm in searched]
    runs, total = sum(len(k) for k in known), sum(sizes)
    todo = next_round(target, sizes, known, int(spec["parallel"]))
    if todo:
        new: list[Job] = []
        for a, arm in enumerate(searched):
            indices = [i for b, i in todo if b == a and (b, i) not in job_at]
            if indices:
                try:
                    spawned = _spawn(session, parent, arm, indices)
                except InvalidParams as exc:  # validated at submission; the schema changed since
                    return _fail(session, parent_id, f"{arm.method}: {exc}", "search_failed")
                job_at |= {(a, i): kid.id for i, kid in zip(indices, spawned, strict=True)}
                new += spawned
        if not new:  # every value the round asks for has run: nothing would ever advance it
            msg = "the search asked again for values it has run"
            return _fail(session, parent_id, msg, "search_failed")
        children = {str(kid_id): [a, i] for (a, i), kid_id in sorted(job_at.items())}
        transitions.heartbeat(
            session,
            parent_id,
            stage=f"searching: {runs} of {total} values run",
            progress=runs / total,
            target={**spec, "children": children},
        )
        return [kid.id for kid in new]
    found, per_arm = winner(target, sizes, known)
    front = pareto(
        (str(job_at[(a, i)]), o) for a, k in enumerate(known) for i, o in sorted(k.items())
    )
    outcome = {
        "winner_job_id": None if found is None else job_at[found],
        "winner_value": None if found is None else searched[found[0]].values[found[1]],
        "winner_method": None if found is None else searched[found[0]].method,
        "pareto_job_ids": [int(k) for k in front],
        "runs": runs,
        "message": "no value meets the target" if found is None else "found",
        "arms": [
            {
                "method": arm.method,
                "param": arm.param,
                "winner_job_id": None if i is None else job_at[(a, i)],
                "winner_value": None if i is None else arm.values[i],
                "runs": len(known[a]),
            }
            for a, (arm, i) in enumerate(zip(searched, per_arm, strict=True))
        ],
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
