"""The app factory. Everything is built from one ``Settings``; nothing at module level."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api import errors
from api.db import current_and_head, make_engine, make_sessionmaker, upgrade_to_head
from api.deps import get_current_user
from api.frontend import mount_frontend
from api.limits import ConcurrencyLimit
from api.queue import make_celery
from api.routes import artifacts, auth, datasets, health, jobs, meta, metrics, models
from api.settings import Settings
from api.storage import LocalBlobStore

API_PREFIX = "/api/v1"


class DatabaseNotAtHead(RuntimeError):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.auto_migrate:
        upgrade_to_head(settings)
    engine = make_engine(settings)
    current, head = current_and_head(engine, settings)
    if current != head:
        raise DatabaseNotAtHead(
            f"the database is at revision {current or 'none'} but this code needs {head}: run "
            "`.venv/bin/python -m api migrate` (with the same QS_DATABASE_URL) first"
        )
    app = FastAPI(
        title="Quantization service",
        version="0.1.0",
        description="Quantize trained PyTorch models with LQ-Nets, L-DNQ, ALQ and "
        "Quantization Networks; measure accuracy and size; download the artifact.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.storage = LocalBlobStore(settings.resolved_blob_dir)
    app.state.celery = make_celery(settings, "quant-api")
    errors.install(app)
    app.add_middleware(
        ConcurrencyLimit, limit=settings.max_concurrent_requests, exempt_suffixes=("/events",)
    )
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(auth.router, prefix=API_PREFIX)
    signed_in = [Depends(get_current_user)]  # every resource needs a user; /auth/login does not
    for router in (meta.router, datasets.router, models.router, jobs.router, artifacts.router):
        app.include_router(router, prefix=API_PREFIX, dependencies=signed_in)
    mount_frontend(app)  # last: its catch-all route must not shadow the API's
    return app
