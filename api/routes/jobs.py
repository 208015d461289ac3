"""Quantization jobs: create (202), list, get, cancel, delete, events (SSE), result."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import jobs as transitions
from api.admission import DoesNotFit, admit
from api.deps import CeleryDep, CurrentUser, Id, SessionDep, SettingsDep, StorageDep, owned
from api.errors import ApiError
from api.models import Dataset, Job, JobEvent, JobStatus, Model, utcnow
from api.queue import BrokerUnavailable, enqueue
from api.schemas import (
    MAX_ID,
    NO_CONTROL,
    JobCreate,
    JobEventPublic,
    JobPublic,
    JobsPublic,
    ResultPublic,
    TargetSpec,
)
from api.settings import Settings
from api.target_jobs import Arm, advance, arms, child_params
from quantcore import list_datasets
from quantcore.errors import InvalidParams, UnknownName
from quantcore.registry import get_method, parse_params

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={503: {"description": "the job queue is unreachable; nothing was stored"}},
)
def create_job(
    body: JobCreate,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    celery: CeleryDep,
    settings: SettingsDep,
) -> Job:
    model = owned(session, Model, body.model_id, user, "model")
    params = parse_params(body.method, body.params)  # InvalidParams / UnknownName → 422
    if body.dataset_id is not None:
        upload = owned(session, Dataset, body.dataset_id, user, "dataset")
        shape = (upload.num_classes, upload.in_channels)
        if shape[0] > model.num_classes or shape[1] != model.in_channels:
            raise ApiError(
                422,
                "invalid_dataset",
                f"dataset {upload.id} has {shape[0]} classes "
                f"and {shape[1]} input channels; model {model.id} takes "
                f"{model.num_classes} classes and {model.in_channels} channels",
            )
        dataset_name = "upload"
    else:
        known = {d.name: d for d in list_datasets() if d.name not in ("npz", "imagefolder")}
        builtin = known.get(body.dataset or "")
        if builtin is None or builtin.needs_root:
            usable = sorted(n for n, d in known.items() if not d.needs_root)
            raise ApiError(
                422,
                "invalid_dataset",
                f"dataset {body.dataset!r} is not available "
                f"on this server; built-ins available: {', '.join(usable)}, or upload "
                "one (POST /datasets) and give its dataset_id",
                {"available": usable},
            )
        dataset_name = builtin.name
    job = Job(
        owner_id=user.id,
        model_id=model.id,
        method=body.method,
        params=params.model_dump(mode="json"),
        dataset=dataset_name,
        dataset_id=body.dataset_id,
        batch_size=body.batch_size,
        seed=body.seed,
        deterministic=body.deterministic,
        status=JobStatus.QUEUED,
    )
    if body.target is not None:
        return _start_search(session, celery, job, body.target, settings)
    job.memory_estimate_bytes = _admit(session, settings, job)
    return _queue(session, celery, job)


def _admit(
    session: Session,
    settings: Settings,
    job: Job,
    *,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    where: str = "",
) -> int:
    """The estimated peak memory of ``job`` (or of a search's child: ``method`` and ``params``
    on the job's model and batch size), or a 422 when it fits no worker's device."""
    model = session.get(Model, job.model_id)
    assert model is not None  # the caller checked the owner's model
    try:
        return admit(
            session,
            model,
            method or job.method,
            job.params if params is None else params,
            job.batch_size,
            report_s=settings.worker_report_s,
            usable_fraction=settings.memory_usable_fraction,
        )
    except DoesNotFit as exc:
        raise ApiError(422, "insufficient_memory", f"{where}{exc.message}", exc.details) from None


def _start_search(
    session: Session, celery: Celery, parent: Job, target: TargetSpec, settings: Settings
) -> Job:
    """A parent job (never queued itself) and its first round of children."""
    spec = target.model_dump(mode="json")
    for i, arm in enumerate(arms(parent.method, parent.params, spec)):
        where = "target" if i == 0 else f"target.other_methods[{i - 1}]"
        _check_arm(where, arm)
        for j, value in enumerate(arm.values):  # every child must fit before any runs
            tried = child_params(arm.method, arm.params, arm.param, value)
            field = f"{where}.values[{j}] ({arm.method} {arm.param} = {value!r}): "
            _admit(session, settings, parent, method=arm.method, params=tried, where=field)
    parent.status = JobStatus.RUNNING
    parent.stage = "searching"
    parent.started_at = utcnow()
    parent.target = spec
    session.add(parent)
    session.flush()
    children = advance(session, parent.id)
    session.commit()
    try:
        for child in children:
            enqueue(celery, child)
    except BrokerUnavailable:
        for child in children:  # none of the round runs: the client retries the whole search
            transitions.request_cancel(session, child)
        transitions.finish(
            session,
            parent.id,
            JobStatus.FAILED,
            stage="failed",
            error_code="broker_unavailable",
            error_message="the job queue was unreachable when the search started",
        )
        session.commit()
        raise ApiError(
            503,
            "broker_unavailable",
            "the job queue is unreachable, so the search did not start; retry in a moment",
            headers={"Retry-After": "5"},
        ) from None
    session.refresh(parent)
    return parent


def _check_arm(where: str, arm: Arm) -> None:
    """Every child of a search arm must be a valid job before any runs; errors name the field
    (``where`` is ``target`` or ``target.other_methods[i]``)."""
    try:
        fields = get_method(arm.method).Params.model_fields
    except UnknownName as exc:
        raise ApiError(
            422,
            exc.code,
            f"{where}.method: {exc.message}",
            {**exc.details, "field": f"{where}.method"},
        ) from None
    if arm.param not in fields:
        raise ApiError(
            422,
            "invalid_params",
            f"{where}.param: {arm.method} has no param {arm.param!r}; "
            f"its params: {', '.join(fields)}",
            {"field": f"{where}.param"},
        )
    for j, value in enumerate(arm.values):
        try:
            child_params(arm.method, arm.params, arm.param, value)
        except InvalidParams as exc:
            # The knob's value is at fault, or else the arm's fixed params are.
            fields_hit = {
                str(e.get("field", "")).split(".")[0] for e in exc.details.get("errors", [])
            }
            field = f"{where}.values[{j}]" if fields_hit == {arm.param} else f"{where}.params"
            raise ApiError(
                422,
                exc.code,
                f"{field} ({arm.param} = {value!r}): {exc.message}",
                {**exc.details, "field": field},
            ) from None


def _queue(session: Session, celery: Celery, job: Job) -> Job:
    """Store ``job`` and send it to the workers (after the commit: they must see the row)."""
    session.add(job)
    session.commit()
    try:
        enqueue(celery, job.id)
    except BaseException as exc:
        # A row without a message would stay queued forever: take it back (unless a worker got
        # the message after all and claimed it), so the client's retry is the only copy.
        withdrawn = transitions.withdraw(session, job.id)
        session.commit()
        if withdrawn and isinstance(exc, BrokerUnavailable):
            raise ApiError(
                503,
                "broker_unavailable",
                "the job queue is unreachable, so the job was not created; retry in a moment",
                headers={"Retry-After": "5"},
            ) from None
        if withdrawn:
            raise
    session.refresh(job)
    return job


@router.post(
    "/{job_id}/rerun",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={503: {"description": "The job queue is unreachable; nothing was created."}},
)
def rerun_job(
    job_id: Id, session: SessionDep, user: CurrentUser, celery: CeleryDep, settings: SettingsDep
) -> Job:
    """Submit a job again: same model, method, params, dataset, batch size and seed. On the same
    kind of device the new result reproduces the old one (on the CPU exactly)."""
    old = owned(session, Job, job_id, user, "job")
    if old.dataset == "upload" and old.dataset_id is None:
        raise ApiError(409, "conflict", f"job {job_id}'s uploaded dataset has been deleted")
    params = parse_params(old.method, old.params)  # the method may have changed since
    job = Job(
        owner_id=user.id,
        model_id=old.model_id,
        method=old.method,
        params=params.model_dump(mode="json"),
        dataset=old.dataset,
        dataset_id=old.dataset_id,
        batch_size=old.batch_size,
        seed=old.seed,
        deterministic=old.deterministic,
        status=JobStatus.QUEUED,
    )
    job.memory_estimate_bytes = _admit(session, settings, job)
    return _queue(session, celery, job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    user: CurrentUser,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    method: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL)] = None,
    model_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    parent_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="The children of one search.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> JobsPublic:
    query = select(Job).where(Job.owner_id == user.id)
    if status_ is not None:
        query = query.where(Job.status == status_)
    if method is not None:
        query = query.where(Job.method == method)
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    if parent_id is not None:
        query = query.where(Job.parent_id == parent_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).unique()
    return JobsPublic(items=[JobPublic.model_validate(r) for r in rows], total=total)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: Id, session: SessionDep, user: CurrentUser) -> Job:
    return owned(session, Job, job_id, user, "job")


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: Id, session: SessionDep, user: CurrentUser, celery: CeleryDep) -> Job:
    job = owned(session, Job, job_id, user, "job")
    if JobStatus(job.status).finished:
        raise ApiError(409, "conflict", f"job {job_id} has already {job.status}")
    if job.target is not None:  # a search: cancel its children, then the search itself
        for child in session.scalars(select(Job.id).where(Job.parent_id == job_id)).all():
            if transitions.request_cancel(session, child) is JobStatus.CANCELLED:
                celery.control.revoke(f"job-{child}")
        transitions.finish(
            session, job_id, JobStatus.CANCELLED, stage="cancelled", cancel_requested=True
        )
        session.commit()
        session.refresh(job)
        return job
    after = transitions.request_cancel(session, job_id)
    if after is JobStatus.CANCELLED:
        celery.control.revoke(f"job-{job_id}")
    session.commit()
    session.refresh(job)
    return job


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: Id, session: SessionDep, user: CurrentUser, storage: StorageDep) -> None:
    job = owned(session, Job, job_id, user, "job")
    if not JobStatus(job.status).finished:
        raise ApiError(409, "conflict", f"job {job_id} is {job.status}: cancel it first")
    children = session.scalars(select(Job).where(Job.parent_id == job_id)).all()
    if any(not JobStatus(c.status).finished for c in children):
        raise ApiError(409, "conflict", f"job {job_id} has children still running: cancel it first")
    keys = [a.blob_key for j in (job, *children) for a in j.artifacts]
    session.delete(job)
    session.commit()
    for key in keys:
        storage.delete(key)


@router.get("/{job_id}/result", response_model=ResultPublic)
def get_result(job_id: Id, session: SessionDep, user: CurrentUser) -> ResultPublic:
    job = owned(session, Job, job_id, user, "job")
    if job.result is None:
        raise ApiError(404, "not_found", f"job {job_id} has no result yet (it is {job.status})")
    return ResultPublic.model_validate(job.result)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: Id,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> StreamingResponse:
    """Server-Sent Events: one ``progress`` event per stored job event, then ``end``."""
    await run_in_threadpool(owned, session, Job, job_id, user, "job")
    await run_in_threadpool(session.close)
    factory = request.app.state.sessionmaker
    resume_from = request.headers.get("last-event-id", "")
    valid = resume_from.isascii() and resume_from.isdigit() and int(resume_from) <= MAX_ID
    last_id = int(resume_from) if valid else after  # a malformed header is ignored

    def poll(after_id: int) -> tuple[list[JobEvent], str | None]:
        with factory() as s:
            events = s.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                .order_by(JobEvent.id)
                .limit(200)
            ).all()
            job = s.get(Job, job_id)
            return list(events), None if job is None else job.status

    async def stream() -> AsyncIterator[str]:
        nonlocal last_id
        while True:
            events, job_status = await run_in_threadpool(poll, last_id)  # no DB in the loop
            for e in events:
                last_id = e.id
                data = JobEventPublic.model_validate(e).model_dump_json()
                yield f"id: {e.id}\nevent: progress\ndata: {data}\n\n"
            if job_status is None or (JobStatus(job_status).finished and not events):
                end = {"status": job_status}
                yield f"event: end\ndata: {json.dumps(end)}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
