"""The Celery app of the workers, configured from the one settings object.

Per child process (never in the parent, so no CUDA there): the database engine, the blob store
and the device are set up once, in ``worker_process_init``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from celery import Celery
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from sqlalchemy.orm import Session, sessionmaker

from api.db import make_engine, make_sessionmaker
from api.observability import configure_logging
from api.queue import make_celery, republish_stranded
from api.settings import Settings
from api.storage import BlobStore, LocalBlobStore
from worker.presence import Presence


@dataclass
class WorkerState:
    settings: Settings
    factory: sessionmaker[Session]
    storage: BlobStore
    device: torch.device


_state: WorkerState | None = None


def state() -> WorkerState:
    """This process's resources (built on first use when the pool is not prefork)."""
    global _state
    if _state is None:
        from worker.devices import pick_device

        settings = Settings()
        _state = WorkerState(
            settings,
            make_sessionmaker(make_engine(settings)),
            LocalBlobStore(settings.resolved_blob_dir),
            pick_device(),
        )
    return _state


@setup_logging.connect
def _logging(loglevel: str | None = None, **_kwargs: object) -> None:
    """Our format (text or JSON, job id on every line) instead of Celery's own."""
    settings = Settings()
    configure_logging(settings.log_format, loglevel or settings.log_level)


_presence: Presence | None = None


@worker_process_init.connect
def _init_child(**_kwargs: object) -> None:
    global _state, _presence
    _state = None
    # cuBLAS is deterministic only with a fixed workspace; set before any CUDA work so that
    # jobs asking for deterministic algorithms can have them (costs a few MiB).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    s = state()
    _presence = Presence(
        s.factory, s.device, every=s.settings.worker_report_s, cap=s.settings.worker_memory_bytes
    )
    _presence.start()


@worker_process_shutdown.connect
def _stop_child(**_kwargs: object) -> None:
    if _presence is not None:
        _presence.stop()


@worker_ready.connect
def _republish(**_kwargs: object) -> None:
    """Once per worker (in the parent, no CUDA): send again the jobs whose message was lost."""
    engine = make_engine(Settings())
    try:
        with make_sessionmaker(engine)() as session:
            republish_stranded(session, app)
    finally:
        engine.dispose()


app: Celery = make_celery(Settings(), "quant-worker")
app.conf.include = ["worker.tasks"]
