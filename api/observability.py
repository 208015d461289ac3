"""Logs and metrics for operators.

Logs: one line per record, as JSON (``QS_LOG_FORMAT=json``, what log collectors want) or as
text; both carry the id of the job the line is about (``job_id``), set by the worker around a
run with :func:`job_context`, so every line a job writes can be found by its id.

Metrics: ``/metrics`` in Prometheus' text format, computed from the database and the broker when
scraped, so every API process reports the same numbers: jobs by state, messages waiting in the
job queue, and a histogram of finished jobs' wall times by method and end state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from amqp.exceptions import ChannelError
from celery import Celery
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case, func, select

from api.models import Job, JobStatus
from api.queue import QUEUE

_job_id: ContextVar[int | None] = ContextVar("job_id", default=None)

DURATION_BUCKETS_S = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)


@contextmanager
def job_context(job_id: int) -> Iterator[None]:
    """Every log record written inside carries ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class _JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "job_id": getattr(record, "job_id", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s] job=%(job_id)s %(message)s"


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Send every logger's records to stderr in ``fmt`` ("json" or "text"), job id included."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_JobIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def queue_depth(celery: Celery) -> int:
    """Job messages waiting in the broker (not yet taken by a worker)."""
    with celery.connection_for_read() as conn:
        try:
            declared = conn.default_channel.queue_declare(queue=QUEUE, passive=True)
        except ChannelError:  # nothing was ever sent (or the broker was emptied)
            return 0
        return int(declared.message_count)


class ServiceCollector(Collector):
    """Builds the metrics from the database and the broker at each scrape."""

    def __init__(self, engine: Engine, celery: Celery) -> None:
        self.engine, self.celery = engine, celery

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            counts: dict[str, int] = {
                str(state): n
                for state, n in conn.execute(select(Job.status, func.count()).group_by(Job.status))
            }
            finished = [s.value for s in JobStatus if s.finished]
            per_bucket = [
                func.sum(case((Job.wall_time_s <= b, 1), else_=0)) for b in DURATION_BUCKETS_S
            ]
            durations = conn.execute(  # counted in the database: one row per (method, state)
                select(Job.method, Job.status, func.count(), func.sum(Job.wall_time_s), *per_bucket)
                .where(Job.wall_time_s.is_not(None), Job.status.in_(finished))
                .group_by(Job.method, Job.status)
                .order_by(Job.method, Job.status)
            ).all()
        jobs = GaugeMetricFamily("qs_jobs", "Jobs by state.", labels=["state"])
        for state in JobStatus:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs

        depth = GaugeMetricFamily(
            "qs_queue_depth", "Job messages waiting in the broker (-1: broker unreachable)."
        )
        try:
            depth.add_metric([], queue_depth(self.celery))
        except Exception:  # a scrape must not fail because the broker is down
            logging.getLogger(__name__).warning("broker unreachable for /metrics", exc_info=True)
            depth.add_metric([], -1)
        yield depth

        histogram = HistogramMetricFamily(
            "qs_job_duration_seconds",
            "Wall time of finished jobs.",
            labels=["method", "state"],
        )
        for method, status, count, total, *under in durations:
            bounds = zip(DURATION_BUCKETS_S, under, strict=True)
            buckets = [(str(float(b)), int(n)) for b, n in bounds]
            buckets.append(("+Inf", int(count)))
            histogram.add_metric([method, str(status)], buckets, sum_value=float(total))
        yield histogram
