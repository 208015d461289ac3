"""The broker: one Celery configuration for the API (which only enqueues) and the workers.

Messages carry a job id only, JSON-serialised. Where no broker URL is set, kombu's filesystem
transport under ``data_dir/broker`` is the embedded broker.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import Job, JobStatus, utcnow
from api.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB = "jobs.run"
QUEUE = "jobs"
STRANDED_AFTER_S = 60  # a queued job never claimed for this long may have lost its message


class BrokerUnavailable(Exception):
    """The broker did not take the message (it is down or unreachable)."""


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    transport: dict[str, Any] = {}
    if url.startswith("filesystem"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    elif url.startswith(("redis", "rediss")):
        transport = {"visibility_timeout": settings.broker_visibility_timeout_s}
    return {
        "broker_url": url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "task_time_limit": settings.job_time_limit_s + 60,
        "task_soft_time_limit": settings.job_time_limit_s,
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings, name: str = "quant") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def enqueue(app: Celery, job_id: int) -> str:
    """Send the job id to the workers; returns the task id (for revoking a queued job).

    Raises :class:`BrokerUnavailable` when the broker cannot be reached (after Celery's own
    short publish retries).
    """
    try:
        return app.send_task(RUN_JOB, args=[job_id], queue=QUEUE, task_id=f"job-{job_id}").id
    except OperationalError as exc:
        raise BrokerUnavailable(str(exc)) from exc


def republish_stranded(
    session: Session, app: Celery, older_than_s: float = STRANDED_AFTER_S
) -> list[int]:
    """Send one more message for every job still queued, never tried, and older than
    ``older_than_s``; returns their ids.

    A process that stops between committing a job and sending its message (the API for a new
    job, a worker for a search's next children) leaves a queued row that no message will ever
    run. The API and the workers call this when they start. An extra message is harmless: a
    worker runs a job only if it can claim it while it is still queued (``api.jobs.claim``), so
    of two messages for one job one runs it and the other finds it taken; a job that was merely
    waiting behind others gets a second message that is dropped the same way. With the broker
    down it logs a warning and returns what it sent: the next start tries again.
    """
    before = utcnow() - timedelta(seconds=older_than_s)
    ids = list(
        session.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.attempts == 0, Job.created_at < before)
            .order_by(Job.id)
        )
    )
    sent: list[int] = []
    try:
        for job_id in ids:
            enqueue(app, job_id)
            sent.append(job_id)
    except BrokerUnavailable as exc:
        log.warning("could not send queued jobs again (%s); the next start tries again", exc)
    if sent:
        log.info("sent again %d queued job(s) no worker had claimed: %s", len(sent), sent)
    return sent
