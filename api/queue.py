"""The broker: one Celery configuration for the API (which only enqueues) and the workers.

Messages carry a job id only, JSON-serialised. Where no broker URL is set, kombu's filesystem
transport under ``data_dir/broker`` is the embedded broker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from api.settings import Settings

RUN_JOB = "jobs.run"
QUEUE = "jobs"


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
