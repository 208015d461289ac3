"""The Celery app of the workers, configured from the one settings object.

Per child process (never in the parent, so no CUDA there): the database engine, the blob store
and the device are set up once, in ``worker_process_init``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from celery import Celery
from celery.signals import setup_logging, worker_process_init
from sqlalchemy.orm import Session, sessionmaker

from api.db import make_engine, make_sessionmaker
from api.observability import configure_logging
from api.queue import make_celery
from api.settings import Settings
from api.storage import BlobStore, LocalBlobStore


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


@worker_process_init.connect
def _init_child(**_kwargs: object) -> None:
    global _state
    _state = None
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    state()


app: Celery = make_celery(Settings(), "quant-worker")
app.conf.include = ["worker.tasks"]
