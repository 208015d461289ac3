"""``/metrics``: Prometheus' text format (aggregate numbers only, no user's data)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from api.observability import ServiceCollector

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Jobs by state, job messages waiting in the broker, and finished jobs' wall times."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(request.app.state.engine, request.app.state.celery))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
